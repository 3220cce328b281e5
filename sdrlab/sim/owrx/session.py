"""One OpenWebRX WebSocket connection's protocol (protocol page sections 1.2, 2, 3, 4, 5, 7).

The server's messages in the real order after the handshake line (U ``connection.py:95-175``):
``receiver_details``, ``clients`` (queued broadcast), ``config`` (global keys), ``config`` (SDR
keys), ``config`` (profile: centre, rate, ids, computed ``start_offset_freq``) with
``dial_frequencies`` and ``bookmarks`` (Plus: ``bands``) while FFT rows start, ``features``,
``modes``, ``profiles``, then ``cpuusage`` every 3 s (Plus: ``temperature`` too).  FFT rows,
``clients`` and ``cpuusage`` go through a queue of ``queue_size`` messages whose overflow
disconnects (U ``connection.py:30-82``); any send blocked longer than ``send_timeout_s`` closes the
connection (U ``websocket.py:134-163``).

``dspcontrol`` params are applied key by key in the client's order; an unknown key or an invalid
value aborts the rest and keeps the connection (section 2.5); ``null`` deletes; an unknown ``mod``
that passes the validator silences the audio (the S-meter goes on) and the rest still applies.
``start`` connects the channel: S-meter readings and audio flow from then on; there is no stop.
Audio: channel -> demodulator -> int16 -> ADPCM with SYNC every 1001 bytes (or int16 with
compression ``none``) -> type 0x02 messages of seeded random sizes (SYNC headers get split).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Coroutine, Protocol

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ...receivers.owrxmsg import CLIENT_PREFIX, DEFAULT_BANDPASS, SERVER_PREFIX, SQUELCH_OPEN_DB
from ...receivers.owrxwire import FRAME_AUDIO, FRAME_FFT, FRAME_HD_AUDIO, SYNC_MAGIC, SYNC_SIZE, AudioEncoder, float_to_int16
from .config import OwrxConfig, OwrxFaults, Profile
from .demod import AUDIO_MODS, WFM_IF_RATE, Demodulator
from .dsp import SMETER_DECIMATION, ChannelChain, smeter_schedule


class Hub(Protocol):
    """What a session needs of its receiver (:class:`sdrlab.sim.owrx.receiver.ReceiverHub`, which
    imports this module: typed structurally, so neither module imports the other back)."""

    cfg: OwrxConfig
    faults: OwrxFaults
    fft_size: int

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    def first_sdr(self) -> str | None: ...
    def current_profile(self, sdr_id: str) -> Profile | None: ...
    def sdr_time(self, sdr_id: str) -> float: ...
    def profiles_message(self) -> list[dict[str, str]]: ...
    def admission(self, session: Session) -> str | None: ...
    def register(self, session: Session) -> None: ...
    def listen_fft(self, session: Session) -> None: ...
    def select_profile(self, profile_id: str, by: Session | None = None) -> bool: ...

__all__ = ["MODES", "Session", "SessionTruth", "locator"]

logger = logging.getLogger(__name__)

#: cpuusage (and Plus temperature) period, s
CPU_PERIOD_S = 3.0
#: how often the channel pump wakes up, s
PUMP_TICK_S = 0.02
#: audio messages carry between these many bytes (seeded random): SYNC frames end up split
AUDIO_MESSAGE_BYTES = (40, 1600)
#: squelch: upstream sends this many blocks of zeros after closing, then nothing (section 5)
SQUELCH_ZERO_BLOCKS = 5
#: Plus keeps this many blocks of real audio first (hang)
SQUELCH_HANG_BLOCKS_PLUS = 2
#: FFT rows kept per session for the truth
TRUTH_ROWS = 64
#: audio payload bytes kept per connection in its truth (about 4 minutes of 12 kHz ADPCM)
TRUTH_AUDIO_BYTES = 1 << 21
#: analog modes with their default bandpass (U ``owrx/modes.py:118-137``)
MODES: tuple[tuple[str, str], ...] = (
    ("nfm", "FM"), ("wfm", "WFM"), ("am", "AM"), ("lsb", "LSB"), ("usb", "USB"), ("cw", "CW"),
)
#: the output rates upstream's NFM de-emphasis exists for (C ``deemphasis.cpp:57-72``)
NFM_DEEMPHASIS_RATES = (8000, 11025, 12000, 44100, 48000)
_MOD = re.compile(r"^[a-z0-9]+$")
_MOD_PLUS = re.compile(r"^[a-z0-9-]+$")
_INT_KEYS = ("offset_freq", "secondary_offset_freq", "dmr_filter", "output_rate", "hd_output_rate",
             "dab_service_id", "audio_service_id", "nr_threshold")
_NUMBER_KEYS = ("low_cut", "high_cut", "squelch_level")


def locator(lat: float, lon: float) -> str:
    """Maidenhead locator, 6 characters (``receiver_details``' computed ``locator``)."""
    lon, lat = lon + 180.0, lat + 90.0
    a = chr(65 + int(lon / 20)) + chr(65 + int(lat / 10))
    b = str(int(lon % 20 / 2)) + str(int(lat % 10))
    c = chr(97 + int(lon % 2 * 12)) + chr(97 + int(lat % 1 * 24))
    return a + b + c


@dataclass
class SessionTruth:
    """What one connection was sent and the channel it listened to (never on the wire)."""

    number: int
    ip: str
    connected: float  # time.monotonic()
    kind: str = ""  # receiver / map, once handshaken
    sdr_id: str = ""
    started: bool = False
    dial_hz: float | None = None
    offset_freq: int | None = None
    mod: str | None = None
    low_cut: float | None = None
    high_cut: float | None = None
    output_rate: int = 12000
    truth_power: float | None = None  # FS^2, what the S-meter estimates
    smeter: list[float] = field(default_factory=list)
    audio_samples: int = 0
    audio_bytes: int = 0
    #: the audio payload bytes as sent, end to end (the first TRUTH_AUDIO_BYTES): what a client's
    #: decoding is checked against
    audio_wire: bytearray = field(default_factory=bytearray)
    fft_rows: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=TRUTH_ROWS))
    fft_rows_sent: int = 0
    closed: str | None = None  # why the server closed it, or "client"


class Session:
    """The protocol of one connection to one simulated receiver (see the module docstring)."""

    def __init__(self, hub: Hub, ws: ServerConnection, number: int, ip: str) -> None:
        self.hub, self.ws, self.number, self.ip = hub, ws, number, ip
        self.cfg: OwrxConfig = hub.cfg
        self.faults: OwrxFaults = hub.faults
        self.truth = SessionTruth(number=number, ip=ip, connected=time.monotonic())
        self.rng = np.random.default_rng([self.cfg.seed, 7, number])
        self.handshaken = False
        self.receiver = False  # a registered receiver session (counts in ``clients``)
        self.sdr_id = hub.first_sdr() or ""
        self.props: dict[str, Any] = {}
        self.dsp: dict[str, Any] | None = None  # None until the first dspcontrol
        self.started = False
        self.silenced = False
        self.encoder: AudioEncoder | None = None
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=self.faults.queue_size)
        self.tasks: list[asyncio.Task[None]] = []
        self._pump: asyncio.Task[None] | None = None
        self._held_fft: bytes | None = None
        self.closing = False

    # ---- sending -------------------------------------------------------------------------------
    async def send_now(self, data: str | bytes) -> None:
        """A direct send; blocked longer than ``send_timeout_s``: the connection is closed."""
        if self.closing:
            return
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the send completes, and the cancelled pump would then run on
            async with asyncio.timeout(self.faults.send_timeout_s):
                await self.ws.send(data)
        except TimeoutError:
            self.abort("send_timeout")
        except ConnectionClosed:
            pass

    async def send(self, kind: str, value: Any) -> None:
        await self.send_now(json.dumps({"type": kind, "value": value}, allow_nan=False))

    def enqueue(self, data: str | bytes) -> None:
        """Through the FFT/``clients``/``cpuusage`` queue; overflow disconnects."""
        if self.closing:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.abort("queue_overflow")

    def enqueue_json(self, kind: str, value: Any) -> None:
        self.enqueue(json.dumps({"type": kind, "value": value}, allow_nan=False))

    async def _queue_sender(self) -> None:
        while True:
            data = await self.queue.get()
            await self.send_now(data)

    def abort(self, reason: str) -> None:
        """Close from the server side: an empty close frame (clients see 1005)."""
        if self.closing:
            return
        self.closing = True
        self.truth.closed = reason
        logger.info("%s #%d: closing (%s)", self.cfg.id, self.number, reason)
        self.close_tasks()
        self.hub.spawn(self._close())

    async def _close(self) -> None:
        try:
            await self.ws.close(code=None)  # type: ignore[arg-type]  # None: an empty close frame
        except Exception:  # noqa: BLE001 - the socket may be gone already
            self.ws.transport.abort()

    def close_tasks(self) -> list[asyncio.Task[None]]:
        """Cancel the session's tasks; returns them (to be awaited by whoever stops the server)."""
        tasks = list(self.tasks)
        if self._pump is not None:
            tasks.append(self._pump)
            self._pump = None
        for t in tasks:
            t.cancel()
        return tasks

    # ---- messages ------------------------------------------------------------------------------
    def receiver_details(self) -> dict[str, Any]:
        c = self.cfg
        d: dict[str, Any] = {"receiver_name": c.name, "receiver_location": c.location, "receiver_asl": c.asl,
                             "receiver_gps": {"lat": c.lat, "lon": c.lon}, "photo_title": "",
                             "photo_desc": "", "locator": locator(c.lat, c.lon)}
        if c.plus:
            d.update(receiver_help="", usage_policy_url="policy", session_timeout=0, keep_files=20)
        return d

    def global_config(self) -> dict[str, Any]:
        c = self.cfg
        d: dict[str, Any] = {
            "waterfall_scheme": "GoogleTurboWaterfall", "waterfall_auto_levels": {"min": 3.0, "max": 10.0},
            "waterfall_auto_min_range": 50, "fft_size": self.hub.fft_size, "audio_compression": c.audio_compression,
            "fft_compression": c.fft_compression, "max_clients": c.max_clients, "tuning_precision": 2,
            "aircraft_tracking_service": "flightaware"}
        if c.plus:
            d.update(tuning_step=1000, initial_nr_level=0, allow_chat=False, allow_audio_recording=True,
                     allow_center_freq_changes=False, ui_theme="default",
                     receiver_gps={"lat": c.lat, "lon": c.lon})
        return d

    @staticmethod
    def sdr_config() -> dict[str, Any]:
        return {"waterfall_levels": {"min": -88, "max": -20}, "waterfall_auto_level_default_mode": False,
                "initial_squelch_level": -150, "squelch_auto_margin": 10}

    @staticmethod
    def profile_config(p: Profile) -> dict[str, Any]:
        return {"samp_rate": p.samp_rate, "start_mod": p.start_mod, "start_freq": p.start_freq,
                "center_freq": p.center_freq, "sdr_id": p.sdr_id, "profile_id": p.profile_id,
                "start_offset_freq": p.start_freq - p.center_freq}

    @staticmethod
    def modes() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for mod, name in MODES:
            m: dict[str, Any] = {"modulation": mod, "name": name, "type": "analog", "requirements": [],
                                 "squelch": mod != "wfm"}
            low, high = DEFAULT_BANDPASS[mod]
            m["bandpass"] = {"low_cut": low, "high_cut": high}
            if mod == "wfm":
                m["ifRate"] = 200000
            out.append(m)
        return out

    @property
    def profile(self) -> Profile | None:
        return self.hub.current_profile(self.sdr_id)

    # ---- the handshake and build-up -------------------------------------------------------------
    async def on_text(self, text: str) -> None:
        if not self.handshaken:
            await self.handshake(text)
            return
        if not self.receiver:
            return
        try:
            msg = json.loads(text)
        except ValueError:
            logger.info("%s #%d: client text that is not JSON: %r", self.cfg.id, self.number, text[:80])
            return
        if not isinstance(msg, dict) or "type" not in msg:
            logger.info("%s #%d: client JSON without type: %r", self.cfg.id, self.number, text[:80])
            return
        kind = msg["type"]
        params = msg.get("params")
        if kind == "connectionproperties" and isinstance(params, dict):
            self.props = {**self.props, **params} if self.cfg.plus else dict(params)
            if self.dsp is not None:
                self.set_properties(params)
        elif kind == "dspcontrol":
            if self.dsp is None:
                self._create_dsp()
            if msg.get("action") == "start" and not self.started:
                self.started = self.truth.started = True
                self._restart_channel()
            if isinstance(params, dict):
                self.set_properties(params)
        elif kind == "selectprofile" and isinstance(params, dict):
            prof = params.get("profile")
            if isinstance(prof, str):
                self.hub.select_profile(prof, by=self)

    async def handshake(self, line: str) -> None:
        """Section 1.2: the 16-character prefix, then ``key=value`` pairs; ``type`` must be
        ``receiver`` or ``map`` (a map gets no receiver messages here)."""
        if not line.startswith(CLIENT_PREFIX):
            logger.info("%s #%d: text before handshake ignored: %r", self.cfg.id, self.number, line[:80])
            return
        pairs = dict(p.split("=", 1) for p in line[len(CLIENT_PREFIX):].split() if "=" in p)
        kind = pairs.get("type")
        if kind not in ("receiver", "map"):
            logger.info("%s #%d: handshake with bad type ignored: %r", self.cfg.id, self.number, line[:80])
            return
        self.handshaken = True
        self.truth.kind = kind
        await self.send_now(f"{SERVER_PREFIX} server=openwebrx version={self.cfg.version}")
        if kind == "receiver":
            await self._build_up()

    async def _build_up(self) -> None:
        await self.send("receiver_details", self.receiver_details())
        refusal = self.hub.admission(self)
        if refusal is not None:
            await self.send_now(json.dumps({"type": "backoff", "reason": refusal}))
            self.abort("backoff")
            return
        if self.faults.zombie:
            self.truth.closed = None
            return
        self.receiver = True
        self.tasks.append(self.hub.spawn(self._queue_sender()))
        self.hub.register(self)  # broadcasts ``clients`` through every queue
        await self.send("config", self.global_config())
        await self.send("config", self.sdr_config())
        prof = self.profile
        if prof is None:
            await self.send("sdr_error", "No SDR Devices available")
        else:
            await self.send_sdr(prof)
        await self.send("features", {"rtl_sdr": True, "soapy": False})
        await self.send("modes", self.modes())
        await self.send("profiles", self.hub.profiles_message())
        self.tasks.append(self.hub.spawn(self._cpu_loop()))

    async def send_sdr(self, prof: Profile) -> None:
        """The SDR's profile ``config``, its band lists, and FFT rows from then on."""
        self.truth.sdr_id = prof.sdr_id
        await self.send("config", self.profile_config(prof))
        await self.send("dial_frequencies", [])
        await self.send("bookmarks", [])
        if self.cfg.plus:
            await self.send("bands", [])
        self.hub.listen_fft(self)

    # ---- dspcontrol ----------------------------------------------------------------------------
    def accepted_keys(self) -> set[str]:
        keys = {"offset_freq", "mod", "low_cut", "high_cut", "squelch_level", "secondary_mod",
                "secondary_offset_freq", "dmr_filter", "output_rate", "hd_output_rate"}
        keys |= {"audio_service_id", "nr_enabled", "nr_threshold"} if self.cfg.plus else {"dab_service_id"}
        return keys

    def _valid(self, key: str, value: Any) -> bool:
        """The server's validators (Python semantics: a bool is an int)."""
        if key in _INT_KEYS:
            return isinstance(value, int)
        if key in _NUMBER_KEYS:
            return isinstance(value, (int, float))
        if key == "mod":
            return isinstance(value, bool) or (isinstance(value, str)
                                               and bool((_MOD_PLUS if self.cfg.plus else _MOD).match(value)))
        if key == "secondary_mod":
            return isinstance(value, bool) or isinstance(value, str)
        if key == "nr_enabled":
            return isinstance(value, bool)
        return True

    def _create_dsp(self) -> None:
        """The DSP with the profile's start settings and a new audio encoder (section 4.3)."""
        prof = self.profile
        mod = prof.start_mod if prof is not None else "nfm"
        low, high = DEFAULT_BANDPASS.get(mod, (-4000, 4000))
        self.dsp = {"offset_freq": (prof.start_freq - prof.center_freq) if prof is not None else 0, "mod": mod,
                    "low_cut": low, "high_cut": high, "squelch_level": SQUELCH_OPEN_DB}
        for key in ("output_rate", "hd_output_rate"):
            self.dsp[key] = 12000 if key == "output_rate" else 48000
        self._apply_props(self.props)
        self.encoder = AudioEncoder(sync=True)

    def _apply_props(self, props: dict[str, Any]) -> None:
        for key, value in props.items():
            if key not in self.accepted_keys():
                logger.info("%s #%d: connectionproperties: unknown key %r, rest dropped", self.cfg.id,
                            self.number, key)
                break
            assert self.dsp is not None
            self.dsp[key] = value

    def set_properties(self, params: dict[str, Any]) -> None:
        """Key by key in the client's order; the first unknown key or invalid value is logged and
        aborts the rest (the earlier keys stay applied); ``null`` deletes (section 2.5)."""
        assert self.dsp is not None
        before = dict(self.dsp)
        for key, value in params.items():
            if key not in self.accepted_keys():
                logger.info("%s #%d: dspcontrol: unknown key %r, rest of %s dropped", self.cfg.id, self.number,
                            key, list(params))
                break
            if value is None:
                self.dsp.pop(key, None)
                continue
            if not self._valid(key, value):
                logger.info("%s #%d: dspcontrol: invalid %s=%r, rest dropped", self.cfg.id, self.number, key, value)
                break
            self.dsp[key] = value
            if key == "mod":
                self.silenced = not (isinstance(value, str) and value in AUDIO_MODS)
                if self.silenced:
                    logger.info("%s #%d: no demodulator for mod %r: audio stops", self.cfg.id, self.number, value)
        if self.started and self.dsp != before:
            self._restart_channel()

    def rebuild_channel(self) -> None:
        """The channel on the SDR's new profile (same offset, mode and bandpass; encoder kept)."""
        self._restart_channel()

    def _restart_channel(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        prof = self.profile
        if prof is None or self.dsp is None or "offset_freq" not in self.dsp or self.closing:
            self._channel_truth(None, None)
            return
        mod = self.dsp.get("mod")
        wfm = mod == "wfm"  # an HD chain: the 200 kHz IF in, hd_output_rate out as type 0x04
        rate = WFM_IF_RATE if wfm else int(self.dsp.get("output_rate", 12000))
        out_rate = int(self.dsp.get("hd_output_rate", 48000)) if wfm else rate
        dial = prof.center_freq + int(self.dsp["offset_freq"])
        try:
            ch = ChannelChain(prof.band.as_seen(self.cfg.clock), dial, rate, self.dsp.get("low_cut"), self.dsp.get("high_cut"),
                              t0=self.hub.sdr_time(self.sdr_id), stream=self.number)
            wanted = isinstance(mod, str) and mod in AUDIO_MODS and not self.silenced
            demod = Demodulator(str(mod), rate, out_rate) if wanted else None
        except ValueError as exc:  # e.g. output_rate 0: the real DSP fails too, the connection stays
            logger.info("%s #%d: channel not started: %s", self.cfg.id, self.number, exc)
            self._channel_truth(None, None)
            return
        if demod is not None and mod == "nfm" and not self.cfg.plus and rate not in NFM_DEEMPHASIS_RATES:
            logger.info("%s #%d: no NFM de-emphasis at %d Hz: no audio", self.cfg.id, self.number, rate)
            demod = None  # upstream csdr throws for other rates (section 2.1); Plus uses the nearest
        self._channel_truth(ch, prof, out_rate)
        self._pump = self.hub.spawn(self._channel_pump(ch, demod, FRAME_HD_AUDIO if wfm else FRAME_AUDIO))

    def _channel_truth(self, ch: ChannelChain | None, prof: Profile | None, out_rate: int | None = None) -> None:
        t, d = self.truth, self.dsp or {}
        t.dial_hz = ch.dial if ch is not None else None
        t.offset_freq = d.get("offset_freq")
        mod = d.get("mod")
        t.mod = mod if isinstance(mod, str) else None
        t.low_cut, t.high_cut = d.get("low_cut"), d.get("high_cut")
        t.output_rate = out_rate or int(d.get("output_rate", 12000))
        t.truth_power = ch.truth_power() if ch is not None else None

    def restart_encoder(self) -> None:
        """A new audio encoder (state 0, 0; SYNC before its first byte), as on a DSP rebuild."""
        if self.encoder is not None:
            self.encoder = AudioEncoder(sync=True)

    def rebuild_dsp(self) -> None:
        """A new DSP on another SDR (section 7.5): new encoder, channel restarted if started."""
        if self.dsp is not None:
            self.encoder = AudioEncoder(sync=True)
        if self.started:
            self._restart_channel()

    def stop_dsp(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    # ---- the channel: S-meter and audio ---------------------------------------------------------
    async def _channel_pump(self, ch: ChannelChain, demod: Demodulator | None, frame: int) -> None:
        block, every = smeter_schedule(ch.rate, self.cfg.plus)
        level = self.dsp.get("squelch_level", SQUELCH_OPEN_DB) if self.dsp else SQUELCH_OPEN_DB
        squelch = level > SQUELCH_OPEN_DB and (demod is None or demod.mod != "wfm")  # wfm: squelch false
        threshold = 10.0 ** (float(level) / 10.0) if squelch else None
        hang = SQUELCH_HANG_BLOCKS_PLUS if self.cfg.plus else 0
        closed_for = 0  # blocks since the squelch closed (0: open)
        loop = asyncio.get_running_loop()
        t_start, done = loop.time(), 0
        pending = bytearray()
        while True:
            await asyncio.sleep(PUMP_TICK_S)
            due = int((loop.time() - t_start) * ch.rate * self.cfg.clock) // block - done
            for _ in range(max(0, due)):
                y = ch.next(block)
                power = float(np.mean(np.abs(y[::SMETER_DECIMATION]) ** 2))
                done += 1
                if done % every == 0:
                    self.truth.smeter.append(power)
                    await self.send("smeter", power)
                if threshold is not None and power < threshold:
                    closed_for += 1
                else:
                    closed_for = 0
                if demod is None:
                    continue
                audio = demod.process(y)
                if closed_for > hang + SQUELCH_ZERO_BLOCKS:
                    continue  # squelched: nothing at all
                if closed_for > hang:
                    audio = np.zeros(block)
                pending += self._encode(float_to_int16(audio))
            if pending:
                await self._send_audio(bytes(pending), frame)
                pending.clear()
            if self.closing:
                return

    def _encode(self, samples: np.ndarray) -> bytes:
        self.truth.audio_samples += samples.size
        if self.cfg.audio_compression == "none" or self.encoder is None:
            return samples.astype("<i2").tobytes()
        return self.encoder.encode(samples)

    async def _send_audio(self, data: bytes, frame: int = FRAME_AUDIO) -> None:
        """Arbitrary message boundaries (even ones for uncompressed int16), as the server's pump
        forwards whatever its buffer holds; a third of the SYNC frames get a boundary inside."""
        pos, lo, hi = 0, *AUDIO_MESSAGE_BYTES
        while pos < len(data):
            size = int(self.rng.integers(lo, hi + 1))
            if self.cfg.audio_compression == "none":
                size &= ~1
            else:
                sync = data.find(SYNC_MAGIC, pos + 1, pos + size)
                if sync > 0 and self.rng.random() < 1 / 3:
                    size = sync - pos + int(self.rng.integers(1, SYNC_SIZE))
            chunk = data[pos : pos + size]
            pos += len(chunk)
            self.truth.audio_bytes += len(chunk)
            if len(self.truth.audio_wire) < TRUTH_AUDIO_BYTES:
                self.truth.audio_wire += chunk
            await self.send_now(bytes([frame]) + chunk)

    # ---- periodic and broadcast output ----------------------------------------------------------
    def on_fft(self, payload: bytes, row: np.ndarray) -> None:
        """One FFT row from the SDR's spectrum task (two per message with ``double_fft``)."""
        self.truth.fft_rows.append(row)
        self.truth.fft_rows_sent += 1
        if self.faults.double_fft:
            if self._held_fft is None:
                self._held_fft = payload
                return
            payload, self._held_fft = self._held_fft + payload, None
        self.enqueue(bytes([FRAME_FFT]) + payload)

    async def _cpu_loop(self) -> None:
        while True:
            self.enqueue_json("cpuusage", round(0.08 + 0.04 * float(self.rng.random()), 4))
            if self.cfg.plus:
                self.enqueue_json("temperature", 0)
            await asyncio.sleep(CPU_PERIOD_S)
