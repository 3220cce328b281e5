"""The TDoA pipeline of one session, :func:`tdoa`: station times, common grid, pair lags,
closures, position fix and the check of station delays (the package docstring tells the method).

Its own module so that :mod:`.calibrate`, which runs it against a known transmitter, imports it
from here and not from the package that re-exports both.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import xarray as xr
from scipy import stats

from .. import timing
from ..errors import AnalysisRefused, ConfigError
from .consistency import Closure, closures, judge
from .geodesy import FArray
from .lags import PairLag, pair_lags
from .locate import Fix, locate
from .result import TdoaResult
from .signal import analyse, whiten
from .timebase import common_grid, envelopes, resample_baseband, station_times

log = logging.getLogger(__name__)

METHODS = ("auto", "coherent", "envelope")
#: family-wise significance of the test that names a station whose lags look delayed
DELAY_TEST_ALPHA = 1e-3


def _truth_of(ds: xr.Dataset) -> tuple[float, float] | None:
    lat, lon = ds.attrs.get("transmitter_latitude"), ds.attrs.get("transmitter_longitude")
    return None if lat is None or lon is None else (float(lat), float(lon))


def _check_parameters(**kw: object) -> None:
    """Bad parameters are named before any work (a CLI maps ConfigError to exit 2)."""
    for name in ("window_s", "min_overlap_s", "margin_s", "timing_sigma_s", "station_delay_sigma_s"):
        v = kw[name]
        nonneg = name in ("timing_sigma_s", "station_delay_sigma_s")
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if nonneg else v > 0)
        if not ok:
            what = "a finite non-negative" if nonneg else "a finite positive"
            raise ConfigError(f"{name} must be {what} number of seconds, got {v!r}")
    conf = kw["confidence"]
    if not (isinstance(conf, (int, float)) and 0 < conf < 1):
        raise ConfigError(f"confidence must be between 0 and 1, got {conf!r}")
    gp = kw["grid_points"]
    if not (isinstance(gp, int) and gp >= 3):
        raise ConfigError(f"grid_points must be an integer of at least 3, got {gp!r}")
    if kw["method"] not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {kw['method']!r}")
    delays = kw["station_delays_s"]
    if delays is not None:
        bad = {k: v for k, v in dict(delays).items()  # type: ignore[call-overload]
               if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            raise ConfigError(f"station_delays_s must map station ids to finite seconds, got {bad!r}")
    w, mo = kw["window_s"], kw["min_overlap_s"]
    assert isinstance(w, (int, float)) and isinstance(mo, (int, float))
    if w > mo:
        raise ConfigError(f"window_s ({w:g} s) is longer than min_overlap_s ({mo:g} s):"
                          " no window would fit in the shared span")


def _main_group(ids: Sequence[str], pairs: Sequence[PairLag], dropped: dict[str, str]) -> list[str]:
    """The largest group of stations connected by used pairs; the others are dropped (with the
    reason) and their pairs not used."""
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
        if s in dropped:
            continue
        if not adj[s]:
            dropped[s] = "no significant correlation with any other station"
        elif s not in best:
            dropped[s] = "correlates only with stations outside the main group"
    for pl in pairs:
        if pl.used and pl.a not in best:
            pl.used, pl.reason = False, "outside the main group of stations"
    return [s for s in ids if s in best]


def _pair_uncertainty(pl: PairLag, sigma: dict[str, float]) -> None:
    """The pair's standard uncertainty (windows' standard error, both stations' timing terms,
    widening, the estimator's floor), its Welch-Satterthwaite degrees of freedom and 95 %
    half-width."""
    se2 = pl.stderr_s**2 if math.isfinite(pl.stderr_s) else 0.0
    fixed = sigma.get(pl.a, 0.0) ** 2 + sigma.get(pl.b, 0.0) ** 2 + pl.extra_var_s2 + pl.floor_s**2
    pl.sigma_s = math.sqrt(se2 + fixed)
    n = pl.n_windows
    if se2 > 0 and n >= 2:
        pl.dof = (se2 + fixed) ** 2 / (se2**2 / (n - 1))
    else:
        pl.dof = math.inf if fixed > 0 else math.nan
    q = stats.norm.ppf(0.975) if math.isinf(pl.dof) else stats.t.ppf(0.975, pl.dof) if pl.dof > 0 else math.nan
    pl.ci95_s = float(q) * pl.sigma_s


def _apply_closures(pairs: list[PairLag], fs: float, dropped: dict[str, str]) -> tuple[list[Closure], list[str]]:
    """Test every triangle; not use the pair or drop the station the failures point to, or widen."""
    found = closures(pairs, fs)
    n_st = len({s for pl in pairs if pl.used for s in (pl.a, pl.b)})
    verdict = judge(found, n_st)
    for pl in pairs:
        key = "|".join(sorted((pl.a, pl.b)))
        if key in verdict.bad_pairs and pl.used:
            pl.used, pl.reason = False, verdict.bad_pairs[key]
        for sid, why in verdict.bad_stations.items():
            if sid in (pl.a, pl.b) and pl.used:
                pl.used, pl.reason = False, f"{sid} dropped: {why}"
        pl.extra_var_s2 = verdict.widen.get(key, 0.0)
    for sid, why in verdict.bad_stations.items():
        dropped[sid] = why
    if verdict.bad_pairs or verdict.bad_stations:  # the closures of what is still used
        found = closures(pairs, fs)
    return found, verdict.notes


#: why receipt-timed data cannot time a lag
RECEIPT_REASON = ("its times are only the host's receipt times (no GPS stamps on its data: OpenWebRX, or a "
                  "server posing as a KiwiSDR such as UberSDR), so network and server latency of tens of "
                  "milliseconds swamp microsecond lags")


def _refuse_receipt_timed(ds: xr.Dataset, *, named: bool) -> None:
    """Raise :class:`AnalysisRefused` when receipt-timed stations leave TDoA nothing to work
    with: any of them named in ``stations``, or fewer than two other stations.  Otherwise they
    are left out later, each with its reason (``stations_dropped``)."""
    if "timing" not in ds.coords:
        return
    kinds = {str(s): str(t) for s, t in zip(ds["station"].values, ds["timing"].values)}
    receipt = sorted(s for s, t in kinds.items() if t == "receipt")
    if not receipt:
        return
    rest = len(kinds) - len(receipt)
    if named or rest < 2:
        why = "asked for by name" if named else f"{rest} other station{'' if rest == 1 else 's'} left, 2 needed"
        raise AnalysisRefused(
            f"TDoA refused for receipt-timed station(s) {', '.join(receipt)} ({why}): {RECEIPT_REASON}",
            stations=receipt, reason=RECEIPT_REASON)


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
    station_delay_sigma_s: float = 20e-6,
    station_delays_s: dict[str, float] | None = None,
    method: str = "auto",
    stamp_tolerance_s: float | None = None,
    truth: tuple[float, float] | None = None,
) -> TdoaResult:
    """Locate the transmitter heard by the session's stations (module docstring).

    ``stations`` restricts the analysis to those ids.  ``method``: ``auto`` (chosen from what
    the signal carries), ``coherent`` or ``envelope``.  ``band_hz``: the band to correlate
    (coherent: baseband Hz from the tuned frequency; envelope: envelope frequencies).

    Error model, per station and independent: ``station_delay_sigma_s`` is the spread of the
    receivers' unknown processing delays (default 20 us, what separates real KiwiSDRs; 0 for
    receivers calibrated with :func:`calibrate`), ``timing_sigma_s`` their GPS timing error; the
    fit of each station's time base to its stamps adds its own term.  ``station_delays_s``
    (station -> seconds late, e.g. :attr:`Calibration.delays_s`) are subtracted from the lags.
    ``truth`` (lat, lon), default the Dataset's ``transmitter_latitude/longitude``, is only
    carried along for the error and the plots.

    Receipt-timed stations (``timing`` coordinate ``receipt``) cannot time a lag: they are left out
    with the reason when at least two others remain and none of them was named in ``stations``;
    otherwise :class:`~sdrlab.errors.AnalysisRefused` names them and says why.
    """
    _check_parameters(window_s=window_s, min_overlap_s=min_overlap_s, margin_s=margin_s, confidence=confidence,
                      grid_points=grid_points, timing_sigma_s=timing_sigma_s,
                      station_delay_sigma_s=station_delay_sigma_s, method=method, station_delays_s=station_delays_s)
    params = {"window_s": window_s, "min_overlap_s": min_overlap_s, "margin_s": margin_s,
              "confidence": confidence, "outlier_z": outlier_z,
              "outlier_min_samples": outlier_min_samples, "min_window_fraction": min_window_fraction,
              "detection_sigma": detection_sigma, "band_hz": list(band_hz) if band_hz else None,
              "grid_points": grid_points, "timing_sigma_s": timing_sigma_s,
              "station_delay_sigma_s": station_delay_sigma_s,
              "station_delays_s": dict(station_delays_s) if station_delays_s else None, "method": method,
              "stamp_tolerance_s": stamp_tolerance_s}
    if stations is not None:
        known = {str(s) for s in ds["station"].values}
        unknown = [s for s in stations if s not in known]
        if unknown:
            raise ConfigError(f"station(s) not in the session: {', '.join(unknown)} "
                              f"(it has {', '.join(sorted(known))})")
        ds = ds.sel(station=list(stations))
    _refuse_receipt_timed(ds, named=stations is not None)
    positions = {str(s): (float(a), float(b)) for s, a, b in
                 zip(ds["station"].values, ds["latitude"].values, ds["longitude"].values)}
    times, dropped = station_times(ds, stamp_tolerance_s=stamp_tolerance_s)
    timing_all = dict(times)
    truth = truth or _truth_of(ds)
    grid, short = common_grid(times, min_overlap_s=min_overlap_s)
    dropped.update(short)
    times = {sid: st for sid, st in times.items() if sid not in short}
    gps_notes = [f"{sid}: {n}" for sid, st in timing_all.items() for n in st.notes]

    def empty(reason: str, pairs: list[PairLag] | None = None, n_win: int = 0,
              centres: FArray | None = None) -> TdoaResult:
        return TdoaResult(None, reason, None, None, None, pairs or [], [], dropped, positions, timing_all,
                          n_win, centres if centres is not None else np.zeros(0), None if grid is None else
                          timing.gps_ns_to_utc(grid.t0_gps_ns, int(ds.attrs.get("gps_utc_offset_s", 18))),
                          0.0 if grid is None else grid.duration_s, math.nan if grid is None else grid.fs,
                          truth=truth, params=params, notes=list(gps_notes))

    if grid is None:
        return empty(f"no {min_overlap_s:g} s overlap between at least 2 stations with GPS time")
    ids, z, valid = resample_baseband(ds, times, grid)
    analysis = analyse(ids, z, valid, grid.fs, method=method, band_hz=band_hz)
    if analysis.method == "coherent":
        x, ok = whiten(z, valid, analysis)
        pairs, centres = pair_lags(ids, x, ok, grid, positions, window_s=window_s, margin_s=margin_s,
                                   outlier_z=outlier_z, outlier_min_samples=outlier_min_samples,
                                   min_window_fraction=min_window_fraction, detection_sigma=detection_sigma,
                                   effective_fraction=analysis.effective_fraction, method="coherent")
    else:
        env = envelopes(z, valid, grid.fs, band_hz)
        pairs, centres = pair_lags(ids, env, valid, grid, positions, window_s=window_s, margin_s=margin_s,
                                   outlier_z=outlier_z, outlier_min_samples=outlier_min_samples,
                                   min_window_fraction=min_window_fraction, detection_sigma=detection_sigma,
                                   method="envelope")
    del z
    for pl in pairs:
        corr = (station_delays_s or {}).get(pl.b, 0.0) - (station_delays_s or {}).get(pl.a, 0.0)
        if corr:
            pl.lag_s -= corr
            pl.window_lag_s = pl.window_lag_s - corr
            pl.delay_correction_s = corr
    found, closure_notes = _apply_closures(pairs, grid.fs, dropped)
    used_ids = _main_group(ids, pairs, dropped)
    result = empty("", pairs, len(centres), centres)
    result.stations_used = used_ids
    result.method, result.signal, result.closures = analysis.method, analysis, found
    sigma = {s: math.sqrt(station_delay_sigma_s**2 + timing_sigma_s**2 + times[s].sigma_s**2) for s in ids}
    for pl in pairs:
        _pair_uncertainty(pl, sigma)
    result.notes = gps_notes + analysis.notes + closure_notes
    if len(used_ids) < 2:
        result.reason = "no station pair with a significant correlation peak"
        return result
    fix = locate(pairs, positions, station_sigma_s=sigma, confidence=confidence, grid_points=grid_points)
    fix, downweighted = _check_station_delays(fix, pairs, positions, sigma, confidence, grid_points)
    for pl in pairs:
        _pair_uncertainty(pl, sigma)
    result.station_sigma_s = {s: sigma[s] for s in used_ids}
    result.stations_downweighted = downweighted
    result.position, result.reason = fix.position, fix.reason
    result.ellipse, result.covariance_km2, result.gdop = fix.ellipse, fix.covariance_km2, fix.gdop
    result.likelihood, result.chi2, result.dof = fix.likelihood, fix.chi2, fix.dof
    result.ambiguous, result.alternatives, result.scale2 = fix.ambiguous, fix.alternatives, fix.scale2
    result.station_offsets_s, result.dof_eff = fix.station_offsets, fix.dof_eff
    result.notes += fix.notes
    log.info("tdoa: %s", result.summary().splitlines()[0])
    return result


def _check_station_delays(fix: Fix, pairs: list[PairLag], positions: dict[str, tuple[float, float]],
                          sigma: dict[str, float], confidence: float, grid_points: int) -> tuple[Fix, dict[str, str]]:
    """With four or more stations: the station whose apparent delay is furthest beyond its prior
    (two-sided, Bonferroni over the stations at ``DELAY_TEST_ALPHA``) is named and down-weighted
    -- its timing variance grows by the square of that delay -- and the position refitted."""
    offs = fix.station_offsets
    if not offs or fix.position is None:
        return fix, {}
    zcrit = float(stats.norm.isf(DELAY_TEST_ALPHA / (2 * len(offs))))
    score = {s: abs(d) / math.sqrt(sigma[s] ** 2 + se**2) for s, (d, se) in offs.items() if se >= 0}
    worst = max(score, key=lambda s: score[s], default=None)
    if worst is None or score[worst] <= zcrit:
        return fix, {}
    d, se = offs[worst]
    why = (f"its lags look {abs(d) * 1e6:.1f} +- {se * 1e6:.1f} us {'late' if d > 0 else 'early'} against the other "
           f"stations, beyond its timing uncertainty of {sigma[worst] * 1e6:.1f} us: down-weighted")
    sigma[worst] = math.sqrt(sigma[worst] ** 2 + d * d)
    new = locate(pairs, positions, station_sigma_s=sigma, confidence=confidence, grid_points=grid_points)
    new.notes.insert(0, f"{worst}: {why}")
    return new, {worst: why}
