"""What a KiwiSDR does to the antenna signal before the client sees it: the receive chain of the
simulated receivers.

In the order of the real server's sound task (``rx/rx_sound.cpp``, ``rx/CuteSDR/``):

1. **Passband filter** (:func:`passband_taps`): the complex FIR of ``CFastFIR`` -- a windowed-sinc
   low-pass of ``CONV_FIR_SIZE = CONV_FFT_SIZE/2 + 1 = 513`` taps with a Blackman-Nuttall window,
   shifted to the centre of the client's ``low_cut..high_cut``.  Its -6 dB points are the requested
   edges; the skirt falls to the window's ~-98 dB sidelobes within about 4 window bins
   (``4 fs / 513``, ~95 Hz at 12 kHz).  Signal and noise are filtered alike.  The FIR's group delay
   (256 samples) is compensated in the GPS stamps by the server, so the simulator applies the filter
   centred (no delay).
2. **S-meter**: the power of the filtered signal *before* the gain, in dBm with the receiver's
   calibration (so it does not move with AGC or manual gain).
3. **AGC or manual gain** (:class:`Agc`): the CuteSDR ``CAgc`` of ``rx/CuteSDR/agc.cpp`` with the
   client's ``SET agc=<on> hang= thresh= slope= decay= manGain=``: a peak detector over an 18 ms
   window, attack (2 ms rise / 5 ms fall) and decay averagers (``decay`` ms, rise 0.3 of it; with
   hang, a hold of ``decay`` ms then a 50 ms release), a fixed gain below the knee
   (``thresh`` dB) and a gain falling with slope ``slope/100`` above it, output limited to 0.7 of
   full scale.  The AGC delays the signal by its 15 ms delay line (180 samples at 12 kHz); the server
   compensates that in the stamps too, so sample ``n`` leaves with the gain the AGC reached
   ``DELAY`` samples later.  With AGC off the gain is ``manGain`` dB; the simulator's level
   calibration (``Scene.full_scale_dbm``) holds at ``manGain=50``, sdrlab's default.
4. **int16 output**: rounded and clipped to int16 (32768 = 0 dBFS).
5. **ADC overflow**: when the wideband input (every transmitter the antenna hears, not only those in
   the passband) peaks above the receiver's ADC clip level, the frame carries flag 0x02 and the
   clipping spreads distortion over the band (a crude model: 1 % of the excess power as white noise).

GPS stamps (:func:`gps_header`): the stamp of frame k is the receiver's own clock,
``t0 + 512 k / fs``, plus independent Gaussian jitter (``gps_jitter_s``).  The receiver's
*processing delay* (``processing_delay_s``, tens of microseconds between real Kiwis) is the part of
the pipeline delay the server does not compensate: its samples hold the antenna signal from that much
before their stamp.  Both are part of the scene's truth and invisible to the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt
from scipy.ndimage import maximum_filter1d

from ..receivers.kiwiwire import GPS_LAST_CAP, GPS_NO_CLOCK, SAMPLES_PER_FRAME, dbm_to_smeter
from ..timing import NS, WEEK_S
from ..constants import FULL_SCALE as FULL_SCALE

CArray = npt.NDArray[np.complex128]
FArray = npt.NDArray[np.float64]

#: taps of the Kiwi's passband FIR (CONV_FFT_SIZE 1024 / 2 + 1, rx/CuteSDR/fastfir.h and cuteSDR.h)
KIWI_FIR_TAPS = 513
#: the Blackman-Nuttall window coefficients of CFastFIR
BLACKMAN_NUTTALL = (0.3635819, 0.4891775, 0.1365995, 0.0106411)
#: int16 full scale of the output (0 dBFS)


# ---- 1. passband filter ----------------------------------------------------------------------
def passband_taps(low_hz: float, high_hz: float, fs: float, ntaps: int = KIWI_FIR_TAPS) -> CArray:
    """Complex bandpass FIR taps for ``low_hz .. high_hz`` (Hz relative to the tuned frequency) at
    sample rate ``fs``: a windowed-sinc low-pass of half-width ``(high - low)/2`` shifted to the
    band centre, as ``CFastFIR::SetupParameters`` designs it (unit gain in the passband)."""
    if not high_hz > low_hz:
        raise ValueError(f"passband {low_hz}..{high_hz} Hz is empty")
    n_fl, n_fh = low_hz / fs, high_hz / fs
    n_fc = (n_fh - n_fl) / 2.0
    shift = 2.0 * math.pi * (n_fh + n_fl) / 2.0
    x = np.arange(ntaps, dtype=np.float64) - (ntaps - 1) / 2.0
    w = np.zeros(ntaps)
    for k, a in enumerate(BLACKMAN_NUTTALL):
        w += (-1.0) ** k * a * np.cos(2.0 * math.pi * k * np.arange(ntaps) / (ntaps - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(x == 0.0, 2.0 * n_fc, np.sin(2.0 * math.pi * x * n_fc) / (math.pi * np.where(x == 0, 1.0, x)))
    out: CArray = (z * w) * np.exp(1j * shift * x)
    return out


def passband_response(taps: CArray, fs: float, freqs_hz: npt.ArrayLike) -> FArray:
    """Power response |H(f)|^2 of centred taps at ``freqs_hz`` (Hz relative to the tuned frequency)."""
    f = np.asarray(freqs_hz, dtype=np.float64)
    x = np.arange(taps.size, dtype=np.float64) - (taps.size - 1) / 2.0
    h = np.exp(-2j * math.pi * np.outer(f / fs, x)) @ taps
    return np.asarray(np.abs(h) ** 2, dtype=np.float64).reshape(f.shape)


# ---- 3. gain ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgcSettings:
    """The six numbers of ``SET agc=%d hang=%d thresh=%d slope=%d decay=%d manGain=%d``."""

    on: bool = False
    hang: bool = False
    thresh_db: int = -100
    slope: int = 6
    decay_ms: int = 1000
    man_gain_db: int = 50

    @classmethod
    def from_command(cls, values: Sequence[int | float | str]) -> AgcSettings:
        on, hang, thresh, slope, decay, man = (int(float(v)) for v in values)
        return cls(bool(on), bool(hang), thresh, slope, decay, man)

    def describe(self) -> str:
        if self.on:
            return (f"AGC on (hang={int(self.hang)} thresh={self.thresh_db} dB slope={self.slope} "
                    f"decay={self.decay_ms} ms)")
        return f"AGC off, manual gain {self.man_gain_db} dB"


#: reference manual gain at which the scene's level calibration holds (sdrlab's default manGain)
REFERENCE_MAN_GAIN_DB = 50
# CuteSDR agc.cpp constants
_DELAY_S = 0.015
_WINDOW_S = 0.018
_ATTACK_RISE_S = 0.002
_ATTACK_FALL_S = 0.005
_DECAY_RISEFALL = 0.3
_RELEASE_S = 0.05
_OUTSCALE = 0.7
_MAX_AMPLITUDE = 32767.0
_MIN_CONSTANT = 3.2767e-4


class Agc:
    """CuteSDR's ``CAgc`` (the KiwiSDR AGC), fed complex samples in int16 units, one block at a time.

    :meth:`gains` returns, for each input sample, the gain the AGC holds after seeing it; the server
    applies the gain at sample ``n + delay`` to input sample ``n`` (its delay line, compensated in the
    stamps).  With AGC off every gain is the manual gain.
    """

    def __init__(self, settings: AgcSettings, fs: float) -> None:
        self.settings = settings
        self.fs = fs
        self.delay = int(fs * _DELAY_S)
        self._window = max(1, int(fs * _WINDOW_S))
        self._history = np.full(self._window - 1, -16.0)
        self._attack = -5.0
        self._decay = -5.0
        self._hang_timer = 0
        self.configure(settings)

    def configure(self, s: AgcSettings) -> None:
        """New parameters (the averagers keep their state, as ``SetParameters`` does)."""
        fs = self.fs
        self.settings = s
        self._manual = 10.0 ** ((s.man_gain_db - REFERENCE_MAN_GAIN_DB) / 20.0)
        self._knee = s.thresh_db / 20.0
        self._slope = s.slope / 100.0
        self._fixed = _OUTSCALE * 10.0 ** (self._knee * (self._slope - 1.0))
        self._a_rise = 1.0 - math.exp(-1.0 / (fs * _ATTACK_RISE_S))
        self._a_fall = 1.0 - math.exp(-1.0 / (fs * _ATTACK_FALL_S))
        decay_s = max(s.decay_ms, 1) * 1e-3
        self._d_rise = 1.0 - math.exp(-1.0 / (fs * decay_s * _DECAY_RISEFALL))
        self._d_fall = 1.0 - math.exp(-1.0 / (fs * (_RELEASE_S if s.hang else decay_s)))
        self._hang_time = int(fs * decay_s)

    def gains(self, x: CArray) -> FArray:
        """Gain (output int16 units per input int16 unit) after each sample of ``x``.

        CAgc's recursion runs once per sample; here it runs once per stretch of constant windowed
        peak (the averagers' input), whose per-sample values follow in closed form
        ``p + (a - p) (1 - alpha)^j`` -- the same numbers, far fewer Python steps."""
        n = x.size
        if not self.settings.on:
            return np.full(n, self._manual)
        mag = np.maximum(np.abs(x.real), np.abs(x.imag))
        mag = np.log10(mag + _MIN_CONSTANT) - math.log10(_MAX_AMPLITUDE)
        hist = np.concatenate([self._history, mag])
        w = self._window
        peak = maximum_filter1d(hist, w, origin=(w - 1) // 2)[w - 1:]
        self._history = hist[-(w - 1):] if w > 1 else hist[:0]
        cut = np.flatnonzero(peak[1:] != peak[:-1]) + 1
        first = np.concatenate([[0], cut])
        starts, ends = first.tolist(), np.concatenate([cut, [n]]).tolist()
        pk = peak[first].tolist()
        att, dec, timer = self._attack, self._decay, self._hang_timer
        ra_rise, ra_fall = 1.0 - self._a_rise, 1.0 - self._a_fall
        rd_rise, rd_fall = 1.0 - self._d_rise, 1.0 - self._d_fall
        hang, hang_time = self.settings.hang, self._hang_time
        # stretches: (start, length, p, attack at start, attack ratio, decay at start, decay ratio)
        st: list[tuple[int, int, float, float, float, float, float]] = []
        for a, b, p in zip(starts, ends, pk):
            length = b - a
            ra = ra_rise if p > att else ra_fall
            pieces: list[tuple[int, float]] = []
            if p > dec:
                pieces.append((length, rd_rise))
                timer = 0
            elif hang and timer < hang_time:
                hold = min(length, hang_time - timer)
                timer += hold
                pieces.append((hold, 1.0))
                if hold < length:
                    pieces.append((length - hold, rd_fall))
            else:
                pieces.append((length, rd_fall))
            for m, rd in pieces:
                st.append((a, m, p, att, ra, dec, rd))
                att = p + (att - p) * ra**m
                dec = p + (dec - p) * rd**m
                a += m
        self._attack, self._decay, self._hang_timer = att, dec, timer
        arr = np.array(st, dtype=np.float64)
        rep = np.repeat(arr, arr[:, 1].astype(np.int64), axis=0)
        j = np.arange(1.0, n + 1.0) - rep[:, 0]
        level = np.maximum(rep[:, 2] + (rep[:, 3] - rep[:, 2]) * rep[:, 4] ** j,
                           rep[:, 2] + (rep[:, 5] - rep[:, 2]) * rep[:, 6] ** j)
        return np.where(level <= self._knee, self._fixed, _OUTSCALE * 10.0 ** (level * (self._slope - 1.0)))


# ---- GPS header ------------------------------------------------------------------------------
def gps_header(
    stamp_ns: int, k: int, *, mode: str, fix_interval_s: float, fix_phase_s: float, frame_s: float,
) -> tuple[int, int, int]:
    """(last_gps_solution, gpssec, gpsnsec) of frame ``k`` stamped ``stamp_ns`` (GPS ns): zeros in
    the first frame and when GPS timestamps are disabled; 255 without a fix; otherwise seconds since
    the last fix, fixes arriving every ``fix_interval_s`` at GPS times offset by ``fix_phase_s``."""
    if k == 0 or mode == "disabled":
        return 0, 0, 0
    gsec = (stamp_ns // NS) % WEEK_S
    gnsec = stamp_ns % NS
    if mode == "no_fix":
        return GPS_NO_CLOCK, gsec, gnsec
    if fix_interval_s <= 0:
        return min(GPS_LAST_CAP, int(k * frame_s)), gsec, gnsec
    since = math.fmod(stamp_ns / NS - fix_phase_s, fix_interval_s)
    return min(GPS_LAST_CAP, int(since)), gsec, gnsec


def smeter(power_fs: float, full_scale_dbm: float) -> int:
    """S-meter field for a mean power in full-scale units (|z| = 1 is 0 dBFS), in dBm."""
    dbm = 10.0 * math.log10(power_fs) + full_scale_dbm if power_fs > 0.0 else -127.0
    return dbm_to_smeter(dbm)


def quantise(z: CArray) -> tuple[npt.NDArray[np.int16], int]:
    """Full-scale complex samples as (n, 2) int16 I, Q (rounded, clipped) and the clipped count."""
    y = np.empty((z.size, 2))
    y[:, 0] = z.real
    y[:, 1] = z.imag
    y *= FULL_SCALE
    np.rint(y, out=y)
    clipped = int(np.count_nonzero((y > 32767) | (y < -32768)))
    np.clip(y, -32768, 32767, out=y)
    return y.astype(np.int16), clipped


__all__ = [
    "Agc", "AgcSettings", "BLACKMAN_NUTTALL", "KIWI_FIR_TAPS", "REFERENCE_MAN_GAIN_DB", "gps_header",
    "passband_response", "passband_taps", "quantise", "smeter", "SAMPLES_PER_FRAME",
]
