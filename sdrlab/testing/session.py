"""A whole synthetic session with known truth: :func:`synthetic_dataset` and its :func:`truth`."""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from .. import model, timing
from ..capture import FLAG_ADC_OVERFLOW, SAMPLES_PER_FRAME, Capture, ReceiverInfo, Segment
from .signals import _tone128, noise_density_dbfs_hz

__all__ = ["PASSBAND_WIDTH_HZ", "synthetic_dataset", "truth"]

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
