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
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .. import timing
from ..errors import ConfigError
from .geodesy import C_M_S, FArray, _inverse, _move, geodesic_distance, local_offset_km
from .lags import PairLag, pair_lags
from .locate import Ellipse, Fix, hotelling_scale2, lag_covariance, likelihood_map, locate
from .timebase import CommonGrid, StationTime, common_grid, resample_envelopes, station_times

__all__ = [
    "C_M_S", "CommonGrid", "Ellipse", "Fix", "PairLag", "StationTime", "TdoaResult", "common_grid",
    "geodesic_distance", "hotelling_scale2", "lag_covariance", "likelihood_map", "local_offset_km", "locate",
    "pair_lags", "resample_envelopes", "station_times", "tdoa",
]

log = logging.getLogger(__name__)


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


def _check_parameters(**kw: float) -> None:
    """Bad parameters are named before any work (a CLI maps ConfigError to exit 2)."""
    for name in ("window_s", "min_overlap_s", "margin_s", "timing_sigma_s"):
        v = kw[name]
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if name == "timing_sigma_s" else v > 0)
        if not ok:
            raise ConfigError(f"{name} must be a finite positive number of seconds, got {v!r}")
    if not (isinstance(kw["confidence"], (int, float)) and 0 < kw["confidence"] < 1):
        raise ConfigError(f"confidence must be between 0 and 1, got {kw['confidence']!r}")
    if not (isinstance(kw["grid_points"], int) and kw["grid_points"] >= 3):
        raise ConfigError(f"grid_points must be an integer of at least 3, got {kw['grid_points']!r}")
    if kw["window_s"] > kw["min_overlap_s"]:
        raise ConfigError(f"window_s ({kw['window_s']:g} s) is longer than min_overlap_s ({kw['min_overlap_s']:g} s):"
                          " no window would fit in the shared span")


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
    _check_parameters(window_s=window_s, min_overlap_s=min_overlap_s, margin_s=margin_s, confidence=confidence,
                      grid_points=grid_points, timing_sigma_s=timing_sigma_s)
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
        result.notes = [f"{sid}: {n}" for sid, st in timing_all.items() for n in st.notes]
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
    result.notes = [f"{sid}: {n}" for sid, st in timing_all.items() for n in st.notes] + fix.notes
    log.info("tdoa: %s", result.summary().splitlines()[0])
    return result
