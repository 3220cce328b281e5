"""The one-pass Welch engine behind :mod:`sdrlab.metrics`: input normalisation, windows, the
chunked periodogram / power / clipping sums and the PSD built from them.  Pure numpy / xarray, lazy
on dask, no I/O.

Inputs
------
A *source* is one of

* the session :class:`xarray.Dataset` (``iq`` int16 (station, sample, component)); the int16 samples
  are converted to complex full scale inside the one pass over the data (no complex64 copy of the
  session is ever built);
* a complex :class:`xarray.DataArray` with dims (station, sample) in full-scale units, e.g.
  :func:`sdrlab.model.to_complex`;
* a complex numpy array (sample,) or (station, sample) (``fs`` must then be given).

Only the first ``n_samples`` (coordinate) samples of each station are used: the rest is padding.
The sample rate is each station's own measured ``sample_rate`` coordinate unless ``fs`` is given.

One pass
--------
Every metric of :func:`sdrlab.metrics.metrics` comes from ONE pass over the samples per station: a
Welch periodogram sum (``noverlap=0`` by default, so each sample goes through one FFT of length
``nperseg``), the time-domain sum of ``|z|^2`` and the count of clipped samples, accumulated chunk
by chunk (dask: one task per chunk, then a sum; no chunk is ever concatenated with another).  All
spectral metrics are then derived from the (station, nperseg) periodogram, which is tiny.

PSD
---
:func:`psd` is Welch, two-sided, fft-shifted, density scaling (FS^2/Hz, ``|z| = 1`` is 0 dBFS), no
detrend: ``P_k = sum_segments |FFT(w z)_k|^2 / (K fs sum w^2)`` over the ``K`` whole segments of
each station, so ``sum_k P_k df`` is the mean power and ``10 log10 P`` is dBFS/Hz (:func:`psd_db`).

PSD frequency axis: per-station sample rates differ by a few ppm.  The PSD's ``frequency``
coordinate uses the mean rate of the stations; the exact per-station axis is the 2-D coordinate
``station_frequency`` (station, frequency).  All metrics in Hz use each station's own rate.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any, Sequence, Union

import dask.array as da
from dask.base import tokenize
import numpy as np
import numpy.typing as npt
import xarray as xr
import xarray.ufuncs as xu

from .model import FULL_SCALE

__all__ = [
    "CLIP_LEVEL",
    "FloatArray",
    "FsLike",
    "Passband",
    "Source",
    "WindowLike",
    "chi2_quantile_ratio",
    "power_db",
    "psd",
    "psd_db",
]

try:  # scipy's pocketfft keeps complex64 and is ~2x faster than numpy's; numpy.fft is the fallback
    _fft: Any = importlib.import_module("scipy.fft")
    _FFT_KW: dict[str, Any] = {"overwrite_x": True}
except ImportError:  # pragma: no cover - scipy is optional
    _fft = np.fft
    _FFT_KW = {}

_da: Any = da  # untyped calls

#: an int16 component at or beyond this magnitude counts as clipped
CLIP_LEVEL = 32767

Source = Union[xr.Dataset, xr.DataArray, npt.NDArray[Any]]
FsLike = Union[float, Sequence[float], npt.NDArray[Any], xr.DataArray, None]
WindowLike = Union[str, npt.NDArray[Any]]
Passband = tuple[float, float]
FloatArray = npt.NDArray[np.float64]


# ---- small helpers ---------------------------------------------------------------------------
def _window(window: WindowLike, nperseg: int) -> FloatArray:
    """Periodic (DFT-even) window of length ``nperseg``, as :func:`scipy.signal.get_window`."""
    if isinstance(window, str):
        x = 2.0 * np.pi * np.arange(nperseg) / nperseg
        name = window.lower()
        if name in ("hann", "hanning"):
            return 0.5 - 0.5 * np.cos(x)
        if name == "hamming":
            return 0.54 - 0.46 * np.cos(x)
        if name == "blackman":
            return 0.42 - 0.5 * np.cos(x) + 0.08 * np.cos(2.0 * x)
        if name in ("boxcar", "rect", "rectangular", "ones"):
            return np.ones(nperseg)
        raise ValueError(f"unknown window {window!r} (hann, hamming, blackman, boxcar or an array)")
    w = np.asarray(window, dtype=np.float64)
    if w.shape != (nperseg,):
        raise ValueError(f"window has shape {w.shape}, expected ({nperseg},)")
    return w


def _is_hann(window: WindowLike) -> bool:
    return isinstance(window, str) and window.lower() in ("hann", "hanning")


def _check_welch(nperseg: int, noverlap: int) -> int:
    if nperseg < 4:
        raise ValueError(f"nperseg must be at least 4, not {nperseg}")
    if not 0 <= noverlap < nperseg:
        raise ValueError(f"noverlap must be in [0, nperseg), not {noverlap}")
    return nperseg - noverlap


@functools.lru_cache(maxsize=256)
def _gamma_quantile_ratio(k: int, q: float) -> float:
    """Quantile ``q`` of Gamma(k, 1) divided by its mean ``k`` (integer ``k``), by bisection.

    For integer shape ``k``, ``P(Gamma(k) <= x) = 1 - sum_{j<k} e^-x x^j / j!``.
    """
    if k <= 0:
        return math.nan
    if k > 20000:  # Wilson-Hilferty, error << 1e-6 here
        lo_z, hi_z = -10.0, 10.0
        for _ in range(80):
            mid = 0.5 * (lo_z + hi_z)
            if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < q:
                lo_z = mid
            else:
                hi_z = mid
        z = 0.5 * (lo_z + hi_z)
        return float((1.0 - 1.0 / (9.0 * k) + z / (3.0 * math.sqrt(k))) ** 3)
    j = np.arange(k, dtype=np.float64)
    lgam = np.array([math.lgamma(v + 1.0) for v in j])

    def cdf(x: float) -> float:
        t = -x + j * math.log(x) - lgam
        m = float(t.max())
        return 1.0 - math.exp(m) * float(np.exp(t - m).sum())

    lo, hi = 0.0, k + 40.0 * math.sqrt(k) + 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi) / k


def chi2_quantile_ratio(n_segments: npt.ArrayLike, q: float = 0.5) -> FloatArray:
    """Quantile ``q`` over mean of a chi-square with ``2 K`` degrees of freedom (``K = n_segments``).

    The PSD bin of Gaussian noise averaged over ``K`` segments is ``mean * chi2(2K) / 2K``; dividing
    its ``q``-quantile by this ratio gives an unbiased density (``K = 1``, ``q = 0.5``: ``ln 2``).
    NaN where ``K < 1``.
    """
    k = np.asarray(n_segments)
    flat = k.reshape(-1)
    out = np.array([_gamma_quantile_ratio(int(v), float(q)) if np.isfinite(v) else math.nan for v in flat])
    return out.reshape(k.shape).astype(np.float64)


def power_db(x: xr.DataArray, units: str = "dBFS") -> xr.DataArray:
    """``10 log10(x)`` of a linear power (density), NaN where ``x <= 0``."""
    out: xr.DataArray = 10.0 * xu.log10(x.where(x > 0))
    out.attrs = {**x.attrs, "units": units}
    return out


def psd_db(p: xr.DataArray) -> xr.DataArray:
    """A :func:`psd` (FS^2/Hz) in dBFS/Hz."""
    return power_db(p, "dBFS/Hz")


# ---- the input -------------------------------------------------------------------------------
class _Input:
    """A source resolved to samples, valid lengths, sample rates and attrs."""

    def __init__(self, source: Source, fs: FsLike) -> None:
        attrs: dict[str, Any] = {}
        if isinstance(source, xr.Dataset):
            data = source["iq"]
            attrs = dict(source.attrs)
        elif isinstance(source, xr.DataArray):
            data = source
            attrs = dict(source.attrs)
        else:
            arr = np.asarray(source)
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2 or not np.iscomplexobj(arr):
                raise ValueError("a numpy source must be complex with shape (sample,) or (station, sample)")
            data = xr.DataArray(arr, dims=("station", "sample"), coords={"station": np.arange(arr.shape[0])})
        self.is_int = "component" in data.dims
        want = ("station", "sample", "component") if self.is_int else ("station", "sample")
        if set(data.dims) != set(want):
            raise ValueError(f"expected dims {want}, got {data.dims}")
        if not self.is_int and not np.issubdtype(data.dtype, np.complexfloating):
            raise ValueError(f"complex samples expected, got {data.dtype}")
        if self.is_int:
            data = data.transpose(*want)
            if list(data["component"].values) != ["I", "Q"]:
                data = data.sel(component=["I", "Q"])
        else:
            data = data.transpose(*want)
        self.data = data
        self.attrs = attrs
        n_total = data.sizes["sample"]
        station = data["station"]
        if "n_samples" in data.coords:
            self.n_samples = data.coords["n_samples"].reset_coords(drop=True)
        else:
            self.n_samples = xr.full_like(station, n_total, dtype=np.int64).reset_coords(drop=True)
        self.n_samples = self.n_samples.drop_vars([c for c in self.n_samples.coords if c != "station"])
        if fs is None:
            if "sample_rate" not in data.coords:
                raise ValueError("no sample_rate coordinate: pass fs")
            rate = data.coords["sample_rate"].reset_coords(drop=True)
        elif isinstance(fs, xr.DataArray):
            rate = fs
        else:
            vals = np.asarray(fs, dtype=np.float64)
            rate = xr.DataArray(np.broadcast_to(vals, (data.sizes["station"],)).copy(), dims=("station",))
        rate = rate.astype(np.float64)
        self.fs = rate.drop_vars([c for c in rate.coords if c != "station"])
        self.station = station.drop_vars([c for c in station.coords if c != "station"])

    def passband(self, passband: Passband | None) -> Passband:
        return _passband(self.attrs, passband)


def _is_dask(x: Any) -> bool:
    return isinstance(x, da.Array)


def _passband(attrs: dict[str, Any], passband: Passband | None) -> Passband:
    if passband is not None:
        lo, hi = passband
        return float(lo), float(hi)
    if "passband_low_hz" in attrs and "passband_high_hz" in attrs:
        return float(attrs["passband_low_hz"]), float(attrs["passband_high_hz"])
    return -math.inf, math.inf


def _n_segments(n_samples: xr.DataArray, nperseg: int, step: int) -> xr.DataArray:
    k = ((n_samples - nperseg) // step + 1).clip(min=0)
    return k.astype(np.int64).rename("n_segments")


# ---- the one pass ----------------------------------------------------------------------------
def _block_sums(
    x: npt.NDArray[Any],
    n_valid: npt.NDArray[Any],
    start: int,
    *,
    nperseg: int,
    step: int,
    win: FloatArray,
    is_int: bool,
    spectral: bool,
) -> FloatArray:
    """Partial sums of one block of samples (rows = stations, ``start`` = first sample index).

    Returns (rows, nperseg + 2): the fft-shifted sum of ``|FFT(w z)|^2`` over the block's valid
    segments (``z`` in full-scale units), the sum of ``|z|^2`` over its valid samples and the count of
    its clipped valid samples.  Segments start at multiples of ``step`` from sample 0, so ``start``
    must be a multiple of ``nperseg`` when ``step == nperseg`` (one block otherwise).
    """
    rows, c = x.shape[0], x.shape[1]
    out = np.zeros((rows, nperseg + 2), dtype=np.float64)
    n_valid = np.asarray(n_valid, dtype=np.int64).reshape(rows)
    v = np.clip(n_valid - start, 0, c)
    for r in range(rows):
        vr = int(v[r])
        if vr == 0:
            continue
        if is_int:
            seg = x[r, :vr]
            f = seg.astype(np.float64).reshape(-1)
            out[r, nperseg] = float(np.dot(f, f)) / FULL_SCALE**2
            # |I| or |Q| >= 32767 without int16 abs overflow: v + 32766 (mod 2^16) >= 65533
            y = seg.view(np.uint16) + np.uint16(32766)
            out[r, nperseg + 1] = np.count_nonzero(np.maximum(y[:, 0], y[:, 1]) >= 65533)
        else:
            zr = x[r, :vr]
            re, im = zr.real.astype(np.float64), zr.imag.astype(np.float64)
            out[r, nperseg] = float(np.dot(re, re) + np.dot(im, im))
            lim = CLIP_LEVEL / FULL_SCALE
            out[r, nperseg + 1] = np.count_nonzero((np.abs(zr.real) >= lim) | (np.abs(zr.imag) >= lim))
    if not spectral or c < nperseg:
        return out
    m = (c - nperseg) // step + 1  # segments that fit in the block
    k = np.clip((n_valid - start - nperseg) // step + 1, 0, m)
    kmax = int(k.max())
    if kmax == 0:
        return out
    if step == nperseg:
        segs = x[:, : kmax * nperseg].reshape((rows, kmax, nperseg) + x.shape[2:])
    else:
        view = np.lib.stride_tricks.sliding_window_view(x, nperseg, axis=1)[:, ::step][:, :kmax]
        segs = np.moveaxis(view, -1, 2) if is_int else view  # (rows, kmax, nperseg[, 2])
    if is_int:
        w32 = (win / FULL_SCALE).astype(np.float32)
        xc = np.empty((rows, kmax, nperseg), dtype=np.complex64)
        xc.real = segs[..., 0] * w32
        xc.imag = segs[..., 1] * w32
    else:
        xc = segs * win.astype(np.float32 if x.dtype == np.complex64 else np.float64)
    spec = _fft.fft(xc, axis=-1, **_FFT_KW)
    p = np.abs(spec)
    p *= p
    if (k < kmax).any():
        p[np.arange(kmax)[None, :] >= k[:, None]] = 0.0
    out[:, :nperseg] = np.fft.fftshift(p.sum(axis=1), axes=-1)
    return out


def _dask_block(
    x: npt.NDArray[Any], n: npt.NDArray[Any], *, block_info: Any = None, is_int: bool, **kw: Any
) -> FloatArray:
    start = int(block_info[0]["array-location"][1][0])
    xb = x if is_int else x[..., 0]
    return _block_sums(xb, n.reshape(-1), start, is_int=is_int, **kw)[:, None, :]


def _aligned_chunks(chunks: tuple[int, ...], total: int, nperseg: int) -> tuple[int, ...]:
    """Sample-axis chunks whose boundaries are multiples of ``nperseg`` (sizes near the original)."""
    if all(c % nperseg == 0 for c in chunks[:-1]):
        return chunks
    target = max(nperseg, int(round(float(np.median(chunks)) / nperseg)) * nperseg)
    full, rest = divmod(total, target)
    return (target,) * full + ((rest,) if rest else ())


def _sums(inp: _Input, *, nperseg: int, step: int, window: WindowLike, spectral: bool = True) -> xr.DataArray:
    """The one pass: (station, nperseg + 2) sums, lazy when the samples are dask-backed."""
    win = _window(window, nperseg)
    kw: dict[str, Any] = dict(nperseg=nperseg, step=step, win=win, is_int=inp.is_int, spectral=spectral)
    width = nperseg + 2
    raw = inp.data.data
    if _is_dask(raw):
        arr = raw if inp.is_int else raw[..., None]
        arr = arr.rechunk({2: -1})
        n_total = arr.shape[1]
        if step == nperseg:
            arr = arr.rechunk({1: _aligned_chunks(arr.chunks[1], n_total, nperseg)})
        else:
            arr = arr.rechunk({1: -1})
        n = inp.n_samples.data
        n_da = (n if _is_dask(n) else _da.from_array(np.asarray(n), chunks=-1)).rechunk((arr.chunks[0],))
        n_da = n_da[:, None, None]
        nb = len(arr.chunks[1])
        blocks = _da.map_blocks(
            _dask_block, arr, n_da, chunks=(arr.chunks[0], (1,) * nb, (width,)), dtype=np.float64,
            meta=np.empty((0, 0, 0), dtype=np.float64),
            name="sdrlab-welch-sums-" + tokenize(arr, n_da, nperseg, step, win, spectral), **kw,
        )
        total: Any = blocks.sum(axis=1)
    else:
        x = np.asarray(raw)
        n = np.asarray(inp.n_samples.values, dtype=np.int64)
        if step == nperseg:
            slab = nperseg * max(1, (1 << 20) // nperseg)
            total = np.zeros((x.shape[0], width))
            for s0 in range(0, max(int(n.max()), 1), slab):
                total += _block_sums(x[:, s0 : s0 + slab], n, s0, **kw)
        else:
            total = _block_sums(x, n, 0, **kw)
    return xr.DataArray(total, dims=("station", "_sum"), coords={"station": inp.station})


def _psd_from_sums(inp: _Input, sums: xr.DataArray, *, nperseg: int, step: int, window: WindowLike) -> xr.DataArray:
    win = _window(window, nperseg)
    k = _n_segments(inp.n_samples, nperseg, step)
    p = sums.isel(_sum=slice(0, nperseg)).rename(_sum="frequency")
    dens: xr.DataArray = p / (k.where(k > 0) * inp.fs * float(np.sum(win**2)))
    dens = dens.assign_coords(n_segments=k, sample_rate=inp.fs)
    dens.name = "psd"
    dens.attrs = {
        "long_name": "power spectral density (Welch, two-sided, fft-shifted)",
        "units": "FS^2/Hz",
        "comment": "full scale |z| = 1; 10 log10 gives dBFS/Hz",
        "window": window if isinstance(window, str) else "custom",
        "nperseg": nperseg,
        "noverlap": nperseg - step,
    }
    for key in ("passband_low_hz", "passband_high_hz", "center_frequency_hz"):
        if key in inp.attrs:
            dens.attrs[key] = inp.attrs[key]
    return dens


def psd(
    source: Source,
    fs: FsLike = None,
    *,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
    center_hz: float | None = None,
) -> xr.DataArray:
    """Welch PSD (station, frequency) in FS^2/Hz, two-sided and fft-shifted (ascending frequency).

    ``P_k = sum_segments |FFT(w z)_k|^2 / (K fs sum w^2)`` over the ``K`` segments that lie wholly
    within the station's ``n_samples`` (``z`` in full-scale units, periodic window ``w``, no
    detrending: a DC component is a signal at 0 Hz), so that ``sum_k P_k df`` is the mean power and
    ``10 log10 P`` is dBFS/Hz (:func:`psd_db`).  Each station is normalised with its own ``fs``.

    ``frequency`` is in Hz relative to the tuned frequency, from the stations' mean sample rate
    (when the ``sample_rate`` coordinate is dask-backed, this small coordinate is read); the exact
    per-station axis is ``station_frequency`` (station, frequency).  ``frequency_abs`` (Hz) is
    added when ``center_hz`` is given or the source has a ``center_frequency_hz`` attribute.
    Coordinates ``n_segments`` (segments averaged) and ``sample_rate`` travel with it; the metric
    functions accept the result in place of a source.  Lazy when the samples are dask-backed.
    With ``noverlap > 0`` a dask-backed station is processed as one chunk.
    """
    step = _check_welch(nperseg, noverlap)
    inp = _Input(source, fs)
    p = _psd_from_sums(inp, _sums(inp, nperseg=nperseg, step=step, window=window), nperseg=nperseg,
                       step=step, window=window)
    bins = np.arange(nperseg) - nperseg // 2
    fs_mean = float(inp.fs.mean().values)
    p = p.assign_coords(
        frequency=("frequency", bins * (fs_mean / nperseg), {"units": "Hz", "long_name": "offset from tuned frequency"}),
    )
    p = p.assign_coords(station_frequency=inp.fs * xr.DataArray(bins / nperseg, dims="frequency"))
    p["station_frequency"].attrs = {"units": "Hz", "long_name": "offset from tuned frequency (station's own fs)"}
    centre = center_hz if center_hz is not None else inp.attrs.get("center_frequency_hz")
    if centre is not None:
        p = p.assign_coords(frequency_abs=("frequency", float(centre) + p["frequency"].values,
                                           {"units": "Hz", "long_name": "absolute frequency"}))
        p.attrs["center_frequency_hz"] = float(centre)
    return p
