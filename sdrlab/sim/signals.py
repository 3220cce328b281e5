"""Transmitted-signal models: the complex envelope of what a simulated station sends.

Every model is a :class:`Signal`: one fixed continuous-time function s(T), the complex envelope of
the RF signal relative to the carrier frequency f_c (RF = Re{s(T) exp(j 2 pi f_c T)}), dimensionless,
with full carrier amplitude 1 for the AM-like models and unit mean power for the suppressed-carrier
ones.  ``sample(t0, dt, n, epoch_gps_ns=E)`` returns s at the instants t0 + k*dt (seconds, relative to
the scene's time origin whose absolute GPS time is E ns); s is a function of the *absolute* GPS time
T = E/1e9 + t, so the same instant asked for through any grid, split, t0 or epoch gives the same
value (to rounding, ~1e-12 relative).  Time is handled as (integer second, fraction) internally, so
the accuracy does not degrade with |t0| or the epoch.  Randomness is random-access: every random
block, symbol or minute draws from ``default_rng([seed, salt, index])``; the small per-instance
caches only save work and never change a value.

Models (name in :func:`make_signal`; mean power = long-run time average of |s|^2):

* ``cw`` :class:`Carrier`: s = 1.  Mean power 1, band (0, 0).
* ``am-tones`` :class:`ToneAm`: s = 1 + m msg(T), msg = sum_p sqrt(2/N) cos(2 pi f_p T + phi_p), N
  tones with f_p ~ U(band), phi_p ~ U(0, 2 pi) from ``default_rng(seed)`` (the legacy scene's tone
  distribution; f_p rounded to 2^-24 Hz so phases are exact at any T).  msg has unit RMS; mean
  power 1 + m^2; |s| <= 1 + m sqrt(2N); band (-hi, hi).
* ``am-broadcast`` :class:`AmBroadcast`: s = 1 + L(m a(T)), a = unit-RMS programme (below), L a
  smooth limiter: identity for -0.75 <= u <= 1, tanh knees saturating at -0.95 (so s >= 0.05) and
  +1.25 (|s| <= 2.25).  Mean power 1 + m^2 + D, D = the limiter's effect averaged over 30 s of this
  seed's programme (audio-rate samples, computed once on first use; |D| <= 0.01 dB for m = 0.3).
  Band (-hi, hi) of ``audio_band_hz``.
* ``ssb`` :class:`Ssb`: s = g Lc(a(T)) (USB) or its conjugate (LSB), a the analytic programme
  (one-sided spectrum inside ``audio_band_hz``), Lc a smooth magnitude limiter (identity up to |a| = 3,
  tanh knee saturating at 4, i.e. <= 12 dB peak-to-average), g = 1/sqrt(E|Lc(a)|^2) estimated like D
  above, so the mean power is 1 and |s| <= 4 g.  Band (lo, hi) for USB, (-hi, -lo) for LSB.
* ``dcf77`` :class:`Dcf77`: s = A(T) exp(j phi(T)).  A: at the start of every UTC second (UTC = GPS -
  18 s, no other leap seconds) except second 59 the amplitude falls to 0.15 for 100 ms (bit 0) or
  200 ms (bit 1) with first-order edges, time constant 3 ms (closed form).  Bits: the DCF77 time code
  (CET/CEST by the EU rule; like the real station, the bits sent during a minute encode the *next*
  minute, the one that starts at the following minute mark), bits 1-14 seeded per minute.  phi:
  from 200 ms after each second mark, 512 chips of 120/77500 s, +15.6 deg for chip 1 and -15.6 deg for
  chip 0, all inverted when the second's bit is 1 (second 59 counts as bit 0); chips from the LFSR
  c[n] = c[n-5] xor c[n-9] (x^9 + x^5 + 1), c[0..8] = 1, 511 chips plus a 512th chip 0, which makes
  256 chips of each sign so the mean phase is unchanged; phase steps are raised-cosine ramps of 40 us
  at the start of each chip (the return to 0 in the last 40 us of chip 511), so phi is continuous and
  zero outside the chip span.  Mean power: exact long-run expectation of A^2 over the time code's
  statistics (400-year calendar cycle, random bits 1-14); band (-2/Tc, 2/Tc) = +-1291.7 Hz.
* ``morse`` :class:`Morse`: on-off keyed carrier, PARIS timing (dit = 1.2/wpm s; dah 3, element gap
  1, character gap 3, word gap 7 dits), raised-cosine edges of ``rise_s`` starting at key-down and at
  key-up (so the 50 % width of an element is exactly its keyed length), message repeated with period
  (message length + ``gap_s``) from GPS time 0.  Mean power exact (sum of (on - rise/4) over period);
  peak 1; band (-1/rise, 1/rise).
* ``ofdm`` :class:`Ofdm`: DRM-like robustness mode B: Tu = 64/3 ms (46.875 Hz spacing), Tg = 16/3 ms,
  Ts = 80/3 ms (75 symbols every 2 s from GPS time 0); symbol n: s_n(T) = sum_k X[n,k] exp(j 2 pi k
  df (T - n Ts - Tg)) (the cyclic prefix follows from the formula) over the carriers of the DRM
  spectrum occupancy (0: 1..91, 1: 1..103, 2: -91..91 w/o 0, 3: -103..103 w/o 0, 4: -103..267 w/o 0,
  5: -103..279 w/o 0), X uniform random square QAM (4/16/64) seeded per 75-symbol block.  Adjacent
  symbols are cross-faded with complementary raised-cosine tapers of 1 ms centred on the symbol
  boundary (transmit windowing, inside the guard interval), so s is continuous; scaled to unit
  mean power (E|X|^2 = 1 per carrier, / sqrt(K (1 - Tw/(4 Ts)))), then peak-limited like SSB
  (identity up to 3, saturating at 4: |s| <= 4; it takes ~1e-5 of the power, computed for Gaussian
  samples, so the mean power is 1 - 1e-5).  No pilots.  Band (k_min df - df/2, k_max df + df/2).

The programme a(T) of ``am-broadcast`` and ``ssb``: seeded white Gaussian noise at Fa = 12 kHz
(complex for SSB), shaped by a 1025-tap FIR (speech: rising to ~200 Hz, flat to 500 Hz, -6 dB/oct
above, rolled off above 3.5 kHz; music: -3 dB/oct above 300 Hz; both limited to ``audio_band_hz``;
for SSB one-sided), times a slow envelope (speech: 2.5 s slots each holding one talk spurt of
syllables at ~4-5 Hz between pauses; music: 2.5 s phrases of decaying notes), each slot normalised
to unit mean square (so any whole number of slots has exactly unit power; an arbitrary 20 s window
of SSB speech deviates with a standard deviation of ~0.04 dB, of AM by < 0.03 dB at most), then
defined in continuous time by 32-tap Kaiser-windowed-sinc interpolation (beta 7, cut-off 6 kHz,
flat to 0.002 dB up to 5.1 kHz, images > 74 dB down; the kernel is a degree-9 polynomial on each
tap interval, within 3e-9 of the closed form and evaluated exactly at every instant: a Farrow
structure, no phase table).  Slots start at GPS time 0.

:class:`Fading` (not a Signal; ``gain(t0, dt, n)``, same time convention) is a dimensionless
Rayleigh gain for sky-wave paths: g(T) = sum_p exp(j (2 pi f_p T + theta_p)) / sqrt(N), N paths,
Doppler f_p Gaussian with std ``spread_hz`` (stratified, so no two coincide), theta_p ~ U(0, 2 pi);
long-run mean power exactly 1 (|g| <= sqrt(N)).

Cost of one 512-sample frame (``python -m sdrlab.sim.signals`` prints it): 0.005-0.3 ms per model.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import statistics
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from ..constants import NS as NS

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
IntArray = npt.NDArray[np.int64]

#: GPS - UTC in seconds (fixed: no leap second is modelled)
GPS_UTC_OFFSET_S = 18
GPS_EPOCH_UTC = datetime(1980, 1, 6)
#: frequencies of sums of sinusoids are multiples of 1/FREQ_QUANTUM Hz, so phases at whole seconds are exact
FREQ_QUANTUM = 1 << 24
#: longest run of samples a model evaluates at once (longer requests are split)
CHUNK = 4096

_K = TypeVar("_K")
_V = TypeVar("_V")


# ---- helpers ---------------------------------------------------------------------------------
class _Lru(Generic[_K, _V]):
    """A small thread-safe LRU cache (emptied when pickled); cached arrays are made read-only."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K, make: Callable[[_K], _V]) -> _V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make(key)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def __getstate__(self) -> dict[str, int]:
        return {"size": self._size}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["size"])  # type: ignore[misc]


def _rng(seed: int | Sequence[int], *keys: int) -> np.random.Generator:
    """A generator keyed by the seed and integer keys (any sign)."""
    base = [seed] if isinstance(seed, int) else list(seed)
    return np.random.default_rng([k % (1 << 64) for k in (*base, *keys)])


def _split(t0: float, epoch_gps_ns: int) -> tuple[int, float]:
    """Absolute GPS time of t0 as (S, f): whole seconds S and 0 <= f < 1."""
    ti = math.floor(t0)
    es, ens = divmod(int(epoch_gps_ns), NS)
    s, f = ti + es, (t0 - ti) + ens * 1e-9
    if f >= 1.0:
        s, f = s + 1, f - 1.0
    return s, f


def _band(v: Sequence[float], what: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in v)
    if not 0.0 <= lo < hi:
        raise ConfigError(f"{what} must be (low, high) with 0 <= low < high, got {tuple(v)}")
    return lo, hi


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


# ---- the interface ---------------------------------------------------------------------------
class Signal(abc.ABC):
    """Complex envelope s(t) of a transmitted signal relative to its carrier frequency f_c
    (the RF signal is Re{s(t) exp(j 2 pi f_c t)}), exactly defined at any instant and deterministic
    given its parameters and seed."""

    name: str

    def sample(self, t0: float, dt: float, n: int, *, epoch_gps_ns: int = 0) -> ComplexArray:
        """s at times t0 + k*dt, k = 0..n-1, where t is seconds relative to the scene's time origin,
        whose absolute GPS time is epoch_gps_ns (integer ns since 1980-01-06, GPS scale; UTC = GPS - 18 s).
        t0 may be negative or up to ~1e6 s; dt ~ 1/12000 (may be 1/20250 or anything positive)."""
        t0, dt, n = float(t0), float(dt), int(n)
        if not (math.isfinite(t0) and math.isfinite(dt) and dt > 0.0 and n >= 0):
            raise ConfigError(f"sample needs finite t0, dt > 0 and n >= 0, got {t0}, {dt}, {n}")
        s, f = _split(t0, epoch_gps_ns)
        out = np.empty(n, dtype=np.complex128)
        for start in range(0, n, CHUNK):
            fc = f + start * dt
            whole = math.floor(fc)
            out[start : start + CHUNK] = self._eval(s + whole, fc - whole, dt, min(CHUNK, n - start))
        return out

    @abc.abstractmethod
    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        """s at absolute GPS times s + f + k*dt, k < n <= CHUNK (s whole seconds, 0 <= f < 1)."""

    @property
    @abc.abstractmethod
    def mean_power(self) -> float:
        """Long-run time average of |s|^2 (exact or within 0.05 dB)."""

    @property
    @abc.abstractmethod
    def peak_amplitude(self) -> float:
        """An upper bound of |s(t)|."""

    @property
    @abc.abstractmethod
    def band_hz(self) -> tuple[float, float]:
        """Occupied band relative to the carrier, Hz."""

    @abc.abstractmethod
    def _params(self) -> dict[str, object]:
        """The constructor's parameters, JSON-safe."""

    def describe(self) -> dict[str, object]:
        """JSON-safe parameters, for dataset attrs (``make_signal(**describe())`` rebuilds it)."""
        return {"name": self.name, **self._params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signal) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(json.dumps(self.describe(), sort_keys=True))


# ---- sums of sinusoids -----------------------------------------------------------------------
class _Sinusoids:
    """sum_p c_p exp(j 2 pi f_p T), with f_p rounded to a multiple of 1/FREQ_QUANTUM Hz."""

    def __init__(self, freq_hz: FloatArray, coef: ComplexArray) -> None:
        self.q = np.round(np.asarray(freq_hz, dtype=np.float64) * FREQ_QUANTUM).astype(np.int64)
        self.freq = self.q / FREQ_QUANTUM
        self.coef = np.asarray(coef, dtype=np.complex128)
        self._steps: _Lru[tuple[float, int], ComplexArray] = _Lru(4)

    def _step_matrix(self, key: tuple[float, int]) -> ComplexArray:
        dt, n = key
        return np.exp(2j * np.pi * np.outer(self.freq, np.arange(n) * dt))

    def eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        # phase at the whole second s, in cycles, exactly: (q * s mod Q) / Q
        cyc = ((self.q % FREQ_QUANTUM) * (s % FREQ_QUANTUM) % FREQ_QUANTUM) / FREQ_QUANTUM
        if n <= 32:
            tl = f + np.arange(n) * dt
            y = self.coef @ np.exp(2j * np.pi * (cyc[:, None] + np.outer(self.freq, tl)))
        else:
            v = self.coef * np.exp(2j * np.pi * (cyc + self.freq * f))
            y = v @ self._steps.get((dt, n), self._step_matrix)
        return np.asarray(y, dtype=np.complex128)


# ---- CW and the legacy tone AM ---------------------------------------------------------------
class Carrier(Signal):
    """CW: s = 1."""

    name = "cw"

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        return np.ones(n, dtype=np.complex128)

    @property
    def mean_power(self) -> float:
        return 1.0

    @property
    def peak_amplitude(self) -> float:
        return 1.0

    @property
    def band_hz(self) -> tuple[float, float]:
        return (0.0, 0.0)

    def _params(self) -> dict[str, object]:
        return {}


class ToneAm(Signal):
    """The legacy scene's AM: s = 1 + m * (unit-RMS sum of ``n_tones`` seeded tones in ``band_hz``).

    ``seed`` may be a sequence of ints (e.g. the legacy scene's ``[scene_seed, 7919, crc32(id)]``
    key) to draw the same tones as the old ``FrameSource``.
    """

    name = "am-tones"

    def __init__(
        self,
        mod_index: float = 0.3,
        n_tones: int = 24,
        band_hz: Sequence[float] = (150.0, 2800.0),
        seed: int | Sequence[int] = 0,
    ) -> None:
        self.mod_index = float(mod_index)
        self.n_tones = int(n_tones)
        self.tone_band_hz = _band(band_hz, "band_hz")
        self.seed: int | list[int] = int(seed) if isinstance(seed, (int, np.integer)) else [int(x) for x in seed]
        if self.mod_index < 0 or self.n_tones < 0:
            raise ConfigError("mod_index and n_tones must be >= 0")
        rng = np.random.default_rng(self.seed)
        lo, hi = self.tone_band_hz
        freq = rng.uniform(lo, hi, self.n_tones)
        phase = rng.uniform(0.0, 2.0 * math.pi, self.n_tones)
        amp = math.sqrt(2.0 / self.n_tones) if self.n_tones else 0.0
        self._tones = _Sinusoids(freq, amp * np.exp(1j * phase))

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        if not self.n_tones:
            return np.ones(n, dtype=np.complex128)
        return (1.0 + self.mod_index * self._tones.eval(s, f, dt, n).real).astype(np.complex128)

    @property
    def mean_power(self) -> float:
        return 1.0 + self.mod_index**2 if self.n_tones else 1.0

    @property
    def peak_amplitude(self) -> float:
        return 1.0 + self.mod_index * math.sqrt(2.0 * self.n_tones)

    @property
    def band_hz(self) -> tuple[float, float]:
        return (-self.tone_band_hz[1], self.tone_band_hz[1])

    def _params(self) -> dict[str, object]:
        return {"mod_index": self.mod_index, "n_tones": self.n_tones,
                "band_hz": list(self.tone_band_hz), "seed": self.seed}


# ---- programme audio: shaped noise x slow envelope, continuous by windowed-sinc interpolation ---
#: programme audio rate, Hz
AUDIO_RATE = 12_000
_HALF_TAPS = 16  # interpolation kernel: 2 * 16 taps
_DEGREE = 9  # polynomial degree of the kernel on each tap interval
_KAISER_BETA = 7.0
_FIR_TAPS = 1025
_SLOT_S = {"speech": 2.5, "music": 2.5}
_FLOOR = {"speech": 0.05, "music": 0.3}  # envelope level at slot edges (pauses), before normalising


def _kernel(x: FloatArray) -> FloatArray:
    """Kaiser-windowed sinc, cut-off at AUDIO_RATE / 2, support |x| < 16 samples."""
    arg = _KAISER_BETA * np.sqrt(np.clip(1.0 - (x / _HALF_TAPS) ** 2, 0.0, None))
    window = np.where(np.abs(x) < _HALF_TAPS, np.i0(arg) / np.i0(_KAISER_BETA), 0.0)
    return np.asarray(np.sinc(x) * window, dtype=np.float64)


@functools.cache
def _farrow() -> FloatArray:
    """C[j, p]: the kernel on tap interval j (sample i0 - 15 + j for an instant i0 + mu) as a
    polynomial sum_p C[j, p] nu^p, nu = mu - 1/2, interpolated at Chebyshev-Lobatto nodes (the
    end points included, so adjacent pieces meet exactly)."""
    nodes = 0.5 * np.cos(np.pi * np.arange(_DEGREE + 1) / _DEGREE)
    vander = np.vander(nodes, _DEGREE + 1, increasing=True)
    offsets = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)
    values = np.stack([_kernel(nodes + 0.5 - j) for j in offsets], axis=1)  # (nodes, taps)
    coef = np.ascontiguousarray(np.linalg.solve(vander, values).T, dtype=np.float64)
    coef.flags.writeable = False
    return coef


def _shape(program: str, f: FloatArray) -> FloatArray:
    """Programme amplitude spectrum (relative) at frequencies f >= 0."""
    if program == "speech":
        rise = (f / 200.0) ** 2 / (1.0 + (f / 200.0) ** 2)
        return np.asarray(rise / np.sqrt(1.0 + (f / 500.0) ** 2) / np.sqrt(1.0 + (f / 3500.0) ** 8))
    rise = (f / 40.0) ** 2 / (1.0 + (f / 40.0) ** 2)
    return np.asarray(rise / (1.0 + (f / 300.0) ** 2) ** 0.25)


def _design_fir(program: str, band: tuple[float, float], analytic: bool) -> ComplexArray:
    """Linear-phase FIR (Kaiser-windowed frequency sampling), unit energy: white noise of unit
    variance comes out with unit variance.  ``analytic``: positive frequencies only."""
    nfft = 16384
    f = np.fft.fftfreq(nfft, 1.0 / AUDIO_RATE)
    inside = (f >= band[0]) & (f <= band[1]) if analytic else (np.abs(f) >= band[0]) & (np.abs(f) <= band[1])
    resp = np.where(inside, _shape(program, np.abs(f)), 0.0)
    imp = np.fft.ifft(resp)
    half = _FIR_TAPS // 2
    taps = np.concatenate([imp[-half:], imp[: half + 1]]) * np.kaiser(_FIR_TAPS, 8.0)
    return np.asarray(taps / math.sqrt(float(np.sum(np.abs(taps) ** 2))), dtype=np.complex128)


def _speech_envelope(rng: np.random.Generator, t: FloatArray, slot: float) -> FloatArray:
    """One talk spurt (40 ms fades) between pauses, modulated by syllables (sin^2 bumps, ~4-5 per
    second) between 35 % and 100 %."""
    t_on, t_off = rng.uniform(0.05, 0.4), slot - rng.uniform(0.3, 0.7)
    syllables = np.zeros_like(t)
    tt = t_on
    while (dur := min(rng.uniform(0.12, 0.25), t_off - tt)) >= 0.06:
        amp = rng.uniform(0.6, 1.0)
        i_a, i_b = np.searchsorted(t, [tt, tt + dur])
        syllables[i_a:i_b] += amp * np.sin(np.pi * (t[i_a:i_b] - tt) / dur) ** 2
        tt += dur + rng.uniform(0.03, 0.10)
    spurt = np.clip(np.minimum(t - t_on, t_off - t) / 0.04, 0.0, 1.0)
    return np.asarray((1.0 - np.cos(np.pi * spurt)) / 2.0 * (0.35 + 0.65 * syllables))


def _music_envelope(rng: np.random.Generator, t: FloatArray, slot: float) -> FloatArray:
    """A phrase of notes (4 ms attack, exponential decay) faded in and out over 0.4 s."""
    p = np.full_like(t, 0.4)
    tt = rng.uniform(0.0, 0.3)
    while tt < slot:
        amp, decay = rng.uniform(0.3, 1.0), rng.uniform(0.15, 0.8)
        i_a, i_b = np.searchsorted(t, [tt, tt + 7.0 * decay])
        age = t[i_a:i_b] - tt
        p[i_a:i_b] += amp * -np.expm1(-age / 0.004) * np.exp(-age / decay)
        tt += rng.uniform(0.15, 0.6)
    fade = np.clip(np.minimum(t, slot - t) / 0.4, 0.0, 1.0)
    return np.asarray(p * (1.0 - np.cos(np.pi * fade)) / 2.0)


Audio = npt.NDArray[np.inexact[Any]]


class _Programme:
    """a(T): unit-RMS programme audio, real or analytic (complex), exactly defined at any instant.

    Slot b covers audio samples [b L, (b + 1) L) (L = slot seconds * AUDIO_RATE) counted from GPS
    time 0; its white noise, envelope and normalisation come from ``default_rng([seed, salt, b])``.
    """

    def __init__(self, program: str, band: tuple[float, float], seed: int, analytic: bool) -> None:
        self.program, self.band, self.seed, self.analytic = program, band, seed, analytic
        self.slot_s = _SLOT_S[program]
        self.length = round(self.slot_s * AUDIO_RATE)
        fir = _design_fir(program, band, analytic)
        self.fir: Audio = fir if analytic else fir.real.copy()
        self._nfft = 1 << (self.length + _FIR_TAPS).bit_length()
        self._fir_f = np.fft.fft(fir, self._nfft) if analytic else np.fft.rfft(fir.real, self._nfft)
        self._t: FloatArray = np.arange(self.length) / AUDIO_RATE
        # envelopes are computed every 8 audio samples and interpolated linearly
        self._t_coarse: FloatArray = np.arange(self.length // 8 + 1, dtype=np.float64) * (8.0 / AUDIO_RATE)
        self._white: _Lru[int, Audio] = _Lru(3)
        self._audio: _Lru[int, Audio] = _Lru(4)

    def white(self, b: int) -> Audio:
        def make(b: int) -> Audio:
            rng = _rng(self.seed, 0x5D, b)
            if self.analytic:
                z = rng.standard_normal((2, self.length))
                return np.asarray((z[0] + 1j * z[1]) / math.sqrt(2.0))
            return rng.standard_normal(self.length)

        return self._white.get(b, make)

    def envelope(self, b: int) -> FloatArray:
        """The slot's envelope: floor + g * p, g set so its mean square is 1 (continuous across
        slots: every slot starts and ends at the floor level)."""
        rng = _rng(self.seed, 0xE7, b)
        envelope = _speech_envelope if self.program == "speech" else _music_envelope
        coarse = envelope(rng, self._t_coarse, self.slot_s)
        p = np.interp(self._t, self._t_coarse, coarse)
        base = _FLOOR[self.program]
        m1, m2 = float(np.mean(p)), float(np.mean(p * p))
        g = (-base * m1 + math.sqrt((base * m1) ** 2 - m2 * (base * base - 1.0))) / m2
        return np.asarray(base + g * p, dtype=np.float64)

    def audio(self, b: int) -> Audio:
        """Slot b at the audio rate: shaped noise x envelope, exactly unit mean square."""

        def make(b: int) -> Audio:
            w = np.concatenate([self.white(b - 1)[1 - _FIR_TAPS :], self.white(b)])
            keep = slice(_FIR_TAPS - 1, _FIR_TAPS - 1 + self.length)
            if self.analytic:
                x: Audio = np.fft.ifft(np.fft.fft(w, self._nfft) * self._fir_f)[keep]
            else:
                x = np.fft.irfft(np.fft.rfft(w, self._nfft) * self._fir_f, self._nfft)[keep]
            a = x * self.envelope(b)
            return a / math.sqrt(float(np.mean(np.abs(a) ** 2)))

        return self._audio.get(b, make)

    def values(self, s: int, f: float, dt: float, n: int) -> Audio:
        """a at GPS times s + f + k*dt (continuous-time interpolation of the audio samples)."""
        x = (f + np.arange(n) * dt) * AUDIO_RATE
        whole = np.floor(x)
        nu = x - whole - 0.5
        idx = s * AUDIO_RATE + whole.astype(np.int64)  # audio sample at or before each instant
        cuts = np.flatnonzero(np.diff(idx) > 4 * _HALF_TAPS) + 1  # sparse grids: runs apart
        if not len(cuts):
            return self._interpolate(idx, nu)
        bounds = [0, *cuts.tolist(), n]
        return np.concatenate([self._interpolate(idx[a:b], nu[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])

    def _interpolate(self, idx: IntArray, nu: FloatArray) -> Audio:
        first, last = int(idx[0]) - _HALF_TAPS + 1, int(idx[-1]) + _HALF_TAPS
        ext = self.span(first, last + 1)
        rel = idx - (_HALF_TAPS - 1) - first  # window of each instant: samples idx-15 .. idx+16
        coef = ext[rel[:, None] + np.arange(2 * _HALF_TAPS)] @ _farrow()  # (n, degree + 1)
        out = coef[:, _DEGREE]
        for p in range(_DEGREE - 1, -1, -1):
            out = out * nu + coef[:, p]
        result: Audio = out
        return result

    def span(self, start: int, stop: int) -> Audio:
        """Audio samples start .. stop-1 (absolute indices)."""
        parts = []
        for b in range(start // self.length, (stop - 1) // self.length + 1):
            lo = max(start - b * self.length, 0)
            parts.append(self.audio(b)[lo : min(stop - b * self.length, self.length)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def audio_samples(self, slots: int) -> Audio:
        """The audio samples of slots 0 .. slots-1 (for the limiter statistics)."""
        return np.concatenate([self.audio(b) for b in range(slots)])


# ---- broadcast AM and SSB voice --------------------------------------------------------------
_STATS_SECONDS = 30.0  # programme length the limiter statistics are averaged over


def _am_limit(u: FloatArray) -> FloatArray:
    """Smooth AM limiter on u = m a: identity on [-0.75, 1], tanh knees to -0.95 and +1.25."""
    out = u.copy()
    lo, hi = u < -0.75, u > 1.0
    if lo.any():
        out[lo] = -0.75 - 0.2 * np.tanh((-0.75 - u[lo]) / 0.2)
    if hi.any():
        out[hi] = 1.0 + 0.25 * np.tanh((u[hi] - 1.0) / 0.25)
    return out


def _magnitude_limit(a: ComplexArray) -> ComplexArray:
    """Smooth magnitude limiter (SSB ALC, OFDM peak clipping): identity up to |a| = 3 (9.5 dB
    above unit RMS), tanh knee saturating at 4."""
    mag = np.abs(a)
    hi = mag > 3.0
    if not hi.any():
        return a
    out = a.copy()
    out[hi] *= (3.0 + np.tanh(mag[hi] - 3.0)) / mag[hi]
    return out


@functools.lru_cache(maxsize=64)
def _limiter_stats(kind: str, program: str, band: tuple[float, float], seed: int, mod_index: float) -> float:
    """Mean change of |s|^2 the limiter causes, over the audio samples of 30 s of the programme:
    AM: mean((1 + L(m a))^2 - (1 + m a)^2); SSB: mean(|a|^2 - |Lc(a)|^2)."""
    prog = _Programme(program, band, seed, analytic=kind == "ssb")
    a = prog.audio_samples(math.ceil(_STATS_SECONDS / prog.slot_s))
    if kind == "ssb":
        return float(np.mean(np.abs(a) ** 2 - np.abs(_magnitude_limit(a.astype(np.complex128))) ** 2))
    u = mod_index * a.real
    return float(np.mean((1.0 + _am_limit(u)) ** 2 - (1.0 + u) ** 2))


class AmBroadcast(Signal):
    """Broadcast AM: s = 1 + L(m a(t)) with a speech- or music-like unit-RMS programme a."""

    name = "am-broadcast"

    def __init__(
        self,
        program: str = "speech",
        mod_index: float = 0.3,
        audio_band_hz: Sequence[float] = (50.0, 4500.0),
        seed: int = 0,
    ) -> None:
        self.program = _choice(program, ("speech", "music"), "program")
        self.mod_index = float(mod_index)
        self.audio_band_hz = _band(audio_band_hz, "audio_band_hz")
        if not 0.0 <= self.mod_index <= 1.0:
            raise ConfigError(f"mod_index must be in [0, 1], got {mod_index}")
        if self.audio_band_hz[1] > 5000.0:
            raise ConfigError("audio_band_hz must end at or below 5000 Hz (12 kHz programme rate)")
        self.seed = int(seed)
        self._prog = _Programme(self.program, self.audio_band_hz, self.seed, analytic=False)

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        u = self.mod_index * self._prog.values(s, f, dt, n).real
        return (1.0 + _am_limit(u)).astype(np.complex128)

    @property
    def mean_power(self) -> float:
        m = self.mod_index
        return 1.0 + m * m + _limiter_stats("am", self.program, self.audio_band_hz, self.seed, m)

    @property
    def peak_amplitude(self) -> float:
        return 2.25

    @property
    def band_hz(self) -> tuple[float, float]:
        return (-self.audio_band_hz[1], self.audio_band_hz[1])

    def _params(self) -> dict[str, object]:
        return {"program": self.program, "mod_index": self.mod_index,
                "audio_band_hz": list(self.audio_band_hz), "seed": self.seed}


class Ssb(Signal):
    """Suppressed-carrier single sideband voice, unit mean power."""

    name = "ssb"

    def __init__(
        self,
        sideband: str = "usb",
        program: str = "speech",
        audio_band_hz: Sequence[float] = (300.0, 2700.0),
        seed: int = 0,
    ) -> None:
        self.sideband = _choice(sideband, ("usb", "lsb"), "sideband")
        self.program = _choice(program, ("speech", "music"), "program")
        self.audio_band_hz = _band(audio_band_hz, "audio_band_hz")
        if self.audio_band_hz[1] > 5000.0:
            raise ConfigError("audio_band_hz must end at or below 5000 Hz (12 kHz programme rate)")
        self.seed = int(seed)
        self._prog = _Programme(self.program, self.audio_band_hz, self.seed, analytic=True)

    @functools.cached_property
    def _gain(self) -> float:
        return 1.0 / math.sqrt(1.0 - _limiter_stats("ssb", self.program, self.audio_band_hz, self.seed, 0.0))

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        a = self._gain * _magnitude_limit(self._prog.values(s, f, dt, n).astype(np.complex128))
        return a if self.sideband == "usb" else a.conj()

    @property
    def mean_power(self) -> float:
        return 1.0

    @property
    def peak_amplitude(self) -> float:
        return 4.0 * self._gain

    @property
    def band_hz(self) -> tuple[float, float]:
        lo, hi = self.audio_band_hz
        return (lo, hi) if self.sideband == "usb" else (-hi, -lo)

    def _params(self) -> dict[str, object]:
        return {"sideband": self.sideband, "program": self.program,
                "audio_band_hz": list(self.audio_band_hz), "seed": self.seed}


# ---- DCF77 -----------------------------------------------------------------------------------
DCF77_FREQUENCY_HZ = 77_500.0
DCF77_LOW = 0.15  # carrier amplitude during a second mark
DCF77_TAU_S = 0.003  # antenna time constant of the amplitude edges
DCF77_CHIP_S = 120.0 / DCF77_FREQUENCY_HZ
DCF77_PN_START_S = 0.2
DCF77_PN_CHIPS = 512
DCF77_PHASE_RAD = math.radians(15.6)
DCF77_RAMP_S = 40e-6  # raised-cosine phase transitions


@functools.cache
def dcf77_chips() -> IntArray:
    """The 512 PN chips: c[n] = c[n-5] xor c[n-9] from c[0..8] = 1 (x^9 + x^5 + 1), 511 chips of
    the m-sequence, then a 512th chip 0 (256 chips of each value)."""
    c = [1] * 9
    while len(c) < 511:
        c.append(c[-5] ^ c[-9])
    chips = np.array([*c, 0], dtype=np.int64)
    chips.flags.writeable = False
    return chips


def _bcd(value: int, weights: Sequence[int]) -> list[int]:
    """BCD bits of value, least significant first (weights 1, 2, 4, 8, 10, 20, 40, 80)."""
    digits = [value % 10] * 4 + [value // 10] * 4
    return [(d >> (i % 4)) & 1 for i, d in enumerate(digits[: len(weights)])]


def _last_sunday(year: int, month: int) -> datetime:
    last = datetime(year, month + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def is_cest(utc: datetime) -> bool:
    """Central European Summer Time by the EU rule (last Sunday of March to last Sunday of
    October, 01:00 UTC), applied to every year."""
    start = _last_sunday(utc.year, 3) + timedelta(hours=1)
    return start <= utc < _last_sunday(utc.year, 10) + timedelta(hours=1)


def dcf77_time_code(minute: int, weather: Sequence[int] = (0,) * 14) -> IntArray:
    """The 60 bits sent during UTC minute ``minute`` (minutes since 1980-01-06 00:00 UTC): they
    encode the following minute in CET/CEST (bit 59 is not sent; returned as 0)."""
    utc = GPS_EPOCH_UTC + timedelta(minutes=minute + 1)
    cest = is_cest(utc)
    local = utc + timedelta(hours=2 if cest else 1)
    bits = [0, *weather, 0, int(cest != is_cest(utc + timedelta(hours=1))), int(cest), int(not cest), 0, 1]
    for value, weights in ((local.minute, (1, 2, 4, 8, 10, 20, 40)), (local.hour, (1, 2, 4, 8, 10, 20))):
        field = _bcd(value, weights)
        bits += [*field, sum(field) % 2]
    date = _bcd(local.day, (1, 2, 4, 8, 10, 20)) + [(local.isoweekday() >> i) & 1 for i in range(3)]
    date += _bcd(local.month, (1, 2, 4, 8, 10)) + _bcd(local.year % 100, (1, 2, 4, 8, 10, 20, 40, 80))
    bits += [*date, sum(date) % 2, 0]
    return np.array(bits, dtype=np.int64)


def _mark_energy(duration: float) -> float:
    """Integral of A^2 over one second whose mark lasts ``duration`` s (closed form)."""
    low, tau, d = DCF77_LOW, DCF77_TAU_S, duration
    e_d = math.exp(-d / tau)
    during = low * low * d + 2 * low * (1 - low) * tau * (1 - e_d) + (1 - low) ** 2 * tau / 2 * (1 - e_d * e_d)
    c = 1.0 - (low + (1 - low) * e_d)
    e_r = math.exp(-(1 - d) / tau)
    after = (1 - d) - 2 * c * tau * (1 - e_r) + c * c * tau / 2 * (1 - e_r * e_r)
    return during + after


@functools.cache
def _dcf77_expected_ones() -> float:
    """Long-run mean number of 1 bits among seconds 0..58 of a minute."""
    pop = np.array([0, 1, 1, 2, 1, 2, 2, 3, 1, 2])

    def bcd_pop(v: IntArray) -> IntArray:
        return np.asarray(pop[v % 10] + pop[v // 10], dtype=np.int64)

    def with_parity(ones: IntArray) -> float:
        return float(np.mean(ones + ones % 2))

    minutes, hours = bcd_pop(np.arange(60)), bcd_pop(np.arange(24))
    days = np.arange(146097) + np.datetime64("2000-01-01", "D")  # one 400-year Gregorian cycle
    month_start = days.astype("datetime64[M]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day = (days - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    weekday = (np.arange(146097) + 5) % 7 + 1  # 2000-01-01 was a Saturday
    date = bcd_pop(day) + pop[weekday] + bcd_pop(month) + bcd_pop(year % 100)
    dst_announced = 120.0 / (365.2425 * 1440.0)  # bit 16: 2 x 60 minutes a year
    return 7.0 + 2.0 + dst_announced + with_parity(minutes) + with_parity(hours) + with_parity(date)


class Dcf77(Signal):
    """DCF77-like time signal: second marks (AM) and the pseudo-random phase modulation."""

    name = "dcf77"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._codes: _Lru[int, IntArray] = _Lru(8)
        chips = dcf77_chips()
        self._phase = DCF77_PHASE_RAD * (2 * chips - 1).astype(np.float64)
        self._prev = np.concatenate([[0.0], self._phase[:-1]])

    def time_code(self, minute: int) -> IntArray:
        """Bits sent during UTC minute ``minute`` (since 1980-01-06 00:00 UTC), 1-14 seeded."""
        def make(m: int) -> IntArray:
            return dcf77_time_code(m, [int(b) for b in _rng(self.seed, 0xDCF, m).integers(0, 2, 14)])

        return self._codes.get(minute, make)

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        tl: FloatArray = f + np.arange(n, dtype=np.float64) * dt
        whole = np.floor(tl)
        bounds = [0, *(np.flatnonzero(np.diff(whole)) + 1).tolist(), n]
        out = np.empty(n, dtype=np.complex128)
        for a, b in zip(bounds[:-1], bounds[1:]):  # each UTC second holding samples, in turn
            sec = int(whole[a])
            minute, second = divmod(s - GPS_UTC_OFFSET_S + sec, 60)
            bit = int(self.time_code(minute)[second])
            out[a:b] = self._second(tl[a:b] - sec, bit, second == 59)
        return out

    def _second(self, u: FloatArray, bit: int, minute_mark: bool) -> ComplexArray:
        """s at times u (increasing, 0 <= u < 1) after the mark of a second sending ``bit``."""
        out = np.ones(len(u), dtype=np.complex128)
        # amplitude: first-order edges down to DCF77_LOW at the mark and back after D
        dur = 0.0 if minute_mark else 0.1 + 0.1 * bit
        i_d, i_r = np.searchsorted(u, [dur, dur + 40.0 * DCF77_TAU_S])  # exp(-40) is below 1 ulp
        out[:i_d] = DCF77_LOW + (1.0 - DCF77_LOW) * np.exp(-u[:i_d] / DCF77_TAU_S)
        a_end = DCF77_LOW + (1.0 - DCF77_LOW) * math.exp(-dur / DCF77_TAU_S)
        out[i_d:i_r] = 1.0 - (1.0 - a_end) * np.exp(-(u[i_d:i_r] - dur) / DCF77_TAU_S)
        # phase: chips of +-15.6 deg (inverted for bit 1), raised-cosine steps at chip starts
        end = DCF77_PN_START_S + DCF77_PN_CHIPS * DCF77_CHIP_S
        i_p, i_q = np.searchsorted(u, [DCF77_PN_START_S, end])
        if i_p < i_q:
            v = u[i_p:i_q] - DCF77_PN_START_S
            chip = np.minimum(np.floor(v / DCF77_CHIP_S).astype(np.int64), DCF77_PN_CHIPS - 1)
            w = np.clip(v - chip * DCF77_CHIP_S, 0.0, DCF77_CHIP_S)  # time into the chip
            phi = self._phase[chip]
            ramp = w < DCF77_RAMP_S
            if ramp.any():
                target, prev = phi[ramp], self._prev[chip[ramp]]
                phi[ramp] = target + (prev - target) * (1.0 + np.cos(np.pi * w[ramp] / DCF77_RAMP_S)) / 2.0
            tail = w > DCF77_CHIP_S - DCF77_RAMP_S
            tail &= chip == DCF77_PN_CHIPS - 1
            if tail.any():
                x = (w[tail] - (DCF77_CHIP_S - DCF77_RAMP_S)) / DCF77_RAMP_S
                phi[tail] *= (1.0 + np.cos(np.pi * x)) / 2.0
            out[i_p:i_q] *= np.exp((1j - 2j * bit) * phi)
        return out

    @property
    def mean_power(self) -> float:
        short, long = _mark_energy(0.1), _mark_energy(0.2)
        ones = _dcf77_expected_ones()
        return (59.0 * short + ones * (long - short) + 1.0) / 60.0

    @property
    def peak_amplitude(self) -> float:
        return 1.0

    @property
    def band_hz(self) -> tuple[float, float]:
        return (-2.0 / DCF77_CHIP_S, 2.0 / DCF77_CHIP_S)

    def _params(self) -> dict[str, object]:
        return {"seed": self.seed}


# ---- Morse -----------------------------------------------------------------------------------
MORSE_CODE = {
    "A": ".-", "B": "-...", "C": "-.-.", "D": "-..", "E": ".", "F": "..-.", "G": "--.", "H": "....",
    "I": "..", "J": ".---", "K": "-.-", "L": ".-..", "M": "--", "N": "-.", "O": "---", "P": ".--.",
    "Q": "--.-", "R": ".-.", "S": "...", "T": "-", "U": "..-", "V": "...-", "W": ".--", "X": "-..-",
    "Y": "-.--", "Z": "--..", "0": "-----", "1": ".----", "2": "..---", "3": "...--", "4": "....-",
    "5": ".....", "6": "-....", "7": "--...", "8": "---..", "9": "----.", ".": ".-.-.-", ",": "--..--",
    "?": "..--..", "/": "-..-.", "=": "-...-", "+": ".-.-.", "-": "-....-", "'": ".----.", "@": ".--.-.",
}  # fmt: skip


def morse_elements(text: str) -> list[tuple[int, int]]:
    """Key-down intervals of ``text`` in dit units (PARIS timing), as (start, stop)."""
    out: list[tuple[int, int]] = []
    t = 0
    for w, word in enumerate(text.upper().split()):
        t += 7 if w else 0
        for c, char in enumerate(word):
            if char not in MORSE_CODE:
                raise ConfigError(f"no Morse code for {char!r}")
            t += 3 if c else 0
            for e, mark in enumerate(MORSE_CODE[char]):
                t += 1 if e else 0
                length = 1 if mark == "." else 3
                out.append((t, t + length))
                t += length
    return out


class Morse(Signal):
    """On-off keyed carrier with raised-cosine edges, the message repeated after ``gap_s``."""

    name = "morse"

    def __init__(
        self, text: str = "CQ CQ DE DL0SIM DL0SIM K", wpm: float = 20.0, rise_s: float = 0.005, gap_s: float = 2.0
    ) -> None:
        self.text, self.wpm, self.rise_s, self.gap_s = str(text), float(wpm), float(rise_s), float(gap_s)
        if self.wpm <= 0 or self.rise_s <= 0:
            raise ConfigError("wpm and rise_s must be > 0")
        self.dit_s = 1.2 / self.wpm
        if self.rise_s >= self.dit_s or self.gap_s < self.rise_s:
            raise ConfigError("rise_s must be shorter than a dit and gap_s at least rise_s")
        units = np.array(morse_elements(self.text), dtype=np.float64)
        if not len(units):
            raise ConfigError("Morse text is empty")
        self.starts, self.stops = units[:, 0] * self.dit_s, units[:, 1] * self.dit_s
        self.period_s = float(self.stops[-1]) + self.gap_s

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        u: FloatArray = np.mod(math.fmod(s, self.period_s) + f + np.arange(n, dtype=np.float64) * dt, self.period_s)
        k = np.maximum(np.searchsorted(self.starts, u, side="right") - 1, 0)  # the element begun last
        on, off, r = u - self.starts[k], u - self.stops[k], self.rise_s
        env = (off < 0.0).astype(np.float64)
        falling = (off >= 0.0) & (off < r)
        env[falling] = 0.5 + 0.5 * np.cos(np.pi * off[falling] / r)
        rising = on < r  # elements are longer than rise_s, so this is inside the element
        env[rising] = 0.5 - 0.5 * np.cos(np.pi * on[rising] / r)
        return env.astype(np.complex128)

    @property
    def mean_power(self) -> float:
        return float(np.sum(self.stops - self.starts) - len(self.starts) * self.rise_s / 4.0) / self.period_s

    @property
    def peak_amplitude(self) -> float:
        return 1.0

    @property
    def band_hz(self) -> tuple[float, float]:
        return (-1.0 / self.rise_s, 1.0 / self.rise_s)

    def _params(self) -> dict[str, object]:
        return {"text": self.text, "wpm": self.wpm, "rise_s": self.rise_s, "gap_s": self.gap_s}


# ---- DRM-like OFDM ---------------------------------------------------------------------------
OFDM_TU_S = 0.064 / 3.0  # mode B useful symbol
OFDM_TG_S = 0.016 / 3.0  # guard interval (cyclic prefix)
OFDM_TS_S = 0.080 / 3.0  # symbol: 75 per 2 s
OFDM_SPACING_HZ = 46.875
OFDM_TAPER_S = 0.001  # raised-cosine cross-fade between symbols
_OFDM_BLOCK = 75  # symbols per 2 s (symbol 0 starts at GPS time 0)
#: mode B carrier ranges by DRM spectrum occupancy (k = 0 is never used)
OFDM_CARRIERS = {0: (1, 91), 1: (1, 103), 2: (-91, 91), 3: (-103, 103), 4: (-103, 267), 5: (-103, 279)}


@functools.cache
def _gaussian_limit_loss() -> float:
    """E|z|^2 - E|limit(z)|^2 for unit-power complex Gaussian z (OFDM samples): ~1e-5."""
    r = np.linspace(3.0, 12.0, 90001)
    lost = (r * r - (3.0 + np.tanh(r - 3.0)) ** 2) * 2.0 * r * np.exp(-r * r)
    return float(np.sum((lost[1:] + lost[:-1]) / 2.0) * (r[1] - r[0]))


class Ofdm(Signal):
    """DRM-like OFDM (robustness mode B), random QAM on every carrier, unit mean power."""

    name = "ofdm"

    def __init__(self, mode: str = "B", occupancy: int = 3, qam: int = 64, seed: int = 0) -> None:
        self.mode = _choice(mode, ("B",), "mode")
        self.occupancy, self.qam, self.seed = int(occupancy), int(qam), int(seed)
        if self.occupancy not in OFDM_CARRIERS:
            raise ConfigError(f"occupancy must be one of {sorted(OFDM_CARRIERS)}, got {occupancy}")
        if self.qam not in (4, 16, 64):
            raise ConfigError(f"qam must be 4, 16 or 64, got {qam}")
        lo, hi = OFDM_CARRIERS[self.occupancy]
        k = np.arange(lo, hi + 1)
        self.carriers = k[k != 0]
        self._levels = math.isqrt(self.qam)
        power = 2.0 * (self._levels**2 - 1) / 3.0  # E|X|^2 of the unscaled square QAM
        self._window_power = 1.0 - OFDM_TAPER_S / (4.0 * OFDM_TS_S)
        self._scale = 1.0 / math.sqrt(power * len(self.carriers) * self._window_power)
        self._omega = 2.0 * math.pi * OFDM_SPACING_HZ * self.carriers
        self._blocks: _Lru[int, ComplexArray] = _Lru(3)
        self._steps: _Lru[tuple[float, int], ComplexArray] = _Lru(4)

    def symbols(self, block: int) -> ComplexArray:
        """X of symbols 75 * block .. 75 * block + 74, shape (75, carriers), scaled."""

        def make(b: int) -> ComplexArray:
            v = _rng(self.seed, 0x0FD, b).integers(0, self._levels, (2, _OFDM_BLOCK, len(self.carriers)))
            lv = 2.0 * v - (self._levels - 1)
            return np.asarray(self._scale * (lv[0] + 1j * lv[1]), dtype=np.complex128)

        return self._blocks.get(block, make)

    def _step(self, key: tuple[float, int]) -> ComplexArray:
        dt, n = key
        return np.exp(1j * np.outer(np.arange(n) * dt, self._omega))

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        out = np.zeros(n, dtype=np.complex128)
        even = s - s % 2  # symbols restart their count every 2 s
        half = OFDM_TAPER_S / 2.0
        step_n = min(n, 1024)
        steps = self._step_matrix(dt, step_n)
        for start in range(0, n, step_n):
            u0 = (s - even) + f + start * dt  # time since the even second
            m = min(step_n, n - start)
            first = math.floor((u0 - half) / OFDM_TS_S)
            last = math.floor((u0 + (m - 1) * dt + half) / OFDM_TS_S)
            symbols: Sequence[int] = range(first, last + 1)
            if len(symbols) > m:  # sparse grid: only the symbols around some sample
                u = u0 + np.arange(m) * dt
                near = np.floor((u[:, None] + [-half, half]) / OFDM_TS_S).astype(np.int64)
                symbols = np.unique(near).tolist()
            for j in symbols:
                tau0 = u0 - j * OFDM_TS_S  # symbol j's own time at sample `start`
                i_a = max(0, math.ceil((-half - tau0) / dt))
                i_b = min(m, math.floor((OFDM_TS_S + half - tau0) / dt) + 1)
                if i_a >= i_b:
                    continue
                tau: FloatArray = tau0 + np.arange(i_a, i_b, dtype=np.float64) * dt
                number = (even // 2) * _OFDM_BLOCK + j
                x = self.symbols(number // _OFDM_BLOCK)[number % _OFDM_BLOCK]
                v = x * np.exp(1j * self._omega * (tau0 - OFDM_TG_S))
                seg = steps[i_a:i_b] @ v
                _taper(tau, seg)
                out[start + i_a : start + i_b] += seg
        return _magnitude_limit(out)

    def _step_matrix(self, dt: float, n: int) -> ComplexArray:
        return self._steps.get((dt, n), self._step)

    @property
    def mean_power(self) -> float:
        return 1.0 - _gaussian_limit_loss()

    @property
    def peak_amplitude(self) -> float:
        return 4.0

    @property
    def band_hz(self) -> tuple[float, float]:
        df = OFDM_SPACING_HZ
        return (float(self.carriers[0]) * df - df / 2.0, float(self.carriers[-1]) * df + df / 2.0)

    def _params(self) -> dict[str, object]:
        return {"mode": self.mode, "occupancy": self.occupancy, "qam": self.qam, "seed": self.seed}


def _taper(tau: FloatArray, seg: ComplexArray) -> None:
    """Weight seg, symbol values at the symbol's own (increasing) times tau, in place: raised-cosine
    in over [-Tw/2, Tw/2], 1, then out over [Ts - Tw/2, Ts + Tw/2]; adjacent symbols' weights sum
    to 1."""
    half = OFDM_TAPER_S / 2.0
    head = int(np.searchsorted(tau, half))
    if head:
        seg[:head] *= 0.5 + 0.5 * np.sin(np.pi * np.maximum(tau[:head], -half) / OFDM_TAPER_S)
    tail = int(np.searchsorted(tau, OFDM_TS_S - half, side="right"))
    if tail < len(tau):
        seg[tail:] *= 0.5 - 0.5 * np.sin(np.pi * np.minimum(tau[tail:] - OFDM_TS_S, half) / OFDM_TAPER_S)


# ---- fading ----------------------------------------------------------------------------------
class Fading:
    """Unit-mean-power Rayleigh fading gain: g(T) = sum_p exp(j (2 pi f_p T + theta_p)) / sqrt(N).

    f_p are Gaussian (std ``spread_hz``) by stratified sampling: f_p = spread * Phi^-1((p + u_p)/N),
    u_p ~ U(0.25, 0.75), so no two paths share a frequency and the time average of |g|^2 settles to
    1 within ~1 / (spread / N) seconds; theta_p ~ U(0, 2 pi); the order of the f_p is shuffled.
    """

    name = "fading"

    def __init__(self, spread_hz: float = 0.2, n_paths: int = 16, seed: int = 0) -> None:
        self.spread_hz, self.n_paths, self.seed = float(spread_hz), int(n_paths), int(seed)
        if self.spread_hz < 0 or self.n_paths < 1:
            raise ConfigError("spread_hz must be >= 0 and n_paths >= 1")
        rng = _rng(self.seed, 0xFAD)
        inv = statistics.NormalDist().inv_cdf
        quant = (np.arange(self.n_paths) + rng.uniform(0.25, 0.75, self.n_paths)) / self.n_paths
        freq = self.spread_hz * np.array([inv(float(q)) for q in rng.permutation(quant)])
        theta = rng.uniform(0.0, 2.0 * math.pi, self.n_paths)
        self._paths = _Sinusoids(freq, np.exp(1j * theta) / math.sqrt(self.n_paths))

    @property
    def frequencies_hz(self) -> FloatArray:
        return self._paths.freq.copy()

    def gain(self, t0: float, dt: float, n: int, *, epoch_gps_ns: int = 0) -> ComplexArray:
        """g at times t0 + k*dt (same time convention as :meth:`Signal.sample`)."""
        return _SinusoidSignal(self._paths).sample(t0, dt, n, epoch_gps_ns=epoch_gps_ns)

    @property
    def mean_power(self) -> float:
        return 1.0

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "spread_hz": self.spread_hz, "n_paths": self.n_paths, "seed": self.seed}


class _SinusoidSignal(Signal):
    """A bare sum of sinusoids as a Signal (the time handling of :meth:`Signal.sample`)."""

    name = "sinusoids"

    def __init__(self, paths: _Sinusoids) -> None:
        self._paths = paths

    def _eval(self, s: int, f: float, dt: float, n: int) -> ComplexArray:
        return self._paths.eval(s, f, dt, n)

    @property
    def mean_power(self) -> float:
        return float(np.sum(np.abs(self._paths.coef) ** 2))

    @property
    def peak_amplitude(self) -> float:
        return float(np.sum(np.abs(self._paths.coef)))

    @property
    def band_hz(self) -> tuple[float, float]:
        return (float(self._paths.freq.min()), float(self._paths.freq.max()))

    def _params(self) -> dict[str, object]:
        return {}


# ---- registry --------------------------------------------------------------------------------
SIGNALS: dict[str, Callable[..., Signal]] = {
    "cw": Carrier, "am-tones": ToneAm, "am-broadcast": AmBroadcast, "dcf77": Dcf77,
    "morse": Morse, "ssb": Ssb, "ofdm": Ofdm,
}  # fmt: skip


def make_signal(name: str, **params: Any) -> Signal:
    """The signal model registered as ``name`` (see :data:`SIGNALS`) built with ``params``."""
    try:
        factory = SIGNALS[name]
    except KeyError:
        raise ConfigError(f"unknown signal {name!r}; known: {', '.join(SIGNALS)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for signal {name!r}: {exc}") from None


def _timing(frames: int = 400) -> dict[str, float]:
    """Mean cost in ms of one 512-sample frame at 12001.188 Hz, consecutive frames, per model."""
    import time

    out = {}
    models: list[tuple[str, Callable[..., ComplexArray]]] = [(n, make_signal(n).sample) for n in SIGNALS]
    for name, evaluate in [*models, ("fading", Fading().gain)]:
        evaluate(0.0, 1.0, 1)  # one-off set-up (SSB's limiter statistics) is not per frame
        start = time.perf_counter()
        for k in range(frames):
            evaluate(100.0 + k * 512 / 12001.188, 1 / 12001.188, 512, epoch_gps_ns=1_400_000_000 * NS)
        out[name] = (time.perf_counter() - start) / frames * 1e3
    return out


if __name__ == "__main__":
    for model, ms in _timing().items():
        print(f"{model:14s} {ms:6.3f} ms per 512-sample frame")
