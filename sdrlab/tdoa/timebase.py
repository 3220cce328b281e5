"""Steps 1-3 of TDoA: each station's GPS time base from its raw stamps, the span all stations share, and
the complex baseband (or its envelope) resampled on one clock."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import numpy.typing as npt
import xarray as xr

from .. import timing
from ..capture import GPS_LAST_CAP, SAMPLES_PER_FRAME
from .geodesy import FArray
from ..constants import FULL_SCALE, NS
from ..constants import KIWI_RATES_HZ as _NOMINAL_RATES

log = logging.getLogger(__name__)

#: half-width (native samples) of the resampling kernel
RESAMPLE_HALF_WIDTH = 8

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
    #: stamps the final line was fitted to (the fresh ones when there are enough)
    n_fit: int = 0
    #: scatter of the stamps about the line within each fix interval (s): the stamps' jitter
    jitter_s: float = math.nan
    #: standard uncertainty of the line near the middle of the record (s)
    time_sigma_s: float = math.nan
    #: ``all stamps`` or ``fresh stamps`` (when the stale ones are biased against the fresh)
    fit_stamps: str = ""

    @property
    def sigma_s(self) -> float:
        """Standard uncertainty (s) of this segment's time base near the middle of the record
        (the stored fit's rms when only that is known)."""
        if math.isfinite(self.time_sigma_s):
            return self.time_sigma_s
        return self.fit_rms_s if math.isfinite(self.fit_rms_s) else 0.0


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

    @property
    def sigma_s(self) -> float:
        """Standard uncertainty (s) of the station's GPS time base (its worst segment)."""
        return max(s.sigma_s for s in self.segments)

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


def _stale_biased(n_rel: npt.NDArray[np.int64], gps: npt.NDArray[np.int64], last: npt.NDArray[np.int64],
                  fit: timing.TimeFit, agree: npt.NDArray[np.bool_], fresh: npt.NDArray[np.bool_]) -> bool:
    """Whether the stamps drift away from the line with the time since the last GPS solution
    (``last_gps_solution``): the receiver's clock runs off between fixes, its stale stamps are
    extrapolations, and only the fresh ones measure time.  Tested by the slope of the residuals
    against that age (significant at four standard errors, and worth more than 50 ns on
    average).  Otherwise every stamp is an equally good measurement and all of them make the
    better line (jitter averages over hundreds of stamps, not over the few fresh ones)."""
    if fresh.sum() < 2 or np.ptp(n_rel[fresh]) < 0.25 * np.ptp(n_rel[agree]):
        return False
    age = last[agree].astype(np.float64)
    r = ((gps - fit.t0_gps_ns) / NS - n_rel / fit.fs)[agree]
    if age.size < 10 or np.ptp(age) == 0:
        return False
    a = age - age.mean()
    beta = float(a @ (r - r.mean()) / (a @ a))
    resid = r - r.mean() - beta * a
    se = math.sqrt(float(resid @ resid) / max(age.size - 2, 1) / float(a @ a))
    return abs(beta) > 4.0 * se and abs(beta) * float(age.mean()) > 50e-9


def _line_uncertainty(resid: FArray, good: npt.NDArray[np.bool_], fresh: npt.NDArray[np.bool_], n_fit: int,
                      how: str) -> tuple[float, float]:
    """(jitter, standard uncertainty of the line) from the stamps' residuals.  The stamps are cut
    into fix intervals (each starting at a fresh stamp); the jitter is the scatter within them;
    the line's uncertainty is the spread of the intervals' means over the root of their number
    (batch means: drift that is common within an interval counts once per interval, white
    jitter averages).  A line through the fresh stamps only: the scatter of all stamps about it
    over the root of the number of fresh stamps."""
    r = resid[good]
    if r.size < 2:
        return 0.0, 0.0
    block = np.cumsum(fresh[good])
    ids, inv, counts = np.unique(block, return_inverse=True, return_counts=True)
    means = np.bincount(inv, weights=r) / counts
    within = r - means[inv]
    jitter = math.sqrt(float(np.sum(within**2)) / max(r.size - ids.size, 1))
    if how == "fresh stamps":
        return jitter, math.sqrt(float(np.mean(r**2))) / math.sqrt(max(n_fit, 1))
    if ids.size >= 3:
        return jitter, math.sqrt(float(np.var(means, ddof=1)) / ids.size)
    return jitter, math.sqrt(float(np.mean(r**2)) / r.size)


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
        n_fit, how = fit.n_stamps - fit.n_outliers, "all stamps"
        if _stale_biased(n_rel, gps, last, fit, agree, fresh):
            refit = timing.fit_time(n_rel[fresh], gps[fresh], nominal_fs=fit.fs)
            if refit.ok:
                fit, n_fit, how = refit, refit.n_stamps - refit.n_outliers, "fresh stamps"
        fs, t0 = fit.fs, fit.t0_gps_ns
        tol = stamp_tolerance_s if stamp_tolerance_s is not None else 1.0 / fs
        resid = (gps - t0) / NS - n_rel / fs
        good = has & (np.abs(resid) <= tol)
        n_rej = int(np.count_nonzero(has & ~good))
        if not good.any():
            return None, "no GPS stamp agrees with the fit"
        jitter, sigma = _line_uncertainty(resid, good, fresh, n_fit, how)
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
        return SegmentTime(start, u0, u1, t0, fs, fit.residual_rms_s, int(has.sum()), n_rej, "raw stamps",
                           max(n_fit, 1), jitter, sigma, how), note
    timed = str(ds["segment_timing"].values[i, j]) if "segment_timing" in ds else "gps"
    if stored is not None and timed in ("gps", ""):
        return SegmentTime(start, start, start + length, stored[0], stored[1],
                           float(ds["segment_fit_rms"].values[i, j]), 0, 0, "stored fit", 1), note
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
        kind = str(ds["timing"].values[i]) if "timing" in ds.coords else "gps"
        if kind == "receipt":
            dropped[sid] = ("timing is not GPS: its data carry no GPS stamps (OpenWebRX, or a server posing as "
                            "a KiwiSDR such as UberSDR); receipt times cannot time a lag")
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


def _interpolate(x: npt.NDArray[np.complex64], u: FArray, half: int, cutoff: float) -> npt.NDArray[np.complex64]:
    """``x`` at fractional indices ``u`` (all within ``[half, len(x) - half)``), in single
    precision (ample for int16 samples, and several times faster).

    Where ``u`` advances one sample per output sample (the receivers' rates differ by a few ppm)
    the taps are contiguous slices of ``x`` between the rare points where ``floor(u)`` skips or
    repeats a sample, so the filter runs as a few streaming multiply-adds per run; otherwise
    (very different rates) the taps are gathered."""
    tab = _kernel_table(half, cutoff).astype(np.float32)
    taps = 2 * half
    out = np.empty(u.shape, dtype=np.complex64)
    n0 = np.floor(u)
    ph = np.rint((u - n0) * _PHASES).astype(np.intp)
    n0i = n0.astype(np.intp) - half + 1  # index of the first tap
    breaks = np.flatnonzero(np.diff(n0i) != 1) + 1
    if breaks.size <= u.size // 1000:
        tab_t = np.ascontiguousarray(tab.T)
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, u.size]):
            a, b = int(a), int(b)
            base, length, phs = int(n0i[a]), b - a, ph[a:b]
            acc = x[base : base + length] * tab_t[0][phs]
            for j in range(1, taps):
                acc += x[base + j : base + j + length] * tab_t[j][phs]
            out[a:b] = acc
        return out
    m = np.arange(taps)
    step = max(1, (1 << 20) // taps)
    for a in range(0, u.size, step):
        idx = n0i[a : a + step]
        out[a : a + step] = np.einsum("ij,ij->i", x[idx[:, None] + m[None, :]], tab[ph[a : a + step]])
    return out


def _frames_ok(ds: xr.Dataset, i: int, n_native: int) -> npt.NDArray[np.bool_]:
    """Native samples of station i that arrived (frames received)."""
    ok = np.zeros(n_native, dtype=bool)
    if "frame_received" in ds:
        fs_idx = ds["frame_sample"].values[i]
        got = ds["frame_received"].values[i] & (fs_idx >= 0)
        for s0 in fs_idx[got]:
            ok[int(s0) : int(s0) + SAMPLES_PER_FRAME] = True
    else:
        ok[:] = True
    return ok


def resample_baseband(
    ds: xr.Dataset, times: dict[str, StationTime], grid: CommonGrid,
) -> tuple[list[str], npt.NDArray[np.complex64], npt.NDArray[np.bool_]]:
    """Each station's complex baseband (complex64, full-scale units) at the common grid's sample times:
    (station ids, samples (station, k), valid (station, k)).  Windowed-sinc interpolation at the
    GPS-measured rate, never the nominal one; a sample whose interpolation support reaches a
    missing frame, a segment edge or a span with bad stamps is not valid (and is 0)."""
    ids = list(times)
    z = np.zeros((len(ids), grid.n), dtype=np.complex64)
    valid = np.zeros((len(ids), grid.n), dtype=bool)
    k = np.arange(grid.n, dtype=np.float64)
    sta = [str(s) for s in ds["station"].values]
    for r, sid in enumerate(ids):
        i = sta.index(sid)
        n_native = int(ds["n_samples"].values[i])
        iq = np.asarray(ds["iq"].isel(station=i).values)[:n_native]
        x = np.empty(n_native, dtype=np.complex64)
        x.real = iq[:, 0] / np.float32(FULL_SCALE)
        x.imag = iq[:, 1] / np.float32(FULL_SCALE)
        ok = _frames_ok(ds, i, n_native)
        for seg in times[sid].segments:
            ratio = grid.fs / seg.fs
            cutoff = 0.95 * min(1.0, ratio)
            half = math.ceil(RESAMPLE_HALF_WIDTH / min(1.0, ratio))
            seg_ok = np.zeros(n_native + 1, dtype=bool)
            seg_ok[seg.usable_start : seg.usable_stop] = ok[seg.usable_start : seg.usable_stop]
            bad_cum = np.concatenate([[0], np.cumsum(~seg_ok)])
            # native index of each grid sample
            u = seg.start + ((grid.t0_gps_ns - seg.t0_gps_ns) / NS + k / grid.fs) * seg.fs
            inside = (u >= half) & (u < n_native - half - 1)
            n0 = np.floor(np.where(inside, u, half)).astype(np.intp)
            clean = inside & (bad_cum[n0 + half + 1] - bad_cum[n0 - half + 1] == 0)
            if clean.any():
                z[r, clean] = _interpolate(x, u[clean], half, cutoff)
                valid[r, clean] = True
    return ids, z, valid


def envelopes(z: npt.NDArray[np.complex64], valid: npt.NDArray[np.bool_], fs: float,
              band_hz: tuple[float, float] | None = None) -> FArray:
    """The AM envelope ``|z|`` of resampled baseband, band-limited to ``band_hz`` (FFT mask
    over the mean-removed envelope) when given."""
    env: FArray = np.where(valid, np.abs(z).astype(np.float64), 0.0)
    if band_hz is not None:
        n = env.shape[1]
        f = np.fft.rfftfreq(n, 1.0 / fs)
        mask = (f >= band_hz[0]) & (f <= band_hz[1])
        for r in range(env.shape[0]):
            mean = env[r, valid[r]].mean() if valid[r].any() else 0.0
            x = np.where(valid[r], env[r] - mean, 0.0)
            env[r] = np.fft.irfft(np.fft.rfft(x) * mask, n)
    return env


def resample_envelopes(
    ds: xr.Dataset, times: dict[str, StationTime], grid: CommonGrid, *, band_hz: tuple[float, float] | None = None,
) -> tuple[list[str], FArray, npt.NDArray[np.bool_]]:
    """Each station's AM envelope ``|z|`` at the common grid's sample times (the magnitude of
    :func:`resample_baseband`): (station ids, envelopes (station, k), valid (station, k)).
    ``band_hz`` band-limits the envelopes (FFT mask) before the correlation."""
    ids, z, valid = resample_baseband(ds, times, grid)
    return ids, envelopes(z, valid, grid.fs, band_hz), valid
