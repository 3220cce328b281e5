"""OpenWebRX / OpenWebRX+ client: demodulated audio, FFT rows and S-meter readings
(``openwebrx-protocol.md`` sections 1-5 and 7; behaviour of section 11.1).

One :class:`OwrxReceiver` per station; :meth:`OwrxReceiver.capture` connects to
``ws://host:port[/prefix]/ws/``, sends the handshake line and ``connectionproperties``, waits for
a ``config`` with the current profile's centre and sample rate, refuses a frequency the profile does
not reach (it never sends ``selectprofile``: a profile change retunes the receiver for every
listener), tunes one demodulator (``dspcontrol`` with an integer ``offset_freq``, then ``start``)
and keeps everything for ``duration_s`` of receipt time:

* audio (types 0x02 / 0x04) through one :class:`~sdrlab.receivers.owrxwire.AudioDecoder`, the
  encoder-exact reference decoding, with the receipt time of every message that carried samples
  (:class:`~sdrlab.capture.AudioSegment`);
* FFT rows (type 0x01) tagged with the centre, sample rate and FFT size in force at receipt; rows
  within two frame periods after a profile change are dropped (they mix the two spectra)
  (:class:`~sdrlab.capture.SpectrumRows`);
* S-meter readings as sent, linear power (:class:`~sdrlab.capture.SmeterReadings`).

A profile change by another listener (a ``config`` changing ``center_freq``, ``samp_rate``,
``profile_id`` or ``sdr_id``) ends the audio segment (its ``end_reason`` and ``capture.events`` say
so); if the frequency is still inside the new profile the demodulator is retuned there (the server
keeps the old offset, which now points elsewhere), else the capture ends keeping what arrived.

Retry policy: ``backoff`` (server full, or an OpenWebRX+ ban) and a silent connection after
``receiver_details`` (no ``config`` within ``config_timeout``: how OpenWebRX+ may reject a
connection, section 7.3) are retried after >= 32 s, doubling up to 512 s, then raise
:class:`~sdrlab.errors.ReceiverBusy` / :class:`~sdrlab.errors.ReceiverStalled`; a refused or
failed connection raises :class:`~sdrlab.errors.ReceiverUnreachable` after ``connect_retries``; a
connection lost after data reconnects as a new segment until the capture's end.  Every
:class:`~sdrlab.errors.ReceiverError` raised carries the partial :class:`~sdrlab.capture.Capture`.
Connections to one receiver are spaced ``connect_spacing`` s apart and at most ``max_sessions`` at
once (OpenWebRX+ scores fast connections from one address as a robot).

Times are the host's receipt times (unix ns), never signal time: OpenWebRX sends no timestamps.
Streaming (``sink`` set): what arrived goes to the sink every ``sink.piece_s`` seconds and as each
audio segment ends; the capture then keeps each segment's summary (its ``streamed`` samples).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, TypeGuard

import numpy as np

from .. import timing
from .._version import __version__
from ..capture import Capture, ReceiverInfo
from ..constants import NS
from ..errors import (
    ReceiverBusy,
    ReceiverCannotTune,
    ReceiverDown,
    ReceiverError,
    ReceiverProtocolError,
    ReceiverStalled,
    ReceiverUnreachable,
)
from . import owrxmsg as om
from . import owrxwire as ow
from .owrxbuffers import AudioBuffer, Rows
from ._hooks import SessionGate, StopHooks, jitter
from ._ws import OP_BINARY, OP_TEXT, HandshakeError, WebSocketClient
from .owrxstatus import fork_of

log = logging.getLogger(__name__)

__all__ = ["OwrxOptions", "OwrxReceiver"]

#: FFT rows a second when the receiver has not shown its rate yet (``fft_fps`` default)
DEFAULT_FFT_FPS = 9.0
#: profile-change guard: FFT rows dropped for this many frame periods after a change
FFT_GUARD_PERIODS = 2.5
#: message types only OpenWebRX+ sends (section 1.3)
PLUS_MESSAGES = frozenset({"temperature", "bands", "chat_message", "battery"})
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


@dataclass(frozen=True)
class OwrxOptions:
    """Client settings (times in s, rates in Hz, levels in dB).  OpenWebRX has no user password."""

    #: demodulator (``nfm``, ``am``, ``usb``, ``lsb``, ``cw``, ``wfm``...)
    mode: str = "nfm"
    #: passband edges relative to the tuned frequency; None: the mode's default from the
    #: receiver's ``modes`` message (nfm +-4000 Hz, am +-4000, usb 300..3000...)
    low_cut: float | None = None
    high_cut: float | None = None
    #: audio rates asked for (upstream's NFM de-emphasis exists only for 8000/11025/12000/44100/48000)
    output_rate: int = 12000
    hd_output_rate: int = 48000
    #: -150: squelch open, continuous audio
    squelch_level: float = om.SQUELCH_OPEN_DB
    #: the ``client=`` of the handshake line (the server ignores it)
    client: str = "sdrlab"
    #: keep FFT rows (about 9 a second of fft_size float32: 150 kB/s at 4096 bins)
    fft: bool = True
    connect_timeout: float = 15.0
    #: from TCP connect to the server's handshake line
    handshake_timeout: float = 10.0
    #: from the handshake line to a ``config`` with centre and sample rate: longer is a silent
    #: rejection (section 7.3)
    config_timeout: float = 10.0
    #: after ``config``, how long to wait for ``modes`` (the default passbands) before using the
    #: protocol page's table
    modes_timeout: float = 2.0
    #: no message at all for this long = stall (the server sends ``cpuusage`` every 3 s)
    read_timeout: float = 10.0
    connect_retries: int = 3
    connect_delay: float = 2.0
    #: ``backoff`` or a silent connection: retried this many times, waiting ``backoff_delay``
    #: (the browser's 32 s) doubling up to ``backoff_cap`` (512 s), jittered upwards only
    backoff_retries: int = 2
    backoff_delay: float = 32.0
    backoff_cap: float = 512.0
    #: reconnects in a row after a lost connection before giving up
    reconnect_retries: int = 3
    reconnect_delay: float = 2.0
    #: politeness towards one receiver: simultaneous sessions and seconds between connections
    max_sessions: int = 2
    connect_spacing: float = 5.0
    #: after retuning on a profile change, audio and S-meter readings received for this long are
    #: dropped: the server applied the old offset to the new centre until our new offset arrived
    retune_guard_s: float = 0.25
    #: bad messages (undecodable JSON, FFT rows of a wrong size...) tolerated per connection
    max_bad_frames: int = 20
    #: honour an OpenWebRX+ ``session_timeout`` (s, 0 = none) by ending the capture at it
    honour_session_timeout: bool = True
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S

    def backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1, 2...) after a backoff: >= ``backoff_delay``, doubling
        to ``backoff_cap``, spread upwards by up to 25 % so receivers' clients do not return in
        lockstep."""
        base = min(self.backoff_delay * 2 ** max(attempt - 1, 0), self.backoff_cap)
        return float(base * random.uniform(1.0, 1.25))


# ---- outcomes of one connection (internal) ---------------------------------------------------
class _ConnectFailed(Exception):
    pass


class _Backoff(Exception):
    """The server said ``backoff`` (full, banned) or fell silent after ``receiver_details``."""

    def __init__(self, message: str, silent: bool = False) -> None:
        super().__init__(message)
        self.silent = silent


class _SegmentEnded(Exception):
    """The connection ended after data had arrived: reconnect, new segment."""


#: the sessions of this process to each receiver (``max_sessions``, ``connect_spacing``)
GATE = SessionGate()


# ---- the connection --------------------------------------------------------------------------
class _Connection:
    """One WebSocket to ``/ws/``: handshake, tuning, accumulation, outcome."""

    def __init__(self, rx: OwrxReceiver, cap: Capture, rows: Rows, clock: _Clock) -> None:
        self.rx, self.opt, self.cap, self.rows, self.clock = rx, rx.options, cap, rows, clock
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self.ws: WebSocketClient | None = None
        self.info = cap.info or ReceiverInfo(rx.host, rx.port)
        self.config = om.ConfigState()
        self.modes: dict[str, tuple[float, float] | None] | None = None
        self.decoder = ow.AudioDecoder(sync=True, resync=True)
        self.version = ""
        self.plus = False
        self.handshaken = False
        self.details = False
        self.tuned = False
        self.started = False
        self.offset: int | None = None
        self.bandpass: tuple[float, float] | None = None
        self.audio: AudioBuffer | None = None
        self._audio_type = 0
        self._t_open = self.loop.time()
        self._t_handshake = 0.0
        self._t_config = 0.0
        self._t_start = 0.0
        self._last_msg = self.loop.time()
        self._fft_drop_until = 0
        self._row_times: list[int] = []
        self._bad = 0
        self._data = 0  # messages with data kept on this connection
        self._timer: asyncio.TimerHandle | None = None
        self._session_end: float | None = None
        self._seg_tune: dict[str, Any] = {}
        self._guard_until = 0
        self._guarded = 0
        #: streaming (``rx.sink`` set): what arrived goes to the sink every ``sink.piece_s`` s
        self._sink = rx.sink
        self._piece_first = True
        self._last_spill = self.loop.time()

    # -- lifecycle --
    async def run(self) -> None:
        rx, opt = self.rx, self.opt
        try:
            _t, proto = await asyncio.wait_for(self.loop.create_connection(
                lambda: WebSocketClient(rx.host, rx.port, rx.path, self._on_message, self._on_close,
                                        user_agent=f"sdrlab/{__version__}"), rx.host, rx.port), opt.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise _ConnectFailed(f"cannot connect to {rx.host}:{rx.port}: {exc or 'timeout'}") from None
        self.ws = proto
        try:
            await asyncio.wait_for(asyncio.shield(proto.opened), opt.connect_timeout)
        except HandshakeError as exc:
            proto.abort()
            raise _ConnectFailed(f"WebSocket upgrade to {rx.url} failed: {exc}") from None
        except asyncio.TimeoutError:
            proto.abort()
            raise _ConnectFailed(f"WebSocket upgrade to {rx.url} timed out") from None
        # as the browser does: the handshake line and the audio rates at once, without waiting
        proto.send_text(om.client_handshake(opt.client))
        proto.send_text(om.connection_properties(opt.output_rate, opt.hd_output_rate))
        self._tick_later()
        try:
            await self.done
        finally:
            if self._timer:
                self._timer.cancel()
            if not proto.closing:
                proto.close(1000)
            self._end_segment(self._reason())
            d = self.decoder
            if d.jumps or d.hunted > ow.SYNC_BLOCK + ow.SYNC_SIZE:  # a late join drops up to one block
                self.cap.events.append(f"audio decoder: {d.syncs} SYNC frames, {d.jumps} with a state jump (the "
                                       f"server's encoder restarted, or bytes were lost), {d.hunted} bytes "
                                       "dropped while hunting for SYNC")
            try:  # the server sees the socket go before the next connection (bounded wait)
                await asyncio.wait_for(asyncio.shield(self._lost), 2.0)
            except asyncio.TimeoutError:
                proto.abort()

    def _reason(self) -> str:
        exc = self.done.exception() if self.done.done() and not self.done.cancelled() else None
        return "complete" if exc is None else str(exc)

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc.with_traceback(None))
        if self.ws is not None and not self.ws.closing:
            self.ws.close(1000)

    def _send(self, text: str) -> None:
        if self.ws is not None:
            self.ws.send_text(text)

    # -- timers: stop requests, progress, deadlines, watchdogs --
    def _tick_later(self) -> None:
        self._timer = self.loop.call_later(0.25, self._tick)

    def _tick(self) -> None:
        if self.done.done():
            return
        opt, now = self.opt, self.loop.time()
        if self.rx.stop_requested():
            self.cap.events.append("stopped by request")
            self._finish()
            return
        if self.clock.passed(time.time_ns()):
            self._finish()
            return
        if self._session_end is not None and now >= self._session_end:
            self.cap.events.append("the receiver's session_timeout was reached; capture ended there")
            self.clock.cut()
            self._finish()
            return
        self.clock.poll_window(self)
        if self._sink is not None and self.clock.settled and now - self._last_spill >= self._sink.piece_s:
            self._spill()
        if self.rx.on_progress is not None and self.started:
            try:
                self.rx.on_progress(self.cap.n_samples + (self.audio.n + self.audio.spilled if self.audio else 0),
                                    float(self.opt.output_rate))
            except Exception:  # a display must never cost the capture
                log.debug("progress callback failed", exc_info=True)
        if not self.handshaken:
            if now - self._t_open > opt.handshake_timeout:
                self._finish(_ConnectFailed(f"no OpenWebRX handshake from {self.rx.url} within "
                                            f"{opt.handshake_timeout:g} s"))
                return
        elif not self._have_profile():
            if now - self._t_handshake > opt.config_timeout:
                what = "receiver_details" if self.details else "its handshake line"
                self._finish(_Backoff(f"silent after {what}: no config within {opt.config_timeout:g} s "
                                      "(a silent rejection, as OpenWebRX+ does to a connection it scores as a "
                                      "robot)", silent=True))
                return
        elif not self.tuned and now - self._t_config > opt.modes_timeout:
            self.cap.events.append(f"no modes message within {opt.modes_timeout:g} s of config: the default "
                                   "passband of the protocol reference used")
            try:
                self._tune()
            except ReceiverError as exc:
                self._finish(exc)
                return
        elif self.started and not self._data and now - self._t_start > opt.read_timeout and self.rx.window is None:
            self._finish(ReceiverStalled(f"tuned, but no audio, S-meter reading or FFT row within "
                                         f"{opt.read_timeout:g} s (a mode the receiver silences?)"))
            return
        if now - self._last_msg > opt.read_timeout:
            self._finish(self._lost_exc(f"stalled: no message for {opt.read_timeout:g} s"))
            return
        self._tick_later()

    def _lost_exc(self, what: str) -> Exception:
        return _SegmentEnded(what) if self._data else _ConnectFailed(f"{self.rx.url}: {what} before any data")

    # -- messages --
    def _on_close(self, code: int | None, reason: str, exc: BaseException | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        what = f"closed by the receiver (code {code})" if code else "connection lost"
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
            what = f"{what}: {exc}"
        self._finish(self._lost_exc(what))

    def _on_message(self, op: int, msg: memoryview) -> None:
        if self.done.done():
            return
        self._last_msg = self.loop.time()
        try:
            if op == OP_TEXT:
                self._on_text(bytes(msg).decode("utf-8", "replace"))
            elif op == OP_BINARY:
                self._on_binary(bytes(msg))
        except ReceiverProtocolError as exc:  # a message that does not decode: counted, not fatal
            self._bad_frame(exc.detail)
        except (ReceiverError, _Backoff, _SegmentEnded) as exc:
            self._finish(exc)

    def _bad_frame(self, what: str) -> None:
        self._bad += 1
        self.cap.bad_frames += 1
        log.debug("%s: %s", self.cap.station, what)
        if self._bad >= self.opt.max_bad_frames:
            self._finish(ReceiverProtocolError(f"receiver sends garbage: {what} ({self._bad} bad messages)"))

    def _on_text(self, text: str) -> None:
        if not self.handshaken:
            if not text.startswith(om.SERVER_PREFIX):
                self._bad_frame(f"text before the handshake reply: {text[:60]!r}")
                return
            pairs = om.parse_server_handshake(text)
            self._on_handshake(pairs["version"])
            return
        try:
            kind, value = om.parse_message(text)
        except ReceiverProtocolError as exc:
            self._bad_frame(exc.detail)
            return
        handler = getattr(self, f"_m_{kind}", None)
        if kind in PLUS_MESSAGES and not self.plus:
            self.plus = True
            self._set_hw()
        if handler is not None:
            handler(value)

    def _on_handshake(self, version: str) -> None:
        self.handshaken = True
        self._t_handshake = self.loop.time()
        self.version = version
        self.info.version = version
        m = _VERSION.match(version)
        if m and (int(m.group(1)), int(m.group(2))) < (1, 2):  # before 1.2: no SYNC frames
            self.decoder = ow.AudioDecoder(sync=False)
            self.cap.events.append(f"OpenWebRX {version}: audio without SYNC frames")
        self._set_hw()

    def _set_hw(self) -> None:
        plus = self.plus or fork_of(self.version) == "openwebrx+"
        self.cap.hw = f"{'OpenWebRX+' if plus else 'OpenWebRX'} {self.version}".strip()

    # server JSON messages (section 3), by type
    def _m_receiver_details(self, value: Any) -> None:
        if not isinstance(value, dict):
            return
        self.details = True
        info = self.info
        if isinstance(value.get("receiver_name"), str):
            info.name = value["receiver_name"]
        gps = value.get("receiver_gps")
        if isinstance(gps, dict):
            lat, lon = gps.get("lat"), gps.get("lon")
            if _number(lat) and _number(lon) and -90 <= lat <= 90 and -180 <= lon <= 180:
                info.position = (float(lat), float(lon))
        if _number(value.get("receiver_asl")):
            info.altitude = float(value["receiver_asl"])
        timeout = value.get("session_timeout")
        if self.opt.honour_session_timeout and _number(timeout) and timeout > 0 and self._session_end is None:
            self._session_end = self._t_open + float(timeout)
            self.cap.events.append(f"the receiver asks sessions to end after {timeout:g} s (session_timeout)")
        self.cap.info = info

    def _m_config(self, value: Any) -> None:
        if not isinstance(value, dict):
            self._bad_frame(f"config that is not an object: {str(value)[:60]!r}")
            return
        before = dict(self.config.values)
        changed = self.config.merge(value)
        if _number(self.config.values.get("max_clients")):
            self.info.rx_chans = int(self.config.values["max_clients"])
        if not self._have_profile():
            return
        if not self._t_config:
            self._t_config = self.loop.time()
        if changed and self.tuned:
            self._profile_changed(before, changed)
        elif not self.tuned and (self.modes is not None or self._explicit_bandpass()):
            self._tune()

    def _m_modes(self, value: Any) -> None:
        modes: dict[str, tuple[float, float] | None] = {}
        for m in value if isinstance(value, list) else []:
            if isinstance(m, dict) and isinstance(m.get("modulation"), str):
                bp = m.get("bandpass")
                lo, hi = (bp.get("low_cut"), bp.get("high_cut")) if isinstance(bp, dict) else (None, None)
                modes[m["modulation"]] = (float(lo), float(hi)) if _number(lo) and _number(hi) else None
        self.modes = modes
        if self._have_profile() and not self.tuned:
            self._tune()

    def _m_smeter(self, value: Any) -> None:
        if self.started and _number(value) and not self._guarded_now(0):
            self._keep(lambda t: self._add_smeter(float(value), t))

    def _add_smeter(self, power: float, receipt_ns: int) -> None:
        self.rows.smeter.append(power)
        self.rows.smeter_receipt.append(receipt_ns)

    def _m_backoff(self, value: Any) -> None:
        raise _Backoff(f"the receiver said backoff ({value or 'no reason given'!s})")

    def _m_sdr_error(self, value: Any) -> None:
        raise ReceiverDown(f"the receiver has no SDR to serve: {value}")

    def _m_demodulator_error(self, value: Any) -> None:
        raise ReceiverCannotTune(f"the receiver cannot run the {self.opt.mode} demodulator: {value}")

    def _m_log_message(self, value: Any) -> None:
        text = str(value)[:300]
        self.cap.events.append(f"receiver says: {text}")
        if "has failed" in text:  # the DSP is rebuilt on another SDR: a new encoder, from a SYNC
            self.decoder.reset()

    # -- tuning --
    def _have_profile(self) -> bool:
        return self.config.center_freq is not None and bool(self.config.samp_rate)

    def _explicit_bandpass(self) -> bool:
        return self.opt.low_cut is not None and self.opt.high_cut is not None

    def _passband(self) -> tuple[float, float]:
        opt = self.opt
        default: tuple[float, float] | None = None
        if self.modes is not None:
            if opt.mode not in self.modes:
                raise ReceiverCannotTune(f"the receiver does not offer mode {opt.mode!r} "
                                         f"(it offers: {', '.join(sorted(self.modes)) or 'none'})")
            default = self.modes[opt.mode]
        if default is None:
            table = om.DEFAULT_BANDPASS.get(opt.mode)
            default = (float(table[0]), float(table[1])) if table else (-4000.0, 4000.0)
        low = opt.low_cut if opt.low_cut is not None else default[0]
        high = opt.high_cut if opt.high_cut is not None else default[1]
        return float(low), float(high)

    def _reach(self, low: float, high: float) -> tuple[bool, str]:
        center, rate = self.config.center_freq, self.config.samp_rate
        assert center is not None and rate
        target = self.cap.frequency_hz
        ok = om.reachable(center, rate, target, 2 * max(abs(low), abs(high)))
        span = (f"profile {self.config.profile or '?'} ({_mhz(center - rate / 2)}-{_mhz(center + rate / 2)} MHz, "
                f"centre {_mhz(center)} MHz)")
        return ok, span

    def _tune(self) -> None:
        low, high = self._passband()
        ok, span = self._reach(low, high)
        if not ok:
            raise ReceiverCannotTune(
                f"{_mhz(self.cap.frequency_hz)} MHz with passband {low:g}..{high:g} Hz is outside the current "
                f"{span}; sdrlab never changes a receiver's profile (it would retune it for every listener)")
        self.bandpass = (low, high)
        self.cap.low_cut, self.cap.high_cut = low, high
        self._send_tune(full=True)
        self.tuned = True

    def _send_tune(self, full: bool) -> None:
        center = self.config.center_freq
        assert center is not None and self.bandpass is not None
        self.offset = int(round(self.cap.frequency_hz - center))
        if full:
            low, high = self.bandpass
            self._send(om.dspcontrol(self.offset, self.opt.mode, _int_if_whole(low), _int_if_whole(high),
                                     squelch_level=self.opt.squelch_level, secondary_mod=False, plus=self.plus))
        else:  # the server kept mode, passband and squelch (section 7.4): only the offset changes
            self._send(om.dspcontrol(self.offset, squelch_level=None, secondary_mod=None))
        self._send(om.dspcontrol_start())
        self.started = True
        self._t_start = self.loop.time()
        self._new_audio()

    def _tune_fields(self) -> dict[str, Any]:
        c = self.config
        low, high = self.bandpass or (math.nan, math.nan)
        return dict(frequency_hz=float((c.center_freq or math.nan) + (self.offset or 0)), mode=self.opt.mode,
                    low_cut=low, high_cut=high, center_freq_hz=float(c.center_freq or math.nan),
                    samp_rate_hz=float(c.samp_rate or math.nan), profile=c.profile or "")

    def _profile_changed(self, before: dict[str, Any], changed: list[str]) -> None:
        what = ", ".join(f"{k} {before.get(k)} -> {self.config.values.get(k)}" for k in changed)
        reason = f"profile changed by another listener ({what})"
        self.cap.events.append(reason)
        self._end_segment(reason)
        now = time.time_ns()
        period = self._fft_period_ns()
        self._fft_drop_until = now + int(FFT_GUARD_PERIODS * period)
        if "sdr_id" in changed:  # another SDR: a new DSP and a new encoder, starting with a SYNC
            self.decoder.reset()
        assert self.bandpass is not None
        ok, span = self._reach(*self.bandpass)
        if not ok:
            self.cap.events.append(f"{_mhz(self.cap.frequency_hz)} MHz is outside the new {span}: capture "
                                   "ended, what arrived is kept")
            self.clock.cut()
            self._finish()
            return
        self._send_tune(full=False)
        self._guard_until = time.time_ns() + round(self.opt.retune_guard_s * NS)

    def _fft_period_ns(self) -> float:
        t = self._row_times
        if len(t) >= 3:
            return float(np.median(np.diff(np.array(t[-20:], dtype=np.int64))))
        return NS / DEFAULT_FFT_FPS

    # -- data --
    def _new_audio(self) -> None:
        self._audio_type = 0
        self.audio = None

    def _end_segment(self, reason: str) -> None:
        a = self.audio
        if self._sink is not None:
            self._spill(reason)
            if a is not None and a.spilled:  # the capture keeps the segment's summary, not its samples
                self.cap.audio.append(replace(a.segment(reason, self._seg_tune), streamed=a.spilled))
        elif a is not None and a.n:
            self.cap.audio.append(a.segment(reason, self._seg_tune))
        self.audio = None

    def _spill(self, reason: str = "continues") -> None:
        """Streaming: hand what arrived since the last hand-over to the sink (the open audio
        segment's samples as a part of it, ending it unless ``reason`` is ``continues``; the
        rows and readings once the capture's span is settled)."""
        assert self._sink is not None
        self._last_spill = self.loop.time()
        part = None
        a = self.audio
        if a is not None and (a.n or (reason != "continues" and a.spilled)):
            part = a.take(reason, self._seg_tune)
        spectrum = smeter = None
        if self.clock.settled:
            spectrum, smeter = self.rows.take()
        self._sink.piece(self.cap, part, self._piece_first if part is not None else False, spectrum, smeter)
        if part is not None:
            self._piece_first = reason != "continues"

    def _keep(self, store: Callable[[int], Any]) -> None:
        """Keep one message's data (``store(receipt_ns)``) if it lies inside the capture."""
        now = time.time_ns()
        if not self.clock.admit(now, self):
            return
        store(now)
        self._data += 1

    def _on_binary(self, msg: bytes) -> None:
        kind, payload = ow.split_frame(msg)
        if kind in (ow.FRAME_AUDIO, ow.FRAME_HD_AUDIO) and self.started:
            comp = str(self.config.values.get("audio_compression", "adpcm"))
            samples = ow.decode_audio(payload, comp, self.decoder)
            if samples.size and not self._guarded_now(samples.size):
                self._keep(lambda t: self._add_audio(kind, samples, t))
        elif kind == ow.FRAME_FFT and self.opt.fft:
            self._on_fft(payload)

    def _guarded_now(self, n: int) -> bool:
        """Whether data arriving now falls in the guard after a retune (``n`` audio samples)."""
        if not self._guard_until:
            return False
        if time.time_ns() < self._guard_until:
            self._guarded += n
            return True
        self.cap.events.append(f"{self._guarded} audio samples received within {self.opt.retune_guard_s:g} s "
                               "of the retune dropped (possibly at the old offset from the new centre)")
        self._guard_until = self._guarded = 0
        return False

    def _add_audio(self, kind: int, samples: ow.I16, receipt_ns: int) -> None:
        if self.audio is not None and kind != self._audio_type:
            self._end_segment(f"audio switched to type {kind:#04x}")
        if self.audio is None:
            rate = self.opt.hd_output_rate if kind == ow.FRAME_HD_AUDIO else self.opt.output_rate
            self.audio = AudioBuffer(float(rate))
            self._piece_first = True
            self.info.audio_rate, self.info.sample_rate = int(rate), float(rate)
            self._audio_type = kind
            self._seg_tune = self._tune_fields()
        self.audio.add(samples, receipt_ns)

    def _on_fft(self, payload: bytes) -> None:
        now = time.time_ns()
        self._row_times.append(now)
        del self._row_times[:-32]
        size = self.config.values.get("fft_size")
        if not isinstance(size, int) or now < self._fft_drop_until:
            return
        comp = str(self.config.values.get("fft_compression", "adpcm"))
        rows = ow.decode_fft(payload, size, comp)
        c = self.config

        def store(t: int) -> None:
            for row in rows:
                self.rows.db.append(row)
                self.rows.receipt.append(t)
                self.rows.center.append(float(c.center_freq or math.nan))
                self.rows.rate.append(float(c.samp_rate or math.nan))
                self.rows.size.append(size)

        if self.started:
            self._keep(store)


class _Clock:
    """The capture's span in host receipt time (unix ns), across reconnections.

    Without a window: from the first data kept (audio, FFT row or S-meter reading after ``start``)
    for ``duration_s``.  With the session's window: the first data is reported to it (no GPS
    time: ``None``) and held; once its start is known (GPS ns, read on the host clock) what was
    held from before it is dropped and the capture ends at the window's end."""

    def __init__(self, rx: OwrxReceiver, duration_s: float) -> None:
        self.rx = rx
        self.duration_ns = round(duration_s * NS)
        self.start: int | None = None
        self.end: int | None = None
        self._reported = False
        self._holding = False
        self._hold_rows = 0
        self._hold_smeter = 0

    def _gps_to_unix(self, gps_ns: int) -> int:
        return gps_ns + timing.GPS_EPOCH_UNIX_S * NS - self.rx.options.gps_utc_offset_s * NS

    def _from_window(self) -> None:
        w = self.rx.window
        if self.end is None and w is not None and w.start_ns is not None:
            self.start = self._gps_to_unix(w.start_ns)
            self.end = self.start + w.duration_ns

    @property
    def settled(self) -> bool:
        """The capture's span is known and nothing is held for the window: what arrived is kept."""
        return self.end is not None and not self._holding

    def passed(self, now: int) -> bool:
        """Whether the capture's end (known once data arrived, or from the window) is past ``now``."""
        self._from_window()
        return self.end is not None and now >= self.end

    def cut(self) -> None:
        """End the capture now (profile moved away, session timeout)."""
        self.end = min(self.end, time.time_ns()) if self.end is not None else time.time_ns()

    def admit(self, now: int, conn: _Connection) -> bool:
        """Whether data received at ``now`` belongs to the capture (and finishes it when late)."""
        w = self.rx.window
        if w is not None and not self._reported:
            self._reported = self._holding = True
            self._hold_rows, self._hold_smeter = len(conn.rows.db), len(conn.rows.smeter)
            w.arrived(self.rx.station, None)
        self.poll_window(conn)
        if self.end is None:
            if w is not None:  # the window's start is not known yet: hold
                return True
            self.start, self.end = now, now + self.duration_ns
        if now >= self.end:
            conn._finish()
            return False
        return self.start is None or now >= self.start

    def poll_window(self, conn: _Connection) -> None:
        """Once the window's start is known: drop what was held from before it."""
        self._from_window()
        if not self._holding or self.start is None or self.end is None:
            return
        self._holding = False
        if conn.audio is not None:
            conn.audio.drop_before(self.start)
        conn.rows.drop_before(self.start, self._hold_rows, self._hold_smeter)
        if time.time_ns() >= self.end:
            conn.cap.events.append("the session's window ended before this receiver delivered data in it")
            conn._finish()


def _number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_if_whole(x: float) -> float:
    return int(x) if float(x).is_integer() else x


def _mhz(hz: float) -> str:
    return f"{hz / 1e6:.6f}".rstrip("0").rstrip(".")


class OwrxReceiver(StopHooks):
    """An OpenWebRX receiver at ``ws://host:port[/path_prefix]/ws/``."""

    protocol = "openwebrx"

    def __init__(self, station: str, host: str, port: int, *, path_prefix: str = "",
                 options: OwrxOptions | None = None) -> None:
        self.station = station
        self.host = host
        self.port = port
        prefix = path_prefix.strip("/")
        self.path = f"/{prefix}/ws/" if prefix else "/ws/"
        self.options = options or OwrxOptions()
        #: called about four times a second once tuned, with (audio samples so far, audio rate)
        self.on_progress: Callable[[int, float], None] | None = None
        #: polled about four times a second: True ends the capture at once, keeping what arrived
        self.should_stop: Callable[[], bool] | None = None
        self.stopped = False
        #: the session's common window (:class:`~sdrlab.receivers.window.Window`) or None
        self.window: Any = None
        #: streaming sink (:class:`sdrlab.recording_audio.AudioRecorder`): audio, rows and readings
        #: go to it as they arrive (``piece``), every ``piece_s`` s and as each segment ends; the
        #: capture then keeps each audio segment's summary (``streamed`` samples), not its data
        self.sink: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{self.path}"

    def __repr__(self) -> str:
        return f"OwrxReceiver({self.station!r}, {self.url})"

    async def capture(self, frequency_hz: float, duration_s: float) -> Capture:
        """Receive ``duration_s`` s of audio, FFT rows and S-meter at ``frequency_hz`` (see the module)."""
        opt = self.options
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration_s!r}")
        cap = Capture(self.station, float(frequency_hz), math.nan, math.nan, float(duration_s),
                      opt.gps_utc_offset_s, info=ReceiverInfo(self.host, self.port, audio_rate=opt.output_rate,
                                                              sample_rate=float(opt.output_rate)),
                      kind="audio", protocol="openwebrx", hw="OpenWebRX")
        rows = Rows()
        clock = _Clock(self, duration_s)
        backoff = connect = reconnect = 0
        try:
            while not self.stop_requested():
                conn: _Connection | None = None
                try:
                    async with GATE.hold(self.host, self.port, opt.max_sessions, opt.connect_spacing,
                                         self.stop_requested) as held:
                        if not held:
                            break
                        conn = _Connection(self, cap, rows, clock)
                        await conn.run()
                    break
                except _Backoff as exc:
                    backoff += 1
                    cap.events.append(f"{exc}, attempt {backoff}")
                    delay = opt.backoff(backoff)
                    late = clock.passed(time.time_ns() + round(delay * NS))
                    if backoff > opt.backoff_retries or late:
                        cls = ReceiverStalled if exc.silent else ReceiverBusy
                        why = " (the session's window ends before the next)" if late else ""
                        raise self._err(cls, f"{exc}; gave up after {backoff} attempts{why}", cap) from None
                    if not await self._pause(delay):
                        break
                except _ConnectFailed as exc:
                    connect += 1
                    cap.events.append(f"{exc}, attempt {connect}")
                    if connect > opt.connect_retries:
                        raise self._err(ReceiverUnreachable, f"{exc} (gave up after {connect} attempts)",
                                        cap) from None
                    if not await self._pause(jitter(opt.connect_delay * 2 ** (connect - 1))):
                        break
                except _SegmentEnded as exc:
                    if clock.passed(time.time_ns()):
                        break
                    reconnect += 1
                    backoff = connect = 0
                    cap.events.append(f"connection ended: {exc}; reconnecting (new segment)")
                    if reconnect > opt.reconnect_retries:
                        raise self._err(ReceiverStalled, f"{exc}; gave up after {reconnect - 1} reconnects",
                                        cap) from None
                    if not await self._pause(jitter(opt.reconnect_delay)):
                        break
                except ReceiverError as exc:
                    raise self._err(type(exc), exc.detail, cap) from None
                if clock.passed(time.time_ns()):
                    break
        finally:
            if self.sink is not None:  # the rows and readings still held go to the sink
                spectrum, smeter = rows.take()
                if spectrum is not None or smeter is not None:
                    self.sink.piece(cap, None, False, spectrum, smeter)
            else:
                cap.spectrum = rows.spectrum()
                cap.smeter = rows.readings()
        if self.stopped and "stopped by request" not in cap.events:
            cap.events.append("stopped by request")
        return cap

    def _err(self, cls: type[ReceiverError], message: str, cap: Capture) -> ReceiverError:
        return cls(message, station=self.station, partial=cap)
