"""Spectrogram (waterfall) of each station: a pure function, computed per station so only one
station's samples are in memory at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from scipy import signal

from . import model


def spectrogram(
    ds: xr.Dataset | xr.DataArray,
    *,
    nperseg: int = 1024,
    noverlap: int | None = None,
    window: str = "hann",
    stations: list[str] | None = None,
    max_rows: int = 600,
) -> xr.DataArray:
    """Power density (station, time, frequency) in FS^2/Hz, two-sided, fft-shifted.

    ``time`` is seconds since each station's first sample (stations are GPS-aligned through
    ``start_time``); ``frequency`` is Hz relative to the tuned frequency (the stations' mean
    rate).  Segments are averaged in linear power so that at most ``max_rows`` rows remain (long
    captures still draw quickly).  Only the first ``n_samples`` of each station are used.
    ``ds`` is a session, or a complex (station, sample) DataArray with ``sample_rate`` (and
    optionally ``n_samples``) coordinates such as ``ds.sdr.iq()``.
    """
    ids = stations if stations is not None else [str(s) for s in ds["station"].values]
    if nperseg < 16:
        raise ValueError(f"nperseg must be at least 16, got {nperseg}")
    hop = nperseg - (nperseg // 2 if noverlap is None else noverlap)
    fs_all = ds["sample_rate"].sel(station=ids).values.astype(float)
    n_all = (ds["n_samples"].sel(station=ids).values.astype(int) if "n_samples" in ds.coords or
             (isinstance(ds, xr.Dataset) and "n_samples" in ds.variables)
             else np.full(len(ids), ds.sizes["sample"], dtype=int))
    n_rows = max(1, (int(n_all.max()) - nperseg) // hop + 1)
    avg = max(1, -(-n_rows // max_rows))
    rows = -(-n_rows // avg)
    out = np.full((len(ids), rows, nperseg), np.nan)
    for i, sid in enumerate(ids):
        n = int(n_all[i])
        if n < nperseg:
            continue
        part = ds.sel(station=[sid]).isel(sample=slice(0, n))
        zda: xr.DataArray = model.to_complex(part) if isinstance(part, xr.Dataset) or "component" in part.dims \
            else part
        z = zda.values[0]
        _f, _t, sxx = signal.spectrogram(
            z, fs=fs_all[i], window=window, nperseg=nperseg, noverlap=nperseg - hop,
            return_onesided=False, scaling="density", mode="psd", detrend=False,
        )
        sxx = np.fft.fftshift(sxx, axes=0).T  # (time, frequency)
        k = sxx.shape[0] // avg * avg
        blocks = sxx[:k].reshape(-1, avg, nperseg).mean(axis=1) if k else sxx[:0]
        if k < sxx.shape[0]:
            blocks = np.vstack([blocks, sxx[k:].mean(axis=0, keepdims=True)])
        out[i, : blocks.shape[0]] = blocks
    fs_mean = float(fs_all.mean())
    freq = (np.arange(nperseg) - nperseg // 2) * fs_mean / nperseg
    time = (np.arange(rows) * avg * hop + nperseg / 2) / fs_mean
    attrs: dict[str, Any] = {"units": "FS^2/Hz", "long_name": "power spectral density",
                             "nperseg": nperseg, "averaged_segments": avg}
    return xr.DataArray(
        out, dims=("station", "time", "frequency"),
        coords={"station": ids, "time": ("time", time, {"units": "s", "long_name": "time since start"}),
                "frequency": ("frequency", freq, {"units": "Hz", "long_name": "offset from tuned frequency"})},
        attrs=attrs, name="spectrogram",
    )
