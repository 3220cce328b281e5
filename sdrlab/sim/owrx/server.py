"""Loopback OpenWebRX / OpenWebRX+ simulator: one HTTP + WebSocket server per simulated receiver.

* Receiver k listens on ``base_port + k`` (``base_port=0``: each on an ephemeral port);
  ``ports`` maps receiver id -> port.
* ``GET /status.json``, ``/metrics.json``, ``/metrics``, ``/`` (title by fork); 404 elsewhere,
  ``/ws`` included; ``/ws/`` upgrades.  The 101 reply is byte-identical to the real server's
  (U ``websocket.py:76-84``): status line, ``Upgrade``, ``Connection``, ``Sec-WebSocket-Accept``,
  ``CQ-CQ-de: HA5KFU``, no ``Date``/``Server``, no subprotocol, no extensions.
* Frames: single, unfragmented, unmasked; server-initiated closes carry an empty payload (1005);
  a PING after 30 s of client silence, never a disconnect for a missing PONG; client messages over
  65535 bytes close the connection (the real server cannot parse 64-bit lengths).
* Faults (:class:`OwrxFaults`, :meth:`set_faults`) and events (:meth:`change_profile`,
  :meth:`fail_sdr`, :meth:`restart_encoders`); the ground truth only through :meth:`truth`.

Not reproducible with the websockets library: continuation frames from a client are assembled
into a message instead of being dropped; HTTP replies are HTTP/1.1 with Content-Length (the real
server's BaseHTTPRequestHandler answers HTTP/1.0 without one).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import socket
import time
from typing import Callable, Sequence, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..loopthread import ThreadedServer, serve_until_signal
from .config import OwrxConfig, OwrxFaults
from .pages import index_html, metrics_json, metrics_text, status_json
from .receiver import OwrxTruth, ReceiverHub
from .session import Session
from .signals import Emitter

__all__ = ["OwrxSimServer", "run_forever"]

logger = logging.getLogger(__name__)

WS_PATH = "/ws/"
#: the server PINGs a client silent this long (U ``websocket.py:283-298``), s
PING_AFTER_S = 30.0
#: the largest client message (16-bit lengths only)
MAX_CLIENT_MESSAGE = 65535
#: how long a server-initiated close waits for the client's close frame, s
CLOSE_TIMEOUT_S = 2.0
FINGERPRINT = ("CQ-CQ-de", "HA5KFU")

T = TypeVar("T")


class OwrxSimServer(ThreadedServer):
    """Simulated OpenWebRX receivers on loopback (see the module docstring)."""

    thread_name = "sdrlab-owrx-sim"

    def __init__(self, receivers: Sequence[OwrxConfig], *, host: str = "127.0.0.1", base_port: int = 0) -> None:
        ids = [r.id for r in receivers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"receiver ids must be unique, got {ids}")
        self.receivers = tuple(receivers)
        self.host, self.base_port = host, base_port
        self._hubs = {r.id: ReceiverHub(r, i) for i, r in enumerate(self.receivers)}
        self.ports: dict[str, int] = {}
        self._servers: list[Server] = []
        self._numbers = 0

    # ---- addresses -------------------------------------------------------------------------------
    def _id(self, receiver: int | str) -> str:
        return self.receivers[receiver].id if isinstance(receiver, int) else receiver

    def url(self, receiver: int | str) -> str:
        """``http://host:port/`` of a receiver (by index or id)."""
        return f"http://{self.host}:{self.ports[self._id(receiver)]}/"

    def ws_url(self, receiver: int | str) -> str:
        return f"ws://{self.host}:{self.ports[self._id(receiver)]}{WS_PATH}"

    # ---- faults, events, truth (thread-safe) ------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (from another thread: wait for it)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def set_faults(self, receiver: int | str, faults: OwrxFaults) -> None:
        """Faults of a receiver; connections arriving from now on see them."""
        hub = self._hubs[self._id(receiver)]

        def apply() -> None:
            hub.faults = faults

        self._call(apply)

    def change_profile(self, receiver: int | str, profile_id: str) -> None:
        """A phantom listener selects ``sdr|profile``: every listener of that SDR gets the
        ``config`` diff and keeps its offset (section 7.4)."""
        hub = self._hubs[self._id(receiver)]
        if not self._call(lambda: hub.select_profile(profile_id)):
            raise KeyError(f"{hub.cfg.id}: cannot select profile {profile_id!r}")

    def fail_sdr(self, receiver: int | str, sdr_id: str | None = None) -> str:
        """The SDR (default: the first running one) fails (section 7.5); returns its id."""
        hub = self._hubs[self._id(receiver)]
        return self._call(lambda: hub.fail_sdr(sdr_id))

    def set_fft_size(self, receiver: int | str, fft_size: int) -> None:
        """The operator changes ``fft_size``: a ``config`` to every listener, rows of the new size."""
        hub = self._hubs[self._id(receiver)]
        self._call(lambda: hub.set_fft_size(fft_size))

    def restart_encoders(self, receiver: int | str) -> None:
        """Every started session's audio encoder restarts (state 0, 0, SYNC at once) mid-block."""
        hub = self._hubs[self._id(receiver)]

        def apply() -> None:
            for s in hub.receivers:
                s.restart_encoder()

        self._call(apply)

    def truth(self, receiver: int | str) -> OwrxTruth:
        """The receiver's ground truth now: bands (noise density, emitters) per SDR, active
        profiles, profile changes, and per session its channel (``dial_hz``, ``truth_power``),
        S-meter values, audio samples and the last FFT rows (dB, before encoding) it was sent."""
        hub = self._hubs[self._id(receiver)]
        return self._call(hub.truth)

    def users(self, receiver: int | str) -> int:
        hub = self._hubs[self._id(receiver)]
        return self._call(lambda: hub.users)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        emitters = {e for r in self.receivers for p in r.profiles for e in p.band.emitters}
        await asyncio.to_thread(_prepare, emitters)  # voice tables: not on first use
        try:
            for hub in self._hubs.values():
                port = self.base_port + hub.index if self.base_port else 0
                server = await serve(
                    functools.partial(self._handle, hub), self.host, port, compression=None, ping_interval=None,
                    close_timeout=CLOSE_TIMEOUT_S, max_size=MAX_CLIENT_MESSAGE, server_header=None,
                    process_request=functools.partial(self._process_request, hub),
                    process_response=_process_response,
                )
                self._servers.append(server)
                hub.port = int(server.sockets[0].getsockname()[1])
                self.ports[hub.cfg.id] = hub.port
        except BaseException:
            await self._close_servers()
            raise
        logger.info("OpenWebRX simulator serving %d receivers on %s", len(self._hubs), self.host)

    async def stop(self) -> None:
        for hub in self._hubs.values():
            await hub.stop()
        try:
            await asyncio.wait_for(self._close_servers(), CLOSE_TIMEOUT_S * 3)
        except TimeoutError:
            logger.warning("OpenWebRX simulator: connections still open at stop: %s",
                           [s for h in self._hubs.values() for s in h.sessions])
        logger.info("OpenWebRX simulator stopped")

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()

    # ---- HTTP and WebSocket ----------------------------------------------------------------------
    def _process_request(self, hub: ReceiverHub, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None
        if path == "/status.json":
            failed = [k for k, v in hub.sdrs.items() if v.failed]
            return _page(http.HTTPStatus.OK, status_json(hub.cfg, failed), "application/json")
        if path == "/metrics.json":
            return _page(http.HTTPStatus.OK, metrics_json(hub.users), "application/json")
        if path == "/metrics":
            return _page(http.HTTPStatus.OK, metrics_text(hub.users), "text/plain; version=0.0.4")
        if path in ("/", "/index.html"):
            return _page(http.HTTPStatus.OK, index_html(hub.cfg), "text/html; charset=utf-8")
        return _page(http.HTTPStatus.NOT_FOUND, "<html><body><h1>404 - Not Found</h1></body></html>\n",
                     "text/html; charset=utf-8")

    async def _handle(self, hub: ReceiverHub, ws: ServerConnection) -> None:
        addr = ws.remote_address
        self._numbers += 1
        session = Session(hub, ws, self._numbers, str(addr[0]) if addr else "127.0.0.1")
        if hub.faults.sndbuf_bytes is not None:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.faults.sndbuf_bytes)
        hub.opened(session)
        last_rx = [time.monotonic()]
        pinger = asyncio.get_running_loop().create_task(_pinger(ws, last_rx, session.faults.ping_after_s))
        try:
            async for message in ws:
                last_rx[0] = time.monotonic()
                if isinstance(message, str):
                    await session.on_text(message)
                # binary from a client is ignored (U connection.py:516-520)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("%s #%d: session failed", hub.cfg.id, session.number)
        finally:
            pinger.cancel()
            if session.truth.closed is None and ws.close_code == 1009:
                session.truth.closed = "message_too_big"
            hub.closed(session)


async def _pinger(ws: ServerConnection, last_rx: list[float], after_s: float = PING_AFTER_S) -> None:
    """A PING once the client has been silent for ``after_s`` (timer reset by each message);
    a missing PONG is never held against it."""
    while True:
        wait = last_rx[0] + after_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        try:
            await ws.ping()
        except ConnectionClosed:
            return
        last_rx[0] = time.monotonic()


def _prepare(emitters: set[Emitter]) -> None:
    for e in emitters:
        e.prepare()


def _page(status: http.HTTPStatus, body: str, content_type: str) -> Response:
    data = body.encode("utf-8")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


def _process_response(connection: ServerConnection, request: Request, response: Response) -> Response:
    """The 101 reply exactly as OpenWebRX sends it: no Date, the fingerprint header last."""
    if response.status_code == 101:
        headers = Headers([(k, v) for k, v in response.headers.raw_items() if k.lower() != "date"])
        headers[FINGERPRINT[0]] = FINGERPRINT[1]
        return Response(101, "Switching Protocols", headers, b"")
    return response


def run_forever(receivers: Sequence[OwrxConfig], *, host: str = "127.0.0.1", base_port: int = 8073,
                print_fn: Callable[[str], object] = print) -> None:
    """Serve ``receivers`` until SIGINT/SIGTERM, first printing one line per receiver:
    ``<receiver_id> <host>:<port> <lat> <lon>``."""

    def lines(server: ThreadedServer) -> list[str]:
        assert isinstance(server, OwrxSimServer)
        return [f"{rx.id} {host}:{server.ports[rx.id]} {rx.lat} {rx.lon}" for rx in receivers]

    serve_until_signal(lambda: OwrxSimServer(receivers, host=host, base_port=base_port), lines, print_fn)
