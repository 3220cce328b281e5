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

The receiver's passband is *recorded* when the source's attrs carry finite ``passband_low_hz`` /
``passband_high_hz`` and do not mark them ``passband_source = "not recorded"`` (kiwirecorder
files keep no passband; sessions imported from them before that marker existed are recognised by
``import_format = "kiwi-wav"``): :func:`recorded_passband`, :func:`passband_mode`.

One pass
--------
Every metric of :func:`sdrlab.metrics.metrics` comes from ONE pass over the samples per station: a
Welch periodogram sum (``noverlap=0`` by default, so each sample goes through one FFT of length
``nperseg``), the time-domain sum of ``|z|^2`` and the count of clipped samples, accumulated chunk
by chunk (dask: one task per chunk, then a sum; no chunk is ever concatenated with another), and,
from the same samples in the same task, the sum of ``|z|^2`` over every 512-sample frame (the
per-frame IQ power the AGC metric compares with the receiver's S-meter).  All spectral metrics are
then derived from the (station, nperseg) periodogram, which is tiny; the per-frame sums are
(station, samples / 512), a 1/512 of the samples' size.

PSD
---
:func:`psd` is Welch, two-sided, fft-shifted, density scaling (FS^2/Hz, ``|z| = 1`` is 0 dBFS), no
detrend: ``P_k = sum_segments |FFT(w z)_k|^2 / (K fs sum w^2)`` over the ``K`` whole segments of
each station, so ``sum_k P_k df`` is the mean power and ``10 log10 P`` is dBFS/Hz (:func:`psd_db`).

What the PSD says about the receiver, row by row (one row per station): the passband detected
from its skirts and the noise floor inside it (``_passband_rows``, ``_noise_floor_rows``); what
they compute and why is documented with :func:`sdrlab.metrics.passband` and
:func:`sdrlab.metrics.noise_floor`, which use them.

PSD frequency axis: per-station sample rates differ by a few ppm.  The PSD's ``frequency``
coordinate uses the mean rate of the stations; the exact per-station axis is the 2-D coordinate
``station_frequency`` (station, frequency).  All metrics in Hz use each station's own rate.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import dask.array as da
from dask.base import tokenize
import numpy as np
import numpy.typing as npt
import xarray as xr
import xarray.ufuncs as xu

from .model import FULL_SCALE
from .capture import SAMPLES_PER_FRAME

__all__ = [
    "CLIP_LEVEL",
    "EDGE_DB",
    "FRAME",
    "INNER_GUARD",
    "KIWI_FIR_TAPS",
    "MIN_CONTRAST_DB",
    "OUTER_GUARD",
    "PASSBAND_SOURCES",
    "PASSBAND_NOT_RECORDED",
    "FramePowers",
    "FloatArray",
    "FsLike",
    "Passband",
    "PassbandArg",
    "Source",
    "WindowLike",
    "chi2_quantile_ratio",
    "passband_mode",
    "power_db",
    "psd",
    "psd_db",
    "recorded_passband",
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
#: value of a source's ``passband_source`` attr when the receiver's passband is unknown
PASSBAND_NOT_RECORDED = "not recorded"
#: samples per frame of the per-frame power sums (a KiwiSDR SND frame)
FRAME = SAMPLES_PER_FRAME

Source = Union[xr.Dataset, xr.DataArray, npt.NDArray[Any]]
FsLike = Union[float, Sequence[float], npt.NDArray[Any], xr.DataArray, None]
WindowLike = Union[str, npt.NDArray[Any]]
Passband = tuple[float, float]
#: a passband (Hz from the tuned frequency), "detect", or None (the source's own, see passband_mode)
PassbandArg = Union[Passband, str, None]
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
        #: a session Dataset: a KiwiSDR capture, so always passband-filtered by the receiver
        self.is_session = isinstance(source, xr.Dataset)
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

    def passband(self, passband: PassbandArg) -> tuple[str, float, float]:
        """(mode, low, high): see :func:`passband_mode`."""
        return passband_mode(self.attrs, passband, session=self.is_session)


def _is_dask(x: Any) -> bool:
    return isinstance(x, da.Array)


def recorded_passband(attrs: dict[str, Any]) -> Passband | None:
    """The receiver's passband (Hz from the tuned frequency) when the attrs record it, else None.

    Not recorded: no finite ``passband_low_hz`` / ``passband_high_hz``, ``passband_source`` is
    ``"not recorded"``, or a kiwi-wav import from before that marker (``import_format`` "kiwi-wav"
    and no ``passband_source``: such imports wrote +-rate/2, which kiwirecorder never recorded).
    """
    if str(attrs.get("passband_source", "")) == PASSBAND_NOT_RECORDED:
        return None
    if attrs.get("import_format") == "kiwi-wav" and "passband_source" not in attrs:
        return None
    lo, hi = attrs.get("passband_low_hz"), attrs.get("passband_high_hz")
    try:
        lo_f, hi_f = float(lo), float(hi)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lo_f) and math.isfinite(hi_f)) or hi_f <= lo_f:
        return None
    return lo_f, hi_f


def passband_mode(attrs: dict[str, Any], passband: PassbandArg, *, session: bool = False) -> tuple[str, float, float]:
    """How the metrics choose the passband: (mode, low, high), mode one of

    * ``"given"``: the ``passband`` argument (a (low, high) pair in Hz);
    * ``"receiver"``: the passband the source records (:func:`recorded_passband`);
    * ``"detect"``: detected from the PSD's skirts, per station (``passband="detect"``; the default
      for a session Dataset whose passband is not recorded, and for any source whose attrs mark
      it unknown: ``passband_source = "not recorded"``, or passband attrs that are None, as
      :func:`sdrlab.model.to_complex` copies them from a kiwi-wav import.  A receiver always
      filters, so its skirts are in the spectrum);
    * ``"whole band"``: a bare array or DataArray that says nothing about a receiver (+-fs/2).

    ``low``/``high`` are NaN unless the mode is "given" or "receiver".
    """
    nan = math.nan
    if isinstance(passband, str):
        if passband != "detect":
            raise ValueError(f"passband must be (low_hz, high_hz), 'detect' or None, not {passband!r}")
        return "detect", nan, nan
    if passband is not None:
        lo, hi = (float(v) for v in passband)
        if not hi > lo:
            raise ValueError(f"passband high edge {hi:g} Hz must be above the low edge {lo:g} Hz")
        return "given", lo, hi
    rec = recorded_passband(attrs)
    if rec is not None:
        return "receiver", rec[0], rec[1]
    marked = str(attrs.get("passband_source", "")) == PASSBAND_NOT_RECORDED
    unknown = "passband_low_hz" in attrs or "passband_high_hz" in attrs  # present but not a passband
    if session or marked or unknown:
        return "detect", nan, nan
    return "whole band", nan, nan


def _n_segments(n_samples: xr.DataArray, nperseg: int, step: int) -> xr.DataArray:
    k = ((n_samples - nperseg) // step + 1).clip(min=0)
    return k.astype(np.int64).rename("n_segments")


# ---- the one pass ----------------------------------------------------------------------------
def _frame_powers(sq: FloatArray, vr: int, out: FloatArray) -> float:
    """Sum ``|z|^2`` of the valid samples of each 512-sample frame into ``out`` from the per-sample
    ``sq`` (``|z|^2``, length ``vr`` or, int16, the ``2 vr`` squared components); returns the total."""
    per = sq.size // vr if vr else 1
    full = vr // FRAME
    if full:
        out[:full] = sq[: full * FRAME * per].reshape(full, FRAME * per).sum(axis=1)
    if vr > full * FRAME:
        out[full] = sq[full * FRAME * per :].sum()
    return float(out[: -(-vr // FRAME)].sum())


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
) -> tuple[FloatArray, FloatArray]:
    """Partial sums of one block of samples (rows = stations, ``start`` = first sample index, a
    multiple of 512).

    Returns ((rows, nperseg + 2), (rows, ceil(c / 512))): the fft-shifted sum of ``|FFT(w z)|^2``
    over the block's valid segments (``z`` in full-scale units), the sum of ``|z|^2`` over its valid
    samples and the count of its clipped valid samples; and the sum of ``|z|^2`` over the valid
    samples of each 512-sample frame of the block.  Segments start at multiples of ``step`` from
    sample 0, so ``start`` must be a multiple of ``nperseg`` when ``step == nperseg`` (one block
    otherwise).
    """
    rows, c = x.shape[0], x.shape[1]
    out = np.zeros((rows, nperseg + 2), dtype=np.float64)
    frames = np.zeros((rows, -(-c // FRAME)), dtype=np.float64)
    n_valid = np.asarray(n_valid, dtype=np.int64).reshape(rows)
    v = np.clip(n_valid - start, 0, c)
    for r in range(rows):
        vr = int(v[r])
        if vr == 0:
            continue
        if is_int:
            seg = x[r, :vr]
            f = seg.astype(np.float64).reshape(-1)
            f *= f
            out[r, nperseg] = _frame_powers(f, vr, frames[r]) / FULL_SCALE**2
            frames[r] /= FULL_SCALE**2
            # |I| or |Q| >= 32767 without int16 abs overflow: v + 32766 (mod 2^16) >= 65533
            y = seg.view(np.uint16) + np.uint16(32766)
            out[r, nperseg + 1] = np.count_nonzero(np.maximum(y[:, 0], y[:, 1]) >= 65533)
        else:
            zr = x[r, :vr]
            re, im = zr.real.astype(np.float64), zr.imag.astype(np.float64)
            out[r, nperseg] = _frame_powers(re * re + im * im, vr, frames[r])
            lim = CLIP_LEVEL / FULL_SCALE
            out[r, nperseg + 1] = np.count_nonzero((np.abs(zr.real) >= lim) | (np.abs(zr.imag) >= lim))
    if not spectral or c < nperseg:
        return out, frames
    m = (c - nperseg) // step + 1  # segments that fit in the block
    k = np.clip((n_valid - start - nperseg) // step + 1, 0, m)
    kmax = int(k.max())
    if kmax == 0:
        return out, frames
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
    out[:, :nperseg] = np.fft.fftshift(p.sum(axis=1, dtype=np.float64), axes=-1)
    return out, frames


def _dask_block(
    x: npt.NDArray[Any], n: npt.NDArray[Any], *, block_info: Any = None, is_int: bool, fmax: int, **kw: Any
) -> FloatArray:
    """One chunk's sums and frame powers side by side: (rows, 1, nperseg + 2 + fmax), the frame
    powers zero-padded to ``fmax`` (the most frames a chunk holds)."""
    start = int(block_info[0]["array-location"][1][0])
    xb = x if is_int else x[..., 0]
    sums, frames = _block_sums(xb, n.reshape(-1), start, is_int=is_int, **kw)
    out = np.zeros((sums.shape[0], 1, sums.shape[1] + fmax), dtype=np.float64)
    out[:, 0, : sums.shape[1]] = sums
    out[:, 0, sums.shape[1] : sums.shape[1] + frames.shape[1]] = frames
    return out


def _aligned_chunks(chunks: tuple[int, ...], total: int, unit: int) -> tuple[int, ...]:
    """Sample-axis chunks whose boundaries are multiples of ``unit`` (sizes near the original)."""
    if all(c % unit == 0 for c in chunks[:-1]):
        return chunks
    target = max(unit, int(round(float(np.median(chunks)) / unit)) * unit)
    full, rest = divmod(total, target)
    return (target,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class FramePowers:
    """The per-frame sums of ``|z|^2`` of the one pass, laid out as the chunks produced them.

    ``power`` (station, _chunk, _slot): chunk ``b`` holds the frames ``first[b], first[b] + 1, ...``
    in its slots (zero-padded past its last frame); :meth:`index_of` maps frame numbers (sample // 512)
    to flat positions in ``power.reshape(station, -1)``.  Lazy when the samples are dask-backed.
    """

    power: xr.DataArray
    first: npt.NDArray[np.int64]

    @staticmethod
    def index_of(frame: npt.NDArray[np.int64], first: npt.NDArray[np.int64], slots: int) -> npt.NDArray[np.int64]:
        """Flat positions of frame numbers ``frame`` (>= 0) in ``power.reshape(station, -1)``; a
        frame past its chunk's slots maps past the end."""
        j = np.maximum(frame, 0)
        b = np.searchsorted(first, j, side="right") - 1
        within = j - first[b]
        out: npt.NDArray[np.int64] = np.where(within < slots, b * slots + within, len(first) * slots)
        return out


#: samples (over all stations) of one slab of the in-memory pass (:func:`_sums`)
SLAB_SAMPLES = 1 << 18


def _sums(
    inp: _Input, *, nperseg: int, step: int, window: WindowLike, spectral: bool = True
) -> tuple[xr.DataArray, FramePowers]:
    """The one pass: (station, nperseg + 2) sums and the per-frame powers, lazy when the samples
    are dask-backed (one task per sample chunk computes both)."""
    win = _window(window, nperseg)
    kw: dict[str, Any] = dict(nperseg=nperseg, step=step, win=win, is_int=inp.is_int, spectral=spectral)
    width = nperseg + 2
    raw = inp.data.data
    station = {"station": inp.station}
    if _is_dask(raw):
        arr = raw if inp.is_int else raw[..., None]
        arr = arr.rechunk({2: -1})
        n_total = arr.shape[1]
        if step == nperseg:  # chunks of whole segments and whole frames
            arr = arr.rechunk({1: _aligned_chunks(arr.chunks[1], n_total, math.lcm(nperseg, FRAME))})
        else:
            arr = arr.rechunk({1: -1})
        n = inp.n_samples.data
        n_da = (n if _is_dask(n) else _da.from_array(np.asarray(n), chunks=-1)).rechunk((arr.chunks[0],))
        n_da = n_da[:, None, None]
        nb = len(arr.chunks[1])
        fmax = max(-(-c // FRAME) for c in arr.chunks[1])
        blocks = _da.map_blocks(
            _dask_block, arr, n_da, chunks=(arr.chunks[0], (1,) * nb, (width + fmax,)), dtype=np.float64,
            meta=np.empty((0, 0, 0), dtype=np.float64), fmax=fmax,
            name="sdrlab-welch-sums-" + tokenize(arr, n_da, nperseg, step, win, spectral), **kw,
        )
        total: Any = blocks[:, :, :width].sum(axis=1)
        fp: Any = blocks[:, :, width:]
        first = np.cumsum((0,) + arr.chunks[1][:-1], dtype=np.int64) // FRAME
    else:
        x = np.asarray(raw)
        n = np.asarray(inp.n_samples.values, dtype=np.int64)
        fp = np.zeros((x.shape[0], 1, -(-x.shape[1] // FRAME)))
        first = np.zeros(1, dtype=np.int64)
        if step == nperseg:
            # slabs hold whole segments and whole frames, ~2^20 samples over all rows: a slab's
            # complex copy and spectrum (~8 MB each) stay that size however many stations (or
            # intervals, measured 32 at a time while recording) the array holds
            unit = math.lcm(nperseg, FRAME)
            slab = unit * max(1, SLAB_SAMPLES // (unit * max(1, x.shape[0])))
            total = np.zeros((x.shape[0], width))
            for s0 in range(0, max(int(n.max()), 1), slab):
                part, frames = _block_sums(x[:, s0 : s0 + slab], n, s0, **kw)
                total += part
                fp[:, 0, s0 // FRAME : s0 // FRAME + frames.shape[1]] = frames
        else:
            total, frames = _block_sums(x, n, 0, **kw)
            fp[:, 0, :] = frames
    sums = xr.DataArray(total, dims=("station", "_sum"), coords=station)
    power = xr.DataArray(fp, dims=("station", "_chunk", "_slot"), coords=station)
    return sums, FramePowers(power, first)


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
    if "center_frequency_hz" in inp.attrs:
        dens.attrs["center_frequency_hz"] = inp.attrs["center_frequency_hz"]
    rec = recorded_passband(inp.attrs)
    if rec is not None:
        dens.attrs["passband_low_hz"], dens.attrs["passband_high_hz"] = rec
    elif passband_mode(inp.attrs, None, session=inp.is_session)[0] == "detect":
        dens.attrs["passband_source"] = PASSBAND_NOT_RECORDED  # the metrics detect it from this PSD
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
    p = _psd_from_sums(inp, _sums(inp, nperseg=nperseg, step=step, window=window)[0], nperseg=nperseg,
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


# ---- what a PSD says about the receiver: its passband and its noise floor ----------------------
# (rows = stations; the definitions and the reasons for them are in sdrlab.metrics.passband and
# sdrlab.metrics.noise_floor)
#: ``passband_source`` codes (CF flag_values 0..3)
PASSBAND_SOURCES = ("whole band", "receiver", "detected", "given")
_SOURCE_CODE = {"whole band": 0, "receiver": 1, "detect": 2, "given": 3}
#: the KiwiSDR passband FIR's length; its skirt scales as fs / taps
KIWI_FIR_TAPS = 513
#: guard inside each passband edge for the noise floor: the FIR is within 0.03 dB of flat there
INNER_GUARD = 3.0 / KIWI_FIR_TAPS  # x fs: 70 Hz at 12 kHz
#: guard inside the skirt's crossing for detection's in-band level (-0.1 dB to -110 dB is 146 Hz)
OUTER_GUARD = 6.5 / KIWI_FIR_TAPS  # x fs: 152 Hz at 12 kHz; also the narrowest detectable passband
#: smallest in-band level above the out-of-band floor for a passband to be detected
MIN_CONTRAST_DB = 10.0
#: a windowed-sinc FIR's nominal cutoff: half amplitude
EDGE_DB = 20.0 * math.log10(2.0)
_SMOOTH_HZ = 15.0  # running median of detection
_FLOOR_Q = 0.02  # out-of-band floor: this quantile of the smoothed PSD
_STEP_HZ = 100.0  # the skirt: a level step of MIN_CONTRAST_DB within this many Hz of sorted bins
_REF_Q = 0.05  # in-band level: this quantile of the smoothed in-band PSD
_START_Q = 0.02  # noise floor: first estimate from this quantile
_CLIP_P = 0.99  # noise floor: keep bins below this chi2 quantile of the current estimate
_ITERATIONS = 8
_FLAT_HZ = 25.0  # flatness: running mean of this width
_FLAT_P = 0.001  # flat: within the chi2 0.001 .. 0.999 quantiles (+ margin) of N0
_FLAT_MARGIN_DB = 0.25
_FLAT_MIN_HZ = 200.0  # a signal-free region holds min(200 Hz, 20 % of the inner passband)
_FLAT_MIN_FRACTION = 0.2
_GAP_P = 0.01  # the smoothed in-band minimum must not fall below the chi2 (0.01 / bins) quantile of N0
_GAP_MARGIN_DB = 0.5  # ... less this margin
_MIN_DOF = 8.0  # noise floor: bins averaged until their scatter is that of this many segments
_BIN_CORR = 1.94  # variance of a long mean of adjacent Hann bins over independent ones: 1 + 2 (4/9 + 1/36)


def _db(x: npt.NDArray[Any]) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, 10.0 * np.log10(np.where(x > 0, x, 1.0)), np.nan)


# ---- row helpers (rows = stations) -----------------------------------------------------------
def _sorted_quantile(s: FloatArray, count: npt.NDArray[Any], q: float) -> FloatArray:
    """Quantile ``q`` of the first ``count`` values of each ascending-sorted row (NaN if none)."""
    top = np.maximum(count - 1, 0)
    pos = q * top
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, top)
    rows = np.arange(s.shape[0])
    a, b = s[rows, i0], s[rows, i1]
    with np.errstate(invalid="ignore"):
        out = a + (pos - i0) * (b - a)
    return np.where(count > 0, out, np.nan)


def _row_quantile(p: FloatArray, mask: npt.NDArray[np.bool_], q: float) -> FloatArray:
    return _sorted_quantile(np.sort(np.where(mask, p, np.inf), axis=-1), mask.sum(axis=-1), q)


def _first_last(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    n = mask.shape[-1]
    return np.argmax(mask, axis=-1), n - 1 - np.argmax(mask[:, ::-1], axis=-1)


def _running_median_db(p: FloatArray, w: int) -> FloatArray:
    """10 log10 of the running median over ``w`` (odd) bins, edges padded with the edge values."""
    h = w // 2
    v = np.lib.stride_tricks.sliding_window_view(np.pad(p, ((0, 0), (h, h)), mode="edge"), w, axis=-1)
    return _db(np.median(v, axis=-1))


def _window_means(p: FloatArray, mask: npt.NDArray[np.bool_], w: int) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Means of ``p`` over every ``w`` consecutive bins, and whether the window lies wholly in ``mask``."""
    zero = np.zeros((p.shape[0], 1))
    c = np.concatenate([zero, np.cumsum(np.where(mask, p, 0.0), axis=-1)], axis=-1)
    ci = np.concatenate([zero, np.cumsum(mask, axis=-1)], axis=-1)
    return (c[:, w:] - c[:, :-w]) / w, (ci[:, w:] - ci[:, :-w]) == w


# ---- the passband ----------------------------------------------------------------------------
def _detect(p: FloatArray, f: FloatArray, df: FloatArray, fs: FloatArray) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Detected (low, high) edges (Hz) of each row's passband and whether it was detectable."""
    rows, n = p.shape
    rr = np.arange(rows)
    dfm = float(np.nanmean(df)) if np.isfinite(df).any() else 1.0
    s = _running_median_db(p, max(3, int(round(_SMOOTH_HZ / dfm)) | 1))
    floor = np.quantile(s, _FLOOR_Q, axis=-1)
    dr, rmin = max(4, int(round(_STEP_HZ / dfm))), max(1, int(round(_STEP_HZ / dfm)))
    nan = np.full(rows, np.nan)
    if n <= dr + rmin + 1:
        return nan, nan, np.zeros(rows, dtype=bool)
    # the skirt: the lowest level step of MIN_CONTRAST_DB within dr bins of the level-sorted PSD
    srt = -np.sort(-s, axis=-1)
    with np.errstate(invalid="ignore"):
        step = (srt[:, :-dr] - srt[:, dr:] >= MIN_CONTRAST_DB) & (np.arange(n - dr) >= rmin)
    r = (n - dr - 1) - np.argmax(step[:, ::-1], axis=-1)
    mid = 0.5 * (srt[rr, r] + srt[rr, r + dr])
    i0, i1 = _first_last(s >= mid[:, None])
    guard = np.minimum(OUTER_GUARD * fs, 0.25 * (i1 - i0) * df)
    inside = (f >= (f[rr, i0] + guard)[:, None]) & (f <= (f[rr, i1] - guard)[:, None])
    ref = _row_quantile(s, inside, _REF_Q)
    t = ref - EDGE_DB
    idx = np.arange(n)
    j0, j1 = _first_last((s >= t[:, None]) & (idx >= i0[:, None]) & (idx <= i1[:, None]))
    with np.errstate(divide="ignore", invalid="ignore"):
        a0, b0 = s[rr, np.maximum(j0 - 1, 0)], s[rr, j0]
        a1, b1 = s[rr, np.minimum(j1 + 1, n - 1)], s[rr, j1]
        lo = f[rr, j0] - df * np.where(j0 > 0, np.clip((b0 - t) / (b0 - a0), 0.0, 1.0), 0.5)
        hi = f[rr, j1] + df * np.where(j1 < n - 1, np.clip((b1 - t) / (b1 - a1), 0.0, 1.0), 0.5)
        found = step.any(axis=-1) & (ref - floor >= MIN_CONTRAST_DB) & (hi - lo >= OUTER_GUARD * fs)
    return lo, hi, found


def _passband_rows(
    p: FloatArray, f: FloatArray, df: FloatArray, fs: FloatArray, mode: str, lo: float, hi: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(low, high, source code) per row, the edges clipped to the sampled band."""
    b_lo, b_hi = f[:, 0] - 0.5 * df, f[:, -1] + 0.5 * df
    code = np.full(p.shape[0], float(_SOURCE_CODE[mode]))
    if mode in ("given", "receiver"):
        low, high = np.full(p.shape[0], lo), np.full(p.shape[0], hi)
    elif mode == "detect":
        low, high, found = _detect(p, f, df, fs)
        low, high = np.where(found, low, -np.inf), np.where(found, high, np.inf)
        code = np.where(found, code, 0.0)
    else:
        low, high = np.full(p.shape[0], -np.inf), np.full(p.shape[0], np.inf)
    return np.clip(low, b_lo, b_hi), np.clip(high, b_lo, b_hi), code


# ---- the noise floor -------------------------------------------------------------------------
def _lowest_region(p: FloatArray, inner: npt.NDArray[np.bool_], k: FloatArray, df: FloatArray,
                   n0: FloatArray) -> FloatArray:
    """The clipped cluster's N0, or the level of the lowest stretch of the passband where that is
    clearly lower.  Weak sidebands spread over most of a passband (an AM broadcast a few dB over
    the noise) sit inside the chi-square spread of the noise bins and pull the cluster up; the
    signal-free stretch (beyond the audio band) then reads lower as a whole.  The lowest mean over
    stretches of min(200 Hz, 20 %) is corrected for being the least of the stretches (the expected
    minimum of that many independent normal means) and used when it lies below the cluster by
    more than three of its standard errors."""
    m = inner.sum(axis=-1)
    dfm = float(np.nanmean(df)) if np.isfinite(df).any() else 1.0
    width = np.minimum(_FLAT_MIN_HZ, _FLAT_MIN_FRACTION * m * dfm)
    w = int(np.clip(round(float(np.nanmin(width)) / dfm), 2, max(2, int(m.min()) // 2)))
    means, whole = _window_means(p, inner, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        lowest = np.where(whole, means, np.inf).min(axis=-1)
        rel = 1.0 / np.sqrt(np.maximum(k, 1.0) * w / _BIN_CORR)  # relative sd of one stretch's mean
        n_indep = np.maximum(m / w, 1.0)
        z = np.sqrt(2.0 * np.log(np.maximum(n_indep, 1.0)))  # expected least of n_indep normals, in sds
        corrected = lowest / np.maximum(1.0 - z * rel, 0.5)
        clearly = np.isfinite(corrected) & (corrected < n0 * (1.0 - 3.0 * rel))
    return np.where(clearly, corrected, n0)



def _noise_floor_rows(
    p: FloatArray, inner: npt.NDArray[np.bool_], k: FloatArray, df: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(N0, passband_filled) per row from the inner-passband bins; see :func:`noise_floor`."""
    m = inner.sum(axis=-1)
    dfm = float(np.nanmean(df)) if np.isfinite(df).any() else 1.0
    kc = np.asarray(k, dtype=np.float64)
    # few segments (short captures): average adjacent bins first, so that the clipping below works
    # on values of about _MIN_DOF segments' scatter (a mean of w Hann bins of K segments is
    # ~ Gamma(K w / 1.94)); a single segment's bins scatter so widely that weak sidebands would
    # pass the clip and pull the estimate up
    kmin = float(np.nanmin(kc)) if np.isfinite(kc).any() and kc.size else 1.0
    ws = int(min(max(1, math.ceil(_MIN_DOF * _BIN_CORR / max(kmin, 1.0))), max(1, int(m.min()) // 8)))
    if ws > 1 and kmin < _MIN_DOF:
        means, whole_s = _window_means(p, inner, ws)
        x = np.sort(np.where(whole_s, means, np.inf), axis=-1)
        m_x = whole_s.sum(axis=-1)
        kc = np.maximum(np.floor(kc * ws / _BIN_CORR), 1.0)
    else:
        x = np.sort(np.where(inner, p, np.inf), axis=-1)
        m_x = m
    n0 = _sorted_quantile(x, m_x, _START_Q) / chi2_quantile_ratio(kc, _START_Q)
    r_clip, r_mid = chi2_quantile_ratio(kc, _CLIP_P), chi2_quantile_ratio(kc, 0.5 * _CLIP_P)
    for _ in range(_ITERATIONS):
        with np.errstate(invalid="ignore"):
            kept = (x <= (r_clip * n0)[:, None]).sum(axis=-1)
        n0 = np.where(kept > 0, _sorted_quantile(x, kept, 0.5) / r_mid, n0)
    # is that cluster a flat, signal-free floor?  the running mean of the in-band PSD must not go
    # well below it, and must sit at it over min(200 Hz, 20 %) of the inner passband.  A mean of w
    # Hann bins of K segments is ~ Gamma(K w / 1.94) / (K w / 1.94) (adjacent bins correlate)
    w = int(np.clip(round(_FLAT_HZ / dfm), 1, max(1, int(m.min()) // 4)))
    means, whole = _window_means(p, inner, w)
    k_eff = np.maximum(np.floor(k * w / _BIN_CORR), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom = np.where(whole, means, np.inf).min(axis=-1)
        gap = 10.0 * np.log10(n0 / bottom)
        low = _db(chi2_quantile_ratio(k_eff, _FLAT_P)) - _FLAT_MARGIN_DB
        high = _db(chi2_quantile_ratio(k_eff, 1.0 - _FLAT_P)) + _FLAT_MARGIN_DB
        level = 10.0 * np.log10(means / n0[:, None])
        flat = (whole & (level >= low[:, None]) & (level <= high[:, None])).sum(axis=-1) * df
        need = np.minimum(_FLAT_MIN_HZ, _FLAT_MIN_FRACTION * m * df)
        # noise: the lowest of ~m sliding window means sits near the chi2 1/m quantile; 1 % of
        # noise-only captures would reach the 0.01/m quantile
        floor_q = np.array([float(chi2_quantile_ratio(ke, _GAP_P / max(int(mm), 1))) for ke, mm in zip(k_eff, m)])
        deep = gap > _GAP_MARGIN_DB - _db(floor_q)
        filled = np.isfinite(bottom) & (deep | (flat < need))
    n0 = np.where(filled, bottom, _lowest_region(p, inner, k, df, n0))
    return n0, np.where(np.isfinite(n0), filled.astype(np.float64), np.nan)
