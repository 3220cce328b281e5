"""Demodulators of a simulated OpenWebRX channel (protocol page sections 2.2, 4.1, 11.2, 11.3).

Each takes the channel's complex samples (after the bandpass, at ``output_rate``) block by block,
keeps its state across blocks, and returns audio floats (full scale +-1) at the same rate:

* ``nfm``: quadrature FM discriminator (phase step / pi), limiter, the NFM de-emphasis, which in
  OpenWebRX is a band-pass (here a linear-phase FIR: -27 dB at DC, unity at 300 Hz, then falling
  6 dB per octave, closed above 4 kHz), then AGC;
* ``am``: envelope, DC blocker, AGC;
* ``usb`` / ``lsb`` / ``cw``: the real part of the (already one-sided) channel, AGC;
* ``wfm``: discriminator on the 200 kHz IF, 50 us de-emphasis, resampled to ``hd_output_rate``
  (type 0x04 audio), no AGC (section 11.3).

The AGC holds the audio peaks near :data:`AGC_TARGET`: fast attack, slow decay, gain at most
:data:`AGC_MAX_GAIN`.  These are this simulator's designs, not csdr's coefficients.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import signal as sp_signal

__all__ = ["AUDIO_MODS", "WFM_IF_RATE", "Demodulator", "Resampler", "nfm_deemphasis_taps"]

C128 = npt.NDArray[np.complex128]
F64 = npt.NDArray[np.float64]

#: modes with an audio demodulator here
AUDIO_MODS = ("nfm", "wfm", "am", "usb", "lsb", "cw")
#: the WFM demodulator's input (the selector's fixed IF, U ``csdr/chain/analog.py``), Hz
WFM_IF_RATE = 200_000
#: WFM de-emphasis time constant, s
WFM_TAU_S = 50e-6
AGC_TARGET = 0.5
AGC_MAX_GAIN = 1.0e5
#: AGC step: gain evaluated per this many samples
AGC_BLOCK = 32
#: per-AGC-block gain rise (decay of the level estimate), fraction
AGC_DECAY = 0.004


def nfm_deemphasis_taps(rate: int) -> F64:
    """The NFM de-emphasis band-pass at ``rate``: -27 dB at DC, 1 at 300 Hz, 300/f above, 0 above
    4.2 kHz (the corners scaled down below 10 kHz rates so they stay under Nyquist)."""
    nyq = rate / 2.0
    f = np.array([0.0, 100.0, 200.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0, 4200.0, nyq]) * min(1.0, nyq / 5000.0)
    f[-1] = nyq
    g = np.array([10 ** (-27 / 20), 0.25, 0.7, 1.0, 0.5, 0.25, 0.125, 300.0 / 3600.0, 0.0, 0.0])
    taps = sp_signal.firwin2(int(rate / 40) | 1, f, g, fs=rate)
    hann = np.hanning(taps.size)
    taps -= (taps.sum() - g[0]) * hann / hann.sum()  # exactly -27 dB at DC
    return np.asarray(taps, dtype=np.float64)


class Resampler:
    """A streaming rational resampler ``rate_in`` -> ``rate_out`` (polyphase FIR, state kept)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        cutoff = 0.45 * min(rate_in, rate_out)
        n = 24 * max(self.up, self.down) + 1
        self.taps = np.asarray(sp_signal.firwin(n, cutoff, fs=rate_in * self.up) * self.up, dtype=np.float64)
        hist = -(-len(self.taps) // self.up)  # input samples the filter spans
        self.hist = -(-hist // self.down) * self.down  # a whole number of output periods
        self._buf = np.zeros(self.hist)
        self._pending = np.zeros(0)

    def process(self, x: F64) -> F64:
        data = np.concatenate([self._pending, x])
        use = data.size - data.size % self.down
        self._pending = data[use:]
        if use == 0:
            return np.zeros(0)
        full = np.concatenate([self._buf, data[:use]])
        self._buf = full[full.size - self.hist :]
        y = sp_signal.upfirdn(self.taps, full, self.up, self.down)
        skip = self.hist * self.up // self.down
        return np.asarray(y[skip : skip + use * self.up // self.down], dtype=np.float64)


class Demodulator:
    """One demodulator with its state (see the module docstring); ``out_rate``: the audio rate
    (the channel's for all but WFM, whose channel is the 200 kHz IF)."""

    def __init__(self, mod: str, rate: int, out_rate: int | None = None) -> None:
        if mod not in AUDIO_MODS:
            raise ValueError(f"no demodulator for {mod!r}")
        self.mod, self.rate = mod, rate
        self.out_rate = out_rate or rate
        self._resampler = Resampler(rate, self.out_rate) if self.out_rate != rate else None
        self._deemph = math.exp(-1.0 / (WFM_TAU_S * rate))
        self._deemph_zi = np.zeros(1)
        self._last = 1.0 + 0j  # previous complex sample (FM discriminator)
        self._gain = 1.0
        self._fir = nfm_deemphasis_taps(rate) if mod == "nfm" else None
        self._fir_zi = np.zeros(self._fir.size - 1) if self._fir is not None else np.zeros(0)
        self._dc_zi = np.zeros(1)

    def process(self, x: C128) -> F64:
        if x.size == 0:
            return np.zeros(0)
        if self.mod == "wfm":
            prev = np.concatenate([[self._last], x[:-1]])
            self._last = complex(x[-1])
            y = np.angle(x * np.conj(prev)) / np.pi
            a = self._deemph
            y, self._deemph_zi = sp_signal.lfilter([1.0 - a], [1.0, -a], y, zi=self._deemph_zi)
            out = np.asarray(y, dtype=np.float64)
            return self._resampler.process(out) if self._resampler is not None else out
        if self.mod == "nfm":
            prev = np.concatenate([[self._last], x[:-1]])
            self._last = complex(x[-1])
            y = np.angle(x * np.conj(prev)) / np.pi
            y = np.clip(y, -1.0, 1.0)
            assert self._fir is not None
            y, self._fir_zi = sp_signal.lfilter(self._fir, [1.0], y, zi=self._fir_zi)
        elif self.mod == "am":
            y, self._dc_zi = sp_signal.lfilter([1.0, -1.0], [1.0, -0.995], np.abs(x), zi=self._dc_zi)
        else:
            y = np.real(x)
        return self._agc(np.asarray(y, dtype=np.float64))

    def _agc(self, y: F64) -> F64:
        out = np.empty_like(y)
        for s in range(0, y.size, AGC_BLOCK):
            seg = y[s : s + AGC_BLOCK]
            peak = float(np.max(np.abs(seg))) if seg.size else 0.0
            want = min(AGC_MAX_GAIN, AGC_TARGET / peak) if peak > 0 else AGC_MAX_GAIN
            start = self._gain
            self._gain = want if want < self._gain else min(want, self._gain * (1.0 + AGC_DECAY))
            out[s : s + AGC_BLOCK] = seg * np.linspace(start, self._gain, seg.size)
        return out
