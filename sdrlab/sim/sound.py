"""SND streams (``rx/rx_sound.cpp``, ``rx/rx_sound_cmd.cpp``): the CMD_ALL gate, IQ and mono
frames, GPS stamps, pacing and the injected stream faults.

Time bases: frame k (seq k+1) covers samples 512k...512k+511 of the stream; its GPS stamp is
``t0 + round(512*k*1e9/fs)`` ns and it is sent at loop time ``start + 512*k/(fs*speed)``.  Fault
durations (``close_after_s``, ``stall_after_s``, ``inactivity_after_s``, ``ip_limit_after_s``,
``garbage_after_s``) count *stream* seconds, i.e. ``512*k/fs`` -- wall seconds divided by ``speed``.

Flags follow v1.711: 0x08 in IQ/stereo modes, 0x80 after ``SET little-endian``, 0x02 when the
frame clipped, 0x04 on the first frame after a change of frequency or mode and 0x01 on the first
frame after a passband change -- so the very first frame carries 0x04|0x01 too, because the
initial ``SET mod`` is such a change (``change_freq_mode``/``change_LPF`` in the server).
Audio (non-stereo) modes send uncompressed mono frames (10-byte header, 512 int16 of the real
part) whatever ``SET compression`` says; 0x10 is never set.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..receivers.kiwiwire import (
    FLAG_ADC_OVERFLOW,
    FLAG_LITTLE_ENDIAN,
    FLAG_LPF,
    FLAG_NEW_FREQ,
    FLAG_RESTART,
    FLAG_STEREO,
    SAMPLES_PER_FRAME,
    dbm_to_smeter,
    encode_msg,
    pack_snd_frame,
    samples_to_wire,
)
from ..timing import NS
from . import status
from .frontend import AgcSettings, gps_header
from .scene import FULL_SCALE
from .session import ReceiverHub, Session, SimCore, StreamRecord, scanf

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from .scene import FrameSource

logger = logging.getLogger(__name__)

# cmd_recv bits (rx/rx_sound_cmd.h)
CMD_FREQ = 0x01
CMD_MODE = 0x02
CMD_PASSBAND = 0x04
CMD_AGC = 0x08
CMD_AR_OK = 0x10
CMD_ALL = CMD_FREQ | CMD_MODE | CMD_PASSBAND | CMD_AGC | CMD_AR_OK

MODES = frozenset(
    {"am", "amn", "amw", "usb", "usn", "lsb", "lsn", "cw", "cwn", "nbfm", "nnfm", "iq", "drm",
     "sal", "sau", "sas", "qam"}
)
STEREO_MODES = frozenset({"iq", "drm", "sas", "qam"})
#: at most this many frames per stream in one pacing tick (a client far behind catches up over
#: several ticks, so one slow stream cannot starve the others)
MAX_BURST = 256
#: the server's empirical processing delay between a sample and its frame (gps_delay, rx_sound.cpp)
PIPELINE_DELAY_NS = 28_926_838

_TAG_FLAGS_SEQ = struct.Struct("<3sBI")
_SMETER = struct.Struct(">H")
_TUNE_FMT = "SET mod=%16ms low_cut=%lf high_cut=%lf freq=%lf param=%d"
_SND_NOOPS = (
    "SET genattn=", "SET gen=", "SET nb ", "SET nr ", "SET de_emp=", "SET mute=", "SET ovld_mute=",
    "SET rf_attn=", "SET window_func=", "SET spc_=", "SET dbgAudioStart=", "SET sam_pll=",
    "SET UAR ", "SET underrun=", "SET seq=", "SET autonotch=", "SET lms_", "SET test=",
)


def smeter_of(iq: npt.NDArray[np.int16], full_scale_dbm: float) -> int:
    """S-meter field of a frame: mean power in full-scale units, in dBm."""
    x = iq.astype(np.float64).ravel()
    p = float(np.dot(x, x)) / (SAMPLES_PER_FRAME * FULL_SCALE * FULL_SCALE)
    dbm = 10.0 * math.log10(p) + full_scale_dbm if p > 0.0 else -127.0
    return dbm_to_smeter(dbm)


class SndSession(Session):
    stream_name = "SND"

    def __init__(
        self,
        core: SimCore,
        hub: ReceiverHub,
        ws: ServerConnection,
        path: str,
        ts: int,
        *,
        channel: int,
        stream_seed: int,
    ) -> None:
        super().__init__(core, hub, ws, path, ts)
        self.channel = channel
        self.stream_seed = stream_seed
        self.fs = self.rx.sample_rate
        self.frame_s = SAMPLES_PER_FRAME / self.fs
        self.frame_wall = self.frame_s / core.speed
        self.cmd_recv = 0
        self.mode: str | None = None
        self.freq_khz: float | None = None
        self.low_cut = 0.0
        self.high_cut = 0.0
        self.compression = 1  # the server's default (never applied to IQ)
        self.agc = AgcSettings()
        self.little_endian = False
        self.pending_flags = 0
        # streaming state
        self.streaming = False
        self.stalled = False
        self.k = 0
        self.wall0 = 0.0
        self.t0_gps_ns = 0
        self.activity_s = 0.0
        self.close_fault = False
        self.stall_fault = False
        self.source: FrameSource | None = None
        self.record: StreamRecord | None = None
        self._cache: dict[int, tuple[bytes, int, bool]] = {}
        self._cache_key: tuple[Any, ...] | None = None
        self._twin = replace(self.rx, id="")  # what the looped frames depend on (not the id)
        self._rand = random.Random(hash((core.scene.seed, hub.index, stream_seed)))

    # ---- lifecycle ------------------------------------------------------------------------
    def on_open(self) -> None:
        f = self.rx.faults
        if not f.legacy_msgs and not f.sample_rate_after_ar:
            self.send_msg(("sample_rate", f"{self.rx.announced_sample_rate:.6f}"))

    def on_authenticated(self) -> None:
        self.send(encode_msg([("center_freq", status.CENTER_FREQ_HZ), ("bandwidth", status.BANDWIDTH_HZ),
                              ("adc_clk_nom", status.ADC_CLK_NOM)]))
        if self.rx.faults.legacy_msgs:
            self.send(encode_msg([("audio_init", 0), ("audio_rate", self.rx.audio_rate),
                                  ("sample_rate", f"{self.rx.announced_sample_rate:.3f}")]))
        else:
            self.send(encode_msg([("audio_init", 0), ("audio_rate", self.rx.audio_rate)]))

    def on_closed(self) -> None:
        super().on_closed()
        if self.record is not None and self.record.close_reason is None:
            self.record.close_reason = self.closing

    @property
    def complete(self) -> bool:
        return self.cmd_recv == CMD_ALL

    @property
    def stereo(self) -> bool:
        return self.mode in STEREO_MODES

    # ---- commands ---------------------------------------------------------------------------
    def on_command(self, cmd: str) -> bool:
        known = True
        if cmd.startswith("SET mod="):
            self._tune(cmd)
        elif cmd.startswith("SET agc="):
            vals = scanf("SET agc=%d hang=%d thresh=%d slope=%d decay=%d manGain=%d", cmd)
            if len(vals) == 6:
                self.cmd_recv |= CMD_AGC
                self.agc = AgcSettings.from_command(vals)
                if self.source is not None:
                    self.source.set_agc(self.agc)
                if self.record is not None:
                    self.record.agc = self.agc
        elif cmd.startswith("SET AR OK"):
            vals = scanf("SET AR OK in=%d out=%d", cmd)
            if len(vals) == 2 and vals[1] != 0:
                if not self.cmd_recv & CMD_AR_OK and self.rx.faults.sample_rate_after_ar:
                    self.send_msg(("sample_rate", f"{self.rx.announced_sample_rate:.6f}"))
                self.cmd_recv |= CMD_AR_OK
        elif cmd.startswith("SET compression="):
            vals = scanf("SET compression=%d", cmd)
            if vals:
                self.compression = int(vals[0])
        elif cmd.startswith("SET squelch="):
            known = len(scanf("SET squelch=%d param=%f", cmd)) in (1, 2)
        elif cmd == "SET little-endian":
            if not self.little_endian:
                self.little_endian = True
                if self.record is not None:
                    self.record.little_endian = True
        elif cmd == "SET reinit":
            self.pending_flags |= FLAG_RESTART
        elif not cmd.startswith(_SND_NOOPS):
            known = False
        if not self.streaming and self.cmd_recv == CMD_ALL and self.auth and self.closing is None:
            self._start()
        return known

    def _tune(self, cmd: str) -> None:
        vals = scanf(_TUNE_FMT, cmd)
        if len(vals) not in (4, 5):
            logger.debug("%s SND %s: bad tune command %.80r", self.rx.id, self.ts, cmd)
            return
        mode, lo, hi, freq = str(vals[0]), float(vals[1]), float(vals[2]), float(vals[3])
        retune = False
        if self.freq_khz != freq:
            self.freq_khz = freq
            self.cmd_recv |= CMD_FREQ
            self.pending_flags |= FLAG_NEW_FREQ
            retune = True
        if mode != "x":
            self.cmd_recv |= CMD_MODE
            if mode not in MODES:
                mode = "am"
                self.pending_flags |= FLAG_NEW_FREQ
            if self.mode != mode or len(vals) == 5:
                self.mode = mode
                self.pending_flags |= FLAG_NEW_FREQ
                self.activity_s = self.k * self.frame_s
        if not (lo == 0.0 and hi == 0.0) and (lo, hi) != (self.low_cut, self.high_cut):
            fmax = self.fs / 2.0 - 1.0
            self.low_cut, self.high_cut = max(lo, -fmax), min(hi, fmax)
            self.cmd_recv |= CMD_PASSBAND
            self.pending_flags |= FLAG_LPF
            retune = True
        if retune:
            self.activity_s = self.k * self.frame_s
            if self.streaming:
                self._retune()

    # ---- streaming -------------------------------------------------------------------------
    def _new_source(self) -> FrameSource:
        core = self.core
        return core.scene.stream(
            self.rx.id,
            tuned_hz=(self.freq_khz or 0.0) * 1000.0,
            t0_gps_ns=self.t0_gps_ns,
            t_ref_gps_ns=core.t_ref_gps_ns,
            low_cut=self.low_cut,
            high_cut=self.high_cut,
            stream_seed=self.stream_seed,
            loop_frames=core.loop_frames,
            agc=self.agc,
        )

    def _start(self) -> None:
        rx, hub, core = self.rx, self.hub, self.core
        faults = rx.faults
        # frame k is sent at wall0 + k frames; its first sample was taken one frame plus the
        # receiver's processing delay (gps_delay, rx_sound.cpp) before that, as on a real Kiwi
        self.t0_gps_ns = self.core.clock_ns() - round(self.frame_s * NS) - PIPELINE_DELAY_NS
        self.wall0 = self.next_due = self.loop.time()
        self.k = 0
        self.activity_s = 0.0
        self.close_fault = faults.close_after_s is not None and hub.take("close_given", faults.close_times)
        self.stall_fault = faults.stall_after_s is not None and hub.take("stall_given", faults.stall_times)
        self.source = self._new_source()
        self.record = StreamRecord(
            receiver_id=rx.id,
            ts=self.ts,
            path=self.path,
            t0_gps_ns=self.t0_gps_ns,
            sample_rate=self.fs,
            tuned_hz=(self.freq_khz or 0.0) * 1000.0,
            low_cut=self.low_cut,
            high_cut=self.high_cut,
            little_endian=self.little_endian,
            frames_sent=0,
            seqs_skipped=[],
            close_reason=None,
            frames=[] if core.record_frames else None,
            stream_seed=self.stream_seed,
            t_ref_gps_ns=core.t_ref_gps_ns,
            loop_frames=core.loop_frames,
            mode=self.mode or "",
            channel=self.channel,
            agc=self.agc,
        )
        core.streams.append(self.record)
        self.streaming = True
        self.pumping = True
        logger.info("%s SND %s: streaming on rx%d at %.3f kHz (%s)", rx.id, self.ts, self.channel,
                    self.freq_khz or 0.0, self.mode)

    def _retune(self) -> None:
        self.source = self._new_source()
        if self.record is not None:
            self.record.retunes.append(
                (self.k, (self.freq_khz or 0.0) * 1000.0, self.low_cut, self.high_cut, self.mode or "")
            )

    def pump(self, now: float, until: float = math.inf) -> None:
        if self.stalled or self.closing is not None:
            return
        due = int((now - self.wall0) / self.frame_wall) + 1
        n = min(due - self.k, MAX_BURST)
        for _ in range(n):
            if self.congested() or not self._emit():
                return
            if time.perf_counter() > until:
                break
        self.next_due = self.wall0 + self.k * self.frame_wall

    def _emit(self) -> bool:
        """Produce frame ``self.k`` (send it, skip it or apply a fault); False to stop this tick."""
        k = self.k
        t = k * self.frame_s
        f = self.rx.faults
        if self.close_fault and f.close_after_s is not None and t >= f.close_after_s:
            self.abort("close_fault")
            return False
        if self.stall_fault and f.stall_after_s is not None and t >= f.stall_after_s:
            self.stalled = True
            logger.info("%s SND %s: stalling after %d frames", self.rx.id, self.ts, k)
            return False
        if not self.tlimit_exempt:
            if f.ip_limit_after_s and t >= f.ip_limit_after_s:
                self.close("ip_limit", ("ip_limit", f"{status.minutes(f.ip_limit_after_s)},{self.remote_ip}"))
                return False
            if f.inactivity_after_s is not None and t - self.activity_s >= f.inactivity_after_s:
                self.close("inactivity_timeout", ("inactivity_timeout", status.minutes(f.inactivity_after_s)))
                return False
        self.k = k + 1
        seq = k + 1
        record = self.record
        assert record is not None
        if f.garbage_after_s is not None and t >= f.garbage_after_s:
            self._send_garbage(seq)
            return True
        wire, smeter, overflow = self._samples(k)
        if f.seq_gap_every and seq % f.seq_gap_every == 0:
            record.seqs_skipped.append(seq)
            return True
        flags = self.pending_flags
        self.pending_flags = 0
        if overflow:
            flags |= FLAG_ADC_OVERFLOW
        if self.little_endian:
            flags |= FLAG_LITTLE_ENDIAN
        if self.stereo:
            last, gsec, gnsec = self.source.header(k) if self.source is not None else (0, 0, 0)
            data = pack_snd_frame(flags=flags | FLAG_STEREO, seq=seq, smeter=smeter, last_gps_solution=last,
                                  gpssec=gsec, gpsnsec=gnsec, samples=wire)
        else:
            data = _TAG_FLAGS_SEQ.pack(b"SND", flags, seq) + _SMETER.pack(smeter) + wire
        if not self.send(data):
            return False
        record.frames_sent += 1
        if record.frames is not None:
            record.frames.append(data)
        return True

    def _samples(self, k: int) -> tuple[bytes, int, bool]:
        """Wire sample bytes, S-meter and overflow flag of frame k (cached per loop frame)."""
        src = self.source
        assert src is not None
        loop = self.core.loop_frames
        if loop:
            # the frames of this tuning, whichever stream made them; receivers that differ only by
            # their id (a load test's replicas of one receiver) share them too
            shared = (self._twin, self.freq_khz, self.low_cut, self.high_cut, self.stereo,
                      self.little_endian, self.agc)
            if shared != self._cache_key:
                self._cache_key = shared
                self._cache = self.core.loop_cache.setdefault(shared, {})
            key = k % loop
            hit = self._cache.get(key)
            if hit is None:
                iq = src.frame(k)
                hit = self._cache[key] = self._encode(iq, src.smeter, src.overflow)
            return hit
        iq = src.frame(k)
        return self._encode(iq, src.smeter, src.overflow)

    def _encode(self, iq: npt.NDArray[np.int16], smeter: int, overflow: bool) -> tuple[bytes, int, bool]:
        if self.stereo:
            wire = samples_to_wire(iq, self.little_endian)
        else:
            wire = np.ascontiguousarray(iq[:, 0], dtype="<i2" if self.little_endian else ">i2").tobytes()
        return wire, smeter, overflow

    def _gps(self, k: int) -> tuple[int, int, int]:
        """(last_gps_solution, gpssec, gpsnsec) of frame k without stamp jitter (the header logic of
        :func:`sdrlab.sim.frontend.gps_header`; streams use their source's :meth:`header`)."""
        interval = self.rx.gps_fix_interval_s
        stamp = self.t0_gps_ns + round(SAMPLES_PER_FRAME * k * 1e9 / self.fs)
        return gps_header(stamp, k, mode=self.rx.faults.gps, fix_interval_s=interval,
                          fix_phase_s=(self.hub.index * 0.37) % interval if interval > 0 else 0.0,
                          frame_s=self.frame_s)

    def _send_garbage(self, seq: int) -> None:
        """Malformed output: SND frames of the wrong length, or random bytes with an unknown tag."""
        rnd = self._rand
        if seq % 2:
            good = pack_snd_frame(flags=FLAG_STEREO, seq=seq, smeter=0, last_gps_solution=0, gpssec=0,
                                  gpsnsec=0, samples=rnd.randbytes(SAMPLES_PER_FRAME * 4))
            size = rnd.choice((1000, len(good) - 1, len(good) + 1, 3000))
            data = (good + rnd.randbytes(size))[:size]
        else:
            data = b"XQZ" + rnd.randbytes(rnd.randint(16, 600))
        if self.send(data) and self.record is not None:
            self.record.garbage_sent += 1
