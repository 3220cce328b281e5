"""WGS84 geodesy for TDoA: vectorised distances, local offsets (sphere-free: a sphere is ~1 km off)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from geographiclib.geodesic import Geodesic
from ..constants import C_M_S as C_M_S

log = logging.getLogger(__name__)

FArray = npt.NDArray[np.float64]


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
