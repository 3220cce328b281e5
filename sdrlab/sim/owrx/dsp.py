"""A simulated OpenWebRX SDR's band, its FFT rows and a listener's channel (protocol page sections
2.3, 4.4, 4.5, 5).

Levels: complex IQ with |x| = 1 is full scale (the server's float IQ); powers are mean |x|^2 in FS^2,
dB values dBFS.  The band is white complex Gaussian noise of density ``noise_dbfs_hz`` plus
:class:`~sdrlab.sim.owrx.signals.Emitter` s.  Time is the SDR's (seconds since it started).

* :class:`SpectrumChain`: FFT rows as csdr makes them (symmetric Hamming window of ``fft_size``,
  unnormalised DFT, ``A`` periodograms ``hop`` apart averaged linearly, ``10 log10 - 70``, halves
  swapped so bin k is ``center - samp_rate/2 + k samp_rate/N``), computed without synthesising
  2.4 MS/s (which cost 0.6 s of CPU per second of rows): the noise of a bin is its exact mean
  ``N0 samp_rate sum(w^2)`` times the fluctuation of an average of ``A`` periodograms (gamma with
  the overlap's effective degrees of freedom, neighbouring bins correlated as the window makes
  them); each emitter's periodograms are taken exactly at the emitter's own times on a short
  window spanning the same duration (so the same bin spacing and main lobe) at a low rate around
  the emitter, scaled so a tone reads ``20 log10(A sum w) - 70`` as section 4.5 says.  Emitter and
  noise power add (their cross term averages out over ``A`` periodograms).
* :class:`ChannelChain`: one listener's channel at its ``output_rate`` R around ``offset_freq``:
  noise of the band's density drawn at R, emitters within reach rendered at 4R, low-passed and
  decimated, then the unity-gain complex bandpass ``low_cut..high_cut`` (~320 Hz transitions,
  none when a cut is null); the S-meter is the mean |x|^2 of every 5th sample of one block at the
  fork's block size and cadence (section 5).  :meth:`ChannelChain.truth_power` is the power the
  S-meter estimates, from the emitters' exact line spectra and the filters' responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from scipy import optimize
from scipy import signal as sp_signal

from ...receivers.owrxwire import FFT_OFFSET_DB
from .signals import Emitter

__all__ = ["Band", "ChannelChain", "SpectrumChain", "bandpass_taps", "fft_averaging", "smeter_schedule"]

C128 = npt.NDArray[np.complex128]
F64 = npt.NDArray[np.float64]

#: the S-meter uses every 5th sample of a block (``Squelch(5, ...)``, U selector.py)
SMETER_DECIMATION = 5
#: bandpass transition width, Hz (U ``selector.py:96-98``: 320 Hz)
BANDPASS_TRANSITION_HZ = 320.0
#: emitters are rendered for the channel at this multiple of the channel rate, then decimated
OVERSAMPLE = 4
#: the narrow window an emitter's periodograms are taken on spans at least this much, Hz
EMITTER_SPAN_HZ = 30_000.0


@dataclass(frozen=True)
class Band:
    """The ground truth of one SDR profile's antenna: noise density and emitters; ``seed`` for noise."""

    noise_dbfs_hz: float = -100.0
    emitters: tuple[Emitter, ...] = field(default_factory=tuple)
    seed: int = 15

    @property
    def n0(self) -> float:
        """Noise density, FS^2/Hz (linear)."""
        return float(10.0 ** (self.noise_dbfs_hz / 10.0))

    def as_seen(self, clock: float) -> Band:
        """The band as an SDR whose clock runs ``clock`` times fast reports it (its local
        oscillator and ADC share the crystal): every emitter at ``freq_hz / clock``.  The
        modulation's own rates (a tone's 1 kHz, scaled by the same ppm: millihertz) and the
        noise density per reported Hz are left as they are."""
        if clock == 1.0:
            return self
        return replace(self, emitters=tuple(replace(e, freq_hz=e.freq_hz / clock) for e in self.emitters))


def hamming(n: int) -> F64:
    """csdr's symmetric Hamming window 0.54 - 0.46 cos(2 pi i / (n - 1))."""
    i = np.arange(n)
    return np.asarray(0.54 - 0.46 * np.cos(2.0 * np.pi * i / (n - 1)), dtype=np.float64)


def fft_averaging(samp_rate: int, fft_size: int, fft_fps: int, voverlap: float) -> tuple[int, int]:
    """(A, hop): FFTs averaged per row and the hop between them (U ``csdr/chain/fft.py:75-85``)."""
    if voverlap <= 0:
        return 1, int(samp_rate / fft_fps)
    avg = max(1, round(samp_rate / fft_size / fft_fps / (1.0 - voverlap)))
    return avg, int(samp_rate / fft_fps / avg)


def _noise_statistics(window: F64, avg: int, hop: int) -> tuple[float, float]:
    """(shape, b): gamma shape per bin before smoothing and the smoothing kernel [b, 1-2b, b] that
    give an average of ``avg`` periodograms ``hop`` apart its variance and adjacent-bin correlation."""
    n = window.size
    w2 = window * window
    rho = [1.0]  # periodogram correlation between frames m apart (white noise)
    for m in range(1, avg):
        lag = m * hop
        if lag >= n:
            break
        rho.append(float(np.sum(window[: n - lag] * window[lag:]) / np.sum(w2)) ** 2)
    var = sum((avg - abs(m)) * (rho[abs(m)] if abs(m) < len(rho) else 0.0) for m in range(-avg + 1, avg)) / avg**2
    c1 = abs(np.sum(w2 * np.exp(-2j * np.pi * np.arange(n) / n))) / float(np.sum(w2))
    r1 = float(c1) ** 2  # adjacent bins' periodogram correlation
    b = 0.0
    if r1 > 1e-6:
        def f(x: float) -> float:
            a = 1.0 - 2.0 * x
            return (2.0 * a * x + 0.0) / (a * a + 2.0 * x * x) - r1
        b = float(optimize.brentq(f, 0.0, 0.33))
    a = 1.0 - 2.0 * b
    shape = (a * a + 2.0 * b * b) / var
    return shape, b


class SpectrumChain:
    """FFT rows of one SDR profile (see the module docstring); row k covers SDR time
    ``t0 + k period .. t0 + (k+1) period``."""

    def __init__(self, band: Band, center_freq: int, samp_rate: int, fft_size: int = 4096,
                 fft_fps: int = 9, voverlap: float = 0.3, *, t0: float = 0.0, stream: int = 0) -> None:
        self.band, self.center_freq, self.samp_rate = band, center_freq, samp_rate
        self.fft_size, self.fft_fps, self.t0, self.stream = fft_size, fft_fps, t0, stream
        self.avg, self.hop = fft_averaging(samp_rate, fft_size, fft_fps, voverlap)
        self.period = self.avg * self.hop / samp_rate
        window = hamming(fft_size)
        self.sum_w, self.sum_w2 = float(window.sum()), float((window * window).sum())
        self.bin_hz = samp_rate / fft_size
        self.noise_mean = band.n0 * samp_rate * self.sum_w2
        self.shape, self.smooth = _noise_statistics(window, self.avg, self.hop)
        self.narrow = min(fft_size, 1 << max(3, math.ceil(math.log2(EMITTER_SPAN_HZ / self.bin_hz))))
        # the same continuous window sampled at the narrow rate (not a Hamming of `narrow` points,
        # whose (n - 1) leaks -43 dB into bins 2 away)
        j = np.arange(self.narrow) * (fft_size / self.narrow)
        self.narrow_window = 0.54 - 0.46 * np.cos(2.0 * np.pi * j / (fft_size - 1))
        self.narrow_scale = (self.sum_w / float(self.narrow_window.sum())) ** 2

    def bin_of(self, freq_hz: float) -> float:
        """Row index (fractional) of an absolute frequency."""
        return (freq_hz - (self.center_freq - self.samp_rate / 2)) / self.bin_hz

    def expected(self) -> F64:
        """Expected row in dB (noise mean plus each emitter line through the window's response,
        lines on a 1/32-bin grid): a reference for plots and tests; rows scatter about it."""
        fine, reach = 32, 8
        d = np.arange(-reach * fine, reach * fine + 1) / fine
        n = np.arange(self.fft_size)
        resp = np.abs(np.exp(2j * np.pi * np.outer(d, n) / self.fft_size) @ hamming(self.fft_size)) ** 2
        grid = np.zeros((self.fft_size + 2 * reach) * fine)
        for e in self.band.emitters:
            offs, pw = e.lines()
            q = np.round((self.bin_of(e.freq_hz) + offs / self.bin_hz + reach) * fine).astype(np.int64)
            ok = (q >= 0) & (q < grid.size)
            np.add.at(grid, q[ok], pw[ok])
        full = np.convolve(grid, resp)  # full[i] = sum_q grid[q] resp[i - q]
        k = (np.arange(self.fft_size) + reach) * fine + reach * fine
        return np.asarray(10.0 * np.log10(self.noise_mean + full[k]) + FFT_OFFSET_DB, dtype=np.float64)

    def _emitter_power(self, e: Emitter, t_start: float) -> tuple[int, F64] | None:
        """(first bin, averaged periodogram) of one emitter over the row starting at ``t_start``."""
        k0 = int(round(self.bin_of(e.freq_hz)))
        half = self.narrow // 2
        if k0 + half < 0 or k0 - half >= self.fft_size:
            return None
        resid = e.freq_hz - (self.center_freq - self.samp_rate / 2 + k0 * self.bin_hz)
        rate = self.narrow * self.bin_hz
        t = (t_start + np.arange(self.avg)[:, None] * (self.hop / self.samp_rate)
             + np.arange(self.narrow)[None, :] / rate)
        x = e.envelope(t.ravel()).reshape(t.shape) * np.exp(2j * np.pi * resid * t)
        spec = np.fft.fftshift(np.fft.fft(x * self.narrow_window, axis=1), axes=1)
        return k0 - half, np.mean(np.abs(spec) ** 2, axis=0) * self.narrow_scale

    def row_power(self, k: int) -> F64:
        """Row ``k`` as linear power per bin (before the log and the -70 dB offset)."""
        rng = np.random.default_rng([self.band.seed, self.stream, k])
        b = self.smooth
        g = rng.gamma(self.shape, 1.0 / self.shape, self.fft_size + 2)
        fluct = (1.0 - 2.0 * b) * g[1:-1] + b * (g[:-2] + g[2:])
        p = self.noise_mean * fluct
        t_start = self.t0 + k * self.period
        for e in self.band.emitters:
            got = self._emitter_power(e, t_start)
            if got is None:
                continue
            first, q = got
            lo, hi = max(first, 0), min(first + q.size, self.fft_size)
            p[lo:hi] += q[lo - first : hi - first]
        return np.asarray(p, dtype=np.float64)

    def row(self, k: int) -> F64:
        """Row ``k`` in dB (float64; the wire encodes it with owrxwire.encode_fft)."""
        return np.asarray(10.0 * np.log10(np.maximum(self.row_power(k), 1e-30)) + FFT_OFFSET_DB, dtype=np.float64)


def bandpass_taps(low_cut: float, high_cut: float, rate: float) -> C128:
    """A unity-gain complex bandpass low_cut..high_cut (Hz, baseband) with ~320 Hz transitions
    (a passband wider than the channel rate passes everything)."""
    ntaps = int(4.0 * rate / BANDPASS_TRANSITION_HZ) | 1
    half = abs(high_cut - low_cut) / 2.0
    cutoff = min(max(half + BANDPASS_TRANSITION_HZ / 2.0, 1.0), 0.499 * rate)  # a passband past Nyquist: all
    proto = sp_signal.firwin(ntaps, cutoff, fs=rate, window="hamming")
    n = np.arange(ntaps) - (ntaps - 1) / 2.0
    centre = (high_cut + low_cut) / 2.0
    return np.asarray(proto * np.exp(2j * np.pi * centre * n / rate), dtype=np.complex128)


def smeter_schedule(rate: int, plus: bool) -> tuple[int, int]:
    """(block, every): S-meter block length in channel samples and one reading per ``every``
    blocks.  Upstream: 1024-sample blocks, every (int(rate/4096) + 1)th; Plus: rate/16, every 4th."""
    if plus:
        return rate // 16, 4
    return 1024, int(rate / 4096) + 1


def _response_power(taps: C128, rate: float, freqs: F64) -> F64:
    """|H(f)|^2 of ``taps`` at ``freqs`` (Hz, aliased into +-rate/2) from a dense grid."""
    nfft = 1 << 16
    h = np.abs(np.fft.fftshift(np.fft.fft(taps, nfft))) ** 2
    grid = (np.arange(nfft) - nfft // 2) * (rate / nfft)
    f = (np.asarray(freqs) + rate / 2) % rate - rate / 2
    return np.asarray(np.interp(f, grid, h), dtype=np.float64)


class ChannelChain:
    """One listener's channel: the band around ``dial_hz`` at ``rate``, then the bandpass.

    A stream: :meth:`next` gives the next ``n`` samples (sample 0 is SDR time ``t0``), the
    filters' history carried from block to block."""

    def __init__(self, band: Band, dial_hz: float, rate: int, low_cut: float | None, high_cut: float | None,
                 *, t0: float = 0.0, stream: int = 0) -> None:
        self.band, self.dial, self.rate, self.t0, self.stream = band, float(dial_hz), rate, t0, stream
        self.taps = (bandpass_taps(low_cut, high_cut, rate) if low_cut is not None and high_cut is not None
                     else np.ones(1, dtype=np.complex128))
        hi = OVERSAMPLE * rate
        self.decim = np.asarray(sp_signal.firwin(8 * OVERSAMPLE * 4 + 1, 0.55 * rate, fs=hi, window=("kaiser", 7.0)),
                                dtype=np.float64)
        reach = hi / 2
        self.emitters = tuple(e for e in band.emitters if abs(e.freq_hz - self.dial) < reach + e.half_width_hz)
        self.position = 0  # samples produced
        self._rng = np.random.default_rng([band.seed, stream, 1])
        self._history = self._raw(-(self.taps.size - 1), self.taps.size - 1)

    def _raw(self, start: int, n: int) -> C128:
        """Channel samples ``start .. start+n`` before the bandpass (noise from the stream's generator)."""
        sigma = math.sqrt(self.band.n0 * self.rate / 2.0)
        x = (self._rng.standard_normal(n) + 1j * self._rng.standard_normal(n)) * sigma
        if self.emitters and n:
            hi = OVERSAMPLE * self.rate
            pre = self.decim.size - 1
            j = OVERSAMPLE * start - pre + np.arange(OVERSAMPLE * n + pre)
            t = self.t0 + j / hi
            y = np.zeros(j.size, dtype=np.complex128)
            for e in self.emitters:
                y += e.envelope(t) * np.exp(2j * np.pi * (e.freq_hz - self.dial) * (j / hi))
            z = sp_signal.oaconvolve(y, self.decim, mode="valid")
            x = x + z[::OVERSAMPLE][:n]
        return np.asarray(x, dtype=np.complex128)

    def next(self, n: int) -> C128:
        """The next ``n`` channel samples after the bandpass."""
        x = np.concatenate([self._history, self._raw(self.position, n)])
        self._history = x[x.size - (self.taps.size - 1):] if self.taps.size > 1 else x[:0]
        self.position += n
        return np.asarray(sp_signal.oaconvolve(x, self.taps, mode="valid"), dtype=np.complex128)

    def truth_power(self) -> float:
        """The channel power the S-meter estimates: noise through the bandpass plus every
        emitter line weighted by the decimator's and the bandpass's power responses there."""
        p = self.band.n0 * self.rate * float(np.sum(np.abs(self.taps) ** 2))
        hi = OVERSAMPLE * self.rate
        for e in self.emitters:
            offs, pw = e.lines()
            f = e.freq_hz - self.dial + offs
            inside = np.abs(f) < hi / 2
            f, pw = f[inside], pw[inside]
            gain = _response_power(self.decim.astype(np.complex128), hi, f) * _response_power(self.taps, self.rate, f)
            p += float(np.sum(pw * gain))
        return p
