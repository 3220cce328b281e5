"""Loopback KiwiSDR simulator: one WebSocket server per simulated receiver, reproducing server
v1.711's SND (IQ) protocol over a known :class:`~sdrlab.sim.scene.Scene`.

* Receiver k listens on ``base_port + k`` (``base_port=0``: each on its own ephemeral port).
* Paths: ``/<ts>/SND``, ``/kiwi/<ts>/SND``, ``/ws/kiwi/<ts>/SND`` (also ``no_wf`` for ``kiwi``),
  ``/<ts>/W/F`` (and ``/kiwi/<ts>/W/F``), each with an optional query (``?camp``, ignored);
  ``GET /status`` answers the plain-HTTP status page; anything else is HTTP 404.
* One pacing task per server sends the due frames of every stream each tick (no task per stream)
  and runs the watchdogs; frames and MSGs are written without awaiting.

Session behaviour is in :mod:`sdrlab.sim.session`, :mod:`sdrlab.sim.sound` and
:mod:`sdrlab.sim.waterfall`; the status page and config in :mod:`sdrlab.sim.status`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..receivers.kiwiwire import encode_msg
from ..timing import gps_now_ns
from . import status, uber
from .loopthread import ThreadedServer, serve_until_signal
from .scene import Faults, Scene
from .session import ReceiverHub, Session, SimCore, StreamRecord, Watchdogs
from .sound import SndSession
from .uber import UberSndSession
from .waterfall import WfSession

__all__ = ["SimServer", "StreamRecord", "Watchdogs", "run_forever", "parse_path"]

logger = logging.getLogger(__name__)

#: pacing tick of the frame pump, seconds
TICK_S = 0.01
#: the longest the pacing task runs streams' frames without letting the event loop serve sockets
SLICE_S = 0.02
#: how long a server-initiated close waits for the client's close frame
CLOSE_TIMEOUT_S = 2.0

_SND_PATH = re.compile(r"^/(?:(?:ws/)?(?:kiwi|no_wf)/)?(\d+)/SND$")
_WF_PATH = re.compile(r"^/(?:(?:ws/)?kiwi/)?(\d+)/W/F$")


@dataclass(frozen=True)
class Route:
    kind: Literal["SND", "W/F"]
    ts: int
    path: str


def parse_path(path: str) -> Route | None:
    """The stream a request path names, or None (query strings such as ``?camp`` are ignored)."""
    bare = path.split("?", 1)[0]
    m = _SND_PATH.match(bare)
    if m:
        return Route("SND", int(m.group(1)), path)
    m = _WF_PATH.match(bare)
    if m:
        return Route("W/F", int(m.group(1)), path)
    return None


class SimServer(ThreadedServer):
    """KiwiSDR receivers of a scene on loopback (see the module docstring).

    ``speed`` scales the frame rate (and so stream time) against the wall clock; watchdogs are in
    wall seconds.  ``loop_frames`` makes every stream repeat its first N frames (cheap synthesis
    for load tests).  ``record_frames`` keeps the bytes of every SND frame in ``streams``.
    ``seed_streams=False`` gives every stream the same noise (stream_seed 0) instead of a
    per-receiver connection counter.
    """

    def __init__(
        self,
        scene: Scene,
        *,
        host: str = "127.0.0.1",
        base_port: int = 8073,
        speed: float = 1.0,
        watchdogs: Watchdogs = Watchdogs(),
        loop_frames: int | None = None,
        record_frames: bool = False,
        seed_streams: bool = True,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.scene = scene
        self.host = host
        self.base_port = base_port
        self.speed = float(speed)
        self.watchdogs = watchdogs
        self._core = SimCore(
            scene=scene,
            speed=self.speed,
            watchdogs=watchdogs,
            loop_frames=loop_frames,
            record_frames=record_frames,
            seed_streams=seed_streams,
        )
        self._hubs = {rx.id: ReceiverHub(rx=rx, index=i) for i, rx in enumerate(scene.receivers)}
        self.ports: dict[str, int] = {}
        self._servers: list[Server] = []
        self._pacer: asyncio.Task[None] | None = None

    # ---- introspection ----------------------------------------------------------------------
    @property
    def streams(self) -> list[StreamRecord]:
        """Ground truth of every SND stream started so far, in start order."""
        return self._core.streams

    def clock_ns(self) -> int:
        """The simulated receivers' GPS clock now (ns): the host's at speed 1, ``speed`` times
        faster from the server's start otherwise."""
        return self._core.clock_ns()

    def advance(self, seconds: float) -> None:
        """Move the simulated receivers' clock ``seconds`` forward at once: a campaign's hours
        between sessions pass in no time (tests, demos); never while streams run."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"advance by a finite, non-negative number of seconds, got {seconds!r}")
        self._core.advance(seconds)

    @property
    def t_ref_gps_ns(self) -> int:
        """The scene time origin shared by all streams (fixed by :meth:`start`)."""
        return self._core.t_ref_gps_ns

    def connections(self, receiver_id: str) -> int:
        """SND channels of a receiver in use now."""
        return len(self._hubs[receiver_id].channels)

    def connection_count(self, receiver_id: str) -> int:
        """SND sockets that have arrived at a receiver so far, refused ones included."""
        return self._hubs[receiver_id].arrivals

    def max_connections(self, receiver_id: str) -> int:
        """The most SND channels of a receiver that were ever in use at once."""
        return self._hubs[receiver_id].max_in_use

    def set_faults(self, receiver_id: str, faults: Faults) -> None:
        """Replace a receiver's faults (e.g. a redirect to a port known only once serving);
        connections that arrive from now on see them."""
        hub = self._hubs[receiver_id]
        hub.rx = replace(hub.rx, faults=faults)

    # ---- lifecycle (inside a running loop) ----------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        _blas_single_thread(True)
        self._core.t_ref_gps_ns = gps_now_ns()
        self._core.clock_anchor = (self._core.t_ref_gps_ns, time.monotonic())
        try:
            for hub in self._hubs.values():
                port = self.base_port + hub.index if self.base_port else 0
                server = await serve(
                    _bind(self._handle, hub),
                    self.host,
                    port,
                    compression=None,
                    ping_interval=None,
                    close_timeout=CLOSE_TIMEOUT_S,
                    process_request=_bind_request(self._process_request, hub),
                    server_header=None,
                )
                self._servers.append(server)
                hub.port = int(server.sockets[0].getsockname()[1])
                hub.started = loop.time()
                self.ports[hub.rx.id] = hub.port
        except BaseException:
            await self._close_servers()
            raise
        self._pacer = loop.create_task(self._pace(), name="sdrlab-sim-pacer")
        logger.info("simulator serving %d receivers of scene %r on %s (speed %g)",
                    len(self._hubs), self.scene.name, self.host, self.speed)

    async def stop(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            try:
                await self._pacer
            except asyncio.CancelledError:
                pass
            self._pacer = None
        for session in tuple(self._core.sessions):
            if session.closing is None:
                session.closing = "server_stop"
        await self._close_servers()
        if self._core.tasks:
            await asyncio.gather(*tuple(self._core.tasks), return_exceptions=True)
        _blas_single_thread(False)
        logger.info("simulator stopped")

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()

    # ---- HTTP and WebSocket handling ----------------------------------------------------------
    def _process_request(self, hub: ReceiverHub, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path
        if path.split("?", 1)[0] == "/status":
            users = len(hub.channels)
            uptime = asyncio.get_running_loop().time() - hub.started
            page = (uber.status_page if hub.rx.kind == "ubersdr" else status.status_page)(
                hub.rx, users=users, uptime_s=uptime)
            return connection.respond(http.HTTPStatus.OK, page)
        if parse_path(path) is None:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        to_port = hub.rx.faults.http_redirect_to_port
        if to_port is not None:
            response = connection.respond(http.HTTPStatus.TEMPORARY_REDIRECT, "")
            response.headers["Location"] = f"http://127.0.0.1:{to_port}{path}"
            return response
        return None

    async def _handle(self, hub: ReceiverHub, ws: ServerConnection) -> None:
        assert ws.request is not None
        route = parse_path(ws.request.path)
        if route is None:  # process_request answered 404 already
            return
        faults = hub.rx.faults
        if route.kind == "SND":
            hub.arrivals += 1
        if faults.down:
            await ws.send(encode_msg([("reason_disabled", status.DOWN_REASON), ("down", 0)]))
            return
        if route.kind == "W/F":
            await self._serve(WfSession(self._core, hub, ws, route.path, route.ts))
            return
        addr = ws.remote_address
        ip = str(addr[0]) if addr else "127.0.0.1"
        if (ip, route.ts) in hub.snd_ts:
            logger.info("%s SND %s: duplicate ts from %s, dropped", hub.rx.id, route.ts, ip)
            return
        if faults.redirect_to_port is not None:
            await ws.send(encode_msg([("redirect", f"http://127.0.0.1:{faults.redirect_to_port}")]))
            return
        busy = faults.busy != 0 and hub.take("busy_given", faults.busy)
        channel = None if busy else hub.free_channel()
        if channel is None:
            logger.info("%s SND %s: too busy", hub.rx.id, route.ts)
            await ws.send(encode_msg([("too_busy", hub.rx.rx_chans)]))
            return
        seed = hub.accepted if self._core.seed_streams else 0
        hub.accepted += 1
        kind = UberSndSession if hub.rx.kind == "ubersdr" else SndSession
        session: Session = kind(self._core, hub, ws, route.path, route.ts, channel=channel, stream_seed=seed)
        hub.channels[channel] = session
        hub.max_in_use = max(hub.max_in_use, len(hub.channels))
        hub.snd_ts.add((ip, route.ts))
        try:
            await self._serve(session)
        finally:
            hub.channels.pop(channel, None)
            hub.snd_ts.discard((ip, route.ts))

    async def _serve(self, session: Session) -> None:
        core = self._core
        core.sessions.add(session)
        try:
            session.on_open()
            async for message in session.ws:
                if isinstance(message, str):
                    session.on_text(message)
                else:
                    logger.debug("%s: binary frame from client ignored", session.rx.id)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("%s %s %s: session failed", session.rx.id, session.stream_name, session.ts)
            if session.closing is None:
                session.closing = "error"
        finally:
            core.sessions.discard(session)
            session.on_closed()

    # ---- the pacing task --------------------------------------------------------------------
    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        scan_every = self.watchdogs.scan_interval_s()
        next_scan = 0.0
        while True:
            now = loop.time()
            sessions = tuple(core.sessions)
            slice_end = time.perf_counter() + SLICE_S
            for session in sessions:
                if session.pumping and now >= session.next_due:
                    try:
                        session.pump(now, slice_end)
                    except Exception:
                        _fail(session, "frame pump")
                if time.perf_counter() > slice_end:
                    # a tick that takes long (many streams, a burst of new ones to synthesise, a
                    # busy host) lets the network in between, as a Kiwi's sound tasks yield to its
                    # web server: the frames come late then, but sockets are read and upgrades
                    # answered meanwhile, never held up behind every stream's frames
                    await asyncio.sleep(0)
                    now = loop.time()
                    slice_end = time.perf_counter() + SLICE_S
            if now >= next_scan:
                next_scan = now + scan_every
                for session in sessions:
                    try:
                        session.check_watchdogs(now)
                    except Exception:
                        _fail(session, "watchdog")
            await asyncio.sleep(TICK_S)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit: Any = None


def _blas_single_thread(on: bool) -> None:
    """BLAS on one thread while any simulator runs in this process (restored after the last).

    The receive chain's small matrix products (512 x tens of tones or carriers per frame) run many
    times slower on a threaded BLAS, worst on a busy 2-core machine, and would stall the pacing loop.
    """
    global _blas_users, _blas_limit
    from threadpoolctl import threadpool_limits

    with _blas_lock:
        if on:
            _blas_users += 1
            if _blas_users == 1:
                _blas_limit = threadpool_limits(limits=1, user_api="blas")
        elif _blas_users > 0:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _blas_limit.restore_original_limits()
                _blas_limit = None


def _fail(session: Session, what: str) -> None:
    """A bug in one session must not stop the others: log it and drop that connection."""
    logger.exception("%s %s %s: %s failed", session.rx.id, session.stream_name, session.ts, what)
    session.abort("error")


def _bind(
    method: Callable[[ReceiverHub, ServerConnection], Any], hub: ReceiverHub
) -> Callable[[ServerConnection], Any]:
    async def handler(ws: ServerConnection) -> None:
        await method(hub, ws)

    return handler


def _bind_request(
    method: Callable[[ReceiverHub, ServerConnection, Request], Response | None], hub: ReceiverHub
) -> Callable[[ServerConnection, Request], Response | None]:
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        return method(hub, connection, request)

    return process_request


def run_forever(
    scene: Scene, *, host: str, base_port: int, speed: float, print_fn: Callable[[str], object] = print
) -> None:
    """Serve ``scene`` until SIGINT/SIGTERM, first printing one line per receiver:
    ``<station_id> <host>:<port> <lat> <lon>``."""

    def lines(server: ThreadedServer) -> list[str]:
        assert isinstance(server, SimServer)
        return [f"{rx.id} {host}:{server.ports[rx.id]} {rx.latitude} {rx.longitude}" for rx in scene.receivers]

    serve_until_signal(lambda: SimServer(scene, host=host, base_port=base_port, speed=speed), lines, print_fn)
