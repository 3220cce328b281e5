"""Step 4 of TDoA: pairwise lags by windowed cross-correlation, bounded by the baseline, sub-sample peaks,
outlier windows rejected.

The input is either each station's whitened complex baseband (the ``coherent`` method of
:mod:`sdrlab.tdoa.signal`: the magnitude of the complex correlation is searched) or its AM envelope
(``envelope``: the real correlation of the mean-removed envelopes).  Every window of station a is
correlated with the longer window of station b that holds it at every searched lag ("valid"
correlation), and normalised by the windows' energies, not by the energy at each lag: a keyed
or fading signal would otherwise pull the peak towards the lag where b is weakest.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from .geodesy import C_M_S, FArray, _inverse
from .timebase import CommonGrid

log = logging.getLogger(__name__)

#: half-width (samples) of the band-limited interpolator of the correlation around its peak: long
#: enough that a correlation sitting on a pedestal (a residual carrier) is interpolated without
#: ripple, and exact for signals up to ~0.8 of the Nyquist frequency
CORR_HALF_WIDTH = 32
#: integer lags searched around a pair's coarse lag in each window
LOCAL_SEARCH = 3
#: the lag estimator's own systematic error (resampling, whitening, sub-sample interpolation), in
#: samples of the common clock, as a standard uncertainty: on noise-free simulated sessions the
#: lags are off by 0.0005 samples rms (0.003 at most) whatever the windows' scatter says
LAG_FLOOR_SAMPLES = 0.001

# ---- 4. pairwise lags ------------------------------------------------------------------------
@dataclass
class PairLag:
    """One station pair: lag = arrival at ``b`` minus arrival at ``a`` (s)."""

    a: str
    b: str
    baseline_km: float
    bound_s: float
    lag_s: float
    spread_s: float
    stderr_s: float
    correlation: float
    n_windows: int
    n_valid: int
    window_lag_s: FArray
    window_corr: FArray
    window_status: list[str]
    used: bool = False
    reason: str | None = None
    residual_s: float | None = None
    predicted_s: float | None = None
    #: ``coherent`` or ``envelope`` (:mod:`sdrlab.tdoa.signal`)
    method: str = ""
    #: standard uncertainty of ``lag_s``: the windows' standard error plus both stations' timing
    #: terms (delay, GPS) and any widening from a triangle that did not close
    sigma_s: float = math.nan
    #: half-width of the 95 % interval of ``lag_s`` (Student t at ``dof``)
    ci95_s: float = math.nan
    #: effective degrees of freedom of ``sigma_s`` (Welch-Satterthwaite)
    dof: float = math.nan
    #: variance (s^2) added because a station triangle with this pair did not close
    extra_var_s2: float = 0.0
    #: known station delays subtracted (``t_b`` delay minus ``t_a`` delay, s)
    delay_correction_s: float = 0.0
    #: the estimator's systematic floor (s, ``LAG_FLOOR_SAMPLES`` at the common rate)
    floor_s: float = 0.0

    @property
    def kept(self) -> npt.NDArray[np.bool_]:
        return np.array([s == "ok" for s in self.window_status], dtype=bool)

    @property
    def name(self) -> str:
        return f"{self.a}|{self.b}"


def _delta_kernel(step: float) -> tuple[FArray, FArray]:
    """Kaiser-windowed sinc rows, one per fractional offset, each with unit DC gain."""
    deltas = np.arange(-1.0, 1.0 + step / 2, step)
    m = np.arange(-CORR_HALF_WIDTH + 1, CORR_HALF_WIDTH + 1, dtype=np.float64)
    x = deltas[:, None] - m[None, :]
    win = np.i0(9.0 * np.sqrt(np.clip(1 - (x / CORR_HALF_WIDTH) ** 2, 0, None))) / np.i0(9.0)
    k = np.sinc(x) * win
    return deltas, k / k.sum(axis=1, keepdims=True)


_DELTAS, _DKERNEL = _delta_kernel(1.0 / 32)


def _refine(r: npt.NDArray[Any], k: int) -> tuple[float, float]:
    """Sub-sample peak of the sampled correlation ``r`` (real, or complex: its magnitude) near
    integer lag index ``k``: band-limited (windowed-sinc) interpolation on a 1/32-sample grid,
    then a parabola."""
    nb = r[k - CORR_HALF_WIDTH + 1 : k + CORR_HALF_WIDTH + 1]
    v = np.einsum("ij,j->i", _DKERNEL, nb)  # not BLAS: threaded gemv is slow at this size
    vals = np.abs(v) if np.iscomplexobj(v) else v
    i = int(np.argmax(vals))
    i = min(max(i, 1), len(vals) - 2)
    y0, y1, y2 = vals[i - 1], vals[i], vals[i + 1]
    den = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    step = _DELTAS[1] - _DELTAS[0]
    return k + float(_DELTAS[i] + frac * step), float(y1 - 0.25 * (y0 - y2) * frac)


def pair_lags(
    ids: Sequence[str],
    env: FArray | npt.NDArray[np.complex64] | npt.NDArray[np.complex128],
    valid: npt.NDArray[np.bool_],
    grid: CommonGrid,
    positions: dict[str, tuple[float, float]],
    *,
    window_s: float = 1.0,
    margin_s: float = 2e-4,
    outlier_z: float = 5.0,
    outlier_min_samples: float = 0.5,
    min_window_fraction: float = 0.5,
    detection_sigma: float = 6.0,
    effective_fraction: float = 1.0,
    method: str | None = None,
) -> tuple[list[PairLag], FArray]:
    """Lags of every station pair (see the module docstring) and the window centres (s since
    the grid start).  ``env`` (station, k) is real (envelopes) or complex (whitened baseband).
    A pair is ``used`` only with a significant correlation peak inside the baseline bound and
    at least ``min_window_fraction`` of its windows kept.

    Significance: for real input the window-averaged correlation must exceed ``detection_sigma``
    times its noise level ``1 / sqrt(L n)`` (L samples per window, n windows); for complex input
    the window-averaged ``|r|^2`` (noise level ``1 / L_eff`` with ``L_eff = L *
    effective_fraction``, the independent samples the weighted band holds) must exceed
    ``(1 + detection_sigma / sqrt(n)) / L_eff``."""
    fs = grid.fs
    cplx = np.iscomplexobj(env)
    label = method or ("coherent" if cplx else "envelope")
    pairs = [(a, b) for ai, a in enumerate(ids) for b in ids[ai + 1 :]]
    base = {p: _inverse(*positions[p[0]], *positions[p[1]])[0] for p in pairs}
    bound = {p: base[p] / C_M_S + margin_s for p in pairs}
    big_m = math.ceil(max(bound.values(), default=0.0) * fs) + LOCAL_SEARCH + CORR_HALF_WIDTH + 2
    length = round(window_s * fs)
    n_win = max(0, (grid.n - 2 * big_m) // length)
    centres = np.asarray((big_m + (np.arange(n_win) + 0.5) * length) / fs, dtype=np.float64)
    nl = 2 * big_m + 1
    r_all = np.full((len(pairs), n_win, nl), np.nan, dtype=np.complex64 if cplx else np.float64)
    if n_win:
        _window_correlations(ids, env, valid, pairs, r_all, big_m, length, n_win)
    l_eff = length * max(effective_fraction, 1e-6)
    out: list[PairLag] = []
    for p, (a, b) in enumerate(pairs):
        lags = np.full(n_win, np.nan)
        corr = np.full(n_win, np.nan)
        status = ["gap"] * n_win
        have = np.isfinite(r_all[p, :, 0])
        n_valid = int(have.sum())
        bnd = math.floor(bound[(a, b)] * fs)
        lo, hi = big_m - bnd, big_m + bnd
        pl = PairLag(a, b, base[(a, b)] / 1e3, bound[(a, b)], math.nan, math.nan, math.nan, math.nan, 0,
                     n_valid, lags, corr, status, method=label, floor_s=LAG_FLOOR_SAMPLES / fs)
        out.append(pl)
        if n_valid == 0:
            pl.reason = "no window where both stations have data"
            continue
        if cplx:
            stat = np.mean(np.abs(r_all[p, have]) ** 2, axis=0)
            kc = lo + int(np.argmax(stat[lo : hi + 1]))
            pl.correlation = math.sqrt(float(stat[kc]))
            need = (1.0 + detection_sigma / math.sqrt(n_valid)) / l_eff
            if not stat[kc] > need:
                pl.reason = (f"no significant correlation peak (|r|={pl.correlation:.3f} < "
                             f"{math.sqrt(need):.3f})")
                continue
        else:
            mean_r = np.nanmean(r_all[p, have].real, axis=0)
            kc = lo + int(np.argmax(mean_r[lo : hi + 1]))
            sigma = 1.0 / math.sqrt(length * n_valid)
            pl.correlation = float(mean_r[kc])
            if not mean_r[kc] > detection_sigma * sigma:
                pl.reason = f"no significant correlation peak (r={mean_r[kc]:.3f} < {detection_sigma * sigma:.3f})"
                continue
        if kc in (lo, hi):
            pl.reason = "correlation peak at the edge of the baseline bound"
            continue
        for w in np.nonzero(have)[0]:
            rw = r_all[p, w]
            k0, k1 = kc - LOCAL_SEARCH, kc + LOCAL_SEARCH
            mag = np.abs(rw[k0 : k1 + 1]) if cplx else rw[k0 : k1 + 1].real
            kw = k0 + int(np.argmax(mag))
            if kw in (k0, k1):
                status[w] = "no peak"
                continue
            pos, peak = _refine(rw.astype(np.complex128) if cplx else rw.real, kw)
            lags[w] = (pos - big_m) / fs
            corr[w] = peak
            status[w] = "ok"
        _reject_outliers(lags, status, max(1e-12, outlier_min_samples / fs), outlier_z)
        ok = np.array([s == "ok" for s in status], dtype=bool)
        n_ok = int(ok.sum())
        pl.n_windows = n_ok
        if n_ok >= 1:
            pl.lag_s = float(lags[ok].mean())
            pl.correlation = float(corr[ok].mean())
        if n_ok >= 2:
            pl.spread_s = float(lags[ok].std(ddof=1))
            pl.stderr_s = pl.spread_s / math.sqrt(n_ok)
        if n_ok < max(3, min_window_fraction * n_valid):
            pl.reason = f"only {n_ok} of {n_valid} windows agree"
            continue
        pl.used = True
    return out, centres


def _reject_outliers(lags: FArray, status: list[str], min_tol_s: float, outlier_z: float) -> None:
    """Windows grossly off the median lag become ``outlier`` (only gross disagreement: trimming
    legitimate tails would understate the spread)."""
    ok = np.array([s == "ok" for s in status], dtype=bool)
    if ok.sum() < 5:
        return
    med = float(np.median(lags[ok]))
    mad = 1.4826 * float(np.median(np.abs(lags[ok] - med)))
    tol = max(outlier_z * mad, min_tol_s)
    for w in np.nonzero(ok)[0]:
        if abs(lags[w] - med) > tol:
            status[w] = "outlier"


def _window_correlations(
    ids: Sequence[str], x: npt.NDArray[Any], valid: npt.NDArray[np.bool_],
    pairs: Sequence[tuple[str, str]], r_all: npt.NDArray[Any], big_m: int, length: int,
    n_win: int,
) -> None:
    """Fill ``r_all`` (pair, window, lag index 0..2M) with the normalised valid-mode correlation
    ``sum conj(a[t]) b[t + lag]`` of each window (NaN where a station has a gap)."""
    from scipy import fft as sfft

    cplx = np.iscomplexobj(x)
    nfft = _next_fast(length + 2 * big_m)
    nl = 2 * big_m + 1
    wa = big_m + np.arange(n_win)[:, None] * length + np.arange(length)[None, :]
    wb = np.arange(n_win)[:, None] * length + np.arange(length + 2 * big_m)[None, :]
    spec_a, spec_b, ea, eb, have = {}, {}, {}, {}, {}
    for r, sid in enumerate(ids):
        have[sid] = valid[r][wb].all(axis=1)
        xa = x[r][wa]
        xb = x[r][wb]
        xa = xa - xa.mean(axis=1, keepdims=True)
        xb = xb - xb.mean(axis=1, keepdims=True)
        if cplx:
            spec_a[sid] = sfft.fft(xa, nfft, axis=1)
            spec_b[sid] = sfft.fft(xb, nfft, axis=1)
        else:
            spec_a[sid] = sfft.rfft(xa, nfft, axis=1)
            spec_b[sid] = sfft.rfft(xb, nfft, axis=1)
        ea[sid] = (np.abs(xa).astype(np.float64) ** 2).sum(axis=1)
        # b's energy over the window at each lag, averaged over the lags searched
        cum = np.concatenate([np.zeros((n_win, 1)), np.cumsum(np.abs(xb).astype(np.float64) ** 2, axis=1)], axis=1)
        eb[sid] = (cum[:, length : length + nl] - cum[:, :nl]).mean(axis=1)
    for p, (a, b) in enumerate(pairs):
        both = have[a] & have[b]
        if not both.any():
            continue
        prod = np.conj(spec_a[a][both]) * spec_b[b][both]
        c = sfft.ifft(prod, nfft, axis=1)[:, :nl] if cplx else sfft.irfft(prod, nfft, axis=1)[:, :nl]
        with np.errstate(invalid="ignore", divide="ignore"):
            r_all[p, both] = c / np.sqrt(ea[a][both] * eb[b][both])[:, None]


def _next_fast(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))
