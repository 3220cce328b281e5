"""Checks shared by the TDoA tests: lags and positions against the known scene."""

from __future__ import annotations

import numpy as np
from geographiclib.geodesic import Geodesic

from sdrlab import tdoa
from sdrlab.sim.scene import Scene
from tests import tdoa_scenes as ts

LAG_TOL_S = 2e-6


def assert_lags_match(result: tdoa.TdoaResult, scene: Scene, tol_s: float = LAG_TOL_S, *, arrival: bool = False) -> int:
    """Every used pair's lag within ``tol_s`` of the scene's (geometric, or with ``arrival`` the
    receivers' processing delays included); returns the count."""
    n = 0
    for pl in result.pairs:
        if pl.used:
            truth = (ts.arrival_lag_s if arrival else ts.true_lag_s)(scene, pl.a, pl.b)
            assert abs(pl.lag_s - truth) < tol_s, (pl.a, pl.b, pl.lag_s * 1e6, truth * 1e6)
            n += 1
    return n


def mahalanobis2(result: tdoa.TdoaResult, point: tuple[float, float]) -> float:
    assert result.position is not None and result.covariance_km2 is not None
    v = np.array(tdoa.local_offset_km(*result.position, *point))
    return float(v @ np.linalg.solve(result.covariance_km2, v))


def near_ellipse(result: tdoa.TdoaResult, point: tuple[float, float]) -> bool:
    """Within twice the ellipse: a sanity bound for single cases (the rates themselves are what
    the coverage tests check, over many seeds)."""
    return mahalanobis2(result, point) <= 4 * result.scale2


def within_ci(result: tdoa.TdoaResult, scene: Scene) -> list[bool]:
    """Per used pair: the geometric lag inside the pair's stated 95 % interval."""
    return [abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) <= pl.ci95_s for pl in result.pairs if pl.used]


def exact_pairs(stations: dict[str, tuple[float, float]], tx: tuple[float, float], *, scatter_s: float = 0.3e-6,
                n: int = 12, seed: int = 0, offsets_s: dict[str, float] | None = None) -> list[tdoa.PairLag]:
    """Pairs with ``n`` windows of lags around the exact ones (``scatter_s`` seeded scatter), each
    station late by ``offsets_s``."""
    rng = np.random.default_rng(seed)
    dist = {s: Geodesic.WGS84.Inverse(*tx, *p)["s12"] for s, p in stations.items()}
    off = offsets_s or {}
    ids = list(stations)
    out = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            w = (dist[b] - dist[a]) / tdoa.C_M_S + off.get(b, 0.0) - off.get(a, 0.0) + rng.normal(0.0, scatter_s, n)
            out.append(tdoa.PairLag(a, b, 0.0, 0.0, float(w.mean()), float(w.std(ddof=1)),
                                    float(w.std(ddof=1) / np.sqrt(n)), 0.9, n, n, w, np.full(n, 0.9),
                                    ["ok"] * n, used=True))
    return out
