"""Seeded test signals with known truth: a tone and full-carrier AM in white complex Gaussian noise.

Noise convention (as the simulator's scene): ``noise_dbfs`` is the total noise power per complex
sample over the full sample bandwidth ``fs``; its density is ``noise_dbfs - 10 log10 fs`` dBFS/Hz,
and ``snr_db`` is the signal power over that total noise power.  Full-scale units: |z| = 1 is 0 dBFS.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["ComplexArray", "am", "am_occupied_bandwidth", "noise_density_dbfs_hz", "tone"]

ComplexArray = npt.NDArray[np.complex64]


def noise_density_dbfs_hz(noise_dbfs: float, fs: float) -> float:
    """Density (dBFS/Hz) of white noise of total power ``noise_dbfs`` over the bandwidth ``fs``."""
    return noise_dbfs - 10.0 * math.log10(fs)


def _noise(rng: np.random.Generator, n: int, noise_dbfs: float) -> npt.NDArray[np.complex128]:
    sigma = math.sqrt(10.0 ** (noise_dbfs / 10.0) / 2.0)
    out = np.empty(n, dtype=np.complex128)
    g = rng.standard_normal((n, 2))
    out.real = sigma * g[:, 0]
    out.imag = sigma * g[:, 1]
    return out


def _tone128(
    rng: np.random.Generator, n: int, fs: float, snr_db: float, offset_hz: float, noise_dbfs: float
) -> npt.NDArray[np.complex128]:
    amp = math.sqrt(10.0 ** ((noise_dbfs + snr_db) / 10.0))
    phase = rng.uniform(0.0, 2.0 * math.pi)
    k = np.arange(n, dtype=np.float64)
    z: npt.NDArray[np.complex128] = amp * np.exp(1j * (2.0 * math.pi * offset_hz / fs * k + phase))
    return z + _noise(rng, n, noise_dbfs)


def tone(
    snr_db: float,
    offset_hz: float,
    fs: float = 12000.0,
    duration_s: float = 1.0,
    noise_dbfs: float = -60.0,
    seed: int = 0,
) -> ComplexArray:
    """A tone at ``offset_hz`` (Hz from the tuned frequency) in white complex Gaussian noise.

    Truth: tone power ``noise_dbfs + snr_db`` dBFS, noise power ``noise_dbfs`` dBFS over ``fs``
    (density :func:`noise_density_dbfs_hz`), SNR ``snr_db`` over the full sample bandwidth, total
    power the sum of both.  Random phase and noise from ``seed``.  Full-scale units (|z| = 1 is
    0 dBFS), complex64, ``round(fs * duration_s)`` samples.
    """
    rng = np.random.default_rng(seed)
    n = int(round(fs * duration_s))
    return _tone128(rng, n, fs, snr_db, offset_hz, noise_dbfs).astype(np.complex64)


def am_occupied_bandwidth(mod_index: float, bandwidth_hz: float, fraction: float = 0.99) -> float:
    """The ``fraction`` occupied bandwidth of :func:`am` (noise-free).

    The carrier (power ``A^2``) sits at the centre and the sidebands (power ``A^2 m^2``) are flat over
    ``+-bandwidth_hz``; leaving ``(1 - fraction)/2`` of the total out on each side gives
    ``2 B (1 - (1 - fraction) (1 + m^2) / m^2)``.
    """
    m2 = mod_index * mod_index
    out = (1.0 - fraction) * (1.0 + m2) / m2
    if out >= 1.0:
        raise ValueError("modulation too weak: the carrier alone holds the fraction")
    return 2.0 * bandwidth_hz * (1.0 - out)


def am(
    snr_db: float,
    offset_hz: float = 0.0,
    fs: float = 12000.0,
    duration_s: float = 4.0,
    noise_dbfs: float = -60.0,
    seed: int = 0,
    *,
    mod_index: float = 0.7,
    bandwidth_hz: float = 1000.0,
) -> ComplexArray:
    """Full-carrier AM at ``offset_hz``: ``A (1 + m x(t)) exp(j 2 pi f t)`` plus white noise.

    ``x`` is real with unit RMS and an exactly flat spectrum over ``0 < |f| <= bandwidth_hz`` (built
    in the frequency domain with random phases; ``bandwidth_hz`` is rounded down to a multiple of
    ``1 / duration_s``), so ``mod_index`` is the RMS modulation index.  Truth: signal power
    ``A^2 (1 + m^2)`` = ``noise_dbfs + snr_db`` dBFS (SNR over ``fs``), occupied bandwidth
    :func:`am_occupied_bandwidth` (``mod_index``, ``bandwidth_hz``).
    """
    rng = np.random.default_rng(seed)
    n = int(round(fs * duration_s))
    kmax = int(math.floor(bandwidth_hz * n / fs))
    spec = np.zeros(n // 2 + 1, dtype=np.complex128)
    spec[1 : kmax + 1] = np.exp(1j * rng.uniform(0.0, 2.0 * math.pi, kmax))
    x = np.fft.irfft(spec, n)
    x /= math.sqrt(float(np.mean(x * x)))
    p_sig = 10.0 ** ((noise_dbfs + snr_db) / 10.0)
    amp = math.sqrt(p_sig / (1.0 + mod_index * mod_index))
    k = np.arange(n, dtype=np.float64)
    z: npt.NDArray[np.complex128] = amp * (1.0 + mod_index * x) * np.exp(1j * 2.0 * math.pi * offset_hz / fs * k)
    return (z + _noise(rng, n, noise_dbfs)).astype(np.complex64)
