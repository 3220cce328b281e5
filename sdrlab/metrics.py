"""Signal metrics of a session: pure numpy / xarray functions, vectorised over stations, lazy on dask.

Conventions (STYLE.md): powers are averaged in linear units and converted to dB last; spectral
bins are selected by *frequency*, never by index; powers are in dBFS (``|z| = 1`` is 0 dBFS, i.e.
int16 32768) unless they come from the receiver's calibrated S-meter (dBm); SNR is S/N, never
(S+N)/N.

The inputs (a session Dataset, a complex DataArray or a numpy array), the one pass over the samples
that every metric comes from, and the PSD (:func:`psd`, :func:`psd_db`, :func:`power_db`) are
defined in :mod:`sdrlab.welch` and re-exported here; this module derives the metrics from the
one-pass sums.

The passband
------------
A KiwiSDR filters its IQ to the passband the client asked for (a 513-tap Blackman-Nuttall
windowed-sinc FIR: flat to ~55 Hz inside the cutoff, -6 dB at it, -100 dB ~90 Hz outside, at
12 kHz).  Outside it there is only the skirt and int16 quantisation (-138.9 dBFS/Hz at 12 kHz).
Every spectral metric works inside the passband, taken per station from (:func:`passband`):

* the ``passband=`` argument ("given"), else
* the passband the session records ("receiver"), else
* for a session whose passband is not recorded (kiwi-wav imports), detection from the PSD
  ("detected"): the PSD is smoothed (running median, 15 Hz: tones vanish, skirts stay); the
  out-of-band floor is its 2 % quantile; the skirt is the lowest level step of >= 10 dB within
  100 Hz of bins in the level-sorted spectrum; the in-band level is the 5 % quantile of the
  smoothed PSD inside the skirt's crossings (less a 152 Hz guard at 12 kHz); the edges are the
  outermost crossings of that level - 6.02 dB (a windowed-sinc's nominal cutoff is its -6 dB
  point), interpolated between bins.  Not detectable (the in-band level under 10 dB above the
  floor, or a passband narrower than the guard) -> the whole band ("whole band"), as for
* a bare array or DataArray that says nothing of a receiver ("whole band": +-fs/2).

Definitions (details in each function's docstring)
--------------------------------------------------
=====================  =======  ==========================================================
psd                    FS^2/Hz  Welch, two-sided, fft-shifted, density scaling, no detrend
noise_floor_dbfs_hz    dBFS/Hz  N0: lowest cluster of the inner-passband PSD bins (iterative
                                chi-square clipping, bias-corrected); where the passband has no
                                flat signal-free region, the bottom of the smoothed in-band PSD
                                (an upper bound: ``passband_filled`` = 1)
signal_power_dbfs      dBFS     S = sum over the passband of (PSD - N0) df
total_power_dbfs       dBFS     mean |z|^2 of the valid samples (time domain)
snr_db                 dB       S / (N0 B), B = ``noise_bandwidth_hz``
cn0_dbhz               dB-Hz    S / N0 (C/N0), independent of any bandwidth
noise_bandwidth_hz     Hz       B: the passband width, or ``bandwidth_hz`` when given
occupied_bandwidth_hz  Hz       99 % of S between the edges, (1 - 0.99)/2 left out each side
frequency_offset_hz    Hz       strongest passband bin + sub-bin interpolation
passband_low/high_hz   Hz       the passband the metrics used (see above)
passband_source        1        0 whole band, 1 receiver, 2 detected, 3 given
passband_filled        1        1: no signal-free region in the passband (N0 upper bound,
                                snr_db and cn0_dbhz lower bounds)
rssi_*_dbm             dBm      S-meter (receiver calibration), mean in linear power
agc_gain_range_db      dB       p95 - p5 over received frames of IQ power (dBFS) - RSSI (dBm)
agc_gain_changed       1        1 when agc_gain_range_db > 2 dB (AGC or gain steps at work)
clipped_fraction       1        valid samples with |I| or |Q| >= 32767
overload_fraction      1        received frames with the ADC-overflow flag 0x02
=====================  =======  ==========================================================

All metrics in Hz use each station's own sample rate (the PSD's ``frequency`` coordinate uses the
stations' mean rate: see :mod:`sdrlab.welch`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from . import metric_table
from .capture import FLAG_ADC_OVERFLOW, RSSI_FLOOR_DBM
from .welch import (
    CLIP_LEVEL,
    FRAME,
    INNER_GUARD,
    PASSBAND_SOURCES,
    FloatArray,
    FramePowers,
    FsLike,
    PassbandArg,
    Source,
    WindowLike,
    _check_welch,
    _db,
    _Input,
    _is_hann,
    _noise_floor_rows,
    _passband_rows,
    _sums,
    _window,
    chi2_quantile_ratio,
    passband_mode,
    power_db,
    psd,
    psd_db,
)

__all__ = [
    "AGC_CHANGE_DB",
    "INTERVAL_S",
    "CLIP_LEVEL",
    "LONG_NAMES",
    "PASSBAND_SOURCES",
    "UNITS",
    "agc_gain",
    "chi2_quantile_ratio",
    "clipping_fraction",
    "cn0",
    "frequency_offset",
    "interval_metrics",
    "metrics",
    "metrics_table",
    "noise_floor",
    "occupied_bandwidth",
    "passband",
    "power_db",
    "psd",
    "psd_db",
    "rssi_summary",
    "signal_power",
    "snr",
    "total_power",
]

# metric variable names (units in the name), their units and long names: the one table
UNITS = metric_table.UNITS
LONG_NAMES = metric_table.LONG_NAMES
_SPECTRAL = ("noise_floor_dbfs_hz", "frequency_offset_hz", "signal_power_dbfs", "snr_db", "cn0_dbhz",
             "occupied_bandwidth_hz", "noise_bandwidth_hz", "passband_low_hz", "passband_high_hz",
             "passband_source", "passband_filled")
_TIME = ("total_power_dbfs", "clipped_fraction")
_FRAMES = ("rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm", "overload_fraction")
_GAIN = ("agc_gain_range_db", "agc_gain_changed")

#: AGC flag threshold on agc_gain_range_db
AGC_CHANGE_DB = 2.0
_AGC_MIN_FRAMES = 10
_RSSI_FLOOR_DBM = RSSI_FLOOR_DBM  # an S-meter at its floor says nothing


# ---- spectral metrics from a PSD -------------------------------------------------------------
def _spectral_kernel(
    p: npt.NDArray[Any],
    k: npt.NDArray[Any],
    fs: npt.NDArray[Any],
    *,
    mode: str,
    lo: float,
    hi: float,
    hann: bool,
    fraction: float,
) -> tuple[FloatArray, ...]:
    """N0 (FS^2/Hz), offset (Hz), S (FS^2), occupied bandwidth (Hz), passband low, high (Hz),
    source code and passband_filled of PSD rows (fft-shifted)."""
    lead = p.shape[:-1]
    n = p.shape[-1]
    p2 = np.asarray(p, dtype=np.float64).reshape(-1, n)
    rows_n = p2.shape[0]
    fs1 = np.broadcast_to(np.asarray(fs, dtype=np.float64), lead).reshape(-1)
    k1 = np.broadcast_to(np.asarray(k), lead).reshape(-1)
    rows = np.arange(rows_n)
    df = fs1 / n
    f = (np.arange(n) - n // 2)[None, :] * df[:, None]
    p_lo, p_hi, code = _passband_rows(p2, f, df, fs1, mode, lo, hi)
    finite = np.isfinite(p2)
    band = (f >= p_lo[:, None]) & (f <= p_hi[:, None]) & finite
    nb = band.sum(axis=-1)
    ok = nb > 0

    # noise floor: the inner passband (a guard inside every edge that is a filter's skirt)
    guard = np.minimum(INNER_GUARD * fs1, 0.2 * (p_hi - p_lo))
    g_lo = np.where(p_lo > f[:, 0], guard, 0.0)
    g_hi = np.where(p_hi < f[:, -1], guard, 0.0)
    inner = (f >= (p_lo + g_lo)[:, None]) & (f <= (p_hi - g_hi)[:, None]) & finite
    n0, filled = _noise_floor_rows(p2, inner, k1.astype(np.float64), df)

    # peak offset with sub-bin interpolation
    i = np.argmax(np.where(band, p2, -np.inf), axis=-1)
    edge = (i > 0) & (i < n - 1)
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
    delta = np.where(edge & np.isfinite(delta), np.clip(delta, -1.0, 1.0), 0.0)
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

    return tuple(shape(v) for v in (n0, offset, s_pow, obw, p_lo, p_hi, code, filled))


def _finish(parts: Sequence[FloatArray], bandwidth_hz: float | None) -> tuple[FloatArray, ...]:
    """The spectral metrics in final units, in the order of ``_SPECTRAL``, from the outputs of
    :func:`_spectral_kernel`."""
    n0, offset, s_pow, obw, p_lo, p_hi, code, filled = parts
    bw = p_hi - p_lo if bandwidth_hz is None else np.where(np.isfinite(n0), float(bandwidth_hz), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_lin = s_pow / (n0 * bw)
        cn0_lin = s_pow / n0
    return _db(n0), offset, _db(s_pow), _db(snr_lin), _db(cn0_lin), obw, bw, p_lo, p_hi, code, filled


def _psd_kernel(
    p: npt.NDArray[Any], k: npt.NDArray[Any], fs: npt.NDArray[Any], *, bandwidth_hz: float | None, **kw: Any
) -> tuple[FloatArray, ...]:
    lead = p.shape[:-1]
    f = np.broadcast_to(np.asarray(fs, dtype=np.float64), lead)
    out = _finish([v.reshape(-1) for v in _spectral_kernel(p, k, f, **kw)], bandwidth_hz)
    return tuple(v.reshape(lead) for v in out)


def _spectral_metrics(
    x: Source, fs: FsLike, nperseg: int, noverlap: int, window: WindowLike, passband: PassbandArg, *,
    fraction: float = 0.99, bandwidth_hz: float | None = None,
) -> xr.Dataset:
    """The spectral metrics of a :func:`psd` (or of a source, through :func:`psd`)."""
    _check_fraction(fraction)
    if isinstance(x, xr.DataArray) and "frequency" in x.dims and "n_segments" in x.coords:
        p = x
    else:
        p = psd(x, fs, nperseg=nperseg, noverlap=noverlap, window=window)
    mode, lo, hi = passband_mode(p.attrs, passband)
    kernel: Callable[..., Any] = functools.partial(
        _psd_kernel, mode=mode, lo=lo, hi=hi, hann=_is_hann(str(p.attrs.get("window", ""))),
        fraction=fraction, bandwidth_hz=bandwidth_hz,
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
    return _dataset(outs, _SPECTRAL, fraction=fraction, bandwidth_hz=bandwidth_hz, mode=mode)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")


_FLAG_FILLED = {
    "flag_values": [0, 1], "flag_meanings": "signal_free_region no_signal_free_region",
    "comment": "1: the passband holds no flat signal-free region (a signal fills it, as DCF77's phase "
               "modulation fills its +-500 Hz): noise_floor_dbfs_hz is an upper bound (the bottom of the "
               "smoothed in-band PSD), snr_db and cn0_dbhz are lower bounds",
}


def _attrs(mode: str, fraction: float, bandwidth_hz: float | None) -> dict[str, dict[str, Any]]:
    """Each variable's definition attrs."""
    if bandwidth_hz is not None:
        bw = f"{float(bandwidth_hz):g} Hz (bandwidth_hz)"
    elif mode == "whole band":
        bw = "sample_rate (each station's own fs: no passband known, the whole band)"
    else:
        bw = "passband width (each station's passband_high_hz - passband_low_hz)"
    source = {"whole band": "whole band", "receiver": "receiver", "given": "given", "detect": "detected"}[mode]
    out: dict[str, dict[str, Any]] = {
        "noise_floor_dbfs_hz": {
            "estimator": "lowest cluster of the inner-passband PSD bins: iterative clipping at the chi2(2K) "
                         "0.99 quantile, median of the kept bins over its chi2 ratio",
            "comment": "upper bound where passband_filled = 1",
        },
        "occupied_bandwidth_hz": {"fraction": fraction},
        "snr_db": {"definition": "S/N, N = noise density x noise bandwidth (not (S+N)/N)", "noise_bandwidth": bw,
                   "comment": "lower bound where passband_filled = 1"},
        "cn0_dbhz": {"definition": "S/N0: signal power over noise density (no bandwidth)",
                     "comment": "lower bound where passband_filled = 1"},
        "noise_bandwidth_hz": {"definition": bw},
        "passband_source": {"flag_values": [0, 1, 2, 3], "flag_meanings": "whole_band receiver detected given",
                            "requested": source},
        "passband_filled": dict(_FLAG_FILLED),
        "agc_gain_range_db": {"definition": "p95 - p5 over received frames of 10 log10(frame IQ power, FS^2) - "
                                            "frame RSSI (dBm); the S-meter is measured before the AGC, the IQ after it",
                              "comment": "NaN without S-meter values (kiwi-wav files keep none)"},
        "agc_gain_changed": {"flag_values": [0, 1], "flag_meanings": "constant_gain gain_changed",
                             "threshold_db": AGC_CHANGE_DB},
    }
    if bandwidth_hz is not None:
        out["snr_db"]["noise_bandwidth_hz"] = float(bandwidth_hz)
    for name in ("passband_low_hz", "passband_high_hz"):
        out[name] = {"passband_source": source, "comment": "see passband_source per station"}
    for name in ("rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm"):
        out[name] = {"comment": "receiver S-meter calibration"}
    return out


def _dataset(
    outs: Sequence[xr.DataArray], names: Sequence[str], *, fraction: float = 0.99,
    bandwidth_hz: float | None = None, mode: str = "whole band",
) -> xr.Dataset:
    """Name the kernel outputs and give each its units, long name and definition attrs."""
    extra = _attrs(mode, fraction, bandwidth_hz)
    data = {}
    for name, out in zip(names, outs):
        var = out.reset_coords(drop=True)
        var.attrs = {"long_name": LONG_NAMES[name], "units": UNITS[name], **extra.get(name, {})}
        data[name] = var.rename(name)
    return xr.Dataset(data)


# ---- the spectral metrics, one function each -------------------------------------------------
def passband(
    x: Source,
    *,
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.Dataset:
    """The passband every spectral metric uses, per station: ``passband_low_hz``,
    ``passband_high_hz`` (Hz from the tuned frequency) and ``passband_source`` (0 whole band,
    1 receiver, 2 detected, 3 given; see the module docstring for the order and the detection).
    ``passband="detect"`` detects it even where the source records one.  Detected edges are the
    -6 dB points of the receiver's filter (a windowed-sinc's nominal cutoff), within a few Hz for
    a Kiwi FIR over a noise floor; on a signal that fills its passband (DCF77) the in-band level
    is the signal's, so the edges sit where the skirt falls 6 dB below its lowest in-band level."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband)
    return sp[["passband_low_hz", "passband_high_hz", "passband_source"]]


def noise_floor(
    x: Source,
    *,
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Noise density N0 in dBFS/Hz inside the passband, away from its skirts.

    Bins: the passband (:func:`passband`) less a guard of ``3 fs / 513`` (70 Hz at 12 kHz, where a
    Kiwi FIR is within 0.03 dB of flat) inside each edge that is a filter's skirt; chosen by
    frequency, never by index.  Estimator: the *lowest cluster* of those bins.  A PSD bin of
    Gaussian noise averaged over K segments is ``N0 chi2(2K) / 2K``; starting from the 2 % quantile
    (over its chi2 ratio), the bins below the chi2 0.99 quantile of the current N0 are kept and
    N0 becomes their median over the chi2 (0.495) quantile-to-mean ratio, eight times.  Unbiased
    for noise (the median of the kept bins is the 0.495 quantile of the noise: the chi-square
    correction of :func:`chi2_quantile_ratio`), and robust to signals that occupy most of the
    passband: the median of all bins fails past 50 % occupancy and a fixed low quantile is biased
    by whatever fraction the signal takes, while the clipping needs only the signal-free bins to
    form the lowest cluster (an AM broadcast whose sidebands cover 90 % of +-5 kHz reads within
    0.2 dB).

    No signal-free region: the cluster is a floor only if it is flat.  The running mean of the
    PSD over 25 Hz must not fall more than ``1 dB + 4 sigma`` below N0 (sigma: the statistical
    scatter of that mean) and must lie within ``3 sigma + 0.25 dB`` of N0 over at least
    min(200 Hz, 20 %) of the inner passband.  Otherwise (a signal that fills its passband, as
    DCF77's 646 chip/s phase modulation fills +-500 Hz, or a noise floor far from white) the
    estimate is the minimum of that running mean, an *upper bound* of the noise, and
    ``passband_filled`` (:func:`metrics`) is 1.  ``x``: a :func:`psd`, or a source (then the
    Welch parameters apply)."""
    return _spectral_metrics(x, fs, nperseg, noverlap, window, passband)["noise_floor_dbfs_hz"]


def frequency_offset(
    x: Source,
    *,
    passband: PassbandArg = None,
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
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Noise-subtracted signal power in the passband, dBFS: ``10 log10 sum_passband (P_k - N0) df``
    with :func:`noise_floor` ``N0``.  The signal band is the whole passband, so no band edges are
    guessed (a tone's window mainlobe and an AM signal's sidebands are all inside) and the noise in
    it is removed by the subtraction.  NaN when nothing stands above the noise."""
    return _spectral_metrics(x, fs, nperseg, noverlap, window, passband)["signal_power_dbfs"]


def snr(
    x: Source,
    *,
    bandwidth_hz: float | None = None,
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """S/N in dB: :func:`signal_power` over ``N0 B`` with :func:`noise_floor` ``N0``.  ``B`` is the
    passband width (:func:`passband`: what a radio user hears the signal against; the whole band
    ``fs`` where no passband is known) unless ``bandwidth_hz`` is given.  Not (S+N)/N.  The attrs
    name the noise bandwidth (``noise_bandwidth``, and ``noise_bandwidth_hz`` when given);
    :func:`metrics` also returns it per station (``noise_bandwidth_hz``).  A lower bound where the
    passband has no signal-free region (``passband_filled``)."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband, bandwidth_hz=bandwidth_hz)
    return sp["snr_db"]


def cn0(
    x: Source,
    *,
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Carrier-to-noise density C/N0 in dB-Hz: :func:`signal_power` over :func:`noise_floor`
    (``S / N0``), so no bandwidth enters (``snr_db = cn0_dbhz - 10 log10 B``).  A lower bound where
    the passband has no signal-free region."""
    return _spectral_metrics(x, fs, nperseg, noverlap, window, passband)["cn0_dbhz"]


def occupied_bandwidth(
    x: Source,
    *,
    fraction: float = 0.99,
    passband: PassbandArg = None,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
) -> xr.DataArray:
    """Bandwidth (Hz) holding ``fraction`` of the noise-subtracted passband power: from the edge
    where the cumulative power from below reaches ``(1 - fraction)/2`` of it to the edge where the
    cumulative power from above does (interpolated inside the bin)."""
    sp = _spectral_metrics(x, fs, nperseg, noverlap, window, passband, fraction=fraction)
    return sp["occupied_bandwidth_hz"]


# ---- time-domain and receiver metrics --------------------------------------------------------
def _time_kernel(sums: npt.NDArray[Any], n_samples: npt.NDArray[Any], *, col: int) -> tuple[FloatArray, ...]:
    """Total power (dBFS) and clipped fraction from the one-pass sums (columns ``col``, ``col + 1``)."""
    n = np.asarray(n_samples, dtype=np.float64)
    nn = np.where(n > 0, n, np.nan)
    return _db(sums[..., col] / nn), np.asarray(sums[..., col + 1] / nn, dtype=np.float64)


def _time_metrics(x: Source) -> xr.Dataset:
    inp = _Input(x, 1.0)
    sums = _sums(inp, nperseg=8, step=8, window="boxcar", spectral=False)[0]
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


def _gain_kernel(
    power: npt.NDArray[Any], rssi: npt.NDArray[Any], received: npt.NDArray[Any], sample: npt.NDArray[Any],
    n_samples: npt.NDArray[Any], *, first: npt.NDArray[np.int64],
) -> tuple[FloatArray, FloatArray]:
    """``agc_gain_range_db`` and ``agc_gain_changed`` from the per-frame powers of the one pass."""
    lead = rssi.shape[:-1]
    nf = rssi.shape[-1]
    flat = np.asarray(power, dtype=np.float64).reshape(-1, power.shape[-2] * power.shape[-1])
    r = np.asarray(rssi, dtype=np.float64).reshape(-1, nf)
    smp = np.asarray(sample, dtype=np.int64).reshape(-1, nf)
    n = np.broadcast_to(np.asarray(n_samples, dtype=np.int64), lead).reshape(-1, 1)
    pos = FramePowers.index_of(smp // FRAME, first, power.shape[-1])
    ok = (np.asarray(received, dtype=bool).reshape(-1, nf) & np.isfinite(r) & (r > _RSSI_FLOOR_DBM + 0.05)
          & (smp >= 0) & (smp % FRAME == 0) & (smp + FRAME <= n) & (pos < flat.shape[-1]))
    pf = np.take_along_axis(flat, np.where(ok, pos, 0), axis=-1) / FRAME
    ok &= pf > 0
    gain = np.where(ok, _db(pf) - np.where(ok, r, 0.0), np.nan)
    rng = np.full(gain.shape[0], np.nan)
    use = ok.sum(axis=-1) >= _AGC_MIN_FRAMES
    if use.any():
        hi_lo = np.nanpercentile(gain[use], [95.0, 5.0], axis=-1)
        rng[use] = hi_lo[0] - hi_lo[1]
    changed = np.where(np.isfinite(rng), (rng > AGC_CHANGE_DB).astype(np.float64), np.nan)
    return rng.reshape(lead), changed.reshape(lead)


def _gain_metrics(ds: xr.Dataset, frames: FramePowers) -> xr.Dataset:
    outs = xr.apply_ufunc(
        functools.partial(_gain_kernel, first=frames.first), frames.power,
        *(ds[v].reset_coords(drop=True) for v in ("frame_rssi_dbm", "frame_received", "frame_sample")),
        ds["n_samples"].reset_coords(drop=True),
        input_core_dims=[["_chunk", "_slot"], ["frame"], ["frame"], ["frame"], []], output_core_dims=[[], []],
        dask="parallelized", output_dtypes=[np.float64] * 2, dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _dataset(outs, _GAIN)


def _session_frame_kernel(
    power: npt.NDArray[Any], rssi: npt.NDArray[Any], received: npt.NDArray[Any], flags: npt.NDArray[Any],
    sample: npt.NDArray[Any], n_samples: npt.NDArray[Any], *, first: npt.NDArray[np.int64],
) -> tuple[FloatArray, ...]:
    """``_FRAMES + _GAIN`` in one task per station chunk."""
    return _frame_kernel(rssi, received, flags) + _gain_kernel(power, rssi, received, sample, n_samples, first=first)


def _session_frame_metrics(ds: xr.Dataset, frames: FramePowers) -> xr.Dataset:
    """The S-meter, overload and AGC metrics of a session (what :func:`metrics` adds for one)."""
    names = _FRAMES + _GAIN
    outs = xr.apply_ufunc(
        functools.partial(_session_frame_kernel, first=frames.first), frames.power,
        *(ds[v].reset_coords(drop=True) for v in ("frame_rssi_dbm", "frame_received", "frame_flags", "frame_sample")),
        ds["n_samples"].reset_coords(drop=True),
        input_core_dims=[["_chunk", "_slot"]] + [["frame"]] * 4 + [[]], output_core_dims=[[]] * len(names),
        dask="parallelized", output_dtypes=[np.float64] * len(names), dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _dataset(outs, names)


_FRAME_VARS = {"frame_rssi_dbm", "frame_received", "frame_flags", "frame_sample"}


def agc_gain(ds: xr.Dataset) -> xr.Dataset:
    """How much the receiver's gain moved during each capture: ``agc_gain_range_db`` and
    ``agc_gain_changed`` (a session Dataset with its frame records).

    A KiwiSDR measures its S-meter (``frame_rssi_dbm``, dBm) on the passband-filtered signal
    *before* the AGC, while the IQ comes *after* it; so per received frame, the IQ power in dBFS
    (mean ``|z|^2`` of the frame's 512 samples, summed in the one pass) minus the RSSI in dBm is
    the receiver's gain: constant with the AGC off (up to the S-meter's 0.1 dB steps and the
    frame's own power scatter), moving with it on.  ``agc_gain_range_db`` is the p95 - p5 of that
    difference over the received frames with an S-meter reading above its -127 dBm floor (at least
    10, else NaN: kiwi-wav files keep no S-meter); ``agc_gain_changed`` is 1 when it exceeds
    :data:`AGC_CHANGE_DB` (2 dB).  Powers measured across such a capture mix gains: compare levels
    between captures, or with other stations, only where it is 0."""
    inp = _Input(ds, 1.0)
    return _gain_metrics(ds, _sums(inp, nperseg=8, step=8, window="boxcar", spectral=False)[1])


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
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s[:, :nperseg] / (np.where(k > 0, k, np.nan) * f * s2)[:, None]
    out = _finish(_spectral_kernel(p, k, f, **spectral), bandwidth_hz) + _time_kernel(s, n, col=nperseg)
    return tuple(np.asarray(v, dtype=np.float64).reshape(lead) for v in out)


def metrics(
    ds: xr.Dataset | xr.DataArray,
    *,
    fs: FsLike = None,
    nperseg: int = 8192,
    noverlap: int = 0,
    window: WindowLike = "hann",
    passband: PassbandArg = None,
    bandwidth_hz: float | None = None,
    fraction: float = 0.99,
) -> xr.Dataset:
    """All metrics, one variable per metric (dim: station), from ONE pass over the samples.

    Variables (units in the name and in ``units``; definitions in the module docstring and each
    function's): ``noise_floor_dbfs_hz``, ``frequency_offset_hz``, ``signal_power_dbfs``,
    ``total_power_dbfs``, ``snr_db`` (in ``noise_bandwidth_hz``: the passband width, or
    ``bandwidth_hz``), ``cn0_dbhz``, ``noise_bandwidth_hz``, ``occupied_bandwidth_hz``
    (``fraction``), ``passband_low_hz``, ``passband_high_hz``, ``passband_source``,
    ``passband_filled``, ``clipped_fraction``; with a session Dataset also ``rssi_mean_dbm``,
    ``rssi_min_dbm``, ``rssi_max_dbm``, ``agc_gain_range_db``, ``agc_gain_changed`` and
    ``overload_fraction``.  ``passband``: (low, high) Hz, ``"detect"``, or None: the session's
    recorded passband, detected where it is not recorded (:func:`passband`).  Lazy: a dask-backed
    input gives a dask-backed result and nothing is computed here; the graph is one task per
    sample chunk (the Welch sums and the per-frame powers together) plus one per station chunk.
    """
    step = _check_welch(nperseg, noverlap)
    _check_fraction(fraction)
    if isinstance(ds, xr.Dataset) and "audio" in ds.data_vars:  # audio stations (their variables exist only then)
        return _with_audio(ds, dict(fs=fs, nperseg=nperseg, noverlap=noverlap, window=window, passband=passband,
                                    bandwidth_hz=bandwidth_hz, fraction=fraction))
    inp = _Input(ds, fs)
    mode, lo, hi = inp.passband(passband)
    sums, frames = _sums(inp, nperseg=nperseg, step=step, window=window)
    kernel: Callable[..., Any] = functools.partial(
        _derive_kernel, nperseg=nperseg, step=step, s2=float(np.sum(_window(window, nperseg) ** 2)),
        bandwidth_hz=bandwidth_hz, mode=mode, lo=lo, hi=hi, hann=_is_hann(window), fraction=fraction,
    )
    names = _SPECTRAL + _TIME
    outs = xr.apply_ufunc(
        kernel, sums, inp.n_samples, inp.fs,
        input_core_dims=[["_sum"], [], []], output_core_dims=[[]] * len(names),
        dask="parallelized", output_dtypes=[np.float64] * len(names),
    )
    out = _dataset(outs, names, fraction=fraction, bandwidth_hz=bandwidth_hz, mode=mode)
    if isinstance(ds, xr.Dataset) and _FRAME_VARS <= set(ds.data_vars):
        out = out.merge(_session_frame_metrics(ds, frames))
    out = out[[v for v in UNITS if v in out.data_vars]]
    source = {"detect": "detected where detectable, else whole band (passband_source per station)"}.get(mode, mode)
    out.attrs = {
        "title": "sdrlab signal metrics",
        "welch": f"nperseg={nperseg} noverlap={noverlap} window={window if isinstance(window, str) else 'custom'}",
        "passband_source": source,
        "passband_hz": f"{lo:g} .. {hi:g}" if mode in ("given", "receiver") else
        ("per station: passband_low_hz .. passband_high_hz" if mode == "detect" else "whole band"),
        "noise_bandwidth": _attrs(mode, fraction, bandwidth_hz)["noise_bandwidth_hz"]["definition"],
        "occupied_fraction": fraction,
    }
    return out


def _with_audio(ds: xr.Dataset, params: dict[str, Any]) -> xr.Dataset:
    """The metrics of a session with audio stations: theirs from the S-meter and waterfall
    (:func:`sdrlab.metrics_spectrum.audio_metrics`, computed at once: they are small), the IQ
    stations' as :func:`metrics` makes them; one row per station in the session's order."""
    from .metrics_spectrum import audio_metrics

    from .model_audio import iq_part

    order = ds["station"].values
    audio = audio_metrics(ds)
    part = iq_part(ds)
    if part is None:
        out = audio
    else:
        iq = metrics(part, **params)
        out = iq.reindex(station=order).combine_first(audio.reindex(station=order))
        out.attrs = {**audio.attrs, **iq.attrs, "audio_stations": audio.attrs["title"]}
    out = out[[v for v in UNITS if v in out.data_vars]]
    return out.reindex(station=order)


def metrics_table(ds: xr.Dataset, **params: Any) -> pd.DataFrame:
    """A tidy per-station table (one row per station, units in the column names; the same units in
    ``df.attrs['units']``).  ``ds`` is a session (metrics are computed) or a :func:`metrics` result."""
    # a session (it has samples) is always measured with the given parameters, even when it carries
    # the metrics acquisition stored; only a metrics() result is taken as it is
    m = metrics(ds, **params) if "iq" in ds.data_vars or "audio" in ds.data_vars else ds
    m = m[[v for v in UNITS if v in m.data_vars]].compute()
    cols = [v for v in UNITS if v in m.data_vars]
    df = m[cols].reset_coords(drop=True).to_dataframe()[cols]
    df.attrs["units"] = {c: UNITS[c] for c in cols}
    return df


#: the interval of the metric time series (:func:`interval_metrics`), seconds
INTERVAL_S = 10.0


def interval_metrics(ds: xr.Dataset, interval_s: float = INTERVAL_S, **params: Any) -> xr.Dataset:
    """Every metric of :func:`metrics` per station and per interval of ``interval_s`` seconds:
    variables with dims (station, interval) and the coordinate ``interval_start`` (station,
    interval; UTC of the interval's first sample, from each station's GPS time base) and
    ``interval_samples`` (valid samples in it).

    Interval k of a station holds its samples ``round(k T fs) .. round((k + 1) T fs)`` (T =
    ``interval_s``, fs its measured rate; rounded to whole 512-sample frames in a session with
    frame records), so in a simultaneous session (stations starting
    within one frame of each other) interval k covers the same time everywhere; the last one may
    be shorter.  An interval with fewer valid samples than one Welch segment (``nperseg``) has
    NaN metrics.  Computed from the same one-pass engine as :func:`metrics`, interval by
    interval, so all intervals together cost about one pass over the session.  ``params`` go to
    :func:`metrics`."""
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
    if "iq" not in ds.data_vars:
        raise ValueError("interval_metrics needs a session Dataset (with 'iq')")
    nperseg = int(params.get("nperseg", 8192))
    fs = ds["sample_rate"].values.astype(np.float64)
    n = ds["n_samples"].values.astype(np.int64)
    n_int = max(1, int(np.max(np.ceil(n / (interval_s * fs)))))
    n_sample = ds.sizes["sample"]
    length = int(np.max(np.round(interval_s * fs)))
    frames = _FRAME_VARS <= set(ds.data_vars)
    parts: list[xr.Dataset] = []
    starts: list[npt.NDArray[Any]] = []
    counts: list[npt.NDArray[np.int64]] = []
    # with frame records, boundaries on whole frames (the per-frame metrics need them)
    step = FRAME if frames else 1

    def edge(k: int) -> npt.NDArray[np.int64]:
        return (np.round(k * interval_s * fs / step) * step).astype(np.int64)

    for k in range(n_int):
        i0 = edge(k)
        i1 = np.minimum(edge(k + 1), n)
        valid = np.clip(i1 - i0, 0, None)
        valid = np.where(valid >= nperseg, valid, 0)
        # each station's interval, its own sample range, at the front of a common sample axis
        idx = np.clip(i0[:, None] + np.arange(length)[None, :], 0, n_sample - 1)
        sub = ds.isel(sample=xr.DataArray(idx, dims=("station", "sample")))
        sub = sub.assign_coords(n_samples=("station", valid))
        if frames:
            smp = ds["frame_sample"]
            inside = (smp >= xr.DataArray(i0, dims="station")) & (smp < xr.DataArray(i0 + valid, dims="station"))
            sub["frame_received"] = ds["frame_received"] & inside
            sub["frame_sample"] = smp - xr.DataArray(i0, dims="station")
        parts.append(metrics(sub, **params))
        starts.append(ds["start_time"].values + (i0 / fs * 1e9).astype("timedelta64[ns]"))
        counts.append(valid)
    out = xr.concat(parts, dim="interval", coords="minimal", compat="override", join="override")
    out = out.assign_coords(interval=np.arange(n_int), interval_start=(("station", "interval"), np.stack(starts, 1)),
                            interval_samples=(("station", "interval"), np.stack(counts, 1)))
    out = out.transpose("station", "interval", ...)
    out = out.where(out["interval_samples"] > 0)  # too few samples: measures nothing
    used = np.flatnonzero((np.stack(counts, 1) > 0).any(axis=0))
    if used.size and used[-1] + 1 < n_int:  # rounding to frames can leave a last, empty interval
        out = out.isel(interval=slice(0, int(used[-1]) + 1))
    out.attrs = {**out.attrs, "interval_s": float(interval_s)}
    out["interval_start"].attrs = {"long_name": "UTC of the interval's first sample (GPS time base)"}
    out["interval_samples"].attrs = {"long_name": "valid samples in the interval", "units": "1"}
    return out
