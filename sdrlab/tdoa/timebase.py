"""Steps 1-3 of TDoA: each station's GPS time base from its raw stamps, the span all stations share, and
the envelopes resampled on one clock."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import numpy.typing as npt
import xarray as xr

from .. import timing
from ..receivers.kiwiwire import GPS_LAST_CAP, SAMPLES_PER_FRAME
from .geodesy import FArray

log = logging.getLogger(__name__)

NS = 1_000_000_000
#: half-width (native samples) of the resampling kernel
RESAMPLE_HALF_WIDTH = 8
_NOMINAL_RATES = (12000.0, 20250.0)

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
