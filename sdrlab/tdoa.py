"""Locate a transmitter by time difference of arrival (TDoA) from GPS-stamped captures.

Pure functions on the session Dataset (no I/O), in the order the analysis runs:

1. :func:`station_times`: each station's GPS time base, refitted from the raw frame stamps
   (``frame_gps_ns``): the consistent majority of all stamps first, then the fresh ones within
   it, so a stale or jumping stamp is counted and ignored and samples after a time step are cut
   off.  The stored segment fit is the fallback; a station with no GPS time is dropped.
2. :func:`common_grid`: the span all stations cover (at least ``min_overlap_s``; a station that
   shortens it below that is dropped) on one sample clock at the lowest measured rate.
3. :func:`resample_envelopes`: each station's AM envelope ``|z|`` at the common sample times
   (windowed-sinc interpolation at the GPS-measured rate, never the nominal one).
4. :func:`pair_lags`: per station pair, the cross-correlation in windows (``window_s``), searched
   within the baseline (``|lag| <= distance / c + margin_s``) around the peak of the
   window-averaged correlation, a sub-sample peak by band-limited interpolation, grossly
   disagreeing windows rejected; the pair's mean lag, spread, standard error and correlation.
5. :func:`locate`: a likelihood map on a latitude/longitude grid around the stations (WGS84
   geodesics, vectorised), its best maxima refined by least squares with exact geodesics
   (geographiclib), pairs weighted by their correlation strength.  The covariance comes from the
   window-to-window scatter of the lags (pairs sharing windows correlated, plus a per-station
   GPS timing error), the ellipse at ``confidence`` with Hotelling's small-sample factor.  No
   position is claimed when the hyperbolas cross twice or at a grazing angle (points far outside
   the ellipse fit the lags as well as its edge), rather than a wrong confident one.

:func:`tdoa` runs them all and returns a :class:`TdoaResult` (``to_dict()``, ``summary()``).

Sign convention: the lag of pair (a, b) is ``t_b - t_a``, the arrival time at b minus that at a
(positive when b is further from the transmitter).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import xarray as xr
from geographiclib.geodesic import Geodesic

from . import timing
from .errors import ConfigError
from .receivers.kiwiwire import GPS_LAST_CAP, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
NS = 1_000_000_000
FArray = npt.NDArray[np.float64]
#: half-width (native samples) of the resampling kernel and of the correlation interpolator
RESAMPLE_HALF_WIDTH = 8
CORR_HALF_WIDTH = 8
#: integer lags searched around a pair's coarse lag in each window
LOCAL_SEARCH = 3
_NOMINAL_RATES = (12000.0, 20250.0)


# ---- geodesy ---------------------------------------------------------------------------------
_WGS_A = 6378137.0
_WGS_F = 1 / 298.257223563
_WGS_B = _WGS_A * (1 - _WGS_F)


def geodesic_distance(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> FArray:
    """WGS84 geodesic distance in metres, vectorised (Vincenty's inverse, ~0.1 mm; points it does
    not converge for, nearly antipodal ones, go to geographiclib)."""
    p1, l1, p2, l2 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (lat1, lon1, lat2, lon2)))
    f = _WGS_F
    big_l = np.radians(l2 - l1)
    u1 = np.arctan((1 - f) * np.tan(np.radians(p1)))
    u2 = np.arctan((1 - f) * np.tan(np.radians(p2)))
    su1, cu1, su2, cu2 = np.sin(u1), np.cos(u1), np.sin(u2), np.cos(u2)
    lam = big_l.copy()
    converged = np.zeros(lam.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(60):
            sl, cl = np.sin(lam), np.cos(lam)
            ssig = np.hypot(cu2 * sl, cu1 * su2 - su1 * cu2 * cl)
            csig = su1 * su2 + cu1 * cu2 * cl
            sig = np.arctan2(ssig, csig)
            salpha = np.where(ssig > 0, cu1 * cu2 * sl / np.where(ssig > 0, ssig, 1.0), 0.0)
            c2a = 1 - salpha * salpha
            c2sm = np.where(c2a > 0, csig - 2 * su1 * su2 / np.where(c2a > 0, c2a, 1.0), 0.0)
            cc = f / 16 * c2a * (4 + f * (4 - 3 * c2a))
            new = big_l + (1 - cc) * f * salpha * (sig + cc * ssig * (c2sm + cc * csig * (-1 + 2 * c2sm * c2sm)))
            converged = np.abs(new - lam) < 1e-12
            lam = new
            if converged.all():
                break
        u_sq = c2a * (_WGS_A**2 - _WGS_B**2) / _WGS_B**2
        aa = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
        bb = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
        dsig = bb * ssig * (c2sm + bb / 4 * (csig * (-1 + 2 * c2sm**2)
                                             - bb / 6 * c2sm * (-3 + 4 * ssig**2) * (-3 + 4 * c2sm**2)))
        s = _WGS_B * aa * (sig - dsig)
    s = np.array(s, dtype=np.float64).reshape(-1)
    bad = (~converged | ~np.isfinite(s.reshape(converged.shape))).reshape(-1)
    flat = [v.reshape(-1) for v in (p1, l1, p2, l2)]
    for i in np.flatnonzero(bad):
        s[i] = Geodesic.WGS84.Inverse(*(float(v[i]) for v in flat))["s12"]
    return s.reshape(p1.shape)


def _inverse(lat1: float, lon1: float, lat2: float, lon2: float) -> tuple[float, float]:
    """(distance m, azimuth at point 1 towards point 2 in degrees) by geographiclib."""
    g = Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)
    return float(g["s12"]), float(g["azi1"])


def local_offset_km(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """(east, north) in km of a point seen from (lat0, lon0), along the geodesic."""
    s, az = _inverse(lat0, lon0, lat, lon)
    return s / 1e3 * math.sin(math.radians(az)), s / 1e3 * math.cos(math.radians(az))


def _move(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    d = math.hypot(east_m, north_m)
    if d == 0.0:
        return lat, lon
    g = Geodesic.WGS84.Direct(lat, lon, math.degrees(math.atan2(east_m, north_m)), d)
    return float(g["lat2"]), float(g["lon2"])


# ---- 1. station time bases -------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentTime:
    """One segment's GPS time base: ``t(n) = t0_gps_ns + (n - start) / fs`` for native sample n
    in ``[usable_start, usable_stop)`` (the span whose stamps agree with the fit)."""

    start: int
    usable_start: int
    usable_stop: int
    t0_gps_ns: int
    fs: float
    fit_rms_s: float
    n_stamps: int
    n_rejected: int
    source: str  # "raw stamps" | "stored fit"


@dataclass
class StationTime:
    station: str
    latitude: float
    longitude: float
    segments: list[SegmentTime]
    notes: list[str] = field(default_factory=list)

    @property
    def fs(self) -> float:
        return self.segments[0].fs

    @property
    def n_rejected_stamps(self) -> int:
        return sum(s.n_rejected for s in self.segments)

    def span_gps_ns(self) -> tuple[int, int]:
        starts = [s.t0_gps_ns + round((s.usable_start - s.start) / s.fs * NS) for s in self.segments]
        ends = [s.t0_gps_ns + round((s.usable_stop - s.start) / s.fs * NS) for s in self.segments]
        return min(starts), max(ends)


def _select_fresh(last: npt.NDArray[np.int64], has: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fresh stamps as the client selects them: where last_gps_solution drops, else 0 s since a
    fix, else every valid stamp (:func:`sdrlab.receivers.kiwisdr.build_segment`)."""
    drop = has & np.r_[False, np.diff(last) < 0]
    zero = has & (last == 0)
    return drop if drop.sum() >= 2 else zero if zero.sum() >= 2 else has


def _segment_time(
    ds: xr.Dataset, i: int, j: int, stamp_tolerance_s: float | None, gps_utc_offset_s: int,
) -> tuple[SegmentTime | None, str]:
    """The time base of segment j of station i, and a note (or why there is none)."""
    start = int(ds["segment_start"].values[i, j])
    length = int(ds["segment_length"].values[i, j])
    t0_stored = ds["segment_t0"].values[i, j]
    fs_stored = float(ds["segment_fs"].values[i, j])
    stored: tuple[int, float] | None = None
    if not np.isnat(t0_stored) and np.isfinite(fs_stored):
        stored = (timing.utc_to_gps_ns(t0_stored, gps_utc_offset_s), fs_stored)
    if "frame_gps_ns" in ds:
        fseg = ds["frame_segment"].values[i]
        rec = ds["frame_received"].values[i] & (fseg == j)
        idx = np.nonzero(rec)[0]
        idx = idx[np.argsort(ds["frame_sample"].values[i, idx], kind="stable")]
        n_rel = ds["frame_sample"].values[i, idx].astype(np.int64) - start
        gps = ds["frame_gps_ns"].values[i, idx].astype(np.int64)
        last = ds["frame_last_gps"].values[i, idx].astype(np.int64)
    else:
        n_rel = gps = last = np.zeros(0, np.int64)
    has = (gps > 0) & (last <= GPS_LAST_CAP)
    note = ""
    if has.sum() >= 2:
        coord = float(ds["sample_rate"].values[i]) if "sample_rate" in ds.coords else math.nan
        guess = stored[1] if stored else coord if math.isfinite(coord) else _NOMINAL_RATES[0]
        # the consistent majority of all stamps first (a step or a few wild stamps cannot bend
        # it even with only two or three fixes in the record), then the fresh stamps within it
        fit = timing.fit_time(n_rel[has], gps[has], nominal_fs=guess)
        if not fit.ok:
            return None, f"no GPS time ({fit.status})"
        agree = has & (np.abs((gps - fit.t0_gps_ns) / NS - n_rel / fit.fs) <= 1.0 / fit.fs)
        fresh = _select_fresh(last, has) & agree
        if fresh.sum() >= 2 and np.ptp(n_rel[fresh]) >= 0.25 * np.ptp(n_rel[agree]):
            refit = timing.fit_time(n_rel[fresh], gps[fresh], nominal_fs=fit.fs)
            fit = refit if refit.ok else fit
        fs, t0 = fit.fs, fit.t0_gps_ns
        tol = stamp_tolerance_s if stamp_tolerance_s is not None else 1.0 / fs
        resid = (gps - t0) / NS - n_rel / fs
        good = has & (np.abs(resid) <= tol)
        n_rej = int(np.count_nonzero(has & ~good))
        if not good.any():
            return None, "no GPS stamp agrees with the fit"
        first, last_good = int(np.argmax(good)), int(len(good) - 1 - np.argmax(good[::-1]))
        u0 = start + max(0, int(n_rel[first]))
        u1 = start + min(length, int(n_rel[last_good]) + SAMPLES_PER_FRAME)
        if n_rej:
            note = f"{n_rej} GPS stamp(s) disagree with the fit by more than {tol * 1e6:.0f} us (ignored)"
        if stored is not None:
            dt = max(abs((stored[0] - t0) / NS + k * (1 / stored[1] - 1 / fs)) for k in (0, length))
            if dt > tol:
                off = f"stored GPS fit off the raw stamps by {dt * 1e6:.1f} us (refitted)"
                note = f"{note}; {off}" if note else off
        return SegmentTime(start, u0, u1, t0, fs, fit.residual_rms_s, int(has.sum()), n_rej, "raw stamps"), note
    if stored is not None:
        return SegmentTime(start, start, start + length, stored[0], stored[1],
                           float(ds["segment_fit_rms"].values[i, j]), 0, 0, "stored fit"), note
    status = str(ds["gps_status"].values[i]) if "gps_status" in ds.coords else ""
    return None, f"no GPS time ({status if status and status != 'ok' else 'no GPS timestamps'})"


def station_times(
    ds: xr.Dataset, *, stamp_tolerance_s: float | None = None, max_rate_error_ppm: float = 2000.0,
) -> tuple[dict[str, StationTime], dict[str, str]]:
    """Every station's GPS time base, and the stations without one (id -> reason).

    A segment's GPS-fitted rate further than ``max_rate_error_ppm`` from a KiwiSDR nominal rate
    (12000 or 20250 Hz) is implausible and the segment is not used.
    """
    offset = int(ds.attrs.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S))
    times: dict[str, StationTime] = {}
    dropped: dict[str, str] = {}
    n_valid = ds["n_samples"].values
    for i, sid in enumerate(str(s) for s in ds["station"].values):
        lat, lon = float(ds["latitude"].values[i]), float(ds["longitude"].values[i])
        if not (np.isfinite(lat) and np.isfinite(lon)):
            dropped[sid] = "no receiver position"
            continue
        if int(n_valid[i]) <= 0:
            dropped[sid] = "no samples"
            continue
        segs: list[SegmentTime] = []
        notes: list[str] = []
        reasons: list[str] = []
        for j in range(ds.sizes.get("segment", 0)):
            if int(ds["segment_start"].values[i, j]) < 0 or int(ds["segment_length"].values[i, j]) <= 0:
                continue
            seg, note = _segment_time(ds, i, j, stamp_tolerance_s, offset)
            if seg is not None:
                nominal = min(_NOMINAL_RATES, key=lambda r: abs(r - seg.fs))
                if abs(seg.fs / nominal - 1) * 1e6 > max_rate_error_ppm:
                    reasons.append(f"implausible GPS-fitted sample rate {seg.fs:.3f} Hz")
                    continue
                segs.append(seg)
                if note:
                    notes.append(note)
            else:
                reasons.append(note)
        if segs:
            times[sid] = StationTime(sid, lat, lon, segs, notes)
        else:
            dropped[sid] = reasons[0] if reasons else "no GPS time (no segments)"
    return times, dropped


# ---- 2. common time base ---------------------------------------------------------------------
@dataclass(frozen=True)
class CommonGrid:
    """Sample k of every resampled station is at GPS time ``t0_gps_ns + k / fs``."""

    t0_gps_ns: int
    fs: float
    n: int

    @property
    def duration_s(self) -> float:
        return self.n / self.fs


def common_grid(
    times: dict[str, StationTime], *, min_overlap_s: float = 10.0,
) -> tuple[CommonGrid | None, dict[str, str]]:
    """The span covered by every station, at the lowest measured rate; stations whose record
    shortens it below ``min_overlap_s`` are dropped (id -> reason), the worst first.  The grid
    excludes the dropped stations; ``times`` is left as it is."""
    spans = {sid: st.span_gps_ns() for sid, st in times.items()}
    dropped: dict[str, str] = {}

    def overlap(ids: Iterable[str]) -> float:
        ids = list(ids)
        return (min(spans[s][1] for s in ids) - max(spans[s][0] for s in ids)) / NS if ids else 0.0

    kept = list(spans)
    while len(kept) >= 2 and overlap(kept) < min_overlap_s:
        worst = max(kept, key=lambda s: overlap(k for k in kept if k != s))
        dropped[worst] = (f"its record leaves a common span of {max(overlap(kept), 0.0):.1f} s only "
                          f"(< {min_overlap_s:g} s)")
        kept = [k for k in kept if k != worst]
    if len(kept) < 2 or overlap(kept) < min_overlap_s:
        for s in kept:
            dropped[s] = f"no overlap of {min_overlap_s:g} s with another station"
        return None, dropped
    # keep the resampling kernel inside every record
    guard = int((RESAMPLE_HALF_WIDTH + 2) / min(times[s].fs for s in kept) * NS)
    t0 = max(spans[s][0] for s in kept) + guard
    fs = min(times[s].fs for s in kept)
    n = math.floor((overlap(kept) - 2 * guard / NS) * fs)
    return CommonGrid(t0, fs, n), dropped


# ---- 3. resampling ---------------------------------------------------------------------------
_KERNELS: dict[tuple[int, float], FArray] = {}
_PHASES = 4096


def _kernel_table(half: int, cutoff: float) -> FArray:
    """Windowed-sinc interpolation weights, one row per fractional phase (0..1 in _PHASES steps),
    taps m = -half+1 .. half applied to samples n0 + m, each row normalised to unit DC gain."""
    key = (half, round(cutoff, 9))
    tab = _KERNELS.get(key)
    if tab is None:
        m = np.arange(-half + 1, half + 1, dtype=np.float64)
        frac = np.arange(_PHASES + 1, dtype=np.float64) / _PHASES
        x = m[None, :] - frac[:, None]
        win = np.i0(9.0 * np.sqrt(np.clip(1 - (x / half) ** 2, 0, None))) / np.i0(9.0)
        tab = cutoff * np.sinc(cutoff * x) * win
        tab /= tab.sum(axis=1, keepdims=True)
        _KERNELS[key] = tab
    return tab


def _interpolate(x: FArray, u: FArray, half: int, cutoff: float) -> FArray:
    """``x`` at fractional indices ``u`` (all within ``[half, len(x) - half)``)."""
    tab = _kernel_table(half, cutoff)
    m = np.arange(-half + 1, half + 1)
    out = np.empty(u.shape, dtype=np.float64)
    step = max(1, (1 << 21) // (2 * half))
    for a in range(0, u.size, step):
        uu = u[a : a + step]
        n0 = np.floor(uu)
        ph = np.rint((uu - n0) * _PHASES).astype(np.intp)
        taps = x[n0.astype(np.intp)[:, None] + m[None, :]]
        out[a : a + step] = np.einsum("ij,ij->i", taps, tab[ph])
    return out


def resample_envelopes(
    ds: xr.Dataset, times: dict[str, StationTime], grid: CommonGrid, *, band_hz: tuple[float, float] | None = None,
) -> tuple[list[str], FArray, npt.NDArray[np.bool_]]:
    """Each station's AM envelope ``|z|`` (full-scale units) at the common grid's sample times:
    (station ids, envelopes (station, k), valid (station, k)).  Samples whose interpolation
    support reaches a missing frame, a segment edge or a span with bad stamps are not valid.
    ``band_hz`` band-limits the envelopes (FFT mask) before the correlation."""
    ids = list(times)
    env = np.zeros((len(ids), grid.n), dtype=np.float64)
    valid = np.zeros((len(ids), grid.n), dtype=bool)
    k = np.arange(grid.n, dtype=np.float64)
    sta = [str(s) for s in ds["station"].values]
    for r, sid in enumerate(ids):
        i = sta.index(sid)
        iq = np.asarray(ds["iq"].isel(station=i).values)
        n_native = int(ds["n_samples"].values[i])
        z = np.hypot(iq[:n_native, 0].astype(np.float64), iq[:n_native, 1].astype(np.float64)) / 32768.0
        ok = np.zeros(n_native, dtype=bool)
        if "frame_received" in ds:
            fs_idx = ds["frame_sample"].values[i]
            got = ds["frame_received"].values[i] & (fs_idx >= 0)
            for s0 in fs_idx[got]:
                ok[int(s0) : int(s0) + SAMPLES_PER_FRAME] = True
        else:
            ok[:] = True
        for seg in times[sid].segments:
            fs = seg.fs
            ratio = grid.fs / fs
            cutoff = 0.95 * min(1.0, ratio)
            half = math.ceil(RESAMPLE_HALF_WIDTH / min(1.0, ratio))
            seg_ok = np.zeros(n_native + 1, dtype=bool)
            seg_ok[seg.usable_start : seg.usable_stop] = ok[seg.usable_start : seg.usable_stop]
            bad_cum = np.concatenate([[0], np.cumsum(~seg_ok)])
            # native index of each grid sample
            u = seg.start + ((grid.t0_gps_ns - seg.t0_gps_ns) / NS + k / grid.fs) * fs
            inside = (u >= half) & (u < n_native - half - 1)
            n0 = np.floor(np.where(inside, u, half)).astype(np.intp)
            clean = inside & (bad_cum[n0 + half + 1] - bad_cum[n0 - half + 1] == 0)
            if clean.any():
                env[r, clean] = _interpolate(z, u[clean], half, cutoff)
                valid[r, clean] = True
    if band_hz is not None:
        f = np.fft.rfftfreq(grid.n, 1.0 / grid.fs)
        mask = (f >= band_hz[0]) & (f <= band_hz[1])
        for r in range(len(ids)):
            mean = env[r, valid[r]].mean() if valid[r].any() else 0.0
            x = np.where(valid[r], env[r] - mean, 0.0)
            env[r] = np.fft.irfft(np.fft.rfft(x) * mask, grid.n)
    return ids, env, valid


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


# ---- 5. position -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ellipse:
    """Uncertainty ellipse: semi-axes in km, ``orientation_deg`` the azimuth of the major axis
    (degrees clockwise from north, 0-180), holding the truth with probability ``confidence``."""

    semi_major_km: float
    semi_minor_km: float
    orientation_deg: float
    confidence: float


def hotelling_scale2(n: int, confidence: float) -> float:
    """Squared Mahalanobis radius of a ``confidence`` region for a 2-D mean of ``n`` samples with
    an estimated covariance (Hotelling's T^2: 2(n-1)/(n-2) F(2, n-2); F(2, m) in closed form)."""
    if n <= 2:
        return math.inf
    m = n - 2
    f = m / 2 * ((1 - confidence) ** (-2 / m) - 1)
    return float(2 * (n - 1) / m * f)


def _incidence(pairs: Sequence[PairLag], ids: Sequence[str]) -> FArray:
    a = np.zeros((len(pairs), len(ids)))
    for p, pl in enumerate(pairs):
        a[p, ids.index(pl.a)] = -1.0
        a[p, ids.index(pl.b)] = 1.0
    return a


def lag_covariance(pairs: Sequence[PairLag], station_sigma_s: dict[str, float]) -> FArray:
    """Covariance of the pairs' mean lags (s^2) from the window-to-window scatter, pairs
    sharing windows correlated (pairwise-complete), plus independent per-station timing errors."""
    lags = np.array([np.where(pl.kept, pl.window_lag_s, np.nan) for pl in pairs])
    means = np.array([pl.lag_s for pl in pairs])
    d = lags - means[:, None]
    present = np.isfinite(d)
    d0 = np.where(present, d, 0.0)
    n_pq = present.astype(float) @ present.T.astype(float)
    n_p = present.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (d0 @ d0.T) / np.maximum(n_pq - 1, 1) * n_pq / np.outer(n_p, n_p)
    cov = np.where(n_pq >= 2, cov, 0.0)
    ids = sorted({pl.a for pl in pairs} | {pl.b for pl in pairs})
    a = _incidence(pairs, ids)
    s2 = np.array([station_sigma_s.get(s, 0.0) ** 2 for s in ids])
    out: FArray = cov + (a * s2) @ a.T
    return out


def _predict(lat: float, lon: float, pairs: Sequence[PairLag],
             positions: dict[str, tuple[float, float]]) -> tuple[FArray, FArray]:
    """Predicted lags (s) at a point and their gradient w.r.t. (east, north) metres."""
    dist: dict[str, tuple[float, float, float]] = {}
    for sid in {pl.a for pl in pairs} | {pl.b for pl in pairs}:
        s, az = _inverse(lat, lon, *positions[sid])
        dist[sid] = (s, -math.sin(math.radians(az)), -math.cos(math.radians(az)))
    pred = np.array([(dist[pl.b][0] - dist[pl.a][0]) / C_M_S for pl in pairs])
    grad = np.array([[(dist[pl.b][1] - dist[pl.a][1]) / C_M_S, (dist[pl.b][2] - dist[pl.a][2]) / C_M_S]
                     for pl in pairs])
    return pred, grad


def _refine_position(lat: float, lon: float, pairs: Sequence[PairLag], positions: dict[str, tuple[float, float]],
                     weights: FArray, iterations: int = 30) -> tuple[float, float, float]:
    """Weighted Gauss-Newton (with step halving) from (lat, lon); returns (lat, lon, cost)."""
    meas = np.array([pl.lag_s for pl in pairs])
    pred, g = _predict(lat, lon, pairs, positions)
    cost = float(weights @ (meas - pred) ** 2)
    for _ in range(iterations):
        r = meas - pred
        h = g.T @ (weights[:, None] * g)
        try:
            step = np.linalg.solve(h + 1e-12 * np.trace(h) * np.eye(2), g.T @ (weights * r))
        except np.linalg.LinAlgError:
            break
        lam = 1.0
        while lam > 1e-4:
            nlat, nlon = _move(lat, lon, lam * step[0], lam * step[1])
            npred, ng = _predict(nlat, nlon, pairs, positions)
            ncost = float(weights @ (meas - npred) ** 2)
            if ncost <= cost:
                break
            lam /= 2
        else:
            break
        moved = lam * float(np.hypot(*step))
        lat, lon, pred, g, cost = nlat, nlon, npred, ng, ncost
        if moved < 0.05:
            break
    return lat, lon, cost


@dataclass
class Fix:
    position: tuple[float, float] | None
    reason: str | None
    covariance_km2: FArray | None = None
    ellipse: Ellipse | None = None
    scale2: float = math.nan
    gdop: float | None = None
    chi2: float | None = None
    dof: int = 0
    ambiguous: bool = False
    alternatives: list[tuple[float, float]] = field(default_factory=list)
    likelihood: xr.DataArray | None = None
    notes: list[str] = field(default_factory=list)


def likelihood_map(pairs: Sequence[PairLag], positions: dict[str, tuple[float, float]], sigma_s: FArray,
                   *, grid_points: int = 121, margin: float = 0.3, min_margin_deg: float = 0.5) -> xr.DataArray:
    """Log-likelihood (max 0) of the measured lags over a latitude/longitude grid around the
    stations (margin: a fraction of their extent, at least ``min_margin_deg``), with
    independent Gaussian pair errors ``sigma_s`` widened by the cell size."""
    return _likelihood_map(pairs, positions, sigma_s, grid_points, margin, min_margin_deg)[0]


def _likelihood_map(pairs: Sequence[PairLag], positions: dict[str, tuple[float, float]], sigma_s: FArray,
                    grid_points: int = 121, margin: float = 0.3, min_margin_deg: float = 0.5,
                    ) -> tuple[xr.DataArray, FArray]:
    """:func:`likelihood_map` and the predicted lag of every pair on the grid (pair, lat, lon)."""
    ids = sorted({pl.a for pl in pairs} | {pl.b for pl in pairs})
    lats = np.array([positions[s][0] for s in ids])
    lons = np.array([positions[s][1] for s in ids])
    mlat = max(margin * float(np.ptp(lats)), min_margin_deg)
    mlon = max(margin * float(np.ptp(lons)), min_margin_deg)
    glat = np.linspace(lats.min() - mlat, lats.max() + mlat, grid_points)
    glon = np.linspace(lons.min() - mlon, lons.max() + mlon, grid_points)
    lat2, lon2 = np.meshgrid(glat, glon, indexing="ij")
    dist = {s: geodesic_distance(lat2, lon2, positions[s][0], positions[s][1]) for s in ids}
    clat = math.cos(math.radians(float(np.mean(glat))))
    cell = max(glat[1] - glat[0], (glon[1] - glon[0]) * clat) * 111.2e3
    pred = np.array([(dist[pl.b] - dist[pl.a]) / C_M_S for pl in pairs])
    ll = np.zeros(lat2.shape)
    for pl, sg, pp in zip(pairs, sigma_s, pred):
        ll -= 0.5 * (pl.lag_s - pp) ** 2 / (sg**2 + (cell / C_M_S) ** 2)
    ll -= ll.max()
    da = xr.DataArray(ll, dims=("latitude", "longitude"), coords={"latitude": glat, "longitude": glon},
                      name="log_likelihood", attrs={"long_name": "log-likelihood of the lags (max 0)"})
    return da, pred


def _local_maxima(ll: FArray, count: int, floor: float) -> list[tuple[int, int]]:
    from scipy.ndimage import maximum_filter

    peaks = (ll == maximum_filter(ll, size=5, mode="nearest")) & (ll >= floor)
    idx = np.argwhere(peaks)
    order = np.argsort(-ll[peaks])
    return [(int(idx[o][0]), int(idx[o][1])) for o in order[:count]]


def _gdop(lat: float, lon: float, ids: Sequence[str], positions: dict[str, tuple[float, float]]) -> float:
    """GDOP of TDoA against a reference station: position error (m) per metre of independent
    range error at each station, sqrt(trace((H^T Q^-1 H)^-1)) with Q = I + 11^T."""
    u = []
    for sid in ids:
        _, az = _inverse(lat, lon, *positions[sid])
        u.append((math.sin(math.radians(az)), math.cos(math.radians(az))))
    uu = np.array(u)
    h = uu[1:] - uu[0]
    q = np.eye(len(ids) - 1) + 1.0
    try:
        return float(math.sqrt(np.trace(np.linalg.inv(h.T @ np.linalg.solve(q, h)))))
    except np.linalg.LinAlgError:
        return math.inf


def locate(
    pairs: Sequence[PairLag],
    positions: dict[str, tuple[float, float]],
    *,
    station_sigma_s: dict[str, float] | None = None,
    confidence: float = 0.95,
    grid_points: int = 121,
) -> Fix:
    """Position from the used pairs (at least three stations): likelihood map, the best local
    maxima refined by weighted least squares, covariance and ellipse (module docstring)."""
    used = [pl for pl in pairs if pl.used]
    ids = sorted({pl.a for pl in used} | {pl.b for pl in used})
    if len(ids) < 2:
        return Fix(None, "no station pair with usable lags")
    cov = lag_covariance(used, station_sigma_s or {})
    var = np.maximum(np.diag(cov), 1e-18)
    # weights from the correlation strength (lag variance ~ (1 - r^2) / r^2 for one common
    # signal), scaled to inverse variances: weights taken from the same windows' scatter would
    # favour the pairs that scattered little by chance and understate the uncertainty
    rr = np.clip([pl.correlation for pl in used], 1e-3, 0.999)
    shape = (1 - rr**2) / rr**2
    w = 1.0 / (shape * float(np.median(var / shape)))
    ll, pred_grid = _likelihood_map(used, positions, np.sqrt(var), grid_points)
    if len(ids) < 3:
        return Fix(None, f"only {len(ids)} stations with usable lags; a position needs at least 3", likelihood=ll)
    starts = _local_maxima(ll.values, 4, -50.0)
    sols = []
    for iy, ix in starts:
        sols.append(_refine_position(float(ll["latitude"][iy]), float(ll["longitude"][ix]), used, positions, w))
    sols.sort(key=lambda s: s[2])
    lat, lon, cost = sols[0]
    _, g = _predict(lat, lon, used, positions)
    h = g.T @ (w[:, None] * g)
    fix = Fix((lat, lon), None, likelihood=ll)
    try:
        k = np.linalg.solve(h, g.T * w)
    except np.linalg.LinAlgError:
        return Fix(None, "degenerate geometry (the stations' hyperbolas do not cross)", likelihood=ll)
    cov_m2 = k @ cov @ k.T
    # consistency of the residuals with the lags' scatter (station-difference space)
    n_eff = int(min(pl.n_windows for pl in used))
    a = _incidence(used, ids)
    pinv = np.linalg.pinv(a)
    meas = np.array([pl.lag_s for pl in used])
    pred, _ = _predict(lat, lon, used, positions)
    resid = meas - pred
    for pl, rr, pp in zip(used, resid, pred):
        pl.residual_s, pl.predicted_s = float(rr), float(pp)
    rho = pinv @ resid
    c_rho = pinv @ cov @ pinv.T
    dof = len(ids) - 3
    fix.dof = dof
    if dof >= 1:
        chi2 = float(rho @ np.linalg.pinv(c_rho, rcond=1e-10) @ rho)
        fix.chi2 = chi2
        if n_eff > dof + 1:
            from scipy.stats import f as f_dist

            # Hotelling's T^2 over the dof residual dimensions: T^2 (n-q) / (q (n-1)) ~ F(q, n-q)
            pval = float(f_dist.sf(chi2 * (n_eff - dof) / (dof * (n_eff - 1)), dof, n_eff - dof))
            if pval < 1e-3:
                scale = chi2 / dof
                cov_m2 = cov_m2 * scale
                fix.notes.append(f"residuals inconsistent with the lag scatter (chi2 {chi2:.1f}, {dof} dof): "
                                 f"uncertainty scaled by {math.sqrt(scale):.1f}")
    fix.covariance_km2 = cov_m2 / 1e6
    fix.scale2 = hotelling_scale2(n_eff, confidence)
    evals, evecs = np.linalg.eigh(fix.covariance_km2)
    major = evecs[:, 1]
    orient = math.degrees(math.atan2(major[0], major[1])) % 180.0
    s = math.sqrt(fix.scale2)
    fix.ellipse = Ellipse(s * math.sqrt(max(evals[1], 0.0)), s * math.sqrt(max(evals[0], 0.0)), orient, confidence)
    fix.gdop = _gdop(lat, lon, ids, positions)
    # the ellipse is a linearisation.  Every grid point that fits the lags as well as the
    # ellipse's edge must lie within twice its linear extent; otherwise the hyperbolas cross a
    # second time or at a grazing angle (a curved ridge of likelihood), and no ellipse describes
    # the uncertainty: no position is claimed then
    h_sigma = float(np.trace(h @ cov_m2))
    q = fix.scale2 * h_sigma / 2
    dcost = np.einsum("p,pij->ij", w, (meas[:, None, None] - pred_grid) ** 2) - cost
    glat, glon = ll["latitude"].values, ll["longitude"].values
    north = (glat[:, None] - lat) * 111.2e3 + 0.0 * glon[None, :]
    east = (glon[None, :] - lon) * 111.32e3 * np.cos(np.radians(glat[:, None]))
    d2_lin = h[0, 0] * east**2 + 2 * h[0, 1] * east * north + h[1, 1] * north**2
    stray = (dcost <= q) & (d2_lin > 4 * q)
    far: list[tuple[float, float]] = []
    for alat, alon, acost in sols[1:]:  # refined local optima: sharp second crossings the grid misses
        if (acost - cost <= q and _inverse(lat, lon, alat, alon)[0] > 2e3 * max(1.0, fix.ellipse.semi_major_km)
                and all(_inverse(alat, alon, *o)[0] > 1e3 for o in far)):
            far.append((alat, alon))
    if stray.any() or far:
        note = [f"best point {lat:.4f} {lon:.4f} (not claimed; see the likelihood map)"]
        if far:
            where = ", ".join(f"{x:.3f} {y:.3f}" for x, y in [(lat, lon), *far])
            return Fix(None, f"ambiguous: the hyperbolas cross more than once (near {where})", likelihood=ll,
                       dof=dof, chi2=fix.chi2, ambiguous=True, alternatives=[(lat, lon), *far], notes=note)
        return Fix(None, f"no reliable position: the hyperbolas cross at a grazing angle (GDOP {fix.gdop:.1f}); "
                         "the uncertainty is a curved ridge, not an ellipse", likelihood=ll, dof=dof,
                   chi2=fix.chi2, notes=note)
    return fix


# ---- the result ------------------------------------------------------------------------------
@dataclass
class TdoaResult:
    """What :func:`tdoa` found.  ``position`` is (lat, lon) or None (``reason`` says why)."""

    position: tuple[float, float] | None
    reason: str | None
    ellipse: Ellipse | None
    covariance_km2: FArray | None
    gdop: float | None
    pairs: list[PairLag]
    stations_used: list[str]
    stations_dropped: dict[str, str]
    positions: dict[str, tuple[float, float]]
    timing: dict[str, StationTime]
    n_windows: int
    window_centres_s: FArray
    overlap_start: np.datetime64 | None
    overlap_s: float
    sample_rate: float
    likelihood: xr.DataArray | None = None
    chi2: float | None = None
    dof: int = 0
    ambiguous: bool = False
    alternatives: list[tuple[float, float]] = field(default_factory=list)
    truth: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    scale2: float = math.nan

    def pair(self, a: str, b: str) -> PairLag:
        """The pair of stations a and b, in either order (its lag is ``t[pl.b] - t[pl.a]``)."""
        for pl in self.pairs:
            if {pl.a, pl.b} == {a, b}:
                return pl
        raise KeyError((a, b))

    def error_km(self, truth: tuple[float, float] | None = None) -> float | None:
        t = truth or self.truth
        if t is None or self.position is None:
            return None
        return _inverse(self.position[0], self.position[1], t[0], t[1])[0] / 1e3

    def ellipse_outline(self, n: int = 120) -> tuple[FArray, FArray]:
        """(latitudes, longitudes) of the uncertainty ellipse, along geodesics from the estimate."""
        if self.position is None or self.covariance_km2 is None:
            return np.zeros(0), np.zeros(0)
        chol = np.linalg.cholesky(self.covariance_km2 + 1e-18 * np.eye(2))
        t = np.linspace(0.0, 2 * math.pi, n)
        en = math.sqrt(self.scale2) * chol @ np.vstack([np.cos(t), np.sin(t)]) * 1e3
        pts = [_move(self.position[0], self.position[1], float(e), float(nn)) for e, nn in en.T]
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    def contains(self, point: tuple[float, float]) -> bool:
        """Whether ``point`` lies inside the uncertainty ellipse."""
        if self.position is None or self.covariance_km2 is None:
            return False
        v = np.array(local_offset_km(self.position[0], self.position[1], point[0], point[1]))
        return bool(v @ np.linalg.solve(self.covariance_km2, v) <= self.scale2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN and inf become None)."""
        def num(x: float | None, nd: int = 6) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), nd)

        unc = None
        if self.ellipse is not None and self.covariance_km2 is not None:
            unc = {"confidence": self.ellipse.confidence, "semi_major_km": num(self.ellipse.semi_major_km),
                   "semi_minor_km": num(self.ellipse.semi_minor_km),
                   "orientation_deg": num(self.ellipse.orientation_deg, 2),
                   "covariance_km2": [[num(float(v), 9) for v in row] for row in self.covariance_km2]}
        out: dict[str, Any] = {
            "position": None if self.position is None else {
                "latitude": num(self.position[0], 6), "longitude": num(self.position[1], 6)},
            "position_reason": self.reason,
            "uncertainty": unc,
            "gdop": num(self.gdop, 3) if self.gdop is not None else None,
            "pairs": [{
                "a": pl.a, "b": pl.b, "lag_us": num(pl.lag_s * 1e6, 3), "spread_us": num(pl.spread_s * 1e6, 3),
                "stderr_us": num(pl.stderr_s * 1e6, 4), "correlation": num(pl.correlation, 4),
                "n_windows": pl.n_windows, "n_windows_valid": pl.n_valid, "baseline_km": num(pl.baseline_km, 3),
                "used": pl.used, "reason": pl.reason,
                "residual_us": num(pl.residual_s * 1e6, 3) if pl.residual_s is not None else None,
            } for pl in self.pairs],
            "residuals_us": {pl.name: num(pl.residual_s * 1e6, 3) for pl in self.pairs if pl.residual_s is not None},
            "stations_used": list(self.stations_used),
            "stations_dropped": dict(self.stations_dropped),
            "n_windows": self.n_windows,
            "overlap_s": num(self.overlap_s, 3),
            "overlap_start": None if self.overlap_start is None else str(self.overlap_start) + "Z",
            "sample_rate_hz": num(self.sample_rate, 6),
            "chi2": num(self.chi2, 3) if self.chi2 is not None else None,
            "dof": self.dof,
            "ambiguous": self.ambiguous,
            "alternatives": [{"latitude": num(a, 6), "longitude": num(b, 6)} for a, b in self.alternatives],
            "truth": None if self.truth is None else {"latitude": self.truth[0], "longitude": self.truth[1]},
            "error_km": num(self.error_km(), 4) if self.error_km() is not None else None,
            "timing": {sid: {"sample_rate_hz": num(st.fs, 6), "gps_stamps_rejected": st.n_rejected_stamps,
                             "source": st.segments[0].source, "notes": st.notes}
                       for sid, st in self.timing.items()},
            "notes": list(self.notes),
            "parameters": dict(self.params),
        }
        json.dumps(out, allow_nan=False)
        return out

    def summary(self) -> str:
        """Line 1: ``position <lat> <lon>`` or ``position none (<reason>)``; then the uncertainty,
        the lag per pair in microseconds with its spread, and the stations dropped."""
        lines = []
        if self.position is None:
            lines.append(f"position none ({self.reason})")
        else:
            lines.append(f"position {self.position[0]:.5f} {self.position[1]:.5f}")
            if self.ellipse is not None:
                e = self.ellipse
                lines.append(f"uncertainty {e.confidence * 100:g}% ellipse {e.semi_major_km:.3f} x "
                             f"{e.semi_minor_km:.3f} km (semi-axes), major axis {e.orientation_deg:.0f} deg from "
                             f"north; GDOP {self.gdop:.2f}")
        lines.append(f"{len(self.stations_used)} stations, {self.n_windows} windows of "
                     f"{self.params.get('window_s', 1.0):g} s over {self.overlap_s:.1f} s")
        for pl in self.pairs:
            if math.isfinite(pl.lag_s):
                txt = (f"lag {pl.a} -> {pl.b}: {pl.lag_s * 1e6:+.2f} us +- {pl.spread_s * 1e6:.2f} us"
                       f" (r={pl.correlation:.3f}, {pl.n_windows}/{pl.n_valid} windows")
                if pl.residual_s is not None:
                    txt += f", residual {pl.residual_s * 1e6:+.2f} us"
                lines.append(txt + ")" + ("" if pl.used else f" not used: {pl.reason}"))
            else:
                lines.append(f"lag {pl.a} -> {pl.b}: none ({pl.reason})")
        for sid, why in self.stations_dropped.items():
            lines.append(f"dropped {sid}: {why}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _truth_of(ds: xr.Dataset) -> tuple[float, float] | None:
    lat, lon = ds.attrs.get("transmitter_latitude"), ds.attrs.get("transmitter_longitude")
    return None if lat is None or lon is None else (float(lat), float(lon))


def tdoa(
    ds: xr.Dataset,
    *,
    stations: Sequence[str] | None = None,
    window_s: float = 1.0,
    min_overlap_s: float = 10.0,
    margin_s: float = 2e-4,
    confidence: float = 0.95,
    outlier_z: float = 5.0,
    outlier_min_samples: float = 0.5,
    min_window_fraction: float = 0.5,
    detection_sigma: float = 6.0,
    band_hz: tuple[float, float] | None = None,
    grid_points: int = 121,
    timing_sigma_s: float = 20e-9,
    stamp_tolerance_s: float | None = None,
    truth: tuple[float, float] | None = None,
) -> TdoaResult:
    """Locate the transmitter heard by the session's stations (module docstring).

    ``stations`` restricts the analysis to those ids.  ``timing_sigma_s`` is each receiver's
    GPS timing error (independent per station) added to the scatter of the lags.  ``truth``
    (lat, lon), default the Dataset's ``transmitter_latitude/longitude``, is only carried along
    for the error and the plots.
    """
    params = {"window_s": window_s, "min_overlap_s": min_overlap_s, "margin_s": margin_s,
              "confidence": confidence, "outlier_z": outlier_z,
              "outlier_min_samples": outlier_min_samples, "min_window_fraction": min_window_fraction,
              "detection_sigma": detection_sigma, "band_hz": list(band_hz) if band_hz else None,
              "grid_points": grid_points, "timing_sigma_s": timing_sigma_s,
              "stamp_tolerance_s": stamp_tolerance_s}
    if stations is not None:
        known = {str(s) for s in ds["station"].values}
        unknown = [s for s in stations if s not in known]
        if unknown:
            raise ConfigError(f"station(s) not in the session: {', '.join(unknown)} "
                              f"(it has {', '.join(sorted(known))})")
        ds = ds.sel(station=list(stations))
    positions = {str(s): (float(a), float(b)) for s, a, b in
                 zip(ds["station"].values, ds["latitude"].values, ds["longitude"].values)}
    times, dropped = station_times(ds, stamp_tolerance_s=stamp_tolerance_s)
    timing_all = dict(times)
    truth = truth or _truth_of(ds)
    grid, short = common_grid(times, min_overlap_s=min_overlap_s)
    dropped.update(short)
    times = {sid: st for sid, st in times.items() if sid not in short}

    def empty(reason: str, pairs: list[PairLag] | None = None, n_win: int = 0,
              centres: FArray | None = None) -> TdoaResult:
        return TdoaResult(None, reason, None, None, None, pairs or [], [], dropped, positions, timing_all,
                          n_win, centres if centres is not None else np.zeros(0), None if grid is None else
                          timing.gps_ns_to_utc(grid.t0_gps_ns, int(ds.attrs.get("gps_utc_offset_s", 18))),
                          0.0 if grid is None else grid.duration_s, math.nan if grid is None else grid.fs,
                          truth=truth, params=params)

    if grid is None:
        return empty(f"no {min_overlap_s:g} s overlap between at least 2 stations with GPS time")
    ids, env, valid = resample_envelopes(ds, times, grid, band_hz=band_hz)
    pairs, centres = pair_lags(ids, env, valid, grid, positions, window_s=window_s, margin_s=margin_s,
                               outlier_z=outlier_z, outlier_min_samples=outlier_min_samples,
                               min_window_fraction=min_window_fraction,
                               detection_sigma=detection_sigma)
    n_win = len(centres)
    # stations: the largest group connected by used pairs
    adj: dict[str, set[str]] = {s: set() for s in ids}
    for pl in pairs:
        if pl.used:
            adj[pl.a].add(pl.b)
            adj[pl.b].add(pl.a)
    groups: list[set[str]] = []
    for s in ids:
        if not any(s in g for g in groups):
            g, todo = set(), [s]
            while todo:
                x = todo.pop()
                if x not in g:
                    g.add(x)
                    todo.extend(adj[x] - g)
            groups.append(g)
    best = max(groups, key=len) if groups else set()
    if len(best) < 2:
        best = set()
    for s in ids:
        if not adj[s]:
            dropped[s] = "no significant correlation with any other station"
        elif s not in best:
            dropped[s] = "correlates only with stations outside the main group"
    for pl in pairs:
        if pl.used and pl.a not in best:
            pl.used, pl.reason = False, "outside the main group of stations"
    used_ids = [s for s in ids if s in best]
    result = empty("", pairs, n_win, centres)
    result.stations_used = used_ids
    if len(used_ids) < 2:
        result.reason = "no station pair with a significant correlation peak"
        result.notes = [f"{sid}: {n}" for sid, st in times.items() for n in st.notes]
        return result
    sigma = {s: math.hypot(timing_sigma_s, max((seg.fit_rms_s / math.sqrt(max(seg.n_stamps, 1))
                                                for seg in times[s].segments if math.isfinite(seg.fit_rms_s)),
                                               default=0.0))
             for s in used_ids}
    fix = locate(pairs, positions, station_sigma_s=sigma, confidence=confidence, grid_points=grid_points)
    result.position, result.reason = fix.position, fix.reason
    result.ellipse, result.covariance_km2, result.gdop = fix.ellipse, fix.covariance_km2, fix.gdop
    result.likelihood, result.chi2, result.dof = fix.likelihood, fix.chi2, fix.dof
    result.ambiguous, result.alternatives, result.scale2 = fix.ambiguous, fix.alternatives, fix.scale2
    result.notes = [f"{sid}: {n}" for sid, st in times.items() for n in st.notes] + fix.notes
    log.info("tdoa: %s", result.summary().splitlines()[0])
    return result
