"""One simulated KiwiSDR connection: command parsing, the auth gate, the MSG sequence, watchdogs.

A session never awaits while handling a command or producing frames: every send goes straight to
the connection's transport (:meth:`Session.send`), so the server can run one pacing task for all
streams (see :mod:`sdrlab.sim.server`).  Closing is the only asynchronous step and is scheduled as
a task.  SND streaming lives in :mod:`sdrlab.sim.sound`, the waterfall in
:mod:`sdrlab.sim.waterfall`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Literal

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from ..receivers.kiwiwire import encode_msg
from . import status
from .frontend import AgcSettings
from ..timing import NS, gps_now_ns
from .scene import Scene, SimReceiver

logger = logging.getLogger(__name__)

#: a connection with more than this many bytes queued for the client gets no new frames until the
#: client has read them (the real server blocks on the TCP send in the same situation)
WRITE_BUFFER_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Watchdogs:
    """Server-side timers of v1.711 (reference section 8), configurable so tests can scale them.

    All are wall-clock seconds (independent of the server's ``speed``).
    """

    #: after auth: close when no ``SET keepalive`` arrived for this long (``KEEPALIVE_SEC``)
    keepalive_timeout_s: float = 60.0
    #: before auth: ``MSG password_timeout`` and close when no ``SET keepalive`` arrived for this
    #: long since the connection opened (``KEEPALIVE_SEC_NO_AUTH``)
    auth_timeout_s: float = 20.0
    #: "connection hang": more keepalives than this without the full SND command set -> close
    hang_keepalives: int = 4
    #: "incomplete connection kicked" (``NO_API_TIME``): no working command set this long after
    #: the connection arrived -> close
    incomplete_s: float = 20.0

    def scan_interval_s(self) -> float:
        shortest = min(self.keepalive_timeout_s, self.auth_timeout_s, self.incomplete_s)
        return max(0.005, min(0.1, shortest / 10.0))


@dataclass
class StreamRecord:
    """Ground truth of one SND connection, appended to ``SimServer.streams`` when streaming starts.

    ``frames`` holds the exact bytes of every SND frame sent when the server records frames.
    ``retunes`` lists ``(frame_index, tuned_hz, low_cut, high_cut, mode)`` for each retune during
    the stream: from that frame on the samples come from a fresh
    ``scene.stream(..., tuned_hz=..., low_cut=..., high_cut=...)`` evaluated from that frame index
    (its noise sequence starts anew there).  ``close_reason`` is ``None`` while the stream runs,
    then one of ``client`` (the client closed), ``keepalive``, ``inactivity_timeout``,
    ``ip_limit``, ``close_fault`` (abrupt close fault), ``server_stop``, ``kick``, ``error``.
    """

    receiver_id: str
    ts: int
    path: str
    t0_gps_ns: int
    sample_rate: float
    tuned_hz: float
    low_cut: float
    high_cut: float
    little_endian: bool
    frames_sent: int
    seqs_skipped: list[int]
    close_reason: str | None
    frames: list[bytes] | None
    # extras beyond the agreed API (all defaulted)
    stream_seed: int = 0
    t_ref_gps_ns: int = 0
    loop_frames: int | None = None
    mode: str = "iq"
    channel: int = -1
    #: malformed frames sent by the garbage fault (not counted in ``frames_sent``)
    garbage_sent: int = 0
    retunes: list[tuple[int, float, float, float, str]] = field(default_factory=list)
    #: the AGC / manual gain settings the client asked for (the latest)
    agc: AgcSettings = field(default_factory=AgcSettings)


@dataclass
class SimCore:
    """What every session of one server shares."""

    scene: Scene
    speed: float
    watchdogs: Watchdogs
    loop_frames: int | None
    record_frames: bool
    seed_streams: bool
    t_ref_gps_ns: int = 0
    streams: list[StreamRecord] = field(default_factory=list)
    sessions: set[Session] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: (GPS ns, time.monotonic()) at which the receivers' clock was read from the host's
    clock_anchor: tuple[int, float] = (0, 0.0)
    #: with ``loop_frames``: the looped frames as sent, shared by every stream of a receiver at the
    #: same tuning, passband, AGC and sample format (a load test's thousands of streams would
    #: otherwise each synthesise their own first frames, as a burst at their start)
    loop_cache: dict[tuple[Any, ...], dict[int, tuple[bytes, int, bool]]] = field(default_factory=dict)

    def clock_ns(self) -> int:
        """The receivers' GPS clock now: the host's at speed 1; at speed s it runs s times
        faster than the host's from the server's start, for every stream alike, so time never
        goes back across streams and reconnects (as on real receivers)."""
        gps, mono = self.clock_anchor
        if not gps:
            return gps_now_ns()
        return gps + round((time.monotonic() - mono) * self.speed * NS)

    def advance(self, seconds: float) -> None:
        """Move the receivers' clock ``seconds`` forward at once (time passing between
        sessions of a simulated campaign; streams already running keep their own time base)."""
        gps, mono = self.clock_anchor
        if not gps:
            gps, mono = gps_now_ns(), time.monotonic()
        self.clock_anchor = (gps + round(seconds * NS), mono)

    def spawn(self, coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a coroutine function in a task that is kept alive until done."""
        task = asyncio.get_running_loop().create_task(coro())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@dataclass
class ReceiverHub:
    """Per-receiver state: channels in use, duplicate-ts guard and fault counters."""

    rx: SimReceiver
    index: int
    port: int = 0
    started: float = 0.0
    #: SND channel number -> session
    channels: dict[int, Session] = field(default_factory=dict)
    #: (client ip, ts) of the open SND sockets
    snd_ts: set[tuple[str, int]] = field(default_factory=set)
    #: SND connections given a channel so far (the next stream_seed)
    accepted: int = 0
    #: SND sockets that arrived (refused ones included) and the most channels in use at once
    arrivals: int = 0
    max_in_use: int = 0
    busy_given: int = 0
    close_given: int = 0
    stall_given: int = 0

    def free_channel(self) -> int | None:
        for ch in range(self.rx.rx_chans):
            if ch not in self.channels:
                return ch
        return None

    def take(self, counter: Literal["busy_given", "close_given", "stall_given"], limit: int) -> bool:
        """Whether this connection gets a counted fault (first ``limit`` ones; -1 = always)."""
        used = getattr(self, counter)
        if limit == -1 or used < limit:
            setattr(self, counter, used + 1)
            return True
        return False


_HDR16 = struct.Struct(">BBH")
_HDR64 = struct.Struct(">BBQ")


def ws_binary_header(size: int) -> bytes:
    """RFC 6455 header of an unmasked, final binary frame carrying ``size`` bytes."""
    if size < 126:
        return bytes((0x82, size))
    if size < 65536:
        return _HDR16.pack(0x82, 126, size)
    return _HDR64.pack(0x82, 127, size)


# ---- sscanf ----------------------------------------------------------------------------------

_WS = re.compile(r"\s*")
_CONV = {
    "d": re.compile(r"[+-]?\d+"),
    "f": re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE),
    "s": re.compile(r"\S+"),
}
_FMT_TOKEN = re.compile(r"%(\d*)m?l?([dfs])|(\s+)|([^%\s]+)")


@functools.lru_cache(maxsize=None)
def _compile(fmt: str) -> tuple[tuple[str, str, int], ...]:
    ops: list[tuple[str, str, int]] = []
    for m in _FMT_TOKEN.finditer(fmt):
        width, conv, space, lit = m.groups()
        if conv:
            ops.append(("conv", conv, int(width) if width else 0))
        elif space:
            ops.append(("ws", "", 0))
        else:
            ops.append(("lit", lit, 0))
    return tuple(ops)


def scanf(fmt: str, text: str) -> list[int | float | str]:
    """C ``sscanf`` subset (``%d``, ``%f``/``%lf``, ``%Ns``/``%Nms``): the fields converted before
    the first mismatch, so ``len(result)`` is what the server's ``n`` would be."""
    out: list[int | float | str] = []
    pos = 0
    for kind, arg, width in _compile(fmt):
        if kind == "ws":
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            continue
        if kind == "lit":
            if not text.startswith(arg, pos):
                break
            pos += len(arg)
            continue
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        m = _CONV[arg].match(text, pos)
        if m is None:
            break
        token = m.group()
        if arg == "s" and width:
            token = token[:width]
        pos += len(token)
        out.append(int(token) if arg == "d" else float(token) if arg == "f" else token)
    return out


# ---- sessions ------------------------------------------------------------------------------

AUTH_FMT = "SET auth t=%16ms p=%256ms ipl=%256ms"
#: commands accepted after auth and ignored by every stream type
_COMMON_NOOPS = (
    "SET geo=",
    "SET geoloc=",
    "SET geojson=",
    "SET OVERRIDE",
    "SERVER DE CLIENT",
    "SET browser=",
    "SET need_status=",
    "SET GET_USERS",
    "SET STATS_UPD",
    "SET require_id=",
    "SET nocache=",
    "SET inactivity_ack",
    "SET notify_msg",
    "SET pref_",
)


class Session:
    """Behaviour common to SND and W/F connections (``rx/rx_cmd.cpp``)."""

    stream_name = "SND"

    def __init__(self, core: SimCore, hub: ReceiverHub, ws: ServerConnection, path: str, ts: int) -> None:
        self.core = core
        self.hub = hub
        self.rx = hub.rx
        self.ws = ws
        self.path = path
        self.ts = ts
        addr = ws.remote_address
        self.remote_ip: str = str(addr[0]) if addr else "127.0.0.1"
        self.loop = asyncio.get_running_loop()
        self.arrival = self.loop.time()
        self.keepalive_time = self.arrival
        self.keepalive_count = 0
        self.auth = False
        self.tlimit_exempt = False
        self.force_not_local = False
        self.ident = ""
        self.channel = -1
        self.closing: str | None = None
        #: the server's pacing task calls :meth:`pump` while this is set, once the loop time
        #: reaches ``next_due``
        self.pumping = False
        self.next_due = 0.0

    # ---- output ---------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Write one binary WebSocket frame now (no await); False once the connection is going away.

        Server frames are unmasked and unfragmented, so the frame is assembled here and written to
        the transport directly: websockets flushes whatever it queues (close, pong) synchronously,
        so nothing can be reordered, and the state check keeps data from following a close frame.
        This is the hot path of the simulator (one call per SND frame).
        """
        ws = self.ws
        transport = ws.transport
        if ws.protocol.state is not State.OPEN or transport.is_closing():
            return False
        transport.write(ws_binary_header(len(data)) + data)
        return True

    def send_msg(self, *pairs: tuple[str, object | None]) -> None:
        self.send(encode_msg(pairs))

    def congested(self) -> bool:
        return self.ws.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT

    def close(self, reason: str, *msgs: tuple[str, object | None]) -> None:
        """Send ``msgs`` (one MSG frame each), then close the WebSocket cleanly."""
        if self.closing is not None:
            return
        self.closing = reason
        self.pumping = False
        for pair in msgs:
            self.send_msg(pair)
        logger.info("%s %s %s: closing (%s)", self.rx.id, self.stream_name, self.ts, reason)
        self.core.spawn(self.ws.close)

    def abort(self, reason: str) -> None:
        """Drop the TCP connection without a close frame."""
        if self.closing is not None:
            return
        self.closing = reason
        self.pumping = False
        logger.info("%s %s %s: aborting connection (%s)", self.rx.id, self.stream_name, self.ts, reason)
        self.ws.transport.abort()

    # ---- lifecycle --------------------------------------------------------------------------
    def on_open(self) -> None:
        """The connection was accepted (a channel is allocated for SND)."""

    def on_closed(self) -> None:
        """The connection is gone."""
        if self.closing is None:
            self.closing = "client"
        self.pumping = False

    @property
    def complete(self) -> bool:
        """Whether the stream's working command set has arrived."""
        return self.auth

    def pump(self, now: float, until: float = math.inf) -> None:
        """Send whatever frames are due at loop time ``now``, stopping early (the rest stays due)
        once ``time.perf_counter()`` passes ``until``."""

    def check_watchdogs(self, now: float) -> None:
        if self.closing is not None:
            return
        wd = self.core.watchdogs
        idle = now - self.keepalive_time
        if idle > (wd.keepalive_timeout_s if self.auth else wd.auth_timeout_s):
            if self.auth:
                self.close("keepalive")
            else:
                self.close("password_timeout", ("password_timeout", None))
            return
        if not self.complete:
            if self.stream_name == "SND" and self.keepalive_count > wd.hang_keepalives:
                self.close("hang")
            elif now - self.arrival > wd.incomplete_s:
                self.close("incomplete")

    # ---- commands ----------------------------------------------------------------------------
    def on_text(self, text: str) -> None:
        if self.closing is not None:
            return
        cmd = text[:-1] if text.endswith("\n") else text
        if cmd == "SET keepalive":
            self.keepalive_time = self.loop.time()
            self.keepalive_count += 1
            return
        if cmd.startswith("SET options"):
            vals = scanf("SET options=%d", cmd)
            if vals and int(vals[0]) & 1:
                self.force_not_local = True
            return
        if cmd.startswith("SET auth"):
            self._auth(cmd)
            return
        if not self.auth:
            logger.info("%s %s %s: command before auth, kicked", self.rx.id, self.stream_name, self.ts)
            self.close("kick")
            return
        if cmd.startswith("SET ident_user="):
            self.ident = urllib.parse.unquote(cmd[len("SET ident_user="):])
            return
        if cmd.startswith(_COMMON_NOOPS):
            return
        if not self.on_command(cmd):
            logger.debug("%s %s %s: ignored command %.80r", self.rx.id, self.stream_name, self.ts, cmd)

    def on_command(self, cmd: str) -> bool:
        """A stream-specific command after auth; False if unknown."""
        return False

    def _auth(self, cmd: str) -> None:
        vals = scanf(AUTH_FMT, cmd)
        kind = str(vals[0]) if vals else None
        pwd: str | None = str(vals[1]) if len(vals) >= 2 else None
        ipl: str | None = str(vals[2]) if len(vals) >= 3 else None
        if pwd == "#":
            pwd = None
        if kind not in ("kiwi", "prot", "admin"):
            self.send_msg(("badp", 1))  # the socket stays open for another SET auth
            return
        pwd = urllib.parse.unquote(pwd) if pwd is not None else None
        ipl = urllib.parse.unquote(ipl) if ipl is not None else None
        rx = self.rx
        faults = rx.faults
        if ipl and rx.tlimit_password and ipl.lower() == rx.tlimit_password.lower():
            self.tlimit_exempt = True
        logger.debug(
            "%s %s %s: auth t=%s password given=%s ipl given=%s",
            rx.id, self.stream_name, self.ts, kind, pwd is not None, ipl is not None,
        )
        snd = self.stream_name == "SND"
        if snd and faults.ip_limit_after_s == 0 and not self.tlimit_exempt:
            self.close("ip_limit", ("ip_limit", f"{status.minutes(0)},{self.remote_ip}"))
            return
        if faults.badp:
            badp = faults.badp
        elif kind == "admin":
            badp = 4  # no admin password set and not a local connection
        elif not rx.password:
            badp = 0
        elif pwd is None:
            badp = 1
        else:
            badp = 0 if pwd.lower() == rx.password.lower() else 1
        if snd:
            self.send_msg(("client_public_ip", self.remote_ip))
        self.send_msg(("rx_chans", rx.rx_chans))
        self.send_msg(("chan_no_pwd", 0))
        self.send_msg(("chan_no_pwd_true", 0))
        if badp == 0 and snd:
            self.send_msg(("is_local", f"{self.channel},0,{int(self.tlimit_exempt)}"))
        self.send_msg(("max_camp", status.MAX_CAMP))
        if badp == 5:  # v1.711 kicks only this one (rx_cmd.cpp: badp == 5 -> conn->kick)
            self.close("badp", ("badp", badp))
            return
        if badp != 0:  # "try again": the socket stays open until password_timeout
            self.send_msg(("badp", badp))
            return
        self.send_msg(("badp", 0))
        if not self.auth:
            self.auth = True
            self.send(encode_msg(status.version_pairs(rx)))
            self.send_msg(("load_cfg", status.load_cfg(rx)))
            self.send_msg(("load_dxcfg", status.load_dxcfg()))
            self.send_msg(("load_dxcomm_cfg", status.load_dxcomm_cfg()))
            self.on_authenticated()

    def on_authenticated(self) -> None:
        """First successful auth: stream-specific setup MSGs."""
