"""A server that poses as a KiwiSDR: UberSDR's KiwiSDR emulation (ka9q_ubersdr ``kiwi_websocket.go``).

UberSDR registers in the public KiwiSDR list and answers the KiwiSDR paths, but it is not a Kiwi:

* ``GET /status`` says ``sdr_hw=UberSDR <version>``, ``gps_good=1`` (whenever a position is
  configured) with ``fixes=0``, ``fixes_min=0``, ``fixes_hour=0`` and ``gps_date=0,0``: no GPS clock.
* Nothing is sent before ``SET auth``; any command is accepted before it (no kick).  The first auth
  answers ``rx_chans``, ``chan_no_pwd``, ``chan_no_pwd_true``, ``max_camp``, ``badp=0``, one MSG
  ``=version_maj=1 version_min=826 ...`` (its key is empty: the emulation formats it that way),
  ``load_cfg`` / ``load_dxcfg`` / ``load_dxcomm_cfg`` (query-escaped JSON, no ``rx_gps``),
  ``center_freq``, ``bandwidth``, ``adc_clk_nom``, ``sample_rate=12000`` (an integer: the nominal
  rate), ``client_public_ip``, ``is_local``, ``cfg_loaded`` and ``audio_init=0 audio_rate=12000``.
  ``SET AR OK in=N out=M`` is answered with ``MSG audio_init=audio_rate=N audio_rate_true=N.000``.
* Audio streams from the moment auth is done, first in the emulation's default (USB at
  14.074 MHz) until ``SET mod`` retunes; ``SET agc`` and other commands are ignored.
* SND frames are ``SND``, flags, seq (u32 LE, from 0), S-meter (u16 BE) and the samples, with **no
  GPS block** in any mode and **no IQ flag** (0x08): 20 ms packets (240 samples at 12 kHz), big-endian
  int16 (I, Q interleaved in IQ mode), IMA-ADPCM with flag 0x10 while compression is on (the default
  until ``SET compression=0``).

The samples come from the scene like a Kiwi's (:class:`sdrlab.sim.scene.FrameSource`), at the
receiver's true rate (``SimReceiver.sample_rate``: the host clock's, a few ppm off 12000).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import time
import urllib.parse
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..receivers.kiwiwire import SAMPLES_PER_FRAME
from ..timing import NS
from . import status
from .frontend import AgcSettings
from .scene import SimReceiver
from .session import ReceiverHub, Session, SimCore, StreamRecord

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from .scene import FrameSource

logger = logging.getLogger(__name__)

UBER_VERSION = "0.1.31"
#: samples per packet: radiod's 20 ms blocks at 12 kHz
PACKET_SAMPLES = 240
DEFAULT_FREQ_HZ = 14_074_000.0
DEFAULT_MODE = "usb"
_HEAD = struct.Struct("<3sBI")
_SMETER = struct.Struct(">H")
_STEREO = frozenset({"iq", "drm", "sas", "qam"})
_PASSBANDS = {"usb": (300.0, 2400.0), "lsb": (-2400.0, -300.0), "am": (-4900.0, 4900.0), "iq": (-5000.0, 5000.0)}

# IMA ADPCM (the emulation's encoder is kiwiclient's decoder run backwards)
_STEPS = (
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66, 73, 80, 88, 97,
    107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449, 494, 544, 598, 658, 724, 796,
    876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871,
    5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623,
    27086, 29794, 32767,
)
_INDEX_ADJUST = (-1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8)


class AdpcmEncoder:
    """IMA ADPCM, two 4-bit codes per byte, low nibble first; state carries across packets."""

    def __init__(self) -> None:
        self.index = 0
        self.prev = 0

    def encode(self, samples: npt.NDArray[np.int16]) -> bytes:
        out = bytearray()
        index, prev = self.index, self.prev
        codes = []
        for s in samples.tolist():
            step = _STEPS[index]
            diff = s - prev
            code = 0
            if diff < 0:
                code, diff = 8, -diff
            if diff >= step:
                code |= 4
                diff -= step
            if diff >= step >> 1:
                code |= 2
                diff -= step >> 1
            if diff >= step >> 2:
                code |= 1
            d = step >> 3
            if code & 1:
                d += step >> 2
            if code & 2:
                d += step >> 1
            if code & 4:
                d += step
            prev = max(-32768, min(32767, prev - d if code & 8 else prev + d))
            index = max(0, min(len(_STEPS) - 1, index + _INDEX_ADJUST[code]))
            codes.append(code)
        if len(codes) % 2:
            codes.append(codes[-1])
        for a, b in zip(codes[::2], codes[1::2]):
            out.append((b << 4) | a)
        self.index, self.prev = index, prev
        return bytes(out)


def status_page(rx: SimReceiver, *, users: int, uptime_s: float, now_unix: float | None = None) -> str:
    """``GET /status`` of the emulation (``HandleKiwiStatus``)."""
    date = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(now_unix))
    lines = [
        "status=active", "offline=no", f"name={rx.name}", f"sdr_hw=UberSDR {UBER_VERSION}",
        "bands=0-30000000", "freq_offset=0.000", f"users={min(users, rx.rx_chans)}", f"users_max={rx.rx_chans}",
        "preempt=0", f"gps=({rx.latitude:.6f}, {rx.longitude:.6f})",
        f"grid={status.maidenhead(rx.latitude, rx.longitude)}", "gps_good=1", "fixes=0", "fixes_min=0",
        "fixes_hour=0", f"tdoa_id={rx.id}", "tdoa_ch=1",
    ]
    if rx.altitude_m > 0:
        lines.append(f"asl={int(round(rx.altitude_m))}")
    lines += [
        f"loc={status.location(rx)}", f"sw_version=UberSDR_{UBER_VERSION}", "antenna=Multi-band HF antenna",
        "snr=20,20", "ant_connected=1", "adc_ov=0", "clk_ext_freq=0", "clk_ext_gps=0,0",
        f"uptime={int(uptime_s)}", "gps_date=0,0", f"date={date}", "ip_blacklist=00000000", "dx_file=0,00000000,0",
    ]
    return "\n".join(lines) + "\n"


def _query_escape(text: str) -> str:
    """Go's ``url.QueryEscape``."""
    return urllib.parse.quote_plus(text, safe="")


def _load_cfg(rx: SimReceiver) -> str:
    cfg = {
        "passbands": {m: {"lo": lo, "hi": hi} for m, (lo, hi) in _PASSBANDS.items()},
        "index_html_params": {"PAGE_TITLE": "KiwiSDR", "RX_TITLE": rx.name, "RX_LOC": status.location(rx),
                              "RX_QRA": "", "RX_ASL": int(round(rx.altitude_m)), "RX_GMAP": ""},
        "owner_info": "", "init": {"freq": 7020, "mode": "cw", "zoom": 0, "max_dB": -10, "min_dB": -110},
        "waterfall_cal": -3, "waterfall_min_dB": -110, "waterfall_max_dB": -10, "snr_meas_interval_hrs": 0,
    }
    return json.dumps(cfg, separators=(",", ":"))


class UberSndSession(Session):
    """One SND connection to the emulation."""

    stream_name = "SND"

    def __init__(self, core: SimCore, hub: ReceiverHub, ws: ServerConnection, path: str, ts: int, *,
                 channel: int, stream_seed: int) -> None:
        super().__init__(core, hub, ws, path, ts)
        self.channel = channel
        self.stream_seed = stream_seed
        self.fs = self.rx.sample_rate
        self.packet_wall = PACKET_SAMPLES / (self.fs * core.speed)
        self.mode = DEFAULT_MODE
        self.freq_hz = DEFAULT_FREQ_HZ
        self.low_cut, self.high_cut = _PASSBANDS[DEFAULT_MODE]
        self.compression = True
        self.init_sent = False
        self.seq = 0
        self.streaming = False
        self.source: FrameSource | None = None
        self.record: StreamRecord | None = None
        self._encoder = AdpcmEncoder()
        self._buf = np.zeros((0, 2), dtype=np.int16)
        self._smeter = 0
        self._next_frame = 0
        self._sent = 0  # samples sent so far in this stream
        self.t0_gps_ns = 0

    @property
    def complete(self) -> bool:
        return True  # no command-set watchdog in the emulation

    def check_watchdogs(self, now: float) -> None:
        """The emulation keeps idle sessions (its own timeouts are far longer than a capture)."""

    # ---- commands ---------------------------------------------------------------------------
    def on_text(self, text: str) -> None:
        if self.closing is not None:
            return
        cmd = text[:-1] if text.endswith("\n") else text
        if not cmd.startswith("SET "):
            return
        params: dict[str, str] = {}
        for part in cmd[4:].split():
            key, _, value = part.partition("=")
            params[key] = value
        if "auth" in params:
            if not self.init_sent:
                self.init_sent = True
                self._send_init()
                self._start()
            return
        if "mod" in params:
            self._tune(params)
        elif "compression" in params:
            self.compression = params["compression"] == "1"
        elif "in" in params and "out" in params:
            rate = params["in"]
            self.send(f"MSG audio_init=audio_rate={rate} audio_rate_true={rate}.000".encode())
        elif "keepalive" in cmd:
            self.keepalive_time = self.loop.time()

    def _send_init(self) -> None:
        rx = self.rx
        for key, value in (("rx_chans", rx.rx_chans), ("chan_no_pwd", 0), ("chan_no_pwd_true", 0),
                           ("max_camp", rx.rx_chans), ("badp", 0)):
            self.send(f"MSG {key}={value}".encode())
        self.send(b"MSG =version_maj=1 version_min=826 debian_ver=11 model=2 platform=0 hw=1 ext_clk=0 "
                  b"freq_offset=0.000 abyy=B25 dx_db_name=dx")
        self.send(f"MSG load_cfg={_query_escape(_load_cfg(rx))}".encode())
        dx = json.dumps({"dx_type": [{"key": i, "name": f"type-{i}", "color": "white"} for i in range(16)],
                         "band_svc": [], "bands": []}, separators=(",", ":"))
        self.send(f"MSG load_dxcfg={_query_escape(dx)}".encode())
        self.send(f"MSG load_dxcomm_cfg={_query_escape(dx)}".encode())
        for name, text in (("center_freq", "15000000"), ("bandwidth", "30000000"), ("adc_clk_nom", "66666600"),
                           ("sample_rate", str(rx.audio_rate)), ("client_public_ip", self.remote_ip),
                           ("is_local", "0,0,0")):
            self.send(f"MSG {name}={text}".encode())
        self.send(b"MSG cfg_loaded")
        self.send(f"MSG audio_init=0 audio_rate={rx.audio_rate}".encode())

    def _tune(self, params: dict[str, str]) -> None:
        try:
            freq = int(float(params.get("freq", "0")) * 1000) if "freq" in params else 0
            lo = int(float(params["low_cut"])) if "low_cut" in params else 0
            hi = int(float(params["high_cut"])) if "high_cut" in params else 0
        except ValueError:
            return
        if freq > 0:
            self.freq_hz = float(freq)
        mode = params.get("mod", "")
        if mode:
            self.mode = mode
        if lo != 0 and hi != 0 and hi > lo:
            self.low_cut, self.high_cut = float(lo), float(hi)
        elif mode in _PASSBANDS:
            self.low_cut, self.high_cut = _PASSBANDS[mode]
        if self.streaming:
            self._retune()

    # ---- streaming -------------------------------------------------------------------------
    def _new_source(self) -> FrameSource:
        core = self.core
        return core.scene.stream(self.rx.id, tuned_hz=self.freq_hz, t0_gps_ns=self.t0_gps_ns,
                                 t_ref_gps_ns=core.t_ref_gps_ns, low_cut=self.low_cut, high_cut=self.high_cut,
                                 stream_seed=self.stream_seed, agc=AgcSettings())

    def _start(self) -> None:
        core = self.core
        self.t0_gps_ns = self.core.clock_ns() - round(PACKET_SAMPLES / self.fs * NS)
        self.wall0 = self.next_due = self.loop.time()
        self.source = self._new_source()
        self.record = StreamRecord(
            receiver_id=self.rx.id, ts=self.ts, path=self.path, t0_gps_ns=self.t0_gps_ns, sample_rate=self.fs,
            tuned_hz=self.freq_hz, low_cut=self.low_cut, high_cut=self.high_cut, little_endian=False,
            frames_sent=0, seqs_skipped=[], close_reason=None, frames=[] if core.record_frames else None,
            stream_seed=self.stream_seed, t_ref_gps_ns=core.t_ref_gps_ns, mode=self.mode, channel=self.channel,
        )
        core.streams.append(self.record)
        self.streaming = True
        self.pumping = True

    def _retune(self) -> None:
        """The emulation's channel retunes; the stream's sample clock goes on."""
        self.source = self._new_source()
        self._buf = self._buf[:0]
        self._next_frame = self._sent // SAMPLES_PER_FRAME
        skip = self._sent - self._next_frame * SAMPLES_PER_FRAME
        self._fill(skip)
        self._buf = self._buf[skip:]
        if self.record is not None:
            self.record.retunes.append((self.seq, self.freq_hz, self.low_cut, self.high_cut, self.mode))

    def _fill(self, need: int) -> None:
        src = self.source
        assert src is not None
        while self._buf.shape[0] < need:
            iq = src.frame(self._next_frame)
            self._smeter = src.smeter
            self._next_frame += 1
            self._buf = np.concatenate([self._buf, iq])

    def on_closed(self) -> None:
        super().on_closed()
        if self.record is not None and self.record.close_reason is None:
            self.record.close_reason = self.closing

    def pump(self, now: float, until: float = math.inf) -> None:
        if self.closing is not None:
            return
        due = int((now - self.wall0) / self.packet_wall) + 1
        for _ in range(min(due - self.seq, 256)):
            if self.congested() or not self._emit():
                return
            if time.perf_counter() > until:
                break
        self.next_due = self.wall0 + self.seq * self.packet_wall

    def _emit(self) -> bool:
        self._fill(PACKET_SAMPLES)
        iq, self._buf = self._buf[:PACKET_SAMPLES], self._buf[PACKET_SAMPLES:]
        samples = iq.reshape(-1) if self.mode in _STEREO else iq[:, 0].copy()
        if self.compression:
            body, flags = self._encoder.encode(samples), 0x10
        else:
            body, flags = samples.astype(">i2").tobytes(), 0x00
        data = _HEAD.pack(b"SND", flags, self.seq) + _SMETER.pack(self._smeter) + body
        self.seq += 1
        self._sent += PACKET_SAMPLES
        if not self.send(data):
            return False
        if self.record is not None:
            self.record.frames_sent += 1
            if self.record.frames is not None:
                self.record.frames.append(data)
        return True
