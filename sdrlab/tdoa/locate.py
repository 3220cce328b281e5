"""Step 5 of TDoA: the likelihood map, least-squares refinement, covariance, ellipse and GDOP.

The error model of the lags: the window-to-window scatter of each pair's mean lag (pairs sharing
windows correlated), plus per station an independent timing error ``station_sigma_s`` (its
unknown processing delay, GPS timing and the fit of its time base; it enters every pair with the
station, so pairs sharing a station are correlated), plus any variance a triangle that did not
close added to its pairs (:mod:`sdrlab.tdoa.consistency`).  Positions come from generalised
least squares with that covariance (window part modelled from the correlation strength, not
from the same windows' scatter); the ellipse uses the full covariance and Hotelling's
small-sample factor at the Welch-Satterthwaite degrees of freedom (only the window part is
estimated; the station part is a stated prior).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import xarray as xr

from .geodesy import C_M_S, FArray, _inverse, _move, geodesic_distance
from .lags import PairLag

log = logging.getLogger(__name__)

#: a crossing further than this from every station is on the far side of the globe
FAR_SIDE_M = 10_000e3

# ---- 5. position -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ellipse:
    """Uncertainty ellipse: semi-axes in km, ``orientation_deg`` the azimuth of the major axis
    (degrees clockwise from north, 0-180), holding the truth with probability ``confidence``."""

    semi_major_km: float
    semi_minor_km: float
    orientation_deg: float
    confidence: float


def hotelling_scale2(n: float, confidence: float) -> float:
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
    sharing windows correlated (pairwise-complete), plus independent per-station timing errors
    and each pair's ``extra_var_s2`` and systematic floor."""
    win, fixed = _covariance_parts(pairs, station_sigma_s)
    out: FArray = win + fixed
    return out


def _covariance_parts(pairs: Sequence[PairLag], station_sigma_s: dict[str, float]) -> tuple[FArray, FArray]:
    """(window-scatter covariance, stated covariance: stations' timing and pairs' extra)."""
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
    fixed: FArray = (a * s2) @ a.T + np.diag([pl.extra_var_s2 + pl.floor_s**2 for pl in pairs])
    return np.asarray(cov, dtype=np.float64), fixed


def satterthwaite(c_win: float, c_fixed: float, n_windows: float) -> float:
    """Effective degrees of freedom of a variance ``c_win + c_fixed`` whose first part is
    estimated from ``n_windows`` windows and whose second is stated (infinite dof)."""
    if c_win <= 0 or n_windows <= 1:
        return math.inf if c_fixed > 0 or n_windows > 1 else 0.0
    return float((c_win + c_fixed) ** 2 / (c_win**2 / (n_windows - 1)))


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
    """Generalised least squares (weight matrix ``weights``) by Gauss-Newton with step halving
    from (lat, lon); returns (lat, lon, cost)."""
    meas = np.array([pl.lag_s for pl in pairs])
    pred, g = _predict(lat, lon, pairs, positions)
    r = meas - pred
    cost = float(r @ weights @ r)
    for _ in range(iterations):
        r = meas - pred
        h = g.T @ weights @ g
        try:
            step = np.linalg.solve(h + 1e-12 * np.trace(h) * np.eye(2), g.T @ weights @ r)
        except np.linalg.LinAlgError:
            break
        lam = 1.0
        while lam > 1e-4:
            nlat, nlon = _move(lat, lon, lam * step[0], lam * step[1])
            npred, ng = _predict(nlat, nlon, pairs, positions)
            nr = meas - npred
            ncost = float(nr @ weights @ nr)
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
    #: effective degrees of freedom of the position covariance (Welch-Satterthwaite)
    dof_eff: float = math.nan
    #: per station (with four or more): its apparent extra delay and that delay's standard error
    #: (s), from the fit with one delay parameter for that station
    station_offsets: dict[str, tuple[float, float]] = field(default_factory=dict)


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


def _weights(used: Sequence[PairLag], win: FArray, fixed: FArray) -> FArray:
    """GLS weight matrix: the inverse of the modelled covariance, whose window part comes from the
    correlation strength (lag variance ~ (1 - r^2) / r^2 for one common signal) scaled to the
    windows' variances -- weights from the same windows' scatter would favour the pairs that
    scattered little by chance and understate the uncertainty -- plus the stated part."""
    var = np.maximum(np.diag(win), 1e-24)
    rr = np.clip([pl.correlation for pl in used], 1e-3, 0.999)
    shape = (1 - rr**2) / rr**2
    model = np.diag(shape * float(np.median(var / shape))) + fixed
    w: FArray = np.asarray(np.linalg.pinv(model, rcond=1e-12, hermitian=True), dtype=np.float64)
    return w


def station_offsets(lat: float, lon: float, used: Sequence[PairLag], positions: dict[str, tuple[float, float]],
                    station_sigma_s: dict[str, float], win: FArray) -> dict[str, tuple[float, float]]:
    """For each station, the delay that best explains the residuals at (lat, lon) if it alone were
    late, fitted jointly with the position (linearised), and its standard error from the other
    stations' terms and the windows' scatter.  Needs one degree of freedom more than the
    position: four stations or more."""
    ids = sorted({pl.a for pl in used} | {pl.b for pl in used})
    if len(ids) < 4:
        return {}
    meas = np.array([pl.lag_s for pl in used])
    pred, g = _predict(lat, lon, used, positions)
    resid = meas - pred
    a = _incidence(used, ids)
    out: dict[str, tuple[float, float]] = {}
    for j, sid in enumerate(ids):
        others = {k: v for k, v in station_sigma_s.items() if k != sid}
        w_part, fixed = _covariance_parts(used, others)
        cov = w_part + fixed
        wm = _weights(used, w_part, fixed)
        x = np.column_stack([g, a[:, j]])
        h = x.T @ wm @ x
        try:
            k = np.linalg.solve(h, x.T @ wm)
        except np.linalg.LinAlgError:
            continue
        beta = k @ resid
        var = float((k @ cov @ k.T)[2, 2])
        out[sid] = (float(beta[2]), math.sqrt(max(var, 0.0)))
    return out


def locate(
    pairs: Sequence[PairLag],
    positions: dict[str, tuple[float, float]],
    *,
    station_sigma_s: dict[str, float] | None = None,
    confidence: float = 0.95,
    grid_points: int = 121,
) -> Fix:
    """Position from the used pairs (at least three stations): likelihood map, the best local
    maxima refined by generalised least squares, covariance and ellipse (module docstring)."""
    used = [pl for pl in pairs if pl.used]
    ids = sorted({pl.a for pl in used} | {pl.b for pl in used})
    if len(ids) < 2:
        return Fix(None, "no station pair with usable lags")
    sig_st = station_sigma_s or {}
    win, fixed = _covariance_parts(used, sig_st)
    cov = win + fixed
    var = np.maximum(np.diag(cov), 1e-24)
    w = _weights(used, win, fixed)
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
    h = g.T @ w @ g
    fix = Fix((lat, lon), None, likelihood=ll)
    try:
        k = np.linalg.solve(h, g.T @ w)
    except np.linalg.LinAlgError:
        return Fix(None, "degenerate geometry (the stations' hyperbolas do not cross)", likelihood=ll)
    cov_win_m2 = k @ win @ k.T
    cov_m2 = cov_win_m2 + k @ fixed @ k.T
    n_eff = int(min(pl.n_windows for pl in used))
    nu = satterthwaite(float(np.trace(cov_win_m2)), float(np.trace(cov_m2 - cov_win_m2)), n_eff)
    fix.dof_eff = nu
    # consistency of the residuals with the lags' covariance (station-difference space)
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
        nu_r = satterthwaite(float(np.trace(pinv @ win @ pinv.T)), float(np.trace(pinv @ fixed @ pinv.T)), n_eff)
        from scipy.stats import chi2 as chi2_dist
        from scipy.stats import f as f_dist

        if math.isinf(nu_r):
            pval = float(chi2_dist.sf(chi2, dof))
        elif nu_r + 1 > dof + 1:
            # Hotelling's T^2 over the dof residual dimensions: T^2 (n-q) / (q (n-1)) ~ F(q, n-q)
            n_r = nu_r + 1
            pval = float(f_dist.sf(chi2 * (n_r - dof) / (dof * (n_r - 1)), dof, n_r - dof))
        else:
            pval = 1.0
        if pval < 1e-3:
            scale = chi2 / dof
            cov_m2 = cov_m2 * scale
            fix.notes.append(f"residuals inconsistent with the lags' uncertainty (chi2 {chi2:.1f}, {dof} dof): "
                             f"uncertainty scaled by {math.sqrt(scale):.1f}")
        fix.station_offsets = station_offsets(lat, lon, used, positions, sig_st, win)
    fix.covariance_km2 = cov_m2 / 1e6
    fix.scale2 = hotelling_scale2(nu + 1, confidence) if math.isfinite(nu) else hotelling_scale2(10**9, confidence)
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
    dr = meas[:, None, None] - pred_grid
    dcost = np.einsum("pq,pij,qij->ij", w, dr, dr) - cost
    glat, glon = ll["latitude"].values, ll["longitude"].values
    north = (glat[:, None] - lat) * 111.2e3 + 0.0 * glon[None, :]
    east = (glon[None, :] - lon) * 111.32e3 * np.cos(np.radians(glat[:, None]))
    d2_lin = h[0, 0] * east**2 + 2 * h[0, 1] * east * north + h[1, 1] * north**2
    stray = (dcost <= q) & (d2_lin > 4 * q)
    far: list[tuple[float, float]] = []
    outside: list[tuple[float, float]] = []
    for alat, alon, acost in sols[1:]:  # refined local optima: sharp second crossings the grid misses
        if (acost - cost <= q and _inverse(lat, lon, alat, alon)[0] > 2e3 * max(1.0, fix.ellipse.semi_major_km)
                and all(_inverse(alat, alon, *o)[0] > 1e3 for o in far + outside)):
            # two closed hyperbolas on the globe also cross on its far side: a crossing more than a
            # quarter circumference from every station is reported, not weighed against this one
            near = min(_inverse(alat, alon, *positions[sid])[0] for sid in ids) < FAR_SIDE_M
            (far if near else outside).append((alat, alon))
    for alat, alon in outside:
        fix.notes.append(f"the hyperbolas also cross near {alat:.3f} {alon:.3f}, on the far side of the globe "
                         "(not considered)")
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
