"""The plots researchers look at (matplotlib, no display needed): PSD overlay, waterfall per
station, a station map coloured by SNR, and per-station metric bars.  Each function takes plain
xarray objects and returns the Figure; :mod:`sdrlab.accessor` makes each one call from ``ds.sdr``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy.typing as npt

import numpy as np
import xarray as xr
import xarray.ufuncs as xu
from matplotlib.figure import Figure

from .metrics import UNITS

#: axis labels of the metrics (units are added from metrics.UNITS)
LABELS = {
    "snr_db": "SNR", "signal_power_dbfs": "Signal power", "noise_floor_dbfs_hz": "Noise floor",
    "frequency_offset_hz": "Frequency offset", "occupied_bandwidth_hz": "Occupied bandwidth",
    "total_power_dbfs": "Total power", "rssi_mean_dbm": "RSSI", "rssi_min_dbm": "RSSI min",
    "rssi_max_dbm": "RSSI max", "clipped_fraction": "Clipped", "overload_fraction": "ADC overload",
}


def metric_label(name: str) -> str:
    """``"SNR (dB)"`` for ``"snr_db"``."""
    return f"{LABELS.get(name, name)} ({UNITS.get(name, '')})"


def _db(x: xr.DataArray) -> xr.DataArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: xr.DataArray = 10.0 * xu.log10(x)
    return out


def _centre_label(attrs: dict[str, Any]) -> str:
    c = attrs.get("center_frequency_hz")
    return f" from {c / 1e6:.6g} MHz" if c else ""


def plot_psd(psd: xr.DataArray, *, absolute: bool = False, title: str | None = None) -> Figure:
    """Every station's PSD (linear FS^2/Hz in, dBFS/Hz drawn) overlaid on one axis."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x_name = "frequency_abs" if absolute and "frequency_abs" in psd.coords else "frequency"
    x = psd[x_name].values / (1e6 if x_name == "frequency_abs" else 1.0)
    for sid in psd["station"].values:
        ax.plot(x, _db(psd.sel(station=sid)).values, lw=0.8, label=str(sid))
    ax.set_xlabel("Frequency (MHz)" if x_name == "frequency_abs" else f"Frequency offset{_centre_label(psd.attrs)} (Hz)")
    ax.set_ylabel("PSD (dBFS/Hz)")
    ax.set_title(title or "Power spectral density per station")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if psd.sizes["station"] > 4 else 1)
    return fig


def plot_spectrogram(spec: xr.DataArray, *, ncols: int = 2, dynamic_range_db: float = 60.0,
                     title: str | None = None) -> Figure:
    """A waterfall per station (time down, frequency across), one shared colour scale in dBFS/Hz."""
    n = spec.sizes["station"]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    db = _db(spec)
    vmax = float(np.nanmax(db.values)) if np.isfinite(db.values).any() else 0.0
    vmin = vmax - dynamic_range_db
    f = spec["frequency"].values
    t = spec["time"].values
    mesh = None
    for i, sid in enumerate(spec["station"].values):
        ax = axes[i // ncols][i % ncols]
        mesh = ax.pcolormesh(f, t, db.sel(station=sid).values, shading="nearest", vmin=vmin, vmax=vmax,
                             cmap="viridis", rasterized=True)
        ax.set_title(str(sid), fontsize="medium")
        ax.set_xlabel("Frequency offset (Hz)")
        ax.set_ylabel("Time since start (s)")
        ax.invert_yaxis()
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label="PSD (dBFS/Hz)", shrink=0.9)
    fig.suptitle(title or "Spectrogram (waterfall) per station")
    return fig


def plot_map(
    latitude: Sequence[float] | npt.NDArray[Any],
    longitude: Sequence[float] | npt.NDArray[Any],
    stations: Sequence[str],
    *,
    values: Sequence[float] | npt.NDArray[Any] | None = None,
    value_label: str = "SNR (dB)",
    transmitter: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Station positions on a local equirectangular map (no basemap: works offline), coloured by
    ``values`` (SNR by default), with the transmitter when known."""
    lat = np.asarray(latitude, float)
    lon = np.asarray(longitude, float)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    allat = np.r_[lat, [transmitter[0]] if transmitter else []]
    ax.set_aspect(1.0 / max(math.cos(math.radians(float(np.nanmean(allat)))), 0.1))
    if values is not None:
        sc = ax.scatter(lon, lat, c=np.asarray(values, float), cmap="plasma", s=90, edgecolors="k",
                        zorder=3, label="stations")
        fig.colorbar(sc, ax=ax, label=value_label, shrink=0.8)
    else:
        ax.scatter(lon, lat, s=90, edgecolors="k", zorder=3, label="stations")
    for x, y, name in zip(lon, lat, stations):
        ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    if transmitter is not None:
        ax.plot(transmitter[1], transmitter[0], marker="*", ms=18, color="red", mec="k", ls="none",
                zorder=4, label="transmitter")
    ax.set_xlabel("Longitude (°E)")
    ax.set_ylabel("Latitude (°N)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "Stations")
    return fig


def plot_metrics(m: xr.Dataset, names: Sequence[str] = ("snr_db", "signal_power_dbfs", "noise_floor_dbfs_hz",
                                                         "frequency_offset_hz"), *, title: str | None = None) -> Figure:
    """One bar chart per metric, a bar per station, units on each axis."""
    names = [n for n in names if n in m.data_vars]
    fig = Figure(figsize=(9, 2.4 * max(1, len(names))), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)
    ids = [str(s) for s in m["station"].values]
    for ax, name in zip(axes[:, 0], names):
        v = np.asarray(m[name].values, float)
        finite = v[np.isfinite(v)]
        # negative levels (dBFS) grow up from a floor below the lowest, not down from zero
        base = float(np.floor(finite.min() - 3.0)) if finite.size and (finite < 0).all() else 0.0
        ax.bar(ids, v - base, bottom=base, color="tab:blue")
        ax.set_ylabel(metric_label(name), fontsize="small")
        if base:
            ax.set_ylim(base, float(finite.max()) + 3.0)
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1, 0].tick_params(axis="x", rotation=30)
    fig.suptitle(title or "Metrics per station")
    return fig
