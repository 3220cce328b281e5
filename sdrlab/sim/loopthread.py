"""Running an asyncio server object from synchronous code: in a thread of its own (tests,
notebooks) or in the foreground until SIGINT/SIGTERM (``sdrlab sim serve``).  Shared by the
KiwiSDR and the OpenWebRX simulators."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Callable, TypeVar

__all__ = ["ThreadedServer", "serve_until_signal"]

S = TypeVar("S", bound="ThreadedServer")


class ThreadedServer:
    """Mixin: ``start()``/``stop()`` coroutines run on an event loop of their own in a daemon
    thread (``start_in_thread``/``stop_thread``, or ``with server:``).  Subclasses set
    ``self._loop`` in ``start``."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    thread_name = "sdrlab-sim"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def start_in_thread(self: S) -> S:
        """Serve from an event loop of its own in a daemon thread; returns once listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop_thread(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            self._thread = None

    def __enter__(self: S) -> S:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


def serve_until_signal(make: Callable[[], ThreadedServer], lines: Callable[[ThreadedServer], list[str]],
                       print_fn: Callable[[str], object] = print) -> None:
    """Start ``make()`` in the foreground, print ``lines(server)`` (once listening), serve until
    SIGINT/SIGTERM, stop."""

    async def main() -> None:
        server = make()
        await server.start()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, done.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        try:
            for line in lines(server):
                print_fn(line)
            sys.stdout.flush()
            await done.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await server.stop()

    asyncio.run(main())


