"""Step 4 of TDoA: pairwise lags by windowed cross-correlation, bounded by the baseline, sub-sample peaks,
outlier windows rejected."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from .geodesy import C_M_S, FArray, _inverse
from .timebase import CommonGrid

log = logging.getLogger(__name__)

#: half-width (native samples) of the correlation interpolator
CORR_HALF_WIDTH = 8
#: integer lags searched around a pair's coarse lag in each window
LOCAL_SEARCH = 3

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

    @property
    def kept(self) -> npt.NDArray[np.bool_]:
        return np.array([s == "ok" for s in self.window_status], dtype=bool)

    @property
    def name(self) -> str:
        return f"{self.a}|{self.b}"


def _delta_kernel(step: float) -> tuple[FArray, FArray]:
    deltas = np.arange(-1.0, 1.0 + step / 2, step)
    m = np.arange(-CORR_HALF_WIDTH + 1, CORR_HALF_WIDTH + 1, dtype=np.float64)
    x = deltas[:, None] - m[None, :]
    win = np.i0(8.0 * np.sqrt(np.clip(1 - (x / CORR_HALF_WIDTH) ** 2, 0, None))) / np.i0(8.0)
    return deltas, np.sinc(x) * win


_DELTAS, _DKERNEL = _delta_kernel(1.0 / 32)


def _refine(r: FArray, k: int) -> tuple[float, float]:
    """Sub-sample peak of the sampled correlation ``r`` near integer lag index ``k``:
    band-limited (windowed-sinc) interpolation on a 1/32-sample grid, then a parabola."""
    nb = r[k - CORR_HALF_WIDTH + 1 : k + CORR_HALF_WIDTH + 1]
    vals = np.einsum("ij,j->i", _DKERNEL, nb)  # not BLAS: threaded gemv is slow at this size
    i = int(np.argmax(vals))
    i = min(max(i, 1), len(vals) - 2)
    y0, y1, y2 = vals[i - 1], vals[i], vals[i + 1]
    den = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    step = _DELTAS[1] - _DELTAS[0]
    return k + float(_DELTAS[i] + frac * step), float(y1 - 0.25 * (y0 - y2) * frac)


def pair_lags(
    ids: Sequence[str],
    env: FArray,
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
) -> tuple[list[PairLag], FArray]:
    """Lags of every station pair (see the module docstring) and the window centres (s since
    the grid start).  A pair is ``used`` only with a significant correlation peak inside the
    baseline bound and at least ``min_window_fraction`` of its windows kept."""
    fs = grid.fs
    pairs = [(a, b) for ai, a in enumerate(ids) for b in ids[ai + 1 :]]
    base = {p: _inverse(*positions[p[0]], *positions[p[1]])[0] for p in pairs}
    bound = {p: base[p] / C_M_S + margin_s for p in pairs}
    big_m = math.ceil(max(bound.values(), default=0.0) * fs) + LOCAL_SEARCH + CORR_HALF_WIDTH + 2
    length = round(window_s * fs)
    n_win = max(0, (grid.n - 2 * big_m) // length)
    centres = np.asarray((big_m + (np.arange(n_win) + 0.5) * length) / fs, dtype=np.float64)
    nfft = _next_fast(length + 2 * big_m)
    nl = 2 * big_m + 1
    r_all = np.full((len(pairs), n_win, nl), np.nan)
    if n_win:
        from scipy import fft as sfft

        wa = big_m + np.arange(n_win)[:, None] * length + np.arange(length)[None, :]
        wb = np.arange(n_win)[:, None] * length + np.arange(length + 2 * big_m)[None, :]
        spec_a, spec_b, ea, eb, have = {}, {}, {}, {}, {}
        for r, sid in enumerate(ids):
            have[sid] = valid[r][wb].all(axis=1)
            xa = env[r][wa]
            xb = env[r][wb]
            xa = xa - xa.mean(axis=1, keepdims=True)
            xb = xb - xb.mean(axis=1, keepdims=True)
            spec_a[sid] = sfft.rfft(xa, nfft, axis=1)
            spec_b[sid] = sfft.rfft(xb, nfft, axis=1)
            ea[sid] = np.einsum("ij,ij->i", xa, xa)
            cum = np.concatenate([np.zeros((n_win, 1)), np.cumsum(xb * xb, axis=1)], axis=1)
            eb[sid] = cum[:, length : length + nl] - cum[:, :nl]
        for p, (a, b) in enumerate(pairs):
            both = have[a] & have[b]
            if both.any():
                c = sfft.irfft(np.conj(spec_a[a][both]) * spec_b[b][both], nfft, axis=1)[:, :nl]
                with np.errstate(invalid="ignore", divide="ignore"):
                    r_all[p, both] = c / np.sqrt(ea[a][both, None] * eb[b][both])
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
                     n_valid, lags, corr, status)
        out.append(pl)
        if n_valid == 0:
            pl.reason = "no window where both stations have data"
            continue
        mean_r = np.nanmean(r_all[p, have], axis=0)
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
            kw = k0 + int(np.argmax(rw[k0 : k1 + 1]))
            if kw in (k0, k1):
                status[w] = "no peak"
                continue
            pos, peak = _refine(rw, kw)
            lags[w] = (pos - big_m) / fs
            corr[w] = peak
            status[w] = "ok"
        ok = np.array([s == "ok" for s in status])
        if ok.sum() >= 5:
            # only gross disagreement: trimming legitimate tails would understate the spread
            med = float(np.median(lags[ok]))
            mad = 1.4826 * float(np.median(np.abs(lags[ok] - med)))
            tol = max(outlier_z * mad, outlier_min_samples / fs)
            for w in np.nonzero(ok)[0]:
                if abs(lags[w] - med) > tol:
                    status[w] = "outlier"
            ok = np.array([s == "ok" for s in status])
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


def _next_fast(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))
