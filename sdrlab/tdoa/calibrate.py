"""Calibrate the stations' processing delays against a transmitter at a known position.

Each pair's measured lag minus the WGS84 one is ``delay_b - delay_a`` plus noise; the delays
are found by generalised least squares with the windows' covariance (only differences are
observable: the delays returned sum to zero).  What the delays cannot explain stays as each
pair's residual; large residuals mean the lags hold more than station delays (multipath, a
wrong peak) and the calibration should not be trusted.  Apply with
``tdoa(ds, station_delays_s=cal.delays_s, station_delay_sigma_s=<how well they hold>)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .geodesy import C_M_S, _inverse
from .locate import _incidence, lag_covariance
from .pipeline import tdoa

if TYPE_CHECKING:
    import xarray as xr

    from .result import TdoaResult


@dataclass
class Calibration:
    """Per station, how late its samples are relative to the stations' mean (s), with the
    standard uncertainty; per used pair, what the delays leave unexplained (s)."""

    transmitter: tuple[float, float]
    delays_s: dict[str, float]
    sigma_s: dict[str, float]
    residuals_s: dict[str, float]
    result: TdoaResult
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"transmitter": {"latitude": self.transmitter[0], "longitude": self.transmitter[1]},
                "delays_us": {k: round(v * 1e6, 3) for k, v in self.delays_s.items()},
                "sigma_us": {k: round(v * 1e6, 3) for k, v in self.sigma_s.items()},
                "residuals_us": {k: round(v * 1e6, 3) for k, v in self.residuals_s.items()},
                "notes": list(self.notes)}


def calibrate(ds: xr.Dataset, transmitter: tuple[float, float], **tdoa_kw: Any) -> Calibration:
    """The stations' relative delays from a session of a transmitter at ``transmitter`` (lat,
    lon); ``tdoa_kw`` go to :func:`sdrlab.tdoa.tdoa` (which runs without a delay prior here)."""
    if "station_delays_s" in tdoa_kw:
        raise ConfigError("calibrate measures the station delays; do not pass station_delays_s")
    res = tdoa(ds, station_delay_sigma_s=0.0, truth=transmitter, **tdoa_kw)
    used = [pl for pl in res.pairs if pl.used]
    ids = sorted({pl.a for pl in used} | {pl.b for pl in used})
    if len(ids) < 2:
        raise ConfigError(f"no station pair with usable lags to calibrate ({res.reason})")
    dist = {s: _inverse(transmitter[0], transmitter[1], *res.positions[s])[0] for s in ids}
    y = np.array([pl.lag_s - (dist[pl.b] - dist[pl.a]) / C_M_S for pl in used])
    a = _incidence(used, ids)
    cov = lag_covariance(used, {s: res.timing[s].sigma_s for s in ids})
    cinv = np.linalg.pinv(cov, hermitian=True)
    info = a.T @ cinv @ a
    k = np.linalg.pinv(info, hermitian=True) @ a.T @ cinv  # minimum norm: the delays sum to zero
    delays = k @ y
    dcov = k @ cov @ k.T
    resid = y - a @ delays
    notes = []
    worst = float(np.max(np.abs(resid))) if resid.size else 0.0
    if len(ids) >= 3 and worst > 3 * max(math.sqrt(float(np.mean(np.diag(cov)))), 1e-12):
        notes.append(f"the delays leave up to {worst * 1e6:.2f} us of the lags unexplained: more than station "
                     "delays in them (multipath, a wrong peak)")
    return Calibration(transmitter, {s: float(d) for s, d in zip(ids, delays)},
                       {s: math.sqrt(max(float(v), 0.0)) for s, v in zip(ids, np.diag(dcov))},
                       {pl.name: float(r) for pl, r in zip(used, resid)}, res, notes)
