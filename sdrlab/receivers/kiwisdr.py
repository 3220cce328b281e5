"""KiwiSDR client: the SND stream in IQ mode (protocol reference sections 1-8 and 16).

One :class:`KiwiReceiver` per station; :meth:`KiwiReceiver.capture` runs one asyncio task that
connects, authenticates, tunes, receives frames until the requested number of samples is in, and
applies the retry policy of section 8 (busy: back off; redirect: follow; close, stall or
inactivity kick: reconnect as a new segment; bad password, down, ip limit: stop with a typed error).
Whatever arrived before an error is kept: every :class:`~sdrlab.errors.ReceiverError` raised here
carries the partial :class:`Capture` in ``partial``.

The per-frame path only checks the frame and appends its header and sample bytes to two
bytearrays; parsing, gap filling and the GPS time fit run once per segment, vectorised
(:func:`sdrlab.capture.build_segment`).  :class:`Capture`, :class:`Segment` and
:class:`ReceiverInfo` live in :mod:`sdrlab.capture` and are re-exported here for older callers.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import os
import secrets
import threading
import time
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import numpy as np

from .. import timing
from .._version import __version__
from ..capture import build_receipt_segment
# re-exported (the ``as`` form) for the code that still imports them from here
from ..capture import (
    HEADER_DTYPE as HEADER_DTYPE, Capture as Capture, ReceiverInfo as ReceiverInfo, Segment as Segment,
    build_segment as build_segment,
)
from ..errors import (
    ReceiverAuthError,
    ReceiverBusy,
    ReceiverDown,
    ReceiverError,
    ReceiverLimitError,
    ReceiverProtocolError,
    ReceiverStalled,
    ReceiverUnreachable,
)
from . import kiwiwire as kw
from ._hooks import StopHooks, jitter
from ._ws import OP_BINARY, HandshakeError, WebSocketClient
from .window import Window

log = logging.getLogger(__name__)

#: frames without a GPS stamp after which a connection reports to the session's window that it
#: has no GPS time (a Kiwi stamps every frame but the first once it has a fix)
UNSTAMPED_FRAMES = 8

_BADP = {
    1: "bad password, or all password-free channels are busy",
    2: "receiver still determining its local IP",
    3: "admin not allowed from this IP",
    4: "no admin password set",
    5: "no multiple connections from the same IP allowed",
    6: "database update in progress",
    7: "another admin connection is already open",
}

_ts_lock = threading.Lock()
# a random start per process: worker processes with neighbouring pids never share ts values
_ts_counter = itertools.count(secrets.randbits(32) ^ os.getpid())


def next_ts() -> int:
    """A socket id (``<ts>`` in ``/<ts>/SND``) unique within this process."""
    with _ts_lock:
        return next(_ts_counter) & 0xFFFFFFFF


@dataclass(frozen=True)
class KiwiOptions:
    """Client settings.  Secrets are excluded from repr."""

    password: str = field(default="", repr=False)
    tlimit_password: str = field(default="", repr=False)
    user: str = "sdrlab"
    low_cut: float = -5000.0
    high_cut: float = 5000.0
    #: agc, hang, thresh, slope, decay, manGain.  AGC off by default so that power is comparable
    #: across time and receivers (measurements, not listening).
    agc: tuple[int, int, int, int, int, int] = (0, 0, -100, 6, 1000, 50)
    little_endian: bool = False
    connect_timeout: float = 15.0
    #: from TCP connect to the first SND frame
    handshake_timeout: float = 20.0
    #: no frame for this long while streaming = stall
    read_timeout: float = 10.0
    keepalive_interval: float = 1.0
    connect_retries: int = 3
    connect_delay: float = 2.0
    busy_retries: int = 3
    busy_delay: float = 15.0
    #: consecutive reconnects whose segment was short (< ``long_segment_s``) before giving up;
    #: a long segment resets the count, so periodic inactivity kicks never end a long capture
    reconnect_retries: int = 5
    reconnect_delay: float = 2.0
    long_segment_s: float = 5.0
    max_redirects: int = 3
    #: bad frames tolerated per connection before the receiver is declared broken
    max_bad_frames: int = 5
    #: a sequence gap longer than this (frames) starts a new segment instead of being zero-filled
    max_gap_frames: int = 2400
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S

    def backoff(self, base: float, attempt: int) -> float:
        return float(min(base * (2 ** max(attempt - 1, 0)), 8 * base))


#: compressed (audio) SND frames tolerated after our IQ setup and before the first IQ frame (an
#: emulation's default-mode frames still in flight, 50 a second); beyond: the server is sending garbage
PRE_TUNE_MAX = 1000


# ---- outcomes of one connection (internal) ---------------------------------------------------
class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _ConnectFailed(Exception):
    pass


class _SegmentEnded(Exception):
    """The server closed, kicked or stalled after frames had arrived: reconnect, new segment."""


class _Complete(Exception):
    pass


# ---- channel accounting: never more connections to one receiver than it has channels -------
class _ChannelGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, int], int] = {}

    def try_acquire(self, key: tuple[str, int], limit: int) -> bool:
        with self._lock:
            if self._used.get(key, 0) >= limit:
                return False
            self._used[key] = self._used.get(key, 0) + 1
            return True

    def free(self, host: str, port: int, limit: int) -> bool:
        """Whether a channel of ``host:port`` is free now."""
        with self._lock:
            return self._used.get((host, port), 0) < limit

    def release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._used[key] -= 1
            if not self._used[key]:
                del self._used[key]

    @asynccontextmanager
    async def hold(self, host: str, port: int, limit: int) -> AsyncIterator[None]:
        key = (host, port)
        while not self.try_acquire(key, limit):
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            self.release(key)


CHANNELS = _ChannelGate()


# ---- the connection --------------------------------------------------------------------------
class _Connection:
    """One WebSocket to ``/<ts>/SND``: protocol state, frame accumulation, outcome."""

    def __init__(self, rx: KiwiReceiver, cap: Capture, host: str, port: int, want_samples: int | None) -> None:
        self.rx = rx
        self.opt = rx.options
        self.cap = cap
        self.host, self.port = host, port
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        # a connection lost during the WebSocket upgrade ends ``done`` too, but that failure is
        # raised from the upgrade (never awaited here): mark it seen, or asyncio logs "Future
        # exception was never retrieved" for every refused connection
        self.done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self.ws: WebSocketClient | None = None
        info = cap.info or ReceiverInfo(host, port)
        info.host, info.port = host, port
        self.info = info
        self._want = want_samples  # samples still needed (None until the rate is known)
        self._audio_rate = 0
        self._sample_rate = 0.0
        self._setup_sent = False
        self._authed = False
        self._hdrs = bytearray()
        self._data = bytearray()
        self._first_seq = -1
        self._last_seq = -1
        self._frames = 0
        self._bad = 0
        self._last_frame_t = 0.0
        self._last_ka = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._started = self.loop.time()
        self._disabled_reason = ""
        self._min_behind = 0.0  # min over frames of arrival - (seq - first_seq) * frame period
        self._behind = 0.0
        self._frame_period = 0.0
        #: frames without the GPS block (KiwiSDR emulations): (seq, flags, smeter, samples, receipt ns)
        self._headerless = False
        self._rx_meta: list[tuple[int, int, int, int, int]] = []
        self._rx_samples = 0
        self._pre_tune = 0
        #: the session's common window (see :mod:`.window`): until its start is known the frames
        #: are held; then those from before it are dropped, and the connection ends at its end
        self._window = rx.window
        self._in_window = rx.window is None
        self._reported = False
        self._unstamped = 0
        self._pre_window = 0
        #: streaming (``rx.sink`` set): the frames held are handed over as a piece every
        #: ``rx.spill_frames`` frames; what this segment handed over so far
        self._sink = rx.sink
        self._spill_at = max(1, rx.spill_frames)
        self._spilled = 0
        self._spilled_frames = 0
        self._spilled_missing = 0
        self._piece_first = True
        self._first_piece: Segment | None = None

    # -- lifecycle --
    async def run(self) -> None:
        ts = next_ts()
        path = f"/{ts}/SND"
        try:
            _t, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: WebSocketClient(self.host, self.port, path, self._on_message, self._on_close,
                                            user_agent=f"sdrlab/{self.rx.version}"),
                    self.host,
                    self.port,
                ),
                self.opt.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise _ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from None
        self.ws = proto
        try:
            await asyncio.wait_for(asyncio.shield(proto.opened), self.opt.connect_timeout)
        except HandshakeError as exc:
            proto.abort()
            if exc.location and 300 <= exc.status < 400:
                raise _Redirect(exc.location) from None
            raise _ConnectFailed(f"WebSocket upgrade to {self.host}:{self.port} failed: {exc}") from None
        except asyncio.TimeoutError:
            proto.abort()
            raise _ConnectFailed(f"WebSocket upgrade to {self.host}:{self.port} timed out") from None
        # auth first: only keepalive/options may precede it (reference section 2, step 3)
        enc = functools.partial(urllib.parse.quote, safe="")
        if self.opt.tlimit_password:
            pw = enc(self.opt.password) if self.opt.password else "#"
            self._send(f"SET auth t=kiwi p={pw} ipl={enc(self.opt.tlimit_password)}")
        else:
            self._send(f"SET auth t=kiwi p={enc(self.opt.password)}")
        self._send(f"SET ident_user={self.opt.user}")
        self._schedule_tick()
        try:
            await self.done
        finally:
            if self._timer:
                self._timer.cancel()
            if not proto.closing:
                proto.close()
            self._finish_segment()
            # hold the channel until the receiver has seen the socket go (bounded wait)
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), 2.0)
            except asyncio.TimeoutError:
                proto.abort()

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)
        if self.ws is not None and not self.ws.closing:
            if isinstance(exc, _SegmentEnded) and "stalled" in str(exc):
                self.ws.abort()
            else:
                self.ws.close()

    def _send(self, text: str) -> None:
        if self.ws is not None:
            self.ws.send_text(text)

    # -- timers: keepalive about every second, stall and handshake watchdogs --
    def _schedule_tick(self) -> None:
        self._timer = self.loop.call_later(min(self.opt.keepalive_interval, 0.5), self._tick)

    def _tick(self) -> None:
        if self.done.done():
            return
        if self.rx.stop_requested():
            self.cap.events.append("stopped by request")
            self._finish()  # a normal end: the segment so far is kept, no reconnect
            return
        now = self.loop.time()
        if self._setup_sent and now - self._last_ka >= self.opt.keepalive_interval:
            self._send("SET keepalive")
            self._last_ka = now
        if self._frames:
            if self.rx.on_progress is not None:
                self._report_progress()
            if now - self._last_frame_t > self.opt.read_timeout:
                self._finish(_SegmentEnded(f"stalled: no frame for {self.opt.read_timeout:g} s"))
                return
        elif now - self._started > self.opt.handshake_timeout:
            self._finish(_ConnectFailed(
                f"no IQ data from {self.host}:{self.port} within {self.opt.handshake_timeout:g} s"
            ))
            return
        self._schedule_tick()

    def _report_progress(self) -> None:
        assert self.rx.on_progress is not None
        try:
            rate = self._sample_rate or (self.cap.info.sample_rate if self.cap.info else 0.0) or 12000.0
            got = (self._spilled + self._rx_samples) if self._headerless else self._frames * kw.SAMPLES_PER_FRAME
            self.rx.on_progress(self.cap.n_samples + got, float(rate))
        except Exception:  # a display must never cost the capture
            log.debug("progress callback failed", exc_info=True)

    # -- messages --
    def _on_close(self, code: int | None, reason: str, exc: BaseException | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        what = f"closed by the receiver (code {code})" if code else "connection lost"
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
            what = f"{what}: {exc}"
        if self._frames:
            self._finish(_SegmentEnded(what))
        else:
            self._finish(_ConnectFailed(f"{self.host}:{self.port} {what} before any IQ data"))

    def _on_message(self, op: int, msg: memoryview) -> None:
        if self.done.done():
            return
        if op != OP_BINARY:
            self._bad_frame(f"text frame from the receiver ({len(msg)} bytes); KiwiSDR sends binary only")
            return
        tag = bytes(msg[:3])
        if tag == b"SND":
            self._on_snd(msg)
        elif tag == b"MSG":
            try:
                self._on_msg(kw.parse_msg(msg[3:]))
            except ValueError as exc:
                self._finish(ReceiverProtocolError(f"malformed MSG from the receiver: {exc}"))
            except (ReceiverError, _Redirect, _SegmentEnded) as exc:
                # no traceback: it would pin this frame's view of the receive buffer
                self._finish(exc.with_traceback(None))
        elif tag in (b"W/F", b"EXT", b"DAT"):
            pass
        else:
            self._bad_frame(f"frame with unknown tag {bytes(tag)!r}")

    def _on_snd(self, msg: memoryview) -> None:
        if len(msg) != kw.IQ_FRAME_SIZE or self._headerless:
            self._on_other_snd(msg)
            return
        flags = msg[3]
        if flags & kw.FLAG_COMPRESSED:
            self._bad_frame("ADPCM-compressed SND frame (flag 0x10) in IQ mode")
            return
        seq = int.from_bytes(msg[4:8], "little")
        now = self.loop.time()
        if not self._in_window and not self._windowing(self._stamp_ns(msg), now):
            return
        if self._first_seq < 0:
            self._first_seq = seq
            self._min_behind = now
        elif seq <= self._last_seq:
            self.cap.events.append(f"duplicate or out-of-order frame seq {seq} dropped")
            return
        elif seq - self._last_seq - 1 > self.opt.max_gap_frames:
            self._finish_segment()
            self.cap.events.append(f"gap of {seq - self._last_seq - 1} frames: new segment")
            self._first_seq = seq
            self._min_behind = now
        self._last_seq = seq
        behind = now - (seq - self._first_seq) * self._frame_period
        if behind < self._min_behind:
            self._min_behind = behind
        self._behind = behind
        self._hdrs += msg[: kw.HEADER_SIZE]
        self._data += msg[kw.HEADER_SIZE :]
        self._frames += 1
        if self._sink is not None and self._in_window and len(self._hdrs) >= self._spill_at * kw.HEADER_SIZE:
            self._spill()
        self._last_frame_t = now
        if now - self._last_ka >= self.opt.keepalive_interval:
            self._send("SET keepalive")
            self._last_ka = now
        if self._in_window and self._want is not None and (seq - self._first_seq + 1) * kw.SAMPLES_PER_FRAME >= self._want:
            self._finish()

    def _on_other_snd(self, msg: memoryview) -> None:
        """A SND frame that is not a 2068-byte IQ frame: before our tune (a KiwiSDR emulation
        streams its default mode at once: ignored), IQ without the GPS block (UberSDR's KiwiSDR
        emulation: kept, timed by receipt), or garbage."""
        flags = msg[3]
        if not self._setup_sent:
            self._pre_tune += 1
            return
        if flags & kw.FLAG_COMPRESSED and not self._frames and not self._headerless and self._pre_tune < PRE_TUNE_MAX:
            # compressed audio still in flight from before the server applied our IQ mode (an
            # emulation streaming its default mode: hundreds of frames on a loaded host): not ours
            self._pre_tune += 1
            return
        body = len(msg) - kw.AUDIO_HEADER_SIZE
        plain = not flags & (kw.FLAG_STEREO | kw.FLAG_COMPRESSED)
        if not (plain and body > 0 and body % 4 == 0 and (self._headerless or not self._frames)):
            self._bad_frame(f"SND frame of {len(msg)} bytes, expected {kw.IQ_FRAME_SIZE} (IQ mode)")
            return
        if not self._headerless:
            self._headerless = True
            self.cap.events.append(
                "IQ frames without the GPS block (a server posing as a KiwiSDR, e.g. UberSDR's emulation): "
                "data kept, timed by receipt on this host, not by GPS")
        seq = int.from_bytes(msg[4:8], "little")
        n = body // 4
        if not self._in_window and not self._windowing(None, self.loop.time(), n):
            return
        if self._rx_meta and seq <= self._rx_meta[-1][0]:
            self.cap.events.append(f"duplicate or out-of-order frame seq {seq} dropped")
            return
        now = self.loop.time()
        if not self._rx_meta:
            self._min_behind = now
        behind = now - self._rx_samples / (self._sample_rate or 12000.0)
        self._min_behind = min(self._min_behind, behind)
        self._behind = behind
        self._rx_meta.append((seq, flags, int.from_bytes(msg[8:10], "big"), n, time.time_ns()))
        self._data += msg[kw.AUDIO_HEADER_SIZE:]
        self._rx_samples += n
        self._frames += 1
        if self._sink is not None and self._in_window and len(self._rx_meta) >= self._spill_at:
            self._spill()
        self._last_frame_t = now
        if now - self._last_ka >= self.opt.keepalive_interval:
            self._send("SET keepalive")
            self._last_ka = now
        if self._in_window and self._want is not None and self._spilled + self._rx_samples >= self._want:
            self._finish()

    def _stamp_ns(self, msg: memoryview) -> int | None:
        """GPS ns of a GPS-block frame's first sample from its stamp (week from the host clock);
        None where it has none (no fix yet)."""
        last = msg[10]
        gsec = int.from_bytes(msg[12:16], "little")
        gnsec = int.from_bytes(msg[16:20], "little")
        if last <= kw.GPS_LAST_CAP and (gsec or gnsec) and gsec < timing.WEEK_S and gnsec < timing.NS:
            week = timing.gps_week_for(float(gsec), timing.gps_now_ns(self.opt.gps_utc_offset_s))
            return (week * timing.WEEK_S + gsec) * timing.NS + gnsec
        return None

    def _windowing(self, t_ns: int | None, now: float, n: int = kw.SAMPLES_PER_FRAME) -> bool:
        """Whether to keep a frame (first sample at ``t_ns`` GPS ns, None = no GPS time) while the
        window is not open yet.  Before its start is known: report the first frame and hold
        everything.  Once known: drop what is held from before the start, then frames ending
        before it (the connection waits; the watchdogs see it alive); the first frame that
        reaches into it opens the window, and from the first sample kept the samples up to the
        end are wanted.  A frame at or after the end finishes the connection."""
        w = self._window
        assert w is not None
        if w.start_ns is None:
            if not self._reported:
                # a Kiwi's first frame carries no stamp, and none come before its GPS has a
                # fix: the first stamped frame is reported, or None after a few without
                if t_ns is not None or self._headerless or self._unstamped >= UNSTAMPED_FRAMES:
                    self._reported = True
                    w.arrived(self.cap.station, t_ns)
                else:
                    self._unstamped += 1
            return True
        start, end = w.start_ns, w.start_ns + w.duration_ns
        fs = self._sample_rate or 12000.0
        held = self._trim_held(start, fs)
        if held is None and t_ns is None and not self._headerless and self._unstamped < UNSTAMPED_FRAMES:
            # a new connection's first frame has no stamp: hold it, the next one places it
            self._unstamped += 1
            return True
        if held is None and t_ns is not None and t_ns + round(n / fs * 1e9) <= start:
            self._pre_window += 1
            self._started = now  # alive: the handshake watchdog restarts from here
            if self._setup_sent and now - self._last_ka >= self.opt.keepalive_interval:
                self._send("SET keepalive")
                self._last_ka = now
            return False
        first = held if held is not None else t_ns
        if first is not None and first >= end:
            waited = " (it waited for a free channel of the receiver)" if self.rx.waited_for_channel else ""
            self.cap.events.append(f"the session's window ended before this connection delivered a frame{waited}")
            self._finish()
            return False
        self._in_window = True
        span = (end - first) / 1e9 if first is not None else w.duration_s
        self._want = max(1, math.ceil(span * fs))
        if self._want <= self._held_samples():  # the start came late: the window is all held
            if not self._headerless:
                keep = math.ceil(self._want / kw.SAMPLES_PER_FRAME)
                dropped = len(self._hdrs) // kw.HEADER_SIZE - keep
                del self._hdrs[keep * kw.HEADER_SIZE:]
                del self._data[keep * kw.SAMPLES_PER_FRAME * 4:]
                self._frames -= dropped
            self._finish()
            return False
        return True

    def _held_samples(self) -> int:
        return self._rx_samples if self._headerless else len(self._hdrs) // kw.HEADER_SIZE * kw.SAMPLES_PER_FRAME

    def _trim_held(self, start: int, fs: float) -> int | None:
        """Drop the frames held from before ``start``; the GPS time of the first one left (None:
        nothing left, or it has no GPS time).  Frames without GPS time (no fix yet; receipt-timed
        receivers) are dropped whole: the capture starts when the start became known."""
        if self._headerless:
            self._rx_meta = []
            self._data.clear()
            self._rx_samples = 0
            self._frames = 0
            return None
        if not self._hdrs:
            return None
        h = np.frombuffer(bytes(self._hdrs), dtype=HEADER_DTYPE)
        gsec = h["gpssec"].astype(np.int64)
        gnsec = h["gpsnsec"].astype(np.int64)
        has = ((gsec != 0) | (gnsec != 0)) & (gsec < timing.WEEK_S) & (gnsec < timing.NS) & (h["last_gps"] <= kw.GPS_LAST_CAP)
        t = np.full(h.shape[0], -1, dtype=np.int64)
        if has.any():
            host = timing.gps_now_ns(self.opt.gps_utc_offset_s)
            week = timing.gps_week_for(float(gsec[np.argmax(has)]), host)
            t[has] = (week * timing.WEEK_S + gsec[has]) * timing.NS + gnsec[has]
        early = ~has | (t + round(kw.SAMPLES_PER_FRAME / fs * 1e9) <= start)
        keep_from = int(np.flatnonzero(early)[-1]) + 1 if early.any() else 0
        if keep_from:
            del self._hdrs[: keep_from * kw.HEADER_SIZE]
            del self._data[: keep_from * kw.SAMPLES_PER_FRAME * 4]
            self._pre_window += keep_from
            self._frames -= keep_from
        if keep_from >= h.shape[0]:
            self._first_seq = -1
            return None
        self._first_seq = int(h["seq"][keep_from])
        return int(t[keep_from]) if has[keep_from] else None

    def _bad_frame(self, what: str) -> None:
        self._bad += 1
        self.cap.bad_frames += 1
        log.debug("%s: %s", self.cap.station, what)
        if self._bad >= self.opt.max_bad_frames:
            self._finish(ReceiverProtocolError(f"receiver sends garbage: {what} ({self._bad} bad frames)"))

    @staticmethod
    def _number(key: str, val: str | None, kind: type = float, positive: bool = False) -> Any:
        """A numeric MSG value, or ValueError naming the key (finite; > 0 when ``positive``)."""
        try:
            x = kind(val)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={val!r} is not a number") from None
        if isinstance(x, float) and not math.isfinite(x) or positive and x <= 0:
            raise ValueError(f"{key}={val!r} is out of range")
        return x

    def _on_msg(self, pairs: list[tuple[str, str | None]]) -> None:
        info = self.info
        num = self._number
        for key, val in pairs:
            if key == "reason_disabled":
                self._disabled_reason = val or ""
        for key, val in pairs:
            if key == "too_busy":
                raise ReceiverBusy(f"all {val} channels busy at {self.host}:{self.port}")
            if key == "redirect":
                raise _Redirect(val or "")
            if key == "badp":
                code = num(key, val, int)
                if code:
                    raise ReceiverAuthError(f"login refused (badp={code}: {_BADP.get(code, 'unknown')})")
                self._authed = True
            elif key == "down":
                raise ReceiverDown(f"receiver is down (down={val}: {self._down_reason(val)})")
            elif key == "ip_limit":
                raise ReceiverLimitError(f"24 h per-IP time limit reached (ip_limit={val})")
            elif key == "inactivity_timeout":
                raise _SegmentEnded(f"inactivity timeout ({val} min)")
            elif key == "password_timeout":
                raise _SegmentEnded("password timeout (the receiver did not see our auth)")
            elif key == "exclusive_use":
                raise ReceiverBusy("receiver is in exclusive use")
            elif key == "wb_only":
                raise ReceiverProtocolError("receiver serves wideband clients only (out of scope)")
            elif key == "camp_disconnect":
                raise _SegmentEnded("camp disconnected")
            elif key == "audio_rate":
                self._audio_rate = int(num(key, val, float, positive=True))
                info.audio_rate = self._audio_rate
                self._send(f"SET AR OK in={self._audio_rate} out=44100")
            elif key == "sample_rate":
                self._sample_rate = num(key, val, float, positive=True)
                info.sample_rate = self._sample_rate
            elif key == "rx_chans":
                info.rx_chans = num(key, val, int)
            elif key == "version_maj" and val:
                info.version = f"{val}.{info.version.split('.')[1] if '.' in info.version else ''}"
            elif key == "version_min" and val:
                info.version = f"{info.version.split('.')[0] if info.version else ''}.{val}"
            elif key == "freq_offset":
                info.freq_offset_khz = num(key, val, float)
            elif key == "load_cfg" and val:
                self._on_cfg(val)
        if self._sample_rate and self._audio_rate and not self._setup_sent:
            self._setup()

    def _down_reason(self, val: str | None) -> str:
        kind = {"0": "disabled by its admin", "1": "update in progress", "2": "backup in progress"}
        reason = self._disabled_reason
        return kind.get(val or "", "unknown") + (f", {reason!r}" if reason else "")

    def _on_cfg(self, text: str) -> None:
        try:
            cfg = json.loads(text)
        except ValueError:
            log.debug("%s: undecodable load_cfg ignored", self.cap.station)
            return
        if not isinstance(cfg, dict):
            return
        pos = kw.parse_rx_gps(cfg)
        if pos is not None:
            self.info.position = pos
        for key, attr in (("rx_name", "name"), ("rx_antenna", "antenna")):
            if isinstance(cfg.get(key), str):
                setattr(self.info, attr, urllib.parse.unquote(cfg[key]))
        asl = cfg.get("rx_asl")
        if isinstance(asl, (int, float)) and not isinstance(asl, bool):
            self.info.altitude = float(asl)

    def _setup(self) -> None:
        """The command set once both rates are known (freq_offset has arrived by then)."""
        opt = self.opt
        freq_khz = self.cap.frequency_hz / 1000.0 - self.info.freq_offset_khz
        self._send("SET squelch=0 max=0")
        self._send("SET genattn=0")
        self._send("SET gen=0 mix=-1")
        self._send(f"SET mod=iq low_cut={opt.low_cut:.0f} high_cut={opt.high_cut:.0f} freq={freq_khz:.3f}")
        a = opt.agc
        self._send(f"SET agc={a[0]} hang={a[1]} thresh={a[2]} slope={a[3]} decay={a[4]} manGain={a[5]}")
        self._send("SET compression=0")
        if opt.little_endian:
            self._send("SET little-endian")
        self._send("SET keepalive")
        self._last_ka = self.loop.time()
        self._setup_sent = True
        self._frame_period = kw.SAMPLES_PER_FRAME / self._sample_rate
        if self._want is None:
            self._want = max(1, math.ceil(self.cap.requested_s * self._sample_rate))
        self.cap.info = self.info

    # -- segment assembly --
    def _spill(self) -> None:
        """Streaming: hand the frames held so far to the sink as a piece of the open segment
        (only a segment's first piece gets a time fit: the capture's summary keeps it; the
        stored segment is fitted over all its frames when read)."""
        seg = self._build("continues", fit=self._first_piece is None)
        assert self._sink is not None
        self._note_piece(seg)
        self._sink.piece(self.cap, seg, self._piece_first)
        self._piece_first = False

    def _note_piece(self, seg: Segment) -> None:
        if self._first_piece is None:
            self._first_piece = seg
        self._spilled += seg.n_samples
        self._spilled_frames += seg.frame_seq.size
        self._spilled_missing += seg.missing_frames

    def _finish_segment(self) -> None:
        if not self._hdrs and not self._rx_meta and not self._spilled:
            return
        if not self._in_window:  # ended before the session's start was known: kept all the same
            held = len(self._rx_meta) or len(self._hdrs) // kw.HEADER_SIZE
            self.cap.events.append(f"connection ended before the session's window opened; its {held} "
                                   "frame(s) kept")
        reason = "complete"
        if self.done.done() and self.done.exception() is not None:
            reason = str(self.done.exception())
        if self._sink is not None:
            self._finish_streamed(reason)
            return
        seg = self._build(reason)
        self.cap.segments.append(seg)
        if self._want is not None:
            self._want = max(0, self._want - seg.n_samples)

    def _finish_streamed(self, reason: str) -> None:
        """Streaming: the last piece goes to the sink with the segment's end; the capture keeps a
        summary of the segment (its length, first fit and end), not its samples or frames."""
        assert self._sink is not None
        if self._hdrs or self._rx_meta:
            seg = self._build(reason, fit=self._first_piece is None)
            self._note_piece(seg)
            self._sink.piece(self.cap, seg, self._piece_first)
        else:
            self._sink.end_segment(reason)
        first = self._first_piece
        assert first is not None
        n = self._spilled
        self.cap.segments.append(Segment(
            samples=np.zeros((0, 2), np.int16), streamed=n,
            frame_seq=np.zeros(0, np.uint32), frame_flags=np.zeros(0, np.uint8),
            frame_rssi_dbm=np.zeros(0, np.float32), frame_last_gps=np.zeros(0, np.uint8),
            frame_gps_ns=np.zeros(0, np.int64), frame_received=np.zeros(0, bool),
            fit=first.fit, end_reason=reason, seq_gaps=0, missing_frames=self._spilled_missing,
            lag_s=self._behind - self._min_behind, timing=first.timing,
            receipt_t0_gps_ns=first.receipt_t0_gps_ns,
        ))
        if self._want is not None:
            self._want = max(0, self._want - n)
        self._spilled = self._spilled_frames = self._spilled_missing = 0
        self._first_piece = None
        self._piece_first = True

    def _build(self, reason: str, fit: bool = True) -> Segment:
        """A Segment of the frames held, which are then let go."""
        if self._rx_meta:
            seg = build_receipt_segment(
                self._rx_meta, bytes(self._data), nominal_fs=self._sample_rate or 12000.0,
                gps_utc_offset_s=self.opt.gps_utc_offset_s, end_reason=reason,
            )
            self._rx_meta = []
            self._rx_samples = 0
        else:
            seg = build_segment(
                bytes(self._hdrs), bytes(self._data), nominal_fs=self._sample_rate or 12000.0,
                gps_utc_offset_s=self.opt.gps_utc_offset_s, end_reason=reason, fit=fit,
            )
        seg.lag_s = self._behind - self._min_behind
        self._hdrs.clear()
        self._data.clear()
        return seg


class KiwiReceiver(StopHooks):
    """A KiwiSDR at ``host:port`` with ``channels`` receiver channels."""

    protocol = "kiwisdr"

    def __init__(
        self,
        station: str,
        host: str,
        port: int,
        *,
        channels: int = 4,
        options: KiwiOptions | None = None,
    ) -> None:
        self.station = station
        self.host = host
        self.port = port
        self.channels = channels
        self.options = options or KiwiOptions()
        self.version = __version__
        #: called about twice a second while IQ arrives, with (samples received so far, sample
        #: rate); for progress displays only, and an exception in it never costs the capture
        self.on_progress: Callable[[int, float], None] | None = None
        #: polled about twice a second: when it returns True the capture ends at once, keeping
        #: what has arrived (``stopped`` is then True); an exception in it counts as "go on"
        self.should_stop: Callable[[], bool] | None = None
        self.stopped = False
        #: the session's common window (:class:`~sdrlab.receivers.window.Window`): capture
        #: exactly its span, from the frame holding its start to its end, however late the
        #: connection came up and whatever drops in between; None: ``duration_s`` from the first frame
        self.window: Window | None = None
        self.waited_for_channel = False
        #: streaming: an object with ``piece(capture, segment, first)`` and ``end_segment(reason)``
        #: (e.g. :class:`sdrlab.recording.StationRecorder`) that gets the samples and frame
        #: records as pieces of segments every ``spill_frames`` frames, in the event loop's thread;
        #: the Capture then keeps only a summary of each segment (length, first time fit, end)
        self.sink: Any = None
        self.spill_frames = 24

    def __repr__(self) -> str:
        return f"KiwiReceiver({self.station!r}, {self.host}:{self.port}, channels={self.channels})"

    async def capture(self, frequency_hz: float, duration_s: float) -> Capture:
        """Receive ``duration_s`` seconds of IQ at ``frequency_hz`` (retry policy of section 8)."""
        opt = self.options
        cap = Capture(self.station, frequency_hz, opt.low_cut, opt.high_cut, duration_s, opt.gps_utc_offset_s)
        host, port = self.host, self.port
        busy = connect = reconnect = redirects = 0
        want: int | None = None
        #: after a segment ended (the receiver worked in this capture): the loop time until which
        #: failed connections are retried beyond ``connect_retries``: as long as the rest of the
        #: capture would take to arrive (a receiver or network slow to take a new connection is
        #: waited for; one that stays unreachable still ends the capture, at the latest when its
        #: data would have ended)
        persist_until: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            conn: _Connection | None = None
            n_segments = len(cap.segments)
            if self.stop_requested():
                return cap
            try:
                if self.window is not None and not CHANNELS.free(host, port, self.channels):
                    # the session's other stations hold every channel: the start cannot wait
                    # for this one, which gets the rest of the window if one frees in time
                    self.waited_for_channel = True
                    self.window.gave_up(self.station)
                    cap.events.append(f"all {self.channels} channel(s) of {host}:{port} taken by the "
                                      "session's other stations; waiting for one")
                async with CHANNELS.hold(host, port, self.channels):
                    conn = _Connection(self, cap, host, port, want)
                    await conn.run()
                return cap
            except _Redirect as r:
                redirects += 1
                target = urllib.parse.urlsplit(r.url if "//" in r.url else f"http://{r.url}")
                cap.events.append(f"redirected to {target.hostname}:{target.port}")
                if redirects > opt.max_redirects or not target.hostname:
                    raise self._err(ReceiverProtocolError, f"too many or bad redirects (last: {r.url})", cap)
                host, port = target.hostname, target.port or 8073
            except ReceiverBusy as exc:
                busy += 1
                cap.events.append(f"busy ({exc.detail}), attempt {busy}")
                if busy > opt.busy_retries:
                    raise self._err(ReceiverBusy, f"{exc.detail}; gave up after {busy} attempts", cap) from None
                if not await self._pause(opt.backoff(opt.busy_delay, busy)):
                    return cap
            except _ConnectFailed as exc:
                connect += 1
                cap.events.append(f"{exc}, attempt {connect}")
                left = persist_until - loop.time() if persist_until is not None else 0.0
                if connect > opt.connect_retries and left <= 0:
                    since = " since its last segment ended, for as long as the rest of the capture" \
                        if persist_until is not None else ""
                    raise self._err(ReceiverUnreachable, f"{exc} (gave up after {connect} attempts{since})",
                                    cap) from None
                delay = jitter(opt.backoff(opt.connect_delay, connect))
                if connect > opt.connect_retries:
                    delay = min(delay, left)
                if not await self._pause(delay):
                    return cap
            except _SegmentEnded as exc:
                added = cap.segments[n_segments:]
                rate = cap.info.sample_rate if cap.info and cap.info.sample_rate else 12000.0
                long_one = any(s.n_samples >= opt.long_segment_s * rate for s in added)
                reconnect = 1 if long_one else reconnect + 1
                busy = connect = 0
                cap.events.append(f"segment {len(cap.segments)} ended: {exc}; reconnecting")
                if reconnect > opt.reconnect_retries:
                    raise self._err(
                        ReceiverStalled, f"{exc}; gave up after {reconnect - 1} reconnects in a row", cap
                    ) from None
                if conn is not None and conn._want is not None:
                    persist_until = loop.time() + conn._want / rate
                if not await self._pause(jitter(opt.reconnect_delay)):
                    return cap
            except ReceiverError as exc:
                raise self._err(type(exc), exc.detail, cap) from None
            finally:
                if conn is not None and conn._want is not None:
                    want = conn._want
            if want == 0:
                return cap

    def _err(self, cls: type[ReceiverError], message: str, cap: Capture) -> ReceiverError:
        return cls(message, station=self.station, partial=cap)
