"""Synthetic signals and sessions with known truth, and test helpers.

Every generator is seeded and documents its truth exactly, so tests (and notebooks) can assert
measured values against it:

* :func:`tone` - a complex exponential in complex Gaussian noise, SNR over the full sample bandwidth;
* :func:`am` - a full-carrier AM signal whose modulation has a flat spectrum up to ``bandwidth_hz``,
  with the 99 % occupied bandwidth given by :func:`am_occupied_bandwidth`;
* :func:`synthetic_dataset` - a session Dataset in the :mod:`sdrlab.model` schema (int16, per-station
  measured sample rates, padding past ``n_samples``, frame records with S-meter RSSI and flags),
  with its truth as JSON in ``attrs['truth']`` (:func:`truth` parses it);
* :func:`raise_if_dask_computes` - a dask scheduler that raises when anything computes.

Noise convention (as the simulator's scene): ``noise_dbfs`` is the total noise power per complex
sample over the full sample bandwidth ``fs``; its density is ``noise_dbfs - 10 log10 fs`` dBFS/Hz,
and ``snr_db`` is the signal power over that total noise power.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import dask
import numpy as np
import numpy.typing as npt
import xarray as xr

from . import model, timing
from .receivers.kiwisdr import Capture, ReceiverInfo, Segment
from .receivers.kiwiwire import FLAG_ADC_OVERFLOW, SAMPLES_PER_FRAME

__all__ = [
    "am",
    "am_occupied_bandwidth",
    "noise_density_dbfs_hz",
    "raise_if_dask_computes",
    "synthetic_dataset",
    "tone",
    "truth",
]

ComplexArray = npt.NDArray[np.complex64]
_dask: Any = dask  # dask.get (the synchronous scheduler) is not re-exported for type checkers


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


# ---- a whole session -------------------------------------------------------------------------
_DEFAULT_SNR = (0.0, 10.0, 20.0, 31.0, 40.0, 25.0, 15.0)
_DEFAULT_OFFSET = (250.0, -1234.5, 2999.7, -3000.3, 17.3, 1500.25, -433.3)
_DEFAULT_PPM = (0.0, 4.0, -6.0, 10.0, -3.0, 7.0, -9.0)
_T0 = np.datetime64("2025-06-01T12:00:00", "ns")


def _per_station(value: float | Sequence[float] | None, default: Sequence[float], n: int) -> list[float]:
    if value is None:
        return [float(default[i % len(default)]) for i in range(n)]
    if isinstance(value, (int, float)):
        return [float(value)] * n
    vals = [float(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"expected {n} per-station values, got {len(vals)}")
    return vals


#: the passband synthetic captures claim (+-5 kHz; the noise itself is white over fs)
PASSBAND_WIDTH_HZ = 10_000.0


def synthetic_dataset(
    n_stations: int = 7,
    duration_s: float = 60.0,
    *,
    fs: float = 12000.0,
    center_hz: float = 10_000_000.0,
    snr_db: float | Sequence[float] | None = None,
    offset_hz: float | Sequence[float] | None = None,
    noise_dbfs: float = -60.0,
    fs_ppm: float | Sequence[float] | None = None,
    valid_fraction: float | Sequence[float] | None = None,
    rssi_dbm: float | Sequence[float] | None = None,
    overload_station: int | None = None,
    seed: int = 0,
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """A session Dataset of tones in noise, built with :func:`sdrlab.model.build_dataset`.

    Station ``i`` (id ``syn{i}``) receives a tone (:func:`tone`: ``snr_db[i]``, ``offset_hz[i]``, all
    over ``noise_dbfs``) sampled at its own rate ``fs (1 + fs_ppm[i] 1e-6)`` (the ``sample_rate``
    coordinate), int16-quantised, for ``valid_fraction[i] * duration_s`` (whole 512-sample frames;
    the rest is zero padding).  Defaults: SNR 0, 10, 20, 31, 40, 25, 15 dB; offsets 250, -1234.5,
    2999.7, -3000.3, 17.3, 1500.25, -433.3 Hz; the last station holds half the samples.  Frames
    alternate between ``rssi_dbm[i] - 5`` and ``+ 5`` dBm (linear mean ``rssi + 2.40`` dBm, the dB
    mean would be ``rssi``).  ``overload_station``: every 50th frame of that station is flagged
    ADC overflow (0x02) and its first 8 samples driven to full scale (that station's power and SNR
    truth are then NaN).  Passband +-5 kHz, tuned to ``center_hz``.  ``chunks`` (e.g.
    ``{"station": 1, "sample": 2**17}``) makes it dask-backed.

    ``attrs['truth']`` (JSON; :func:`truth`) holds per station: ``snr_db`` (over ``fs``),
    ``snr_passband_db`` (over the 10 kHz passband width, the metrics' default), ``cn0_dbhz``, ``frequency_offset_hz``,
    ``sample_rate``, ``signal_power_dbfs``, ``noise_power_dbfs``, ``noise_density_dbfs_hz``,
    ``total_power_dbfs``, ``n_samples``, ``rssi_mean_dbm``, ``rssi_min_dbm``, ``rssi_max_dbm``,
    ``clipped_fraction`` (counted on the int16 samples) and ``overload_fraction``.
    """
    n = n_stations
    snrs = _per_station(snr_db, _DEFAULT_SNR, n)
    offs = _per_station(offset_hz, _DEFAULT_OFFSET, n)
    ppms = _per_station(fs_ppm, _DEFAULT_PPM, n)
    fracs = _per_station(valid_fraction, [1.0] * (n - 1) + [0.5], n)
    rssis = _per_station(rssi_dbm, [-110.0 + s for s in snrs], n)
    t0_gps = timing.utc_to_gps_ns(_T0)
    captures: list[Capture] = []
    table: dict[str, dict[str, float]] = {}
    for i in range(n):
        sid = f"syn{i}"
        fs_i = fs * (1.0 + ppms[i] * 1e-6)
        nf = int(fracs[i] * duration_s * fs // SAMPLES_PER_FRAME)
        if nf < 1:
            raise ValueError(f"station {sid}: less than one frame of samples")
        ns = nf * SAMPLES_PER_FRAME
        rng = np.random.default_rng([seed, i])
        z = _tone128(rng, ns, fs_i, snrs[i], offs[i], noise_dbfs)
        iq = np.empty((ns, 2), dtype=np.int16)
        iq[:, 0] = np.clip(np.rint(z.real * model.FULL_SCALE), -32768, 32767)
        iq[:, 1] = np.clip(np.rint(z.imag * model.FULL_SCALE), -32768, 32767)
        flags = np.zeros(nf, dtype=np.uint8)
        clean = overload_station != i
        if not clean:
            bad = np.arange(0, nf, 50)
            flags[bad] |= FLAG_ADC_OVERFLOW
            for j, b in enumerate(bad):
                s0 = int(b) * SAMPLES_PER_FRAME
                iq[s0 : s0 + 8, 0] = 32767 if j % 2 == 0 else -32768
        clipped = int(np.count_nonzero((np.abs(iq.astype(np.int32)) >= 32767).any(axis=1)))
        rssi = (rssis[i] + np.where(np.arange(nf) % 2 == 0, -5.0, 5.0)).astype(np.float32)
        gps = t0_gps + np.rint(np.arange(nf) * SAMPLES_PER_FRAME * 1e9 / fs_i).astype(np.int64)
        seg = Segment(
            samples=iq,
            frame_seq=np.arange(1, nf + 1, dtype=np.uint32),
            frame_flags=flags,
            frame_rssi_dbm=rssi,
            frame_last_gps=np.zeros(nf, dtype=np.uint8),
            frame_gps_ns=gps,
            frame_received=np.ones(nf, dtype=bool),
            fit=timing.TimeFit(int(t0_gps), fs_i, 1e-7, nf, 0, "ok"),
            end_reason="complete",
            seq_gaps=0,
            missing_frames=0,
        )
        info = ReceiverInfo(
            host="synthetic", port=0, version="synthetic", rx_chans=4, audio_rate=int(fs),
            sample_rate=fs_i, name=f"Synthetic {i}", position=(48.0 + i, 8.0 + i), altitude=100.0,
        )
        captures.append(Capture(
            station=sid, frequency_hz=center_hz, low_cut=-5000.0, high_cut=5000.0,
            requested_s=duration_s, info=info, segments=[seg],
        ))
        sig = noise_dbfs + snrs[i]
        nan = float("nan")
        lin = float(np.mean(10.0 ** (rssi.astype(np.float64) / 10.0)))
        n0_lin = 10.0 ** (noise_density_dbfs_hz(noise_dbfs, fs_i) / 10.0)
        table[sid] = {
            "snr_db": snrs[i] if clean else nan,
            # the capture says +-5 kHz, so the metrics' default noise bandwidth is 10 kHz
            "snr_passband_db": sig - 10.0 * math.log10(n0_lin * PASSBAND_WIDTH_HZ) if clean else nan,
            "cn0_dbhz": sig - 10.0 * math.log10(n0_lin) if clean else nan,
            "frequency_offset_hz": offs[i],
            "sample_rate": fs_i,
            "signal_power_dbfs": sig if clean else nan,
            "noise_power_dbfs": noise_dbfs,
            "noise_density_dbfs_hz": noise_density_dbfs_hz(noise_dbfs, fs_i),
            "total_power_dbfs": 10.0 * math.log10(10.0 ** (sig / 10.0) + 10.0 ** (noise_dbfs / 10.0)) if clean else nan,
            "n_samples": float(ns),
            "rssi_mean_dbm": 10.0 * math.log10(lin),
            "rssi_min_dbm": float(rssi.min()),
            "rssi_max_dbm": float(rssi.max()),
            "clipped_fraction": clipped / ns,
            "overload_fraction": float(np.count_nonzero(flags & FLAG_ADC_OVERFLOW)) / nf,
        }
    ds = model.build_dataset(
        captures, {}, session_id=f"synthetic-{seed}",
        attrs={"truth": json.dumps(table, sort_keys=True), "comment": "sdrlab.testing.synthetic_dataset"},
    )
    if chunks is not None:
        ds = ds.chunk(dict(chunks))
    return ds


def truth(ds: xr.Dataset) -> dict[str, dict[str, float]]:
    """The per-station truth of a :func:`synthetic_dataset` (station id -> quantity -> value)."""
    out: dict[str, dict[str, float]] = json.loads(ds.attrs["truth"])
    return out


# ---- dask ------------------------------------------------------------------------------------
class CountingScheduler:
    """A synchronous dask scheduler that counts computes and raises past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computes: {self.total_computes} > {self.max_computes} allowed"
            )
        return _dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Inside the block, any dask compute beyond ``max_computes`` raises :class:`RuntimeError`
    (as cf-xarray's helper): proves that something meant to be lazy stays lazy."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
