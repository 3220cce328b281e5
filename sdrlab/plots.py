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

from . import geomap, metric_table
from .metrics import UNITS

#: axis labels of the metrics (units are added from metrics.UNITS): the one metric table's
LABELS = metric_table.LABELS


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
    uncal = set(psd.attrs.get("uncalibrated_stations", ()))
    for sid in psd["station"].values:
        y = _db(psd.sel(station=sid)).values
        ok = np.isfinite(y) if uncal else np.ones(y.shape, bool)  # mixed: each station on its own bins
        label = f"{sid} (waterfall, uncalibrated)" if str(sid) in uncal else str(sid)
        ax.plot(x[ok], y[ok], lw=0.8, label=label)
    ax.set_xlabel("Frequency (MHz)" if x_name == "frequency_abs" else f"Frequency offset{_centre_label(psd.attrs)} (Hz)")
    ax.set_ylabel("PSD (dBFS/Hz)")
    ax.set_title(title or "Power spectral density per station")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if psd.sizes["station"] > 4 else 1)
    return fig


def plot_spectrogram(spec: xr.DataArray, *, ncols: int = 2, dynamic_range_db: float = 60.0,
                     title: str | None = None) -> Figure:
    """A waterfall per station (time down, frequency across), one shared colour scale in dBFS/Hz
    (a mixed session's, whose audio stations are uncalibrated: one scale per kind)."""
    n = spec.sizes["station"]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    db = _db(spec)
    f = spec["frequency"].values
    t = spec["time"].values
    uncal = set(spec.attrs.get("uncalibrated_stations", ()))
    ids = [str(x) for x in spec["station"].values]
    kinds = {k: [sid for sid in ids if (sid in uncal) == k] for k in (False, True)}
    meshes: dict[bool, Any] = {}
    for i, sid in enumerate(ids):
        ax = axes[i // ncols][i % ncols]
        z = db.sel(station=sid).values
        cols = np.isfinite(z).any(axis=0) if uncal else np.ones(f.size, bool)  # mixed: the station's own bins
        if not cols.any():
            cols[:] = True
        same = db.sel(station=kinds[sid in uncal]).values
        vmax = float(np.nanmax(same)) if np.isfinite(same).any() else 0.0
        meshes[sid in uncal] = ax.pcolormesh(f[cols], t, z[:, cols], shading="nearest", vmin=vmax - dynamic_range_db,
                                             vmax=vmax, cmap="viridis", rasterized=True)
        ax.set_title(f"{sid} (waterfall, uncalibrated)" if str(sid) in uncal else str(sid), fontsize="medium")
        ax.set_xlabel("Frequency offset (Hz)")
        ax.set_ylabel("Time since start (s)")
        ax.invert_yaxis()
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for k, mesh in meshes.items():
        label = "waterfall (dB re ADC FS/Hz, uncal.)" if k and len(meshes) > 1 \
            else "PSD (dBFS/Hz)"
        fig.colorbar(mesh, ax=[axes[i // ncols][i % ncols] for i, sid in enumerate(ids) if (sid in uncal) == k],
                     label=label, shrink=0.9)
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
    """Station positions on a local equirectangular map with coastlines and country borders
    (:mod:`sdrlab.geomap`, offline), coloured by ``values`` (SNR by default), with the transmitter
    when known."""
    lat = np.asarray(latitude, float)
    lon = np.asarray(longitude, float)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    allat = np.r_[lat, [transmitter[0]] if transmitter else []]
    allon = np.r_[lon, [transmitter[1]] if transmitter else []]
    known = np.isfinite(allat) & np.isfinite(allon)
    if not known.any():  # no station says where it is: an empty map that says so
        ax.text(0.5, 0.5, "no station position known", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title or "Stations")
        return fig
    allat, allon = allat[known], allon[known]
    ax.set_aspect(1.0 / max(math.cos(math.radians(float(np.mean(allat)))), 0.1))
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
    xlim, ylim = geomap.padded_limits(allat, allon, aspect=1.1)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    geomap.draw_background(ax)
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


def plot_campaign_waterfall(wf: xr.DataArray, *, dynamic_range_db: float = 50.0, title: str | None = None) -> Figure:
    """A campaign's waterfall (:func:`sdrlab.monitor.campaign_waterfall`: dBFS/Hz, dims (time,
    frequency)): UTC down, frequency offset across; each row holds until the next one starts (a
    session of seconds every hour would be a hairline otherwise), the last for the median spacing;
    a row without data is blank."""
    import matplotlib.dates as mdates

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    db = np.asarray(wf.values, dtype=float)
    times = wf["time"].values
    if not len(times) or not np.isfinite(db).any():
        ax.text(0.5, 0.5, "no data for this waterfall", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    t = np.asarray(mdates.date2num(times), dtype=np.float64)  # type: ignore[no-untyped-call]
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0 / 86400
    t_edges = np.append(t, t[-1] + step)
    f = wf["frequency"].values
    df = float(f[1] - f[0]) if len(f) > 1 else 1.0
    f_edges = np.append(f - df / 2, f[-1] + df / 2)
    vmax = float(np.nanmax(db))
    mesh = ax.pcolormesh(f_edges, t_edges, db, shading="flat", vmin=vmax - dynamic_range_db, vmax=vmax,
                         cmap="viridis", rasterized=True)
    ax.yaxis_date()
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.yaxis.set_major_locator(locator)
    ax.yaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.invert_yaxis()
    ax.set_xlabel(f"Frequency offset{_centre_label(wf.attrs)} (Hz)")
    ax.set_ylabel("UTC")
    fig.colorbar(mesh, ax=ax, label="PSD (dBFS/Hz)", shrink=0.9)
    station = wf.attrs.get("station", "")
    ax.set_title(title or f"Waterfall of {station} over campaign {wf.attrs.get('campaign_id', '')}".strip())
    return fig


# ---- TDoA (sdrlab.tdoa) ----------------------------------------------------------------------
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tdoa import TdoaResult


def _hyperbolas(ax: Any, result: TdoaResult, lat: npt.NDArray[Any], lon: npt.NDArray[Any], **kw: Any) -> int:
    """Curves of constant lag (the measured one) of every used pair on a lat/lon grid."""
    from .tdoa import C_M_S, geodesic_distance

    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    dist: dict[str, npt.NDArray[Any]] = {}
    drawn = 0
    for pl in result.pairs:
        if not pl.used:
            continue
        for sid in (pl.a, pl.b):
            if sid not in dist:
                dist[sid] = geodesic_distance(lat2, lon2, *result.positions[sid])
        field = (dist[pl.b] - dist[pl.a]) / C_M_S - pl.lag_s
        if np.nanmin(field) < 0 < np.nanmax(field):
            ax.contour(lon, lat, field, levels=[0.0], **kw)
            drawn += 1
    return drawn


def plot_tdoa_map(result: TdoaResult, *, truth: tuple[float, float] | None = None,
                  title: str | None = None) -> Figure:
    """The TDoA picture: stations (dropped ones greyed), a hyperbola of constant lag per used
    pair, the likelihood shading, the estimate with its uncertainty ellipse and, when known,
    the true position (``truth`` or the result's).  A small ellipse gets a zoomed inset."""
    truth = truth or result.truth
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    ll = result.likelihood
    pos = result.positions
    lat_all = [p[0] for p in pos.values() if math.isfinite(p[0])]
    mean_lat = float(np.mean(lat_all)) if lat_all else 0.0
    ax.set_aspect(1.0 / max(math.cos(math.radians(mean_lat)), 0.1))
    if ll is not None:
        glat, glon = ll["latitude"].values, ll["longitude"].values
        # the likelihood is sharp at good SNR: shade its logarithm, clipped, so the ridges show
        mesh = ax.pcolormesh(glon, glat, np.clip(ll.values, -60.0, 0.0), cmap="Blues", shading="nearest",
                             alpha=0.85, rasterized=True, vmin=-60.0, vmax=0.0)
        fig.colorbar(mesh, ax=ax, label="log-likelihood (clipped at -60)", shrink=0.7)
        n = _hyperbolas(ax, result, glat, glon, colors="tab:blue", linewidths=0.7, alpha=0.8)
        if n:
            ax.plot([], [], color="tab:blue", lw=0.7, label=f"constant-lag hyperbolas ({n} pairs)")
    used = set(result.stations_used)
    for sid, (la, lo) in pos.items():
        ok = sid in used
        ax.plot(lo, la, marker="^" if ok else "x", ms=9, color="k" if ok else "0.55", ls="none", zorder=4)
        ax.annotate(sid, (lo, la), textcoords="offset points", xytext=(5, 5), fontsize="small",
                    color="k" if ok else "0.45")
    ax.plot([], [], marker="^", color="k", ls="none", label="stations used")
    if set(pos) - used:
        ax.plot([], [], marker="x", color="0.55", ls="none", label="stations dropped")

    def mark(a: Any, with_labels: bool) -> None:
        if result.position is None and result.alternatives:
            a.plot([c[1] for c in result.alternatives], [c[0] for c in result.alternatives], marker="o", ms=10,
                   mfc="none", mec="tab:orange", mew=2, ls="none", zorder=6,
                   label="crossings that fit equally (no position claimed)" if with_labels else None)
        if result.position is not None:
            la, lo = result.position
            lab = "estimate"
            if result.ellipse is not None:
                e = result.ellipse
                elat, elon = result.ellipse_outline()
                a.plot(elon, elat, color="tab:orange", lw=1.5, zorder=5,
                       label=f"{e.confidence * 100:g} % ellipse ({e.semi_major_km:.2g} x {e.semi_minor_km:.2g} km)"
                       if with_labels else None)
            a.plot(lo, la, marker="+", ms=14, mew=2, color="tab:orange", ls="none", zorder=6,
                   label=lab if with_labels else None)
        if truth is not None:
            a.plot(truth[1], truth[0], marker="*", ms=14, color="red", mec="k", ls="none", zorder=6,
                   label="transmitter (truth)" if with_labels else None)

    mark(ax, True)
    if result.position is not None and result.ellipse is not None and ll is not None:
        extent_km = float(np.ptp(ll["latitude"].values)) * 111.2
        if result.ellipse.semi_major_km < 0.02 * extent_km:
            la, lo = result.position
            half = max(3.0 * result.ellipse.semi_major_km, 1.0)
            if truth is not None:
                from .tdoa import local_offset_km

                half = max(half, 1.3 * max(abs(v) for v in local_offset_km(la, lo, *truth)))
            dlat = half / 111.2
            dlon = dlat / max(math.cos(math.radians(la)), 0.1)
            ins = ax.inset_axes((0.66, 0.02, 0.32, 0.32))
            ins.set_xlim(lo - dlon, lo + dlon)
            ins.set_ylim(la - dlat, la + dlat)
            ins.set_aspect(1.0 / max(math.cos(math.radians(la)), 0.1))
            _hyperbolas(ins, result, np.linspace(la - dlat, la + dlat, 41), np.linspace(lo - dlon, lo + dlon, 41),
                        colors="tab:blue", linewidths=0.6, alpha=0.7)
            mark(ins, False)
            geomap.draw_background(ins, land=False, zorder=1.5)
            ins.set_title(f"zoom: +-{half:.2g} km", fontsize="x-small")
            ins.tick_params(labelsize="xx-small")
    geomap.draw_background(ax, land=False, zorder=1.5)
    ax.set_xlabel("Longitude (°E)")
    ax.set_ylabel("Latitude (°N)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    import textwrap

    head = result.summary().splitlines()[0]
    ax.set_title(title or textwrap.fill(f"TDoA: {head}", 70), fontsize="medium")
    return fig


def plot_tdoa_lags(result: TdoaResult, *, ncols: int = 3, title: str | None = None) -> Figure:
    """Per pair, the lag of every window (us) over time: kept windows as dots, rejected ones
    (outlier, no peak) as crosses, the mean with its spread (the text: its 95 % interval, which
    also holds the stations' timing terms), the lag predicted at the estimate and, when the truth
    is known, the true lag; the title names the correlation method."""
    from .tdoa import C_M_S, geodesic_distance

    pairs = result.pairs
    n = max(1, len(pairs))
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    t = result.window_centres_s
    truth = result.truth
    for i, pl in enumerate(pairs):
        ax = axes[i // ncols][i % ncols]
        ax.set_title(f"{pl.a} -> {pl.b}", fontsize="small")
        ax.grid(True, alpha=0.3)
        lag_us = pl.window_lag_s * 1e6
        kept = pl.kept
        if not np.isfinite(pl.lag_s):
            ax.text(0.5, 0.5, f"no lag: {pl.reason}", ha="center", va="center", fontsize="small",
                    transform=ax.transAxes, wrap=True)
            continue
        m = pl.lag_s * 1e6
        ax.axhline(m, color="tab:blue", lw=1.0)
        if np.isfinite(pl.spread_s):
            ax.axhspan(m - pl.spread_s * 1e6, m + pl.spread_s * 1e6, color="tab:blue", alpha=0.15)
        ax.plot(t[kept], lag_us[kept], "o", ms=3, color="tab:blue")
        bad = ~kept & np.isfinite(lag_us)
        if bad.any():
            ax.plot(t[bad], lag_us[bad], "x", ms=5, color="tab:red")
        if pl.predicted_s is not None:
            ax.axhline(pl.predicted_s * 1e6, color="tab:orange", ls="--", lw=1.0)
        if truth is not None:
            d = geodesic_distance(truth[0], truth[1], np.array([result.positions[pl.a][0], result.positions[pl.b][0]]),
                                  np.array([result.positions[pl.a][1], result.positions[pl.b][1]]))
            ax.axhline((d[1] - d[0]) / C_M_S * 1e6, color="tab:green", ls=":", lw=1.2)
        sp = f" +- {pl.spread_s * 1e6:.2f}" if np.isfinite(pl.spread_s) else ""
        ci = f", 95 % +-{pl.ci95_s * 1e6:.1f}" if np.isfinite(pl.ci95_s) else ""
        ax.text(0.02, 0.96, f"{m:+.2f}{sp} us{ci}, r={pl.correlation:.2f}" + ("" if pl.used else " (not used)"),
                transform=ax.transAxes, va="top", fontsize="x-small")
        ax.set_xlabel("Time since overlap start (s)", fontsize="x-small")
        ax.set_ylabel("Lag (us)", fontsize="x-small")
        ax.tick_params(labelsize="x-small")
    for j in range(len(pairs), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    legend = [("o", "tab:blue", "-", "window lag (kept), mean +- spread"), ("x", "tab:red", "", "rejected window"),
              ("", "tab:orange", "--", "predicted at the estimate")]
    if truth is not None:
        legend.append(("", "tab:green", ":", "true lag"))
    handles = [axes[0][0].plot([], [], marker=mk, color=c, ls=ls or "none")[0] for mk, c, ls, _ in legend]
    fig.legend(handles, [lab for *_, lab in legend], loc="outside lower center", ncols=len(legend), fontsize="small")
    how = f" ({result.method} correlation)" if result.method else ""
    fig.suptitle(title or f"TDoA lag per window and station pair{how}")
    return fig
