"""The result of :func:`sdrlab.tdoa.tdoa`: position, uncertainty, lags, checks, and how they were made."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .consistency import Closure
from .geodesy import FArray, _inverse, _move, local_offset_km
from .lags import PairLag
from .locate import Ellipse
from .signal import SignalAnalysis
from .timebase import StationTime


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
    #: ``coherent`` or ``envelope``, and why (``signal``: what the signal carries)
    method: str = ""
    signal: SignalAnalysis | None = None
    #: station-triangle closures (:mod:`sdrlab.tdoa.consistency`)
    closures: list[Closure] = field(default_factory=list)
    #: each used station's timing standard uncertainty (s): delay prior, GPS, fit of its time base
    station_sigma_s: dict[str, float] = field(default_factory=dict)
    #: stations kept but given less weight, with the reason
    stations_downweighted: dict[str, str] = field(default_factory=dict)
    #: with four or more stations: each station's apparent extra delay and its standard error (s)
    station_offsets_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: effective degrees of freedom of the position covariance
    dof_eff: float = math.nan

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
            "method": self.method,
            "signal": self.signal.to_dict() if self.signal is not None else None,
            "pairs": [{
                "a": pl.a, "b": pl.b, "method": pl.method, "lag_us": num(pl.lag_s * 1e6, 3),
                "spread_us": num(pl.spread_s * 1e6, 3), "stderr_us": num(pl.stderr_s * 1e6, 4),
                "uncertainty_us": num(pl.sigma_s * 1e6, 3), "ci95_us": num(pl.ci95_s * 1e6, 3),
                "dof": num(pl.dof, 1), "widened_by_us": num(math.sqrt(pl.extra_var_s2) * 1e6, 3),
                "delay_correction_us": num(pl.delay_correction_s * 1e6, 3), "floor_us": num(pl.floor_s * 1e6, 4),
                "correlation": num(pl.correlation, 4),
                "n_windows": pl.n_windows, "n_windows_valid": pl.n_valid, "baseline_km": num(pl.baseline_km, 3),
                "used": pl.used, "reason": pl.reason,
                "residual_us": num(pl.residual_s * 1e6, 3) if pl.residual_s is not None else None,
            } for pl in self.pairs],
            "closures": [c.to_dict() for c in self.closures],
            "station_timing_sigma_us": {k: num(v * 1e6, 3) for k, v in self.station_sigma_s.items()},
            "stations_downweighted": dict(self.stations_downweighted),
            "station_offsets_us": {k: {"offset": num(v[0] * 1e6, 3), "stderr": num(v[1] * 1e6, 3)}
                                   for k, v in self.station_offsets_s.items()},
            "dof_eff": num(self.dof_eff, 2),
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
        if self.method:
            why = self.signal.reason if self.signal is not None else ""
            lines.append(f"method {self.method}" + (f": {why}" if why else ""))
        for pl in self.pairs:
            if math.isfinite(pl.lag_s):
                txt = (f"lag {pl.a} -> {pl.b}: {pl.lag_s * 1e6:+.2f} us +- {pl.spread_s * 1e6:.2f} us"
                       f" (r={pl.correlation:.3f}, {pl.n_windows}/{pl.n_valid} windows")
                if math.isfinite(pl.ci95_s):
                    txt += f", 95 % +-{pl.ci95_s * 1e6:.2f} us"
                if pl.residual_s is not None:
                    txt += f", residual {pl.residual_s * 1e6:+.2f} us"
                lines.append(txt + ")" + ("" if pl.used else f" not used: {pl.reason}"))
            else:
                lines.append(f"lag {pl.a} -> {pl.b}: none ({pl.reason})")
        for c in self.closures:
            lines.append(f"closure {' / '.join(c.stations)}: {c.closure_s * 1e6:+.2f} us "
                         f"(tolerance {c.tolerance_s * 1e6:.2f} us) {'ok' if c.ok else 'FAILS'}")
        for sid, why in self.stations_dropped.items():
            lines.append(f"dropped {sid}: {why}")
        for sid, why in self.stations_downweighted.items():
            lines.append(f"down-weighted {sid}: {why}")
        lines.extend(self.notes)
        return "\n".join(lines)
