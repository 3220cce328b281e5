"""Signal metrics of a session: pure numpy / xarray functions, vectorised over stations, lazy on dask.

Conventions (STYLE.md): powers are averaged in linear units and converted to dB last; spectral
bins are selected by *frequency*, never by index; powers are in dBFS (``|z| = 1`` is 0 dBFS, i.e.
int16 32768) unless they come from the receiver's calibrated S-meter (dBm); SNR is S/N, never
(S+N)/N.

The inputs (a session Dataset, a complex DataArray or a numpy array), the one pass over the samples
that every metric comes from, and the PSD (:func:`psd`, :func:`psd_db`, :func:`power_db`) are
defined in :mod:`sdrlab.welch` and re-exported here; this module derives the metrics from the
one-pass sums.

Definitions (details in each function's docstring)
--------------------------------------------------
=====================  =======  ==========================================================
psd                    FS^2/Hz  Welch, two-sided, fft-shifted, density scaling, no detrend
noise_floor_dbfs_hz    dBFS/Hz  passband median of the PSD / chi2(2K) median-to-mean ratio
signal_power_dbfs      dBFS     sum over the passband of (PSD - N0) df
total_power_dbfs       dBFS     mean |z|^2 of the valid samples (time domain)
snr_db                 dB       S / (N0 B), B = each station's fs unless ``bandwidth_hz``
frequency_offset_hz    Hz       strongest passband bin + sub-bin interpolation
occupied_bandwidth_hz  Hz       99 % of S between the edges, (1 - 0.99)/2 left out each side
rssi_*_dbm             dBm      S-meter (receiver calibration), mean in linear power
clipped_fraction       1        valid samples with |I| or |Q| >= 32767
overload_fraction      1        received frames with the ADC-overflow flag 0x02
=====================  =======  ==========================================================

All metrics in Hz use each station's own sample rate (the PSD's ``frequency`` coordinate uses the
stations' mean rate: see :mod:`sdrlab.welch`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from .receivers.kiwiwire import FLAG_ADC_OVERFLOW
from .welch import (
    CLIP_LEVEL,
    FloatArray,
    FsLike,
    Passband,
    Source,
    WindowLike,
    _check_welch,
    _Input,
    _is_hann,
    _passband,
    _sums,
    _window,
    chi2_quantile_ratio,
    power_db,
    psd,
    psd_db,
)

__all__ = [
    "CLIP_LEVEL",
    "LONG_NAMES",
    "UNITS",
    "chi2_quantile_ratio",
    "clipping_fraction",
    "frequency_offset",
    "metrics",
    "metrics_table",
    "noise_floor",
    "occupied_bandwidth",
    "power_db",
    "psd",
    "psd_db",
    "rssi_summary",
    "signal_power",
    "snr",
    "total_power",
]

# metric variable names (units in the name) and their units
UNITS: dict[str, str] = {
    "noise_floor_dbfs_hz": "dBFS/Hz",
    "frequency_offset_hz": "Hz",
    "signal_power_dbfs": "dBFS",
    "total_power_dbfs": "dBFS",
    "snr_db": "dB",
    "occupied_bandwidth_hz": "Hz",
    "rssi_mean_dbm": "dBm",
    "rssi_min_dbm": "dBm",
    "rssi_max_dbm": "dBm",
    "clipped_fraction": "1",
    "overload_fraction": "1",
}
LONG_NAMES: dict[str, str] = {
    "noise_floor_dbfs_hz": "noise floor (bias-corrected passband quantile of the PSD)",
    "frequency_offset_hz": "peak frequency offset from the tuned frequency",
    "signal_power_dbfs": "noise-subtracted signal power in the passband",
    "total_power_dbfs": "mean power |z|^2 of the valid samples (time domain)",
    "snr_db": "signal-to-noise ratio S/N",
    "occupied_bandwidth_hz": "occupied bandwidth",
    "rssi_mean_dbm": "mean S-meter RSSI (averaged in linear power)",
    "rssi_min_dbm": "minimum S-meter RSSI",
    "rssi_max_dbm": "maximum S-meter RSSI",
    "clipped_fraction": "fraction of valid samples with |I| or |Q| at int16 full scale",
    "overload_fraction": "fraction of received frames with the ADC-overflow flag (0x02)",
}
_SPECTRAL = ("noise_floor_dbfs_hz", "frequency_offset_hz", "signal_power_dbfs", "snr_db", "occupied_bandwidth_hz")
_TIME = ("total_power_dbfs", "clipped_fraction")
_FRAMES = ("rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm", "overload_fraction")

# ---- spectral metrics from a PSD -------------------------------------------------------------
def _row_quantile(p: FloatArray, mask: npt.NDArray[np.bool_], q: float) -> FloatArray:
    s = np.sort(np.where(mask, p, np.inf), axis=-1)
    nb = mask.sum(axis=-1)
    pos = q * np.maximum(nb - 1, 0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, np.maximum(nb - 1, 0))
    rows = np.arange(p.shape[0])
    a, b = s[rows, i0], s[rows, i1]
    with np.errstate(invalid="ignore"):
        out = a + (pos - i0) * (b - a)
    return np.where(nb > 0, out, np.nan)


def _spectral_kernel(
    p: npt.NDArray[Any],
    k: npt.NDArray[Any],
    fs: npt.NDArray[Any],
    *,
    lo: float,
    hi: float,
    hann: bool,
    fraction: float,
    quantile: float,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """N0 (FS^2/Hz), offset (Hz), S (FS^2) and occupied bandwidth (Hz) of PSD rows (fft-shifted)."""
    lead = p.shape[:-1]
    n = p.shape[-1]
    p2 = np.asarray(p, dtype=np.float64).reshape(-1, n)
    rows_n = p2.shape[0]
    fs1 = np.broadcast_to(np.asarray(fs, dtype=np.float64), lead).reshape(-1)
    k1 = np.broadcast_to(np.asarray(k), lead).reshape(-1)
    rows = np.arange(rows_n)
    df = fs1 / n
    f = (np.arange(n) - n // 2)[None, :] * df[:, None]
    band = (f >= lo) & (f <= hi) & np.isfinite(p2)
    nb = band.sum(axis=-1)
    ok = nb > 0

    # noise floor: bias-corrected quantile of the passband bins
    n0 = _row_quantile(p2, band, quantile) / chi2_quantile_ratio(k1, quantile)

    # peak offset with sub-bin interpolation
    i = np.argmax(np.where(band, p2, -np.inf), axis=-1)
    inner = (i > 0) & (i < n - 1)
    a = p2[rows, np.clip(i - 1, 0, n - 1)]
    b = p2[rows, i]
    c = p2[rows, np.clip(i + 1, 0, n - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        if hann:
            right = c >= a
            ratio = np.sqrt(np.where(right, c, a) / b)
            d = (2.0 * ratio - 1.0) / (ratio + 1.0)
            delta = np.where(right, d, -d)
        else:
            la, lb, lc = np.log(a), np.log(b), np.log(c)
            den = la - 2.0 * lb + lc
            delta = np.where(den < 0, 0.5 * (la - lc) / den, 0.0)
    delta = np.where(inner & np.isfinite(delta), np.clip(delta, -1.0, 1.0), 0.0)
    offset = (i - n // 2 + delta) * df

    # noise-subtracted power in the passband
    e = np.where(band, p2 - n0[:, None], 0.0) * df[:, None]
    s_pow = e.sum(axis=-1)

    # occupied bandwidth: edges where the cumulative power from each side reaches (1 - fraction)/2 S
    target = 0.5 * (1.0 - fraction) * s_pow
    cum = np.cumsum(e, axis=-1)
    j = np.argmax(cum >= target[:, None], axis=-1)
    ej = e[rows, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_lo = np.where(ej > 0, np.clip((cum[rows, j] - target) / ej, 0.0, 1.0), 0.0)
    f_low = f[rows, j] + 0.5 * df - frac_lo * df
    rcum = np.cumsum(e[:, ::-1], axis=-1)
    j2 = np.argmax(rcum >= target[:, None], axis=-1)
    jr = n - 1 - j2
    er = e[rows, jr]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_hi = np.where(er > 0, np.clip((rcum[rows, j2] - target) / er, 0.0, 1.0), 0.0)
    f_high = f[rows, jr] - 0.5 * df + frac_hi * df
    good = ok & np.isfinite(s_pow) & (s_pow > 0)
    obw = np.where(good, f_high - f_low, np.nan)

    def shape(v: FloatArray) -> FloatArray:
        return np.asarray(np.where(ok, v, np.nan), dtype=np.float64).reshape(lead)

    return shape(n0), shape(offset), shape(s_pow), shape(obw)


def _finish(
    n0: FloatArray, offset: FloatArray, s_pow: FloatArray, obw: FloatArray, fs: FloatArray,
    bandwidth_hz: float | None,
) -> tuple[FloatArray, ...]:
    """The spectral metrics in final units, in the order of ``_SPECTRAL``."""
    bw = fs if bandwidth_hz is None else float(bandwidth_hz)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_lin = s_pow / (n0 * bw)
    return _db(n0), offset, _db(s_pow), _db(snr_lin), obw


def _psd_kernel(
    p: npt.NDArray[Any], k: npt.NDArray[Any], fs: npt.NDArray[Any], *, bandwidth_hz: float | None, **kw: Any
) -> tuple[FloatArray, ...]:
    lead = p.shape[:-1]
    f = np.broadcast_to(np.asarray(fs, dtype=np.float64), lead)
    out = _finish(*_spectral_kernel(p, k, f, **kw), f.reshape(-1), bandwidth_hz)
    return tuple(v.reshape(lead) for v in out)


def _spectral_metrics(
    x: Source, fs: FsLike, nperseg: int, noverlap: int, window: WindowLike, passband: Passband | None, *,
    fraction: float = 0.99, quantile: float = 0.5, bandwidth_hz: float | None = None,
) -> xr.Dataset:
    """The spectral metrics of a :func:`psd` (or of a source, through :func:`psd`)."""
    _check_fractions(fraction, quantile)
    if isinstance(x, xr.DataArray) and "frequency" in x.dims and "n_segments" in x.coords:
        p = x
    else:
        p = psd(x, fs, nperseg=nperseg, noverlap=noverlap, window=window)
    lo, hi = _passband(p.attrs, passband)
    kernel: Callable[..., Any] = functools.partial(
        _psd_kernel, lo=lo, hi=hi, hann=_is_hann(str(p.attrs.get("window", ""))),
        fraction=fraction, quantile=quantile, bandwidth_hz=bandwidth_hz,
    )
    outs = xr.apply_ufunc(
        kernel, p.reset_coords(drop=True), p.coords["n_segments"].reset_coords(drop=True),
        p.coords["sample_rate"].reset_coords(drop=True),
        input_core_dims=[["frequency"], [], []],
        output_core_dims=[[]] * len(_SPECTRAL),
        dask="parallelized",
        output_dtypes=[np.float64] * len(_SPECTRAL),
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _dataset(outs, _SPECTRAL, fraction=fraction, quantile=quantile, bandwidth_hz=bandwidth_hz)


def _check_fractions(fraction: float, quantile: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), not {quantile}")


def _db(x: npt.NDArray[Any]) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, 10.0 * np.log10(np.where(x > 0, x, 1.0)), np.nan)


def _dataset(
    outs: Sequence[xr.DataArray], names: Sequence[str], *, fraction: float = 0.99, quantile: float = 0.5,
    bandwidth_hz: float | None = None,
) -> xr.Dataset:
    """Name the kernel outputs and give each its units, long name and definition attrs."""
    extra: dict[str, dict[str, Any]] = {
        "noise_floor_dbfs_hz": {"quantile": quantile},
        "occupied_bandwidth_hz": {"fraction": fraction},
        "snr_db": {
            "definition": "S/N, N = noise density x noise bandwidth (not (S+N)/N)",
            "noise_bandwidth": "sample_rate (each station's own fs)" if bandwidth_hz is None
            else f"{float(bandwidth_hz):g} Hz",
        },
    }
    if bandwidth_hz is not None:
        extra["snr_db"]["noise_bandwidth_hz"] = float(bandwidth_hz)
    for name in ("rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm"):
        extra[name] = {"comment": "receiver S-meter calibration"}
    data = {}
    for name, out in zip(names, outs):
        var = out.reset_coords(drop=True)
        var.attrs = {"long_name": LONG_NAMES[name], "units": UNITS[name], **extra.get(name, {})}
        data[name] = var.rename(name)
    return xr.Dataset(data)


def noise_floor(
    x: Source,
    *,
    passband: Passband | None = None,
    quantile: float = 0.5,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Noise density in dBFS/Hz: the ``quantile`` (median) of the passband PSD bins, divided by the
    chi-square(2K) quantile/mean ratio for the K averaged segments (so it is unbiased for Gaussian
    noise; for ``K = 1`` the median is ``ln 2`` of the mean, -1.59 dB).  Bins are chosen by
    frequency (``passband``, Hz from the tuned frequency; default the source's passband attrs, else
    the whole band), never by index.  Robust to narrowband signals; a signal filling more than ~1/3
    of the passband biases it upwards: pass a lower ``quantile`` then.  ``x``: a :func:`psd`, or a
    source (then the Welch parameters apply)."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband, quantile=quantile)
    return sp["noise_floor_dbfs_hz"]


def frequency_offset(
    x: Source,
    *,
    passband: Passband | None = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Frequency (Hz, relative to the tuned frequency) of the strongest passband PSD bin, refined to
    sub-bin precision: Hann, the exact two-bin ratio of a windowed complex exponential
    (``delta = (2a - 1)/(a + 1)``, ``a`` = larger neighbour / peak magnitude); other windows, Gaussian
    interpolation on the log-PSD.  Uses each station's own sample rate."""
    return _spectral_metrics(x, fs, nperseg, noverlap, window, passband)["frequency_offset_hz"]


def signal_power(
    x: Source,
    *,
    passband: Passband | None = None,
    quantile: float = 0.5,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Noise-subtracted signal power in the passband, dBFS: ``10 log10 sum_passband (P_k - N0) df``
    with :func:`noise_floor` ``N0``.  The signal band is the whole passband, so no band edges are
    guessed (a tone's window mainlobe and an AM signal's sidebands are all inside) and the noise in
    it is removed by the subtraction.  NaN when nothing stands above the noise."""
    return _spectral_metrics(x, fs, nperseg, noverlap, window, passband, quantile=quantile)["signal_power_dbfs"]


def snr(
    x: Source,
    *,
    bandwidth_hz: float | None = None,
    passband: Passband | None = None,
    quantile: float = 0.5,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """S/N in dB: :func:`signal_power` over ``N0 * B`` with :func:`noise_floor` ``N0`` and ``B`` =
    each station's sample rate unless ``bandwidth_hz`` is given.  Not (S+N)/N.  The attrs name the
    noise bandwidth (``noise_bandwidth``, and ``noise_bandwidth_hz`` when given)."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband, quantile=quantile, bandwidth_hz=bandwidth_hz)
    return sp["snr_db"]


def occupied_bandwidth(
    x: Source,
    *,
    fraction: float = 0.99,
    passband: Passband | None = None,
    quantile: float = 0.5,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Bandwidth (Hz) holding ``fraction`` of the noise-subtracted passband power: from the edge
    where the cumulative power from below reaches ``(1 - fraction)/2`` of it to the edge where the
    cumulative power from above does (interpolated inside the bin)."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband, fraction=fraction, quantile=quantile)
    return sp["occupied_bandwidth_hz"]


# ---- time-domain and receiver metrics --------------------------------------------------------
def _time_kernel(sums: npt.NDArray[Any], n_samples: npt.NDArray[Any], *, col: int) -> tuple[FloatArray, ...]:
    """Total power (dBFS) and clipped fraction from the one-pass sums (columns ``col``, ``col + 1``)."""
    n = np.asarray(n_samples, dtype=np.float64)
    nn = np.where(n > 0, n, np.nan)
    return _db(sums[..., col] / nn), np.asarray(sums[..., col + 1] / nn, dtype=np.float64)


def _time_metrics(x: Source) -> xr.Dataset:
    inp = _Input(x, 1.0)
    sums = _sums(inp, nperseg=8, step=8, window="boxcar", spectral=False)
    outs = xr.apply_ufunc(
        functools.partial(_time_kernel, col=8), sums, inp.n_samples,
        input_core_dims=[["_sum"], []], output_core_dims=[[]] * 2,
        dask="parallelized", output_dtypes=[np.float64] * 2,
    )
    return _dataset(outs, _TIME)


def total_power(x: Source) -> xr.DataArray:
    """Mean ``|z|^2`` over each station's valid samples (time domain), dBFS: absolute, never
    normalised to the peak."""
    return _time_metrics(x)["total_power_dbfs"]


def _frame_kernel(
    rssi: npt.NDArray[Any], received: npt.NDArray[Any], flags: npt.NDArray[Any]
) -> tuple[FloatArray, ...]:
    """RSSI mean (linear average, dBm), min, max and the ADC-overflow fraction over received frames."""
    got = np.asarray(received, dtype=bool)
    cnt = got.sum(axis=-1)
    r = np.asarray(rssi, dtype=np.float64)
    rec = got & np.isfinite(r)
    nr = rec.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lin = np.where(rec, 10.0 ** (np.where(rec, r, 0.0) / 10.0), 0.0).sum(axis=-1) / nr
        over = ((np.asarray(flags) & FLAG_ADC_OVERFLOW) != 0) & got
        frac = np.where(cnt > 0, over.sum(axis=-1) / cnt, np.nan)
    rmin = np.where(nr > 0, np.where(rec, r, np.inf).min(axis=-1, initial=np.inf), np.nan)
    rmax = np.where(nr > 0, np.where(rec, r, -np.inf).max(axis=-1, initial=-np.inf), np.nan)
    return _db(lin), rmin, rmax, frac


def _frame_metrics(ds: xr.Dataset) -> xr.Dataset:
    outs = xr.apply_ufunc(
        _frame_kernel, *(ds[v].reset_coords(drop=True) for v in ("frame_rssi_dbm", "frame_received", "frame_flags")),
        input_core_dims=[["frame"]] * 3, output_core_dims=[[]] * 4,
        dask="parallelized", output_dtypes=[np.float64] * 4, dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _dataset(outs, _FRAMES)


def clipping_fraction(x: Source) -> xr.Dataset:
    """``clipped_fraction``: valid samples with ``|I|`` or ``|Q| >= 32767`` (int16 full scale; for
    complex input ``32767/32768``) over valid samples; for a session Dataset also
    ``overload_fraction``: received frames with the ADC-overflow flag 0x02 over received frames."""
    out = _time_metrics(x)[["clipped_fraction"]]
    if isinstance(x, xr.Dataset) and "frame_flags" in x:
        out["overload_fraction"] = _frame_metrics(x)["overload_fraction"]
    return out


def rssi_summary(ds: xr.Dataset) -> xr.Dataset:
    """The receiver's S-meter over the frames that arrived (``frame_received``), dBm in the
    receiver's own calibration: ``rssi_mean_dbm`` (mean of ``10^(rssi/10)``, then dB: never a mean
    of dB values), ``rssi_min_dbm``, ``rssi_max_dbm``."""
    return _frame_metrics(ds)[["rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm"]]


# ---- everything at once ----------------------------------------------------------------------
def _derive_kernel(
    sums: npt.NDArray[Any],
    n_samples: npt.NDArray[Any],
    fs: npt.NDArray[Any],
    *,
    nperseg: int,
    step: int,
    s2: float,
    bandwidth_hz: float | None,
    **spectral: Any,
) -> tuple[FloatArray, ...]:
    """Every per-station metric from the one-pass sums, in final units (``_SPECTRAL + _TIME``)."""
    lead = sums.shape[:-1]
    s = np.asarray(sums, dtype=np.float64).reshape(-1, sums.shape[-1])
    n = np.broadcast_to(np.asarray(n_samples, dtype=np.float64), lead).reshape(-1)
    f = np.broadcast_to(np.asarray(fs, dtype=np.float64), lead).reshape(-1)
    k = np.clip(np.floor((n - nperseg) / step) + 1, 0, None)
    p = s[:, :nperseg] / (np.where(k > 0, k, np.nan) * f * s2)[:, None]
    out = _finish(*_spectral_kernel(p, k, f, **spectral), f, bandwidth_hz) + _time_kernel(s, n, col=nperseg)
    return tuple(np.asarray(v, dtype=np.float64).reshape(lead) for v in out)


def metrics(
    ds: xr.Dataset | xr.DataArray,
    *,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
    passband: Passband | None = None,
    bandwidth_hz: float | None = None,
    fraction: float = 0.99,
    noise_quantile: float = 0.5,
) -> xr.Dataset:
    """All metrics, one variable per metric (dim: station), from ONE pass over the samples.

    Variables (units in the name and in ``units``): ``noise_floor_dbfs_hz``, ``frequency_offset_hz``,
    ``signal_power_dbfs``, ``total_power_dbfs``, ``snr_db`` (noise bandwidth ``bandwidth_hz``, default
    each station's fs), ``occupied_bandwidth_hz`` (``fraction``), ``clipped_fraction``; with a
    session Dataset also ``overload_fraction``, ``rssi_mean_dbm``, ``rssi_min_dbm``, ``rssi_max_dbm``.
    ``passband`` defaults to the session's ``passband_low_hz``/``passband_high_hz`` attrs (else the
    whole band).  Lazy: a dask-backed input gives a dask-backed result and nothing is computed here;
    the graph is one task per sample chunk plus one per station chunk.
    """
    step = _check_welch(nperseg, noverlap)
    _check_fractions(fraction, noise_quantile)
    inp = _Input(ds, fs)
    lo, hi = inp.passband(passband)
    sums = _sums(inp, nperseg=nperseg, step=step, window=window)
    kernel: Callable[..., Any] = functools.partial(
        _derive_kernel, nperseg=nperseg, step=step, s2=float(np.sum(_window(window, nperseg) ** 2)),
        bandwidth_hz=bandwidth_hz, lo=lo, hi=hi, hann=_is_hann(window), fraction=fraction,
        quantile=noise_quantile,
    )
    names = _SPECTRAL + _TIME
    outs = xr.apply_ufunc(
        kernel, sums, inp.n_samples, inp.fs,
        input_core_dims=[["_sum"], [], []], output_core_dims=[[]] * len(names),
        dask="parallelized", output_dtypes=[np.float64] * len(names),
    )
    out = _dataset(outs, names, fraction=fraction, quantile=noise_quantile, bandwidth_hz=bandwidth_hz)
    if isinstance(ds, xr.Dataset) and {"frame_rssi_dbm", "frame_received", "frame_flags"} <= set(ds.data_vars):
        out = out.merge(_frame_metrics(ds))
    out = out[[v for v in UNITS if v in out.data_vars]]
    out.attrs = {
        "title": "sdrlab signal metrics",
        "welch": f"nperseg={nperseg} noverlap={noverlap} window={window if isinstance(window, str) else 'custom'}",
        "passband_hz": f"{lo:g} .. {hi:g}",
        "occupied_fraction": fraction,
        "noise_quantile": noise_quantile,
    }
    return out


def metrics_table(ds: xr.Dataset, **params: Any) -> pd.DataFrame:
    """A tidy per-station table (one row per station, units in the column names; the same units in
    ``df.attrs['units']``).  ``ds`` is a session (metrics are computed) or a :func:`metrics` result."""
    # a session (it has samples) is always measured with the given parameters, even when it carries
    # the metrics acquisition stored; only a metrics() result is taken as it is
    m = metrics(ds, **params) if "iq" in ds.data_vars else ds
    m = m[[v for v in UNITS if v in m.data_vars]].compute()
    cols = [v for v in UNITS if v in m.data_vars]
    df = m[cols].reset_coords(drop=True).to_dataframe()[cols]
    df.attrs["units"] = {c: UNITS[c] for c in cols}
    return df
