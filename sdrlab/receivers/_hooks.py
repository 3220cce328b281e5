"""What every receiver client shares around its protocol: the acquisition's stop request polled
safely, pauses between attempts that a stop cuts short, and retry delays spread so that clients
that failed together do not come back in lockstep, and a gate that keeps a client's sessions to
one receiver few and spaced."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

log = logging.getLogger(__name__)

__all__ = ["SessionGate", "StopHooks", "jitter"]


def jitter(seconds: float) -> float:
    """A retry delay spread over +-25 %: captures that lost their receivers together (an
    overloaded host, a network blip) must not come back in lockstep and overload it again."""
    return seconds * random.uniform(0.75, 1.25)


class StopHooks:
    """``should_stop`` (set by the acquisition, polled) and ``stopped`` (True once a stop ended
    the capture) of the :class:`~sdrlab.capture.Receiver` protocol."""

    should_stop: Callable[[], bool] | None = None
    stopped: bool = False

    def stop_requested(self) -> bool:
        """Whether to stop now; an exception in ``should_stop`` counts as "go on"."""
        if self.stopped:
            return True
        if self.should_stop is None:
            return False
        try:
            self.stopped = bool(self.should_stop())
        except Exception:
            log.debug("should_stop failed", exc_info=True)
        return self.stopped

    async def _pause(self, seconds: float) -> bool:
        """Sleep between attempts; False when a stop was requested meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.stop_requested():
            left = end - loop.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.25))
        return False


class SessionGate:
    """At most ``limit`` sessions to one receiver from this process, connections ``spacing`` s apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, int], int] = {}
        self._last: dict[tuple[str, int], float] = {}

    def _try(self, key: tuple[str, int], limit: int, spacing: float) -> float:
        """0 when a session was taken, else how long to wait at least."""
        with self._lock:
            now = time.monotonic()
            wait = self._last.get(key, -math.inf) + spacing - now
            if self._used.get(key, 0) >= max(1, limit):
                return max(wait, 0.05)
            if wait > 0:
                return wait
            self._used[key] = self._used.get(key, 0) + 1
            self._last[key] = now
            return 0.0

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._used[key] -= 1
            if not self._used[key]:
                del self._used[key]

    @asynccontextmanager
    async def hold(self, host: str, port: int, limit: int, spacing: float,
                   stop: Callable[[], bool]) -> AsyncIterator[bool]:
        """Yields True holding a session, False when a stop came first."""
        key = (host, port)
        while (wait := self._try(key, limit, spacing)) > 0:
            if stop():
                yield False
                return
            await asyncio.sleep(min(wait, 0.25))
        try:
            yield True
        finally:
            self._release(key)
