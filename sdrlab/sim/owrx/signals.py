"""What the simulated OpenWebRX receivers hear: emitters with real modulation (protocol page 11.2).

An :class:`Emitter` is a transmitter at an absolute frequency with a mean power (dBFS, complex
full scale |x| = 1).  Its complex envelope ``envelope(t)`` (relative to its own carrier, mean
|x|^2 = its power) is a pure function of the SDR's time ``t`` (seconds), so the FFT rows, the
S-meter and the audio of every listener see one and the same signal.

Modulations: ``carrier`` (unmodulated), ``nfm`` (peak deviation ``deviation_hz``), ``am`` (peak
modulation index ``depth``), ``wfm`` (the same FM, meant with ``deviation_hz`` = 75 kHz),
``usb`` / ``lsb`` (suppressed carrier).  Content: ``tone`` (a sine of
``tone_hz``) or ``voice``: a voice-like programme (harmonics of a wandering pitch of 100-160 Hz
shaped by moving formants, syllables at ~3.5 Hz and pauses, band-limited to 300-3000 Hz, peak 1)
that repeats every :data:`LOOP_S` seconds.  The loop is built periodic, so its spectrum is a set of
lines 1/LOOP_S apart: :meth:`Emitter.lines` gives the exact power spectrum for the ground truth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

__all__ = ["LOOP_RATE", "LOOP_S", "Emitter", "voice_programme"]

C128 = npt.NDArray[np.complex128]
F64 = npt.NDArray[np.float64]

#: rate (Hz) and length (s) of the periodic voice programme table
LOOP_RATE = 48_000
LOOP_S = 6.0
_LOOP_N = int(LOOP_RATE * LOOP_S)
#: audio band of the voice programme, Hz
VOICE_BAND = (300.0, 3000.0)

Kind = Literal["carrier", "nfm", "wfm", "am", "usb", "lsb"]


@functools.lru_cache(maxsize=16)
def voice_programme(seed: int) -> F64:
    """The voice-like modulating signal, one loop of :data:`LOOP_S` at :data:`LOOP_RATE`, peak 1,
    mean 0, exactly periodic (every slow variation has a whole number of cycles per loop)."""
    rng = np.random.default_rng([15, seed])
    t = np.arange(_LOOP_N) / LOOP_RATE

    def slow(cycles: int, amp: float) -> F64:  # a periodic wander, `cycles` per loop
        return np.asarray(amp * np.sin(2 * np.pi * cycles * t / LOOP_S + rng.uniform(0, 2 * np.pi)), dtype=np.float64)

    f0 = 125.0 + rng.uniform(-15, 15) + slow(2, 18.0) + slow(7, 8.0)
    f0 += (round(float(np.mean(f0)) * LOOP_S) / LOOP_S) - float(np.mean(f0))  # whole pitch cycles per loop
    pitch_phase = 2 * np.pi * np.cumsum(f0) / LOOP_RATE
    f1 = 550.0 + slow(9, 180.0) + slow(13, 60.0)
    f2 = 1500.0 + slow(11, 500.0) + slow(17, 150.0)
    x = np.zeros(_LOOP_N)
    for h in range(1, int(VOICE_BAND[1] / 100.0) + 1):
        fh = h * f0
        amp = (np.exp(-((fh - f1) / 160.0) ** 2) + 0.6 * np.exp(-((fh - f2) / 220.0) ** 2)
               + 0.05 / h) * (fh < VOICE_BAND[1] * 1.1)
        x += amp * np.sin(h * pitch_phase)
    syllables = np.maximum(0.0, np.sin(2 * np.pi * 21 * t / LOOP_S + rng.uniform(0, 2 * np.pi))) ** 0.6
    words = (np.sin(2 * np.pi * 2 * t / LOOP_S + rng.uniform(0, 2 * np.pi)) > -0.4).astype(np.float64)
    x *= syllables * words
    spec = np.fft.rfft(x)  # band-limit circularly: the loop stays periodic
    f = np.fft.rfftfreq(_LOOP_N, 1.0 / LOOP_RATE)
    spec[(f < VOICE_BAND[0]) | (f > VOICE_BAND[1])] = 0.0
    y = np.fft.irfft(spec, _LOOP_N)
    y -= y.mean()
    out: F64 = np.asarray(y / np.max(np.abs(y)), dtype=np.float64)
    return out


@functools.lru_cache(maxsize=32)
def _voice_table(kind: str, seed: int, deviation_hz: float, depth: float) -> C128 | F64:
    """One loop of the voice envelope: the FM phase (float, radians; the loop closes since the
    programme's mean is 0) or the
    AM / SSB complex envelope, before power normalisation."""
    m = voice_programme(seed)
    if kind == "nfm":
        phase = 2 * np.pi * deviation_hz * np.cumsum(m) / LOOP_RATE
        return np.asarray(phase, dtype=np.float64)
    if kind == "am":
        return np.asarray(1.0 + depth * m, dtype=np.complex128)
    spec = np.fft.fft(m)  # analytic signal (usb) or its conjugate (lsb), circular
    h = np.zeros(_LOOP_N)
    h[0] = 1.0
    h[1 : _LOOP_N // 2] = 2.0
    h[_LOOP_N // 2] = 1.0
    analytic = np.fft.ifft(spec * h)
    return np.asarray(analytic if kind == "usb" else np.conj(analytic), dtype=np.complex128)


@dataclass(frozen=True)
class Emitter:
    """One transmitter: absolute frequency (Hz), mean power (dBFS), modulation and content."""

    freq_hz: float
    power_dbfs: float
    kind: Kind = "carrier"
    content: Literal["tone", "voice"] = "tone"
    tone_hz: float = 1000.0
    deviation_hz: float = 2500.0
    depth: float = 0.8
    seed: int = 0
    name: str = ""

    @property
    def power(self) -> float:
        """Mean power, FS^2 (linear)."""
        return float(10.0 ** (self.power_dbfs / 10.0))

    @property
    def half_width_hz(self) -> float:
        """Half the occupied bandwidth (Carson for NFM), Hz: where the emitter can matter."""
        audio = self.tone_hz if self.content == "tone" else VOICE_BAND[1]
        if self.fm:
            return self.deviation_hz + audio
        return 0.0 if self.kind == "carrier" else audio

    @property
    def fm(self) -> bool:
        return self.kind in ("nfm", "wfm")

    @functools.cached_property
    def _norm(self) -> float:
        """Factor that gives the raw envelope unit mean power."""
        if self.kind == "carrier" or self.fm:
            return 1.0
        if self.content == "tone":
            return 1.0 / math.sqrt(1.0 + self.depth**2 / 2.0) if self.kind == "am" else 1.0
        table = _voice_table(self.kind, self.seed, self.deviation_hz, self.depth)  # am / usb / lsb here
        return 1.0 / math.sqrt(float(np.mean(np.abs(table) ** 2)))

    def envelope(self, t: F64) -> C128:
        """Complex envelope at SDR times ``t`` (s), relative to ``freq_hz``; mean |x|^2 = power."""
        a = math.sqrt(self.power) * self._norm
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "carrier":
            return np.full(t.shape, a, dtype=np.complex128)
        if self.content == "tone":
            w = 2 * np.pi * self.tone_hz * t
            if self.fm:
                env = np.exp(1j * (self.deviation_hz / self.tone_hz) * np.sin(w))
            elif self.kind == "am":
                env = 1.0 + self.depth * np.cos(w)
            else:
                env = np.exp(1j * w if self.kind == "usb" else -1j * w)
            return np.asarray(a * env, dtype=np.complex128)
        table = _voice_table("nfm" if self.fm else self.kind, self.seed, self.deviation_hz, self.depth)
        pos = np.mod(t, LOOP_S) * LOOP_RATE
        i0 = np.floor(pos).astype(np.int64) % _LOOP_N
        i1 = (i0 + 1) % _LOOP_N
        frac = pos - np.floor(pos)
        if self.fm:
            ph = np.asarray(table, dtype=np.float64)
            step = ph[i1] - ph[i0]
            step[i1 == 0] = ph[0] - ph[-1]  # the programme has mean 0: the phase closes on itself
            return np.asarray(a * np.exp(1j * (ph[i0] + frac * step)), dtype=np.complex128)
        tab = np.asarray(table, dtype=np.complex128)
        return np.asarray(a * (tab[i0] + frac * (tab[i1] - tab[i0])), dtype=np.complex128)

    def prepare(self) -> None:
        """Build the voice tables now (~0.6 s per programme seed) rather than on first use."""
        _ = self._norm, self._lines

    def lines(self) -> tuple[F64, F64]:
        """The exact power spectrum as lines: (offsets from ``freq_hz``, Hz; powers, FS^2)."""
        return self._lines

    @functools.cached_property
    def _lines(self) -> tuple[F64, F64]:
        p = self.power
        if self.kind == "carrier":
            return np.zeros(1), np.full(1, p)
        if self.content == "tone":
            f = self.tone_hz
            if self.fm:
                beta = self.deviation_hz / f
                n = np.arange(-int(beta) - 25, int(beta) + 26)
                return np.asarray(n * f, dtype=np.float64), np.asarray(p * special.jv(n, beta) ** 2, dtype=np.float64)
            if self.kind == "am":
                d = self.depth
                w = np.array([d * d / 4, 1.0, d * d / 4]) / (1.0 + d * d / 2)
                return np.array([-f, 0.0, f]), p * w
            return np.array([f if self.kind == "usb" else -f]), np.full(1, p)
        env = self.envelope(np.arange(_LOOP_N) / LOOP_RATE)
        spec = np.abs(np.fft.fft(env) / _LOOP_N) ** 2
        freqs = np.fft.fftfreq(_LOOP_N, 1.0 / LOOP_RATE)
        keep = spec > p * 1e-9
        return np.asarray(freqs[keep], dtype=np.float64), np.asarray(spec[keep], dtype=np.float64)
