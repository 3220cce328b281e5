"""Coverage of the stated uncertainty over a seeded matrix of simulated sessions: 3 to 7
receivers at random places, the transmitter somewhere among them, SNR 0 to 40 dB, each receiver
late by its own processing delay (Gaussian, 20 us: the default prior) and its GPS stamps
jittering by 0.5-3 us.  The pairs' 95 % intervals and the 95 % ellipses must hold the truth at
least 90 % of the time (they should about 95 %), and a transmitter nobody hears gets no position.

One synthesis per geometry and SNR (5 s, windows of 0.5 s) serves several draws of delays and
jitter (:func:`tests.tdoa_scenes.with_stamp_errors`); the same sessions without delays or jitter,
analysed with no delay prior, check the lags' own (window) uncertainty.  ``benchmarks/
tdoa_matrix.py`` runs a larger matrix with longer sessions and prints the same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import xarray as xr

from sdrlab import tdoa
from sdrlab.sim.scene import Scene
from tests import tdoa_scenes as ts

from .checks import mahalanobis2

BASES = 25
DRAWS = 4
KW = {"window_s": 0.5, "min_overlap_s": 4.0, "grid_points": 61}
DELAY_SIGMA_S = 20e-6


@dataclass
class Base:
    scene: Scene
    ds: xr.Dataset
    tx: tuple[float, float]
    snr_db: float


def make_base(i: int) -> Base:
    """Geometry, SNR and synthesis of base session ``i`` (seeded)."""
    rng = np.random.default_rng([2026, i])
    n = int(rng.integers(3, 8))
    lat = rng.uniform(46.0, 56.0, n)
    lon = rng.uniform(0.0, 20.0, n)
    w = rng.dirichlet(np.ones(n))
    tx = (float(w @ lat), float(w @ lon))
    stations = [(f"rx-{i}-{k}", float(a), float(b)) for k, (a, b) in enumerate(zip(lat, lon))]
    snr = float(rng.uniform(0.0, 40.0))
    scene = ts.make_scene(stations, tx, snr_db=snr, seed=i)
    return Base(scene, ts.session(scene, duration_s=5.0, seed=i), tx, snr)


@dataclass
class Matrix:
    runs: int
    pairs_inside: list[bool]
    ellipses_inside: list[bool]
    no_position: list[str]
    clean_pairs_inside: list[bool]
    clean_ellipses_inside: list[bool]
    seconds: float
    #: squared Mahalanobis distance of the truth over the ellipse's (so 1 is its edge)
    radius2: list[float]
    clean_radius2: list[float]


def run_matrix(bases: int = BASES, draws: int = DRAWS) -> Matrix:
    t = time.perf_counter()
    m = Matrix(0, [], [], [], [], [], 0.0, [], [])
    for i in range(bases):
        base = make_base(i)
        ids = [rx.id for rx in base.scene.receivers]
        clean = tdoa.tdoa(base.ds, station_delay_sigma_s=0.0, **KW)
        m.clean_pairs_inside += _pairs_inside(clean, base.scene)
        if clean.position is not None:
            m.clean_ellipses_inside.append(clean.contains(base.tx))
            m.clean_radius2.append(mahalanobis2(clean, base.tx) / clean.scale2)
        for j in range(draws):
            rng = np.random.default_rng([7, i, j])
            delays = dict(zip(ids, rng.normal(0.0, DELAY_SIGMA_S, len(ids))))
            ds = ts.with_stamp_errors(base.ds, delays_s=delays, jitter_s=float(rng.uniform(0.5e-6, 3e-6)),
                                      seed=100 * i + j)
            r = tdoa.tdoa(ds, **KW)
            m.runs += 1
            m.pairs_inside += _pairs_inside(r, base.scene)
            if r.position is None:
                m.no_position.append(f"base {i} ({len(ids)} stations, {base.snr_db:.0f} dB): {r.reason}")
            else:
                m.ellipses_inside.append(r.contains(base.tx))
                m.radius2.append(mahalanobis2(r, base.tx) / r.scale2)
    m.seconds = time.perf_counter() - t
    return m


def _pairs_inside(r: tdoa.TdoaResult, scene: Scene) -> list[bool]:
    return [abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) <= pl.ci95_s for pl in r.pairs if pl.used]


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    with ts.one_blas_thread():
        return run_matrix()


def test_stated_uncertainty_covers_the_truth(matrix: Matrix, record_property) -> None:
    pair_rate = float(np.mean(matrix.pairs_inside))
    ellipse_rate = float(np.mean(matrix.ellipses_inside))
    record_property("matrix_runs", matrix.runs)
    record_property("matrix_pair_coverage", pair_rate)
    record_property("matrix_ellipse_coverage", ellipse_rate)
    record_property("matrix_seconds", matrix.seconds)
    print(f"\nmatrix: {matrix.runs} runs in {matrix.seconds:.1f} s; pairs inside their 95 % interval "
          f"{pair_rate:.1%} of {len(matrix.pairs_inside)}; truth inside the 95 % ellipse {ellipse_rate:.1%} of "
          f"{len(matrix.ellipses_inside)}; no position in {len(matrix.no_position)}")
    assert matrix.runs >= 100
    assert pair_rate >= 0.90 and ellipse_rate >= 0.90
    assert len(matrix.ellipses_inside) >= 0.9 * matrix.runs, matrix.no_position  # positions are claimed
    # and the ellipses are not inflated: the truth's median radius is about chi2(2)'s median over
    # its 95 % point (0.23) when the delays follow the prior
    assert 0.1 < float(np.median(matrix.radius2)) < 0.4


def test_window_uncertainty_alone_covers_the_truth_without_delays(matrix: Matrix) -> None:
    """Receivers without delays or jitter, analysed without the delay prior: the lags' own
    (window-scatter) uncertainty and the ellipse's small-sample factor cover the truth."""
    assert float(np.mean(matrix.clean_pairs_inside)) >= 0.90
    assert float(np.mean(matrix.clean_ellipses_inside)) >= 0.90
    # not inflated either: Hotelling's T^2 median over its 95 % point for ~9 windows is ~0.17
    assert 0.07 < float(np.median(matrix.clean_radius2)) < 0.4


def test_nobody_hears_it_no_position() -> None:
    """The transmitter 40 dB under the noise at every receiver: no lag, no position."""
    base = make_base(3)
    scene = ts.make_scene([(rx.id, rx.latitude, rx.longitude) for rx in base.scene.receivers], base.tx,
                          snr_db=-40.0, seed=3)
    r = tdoa.tdoa(ts.session(scene, duration_s=5.0, seed=3), **KW)
    assert r.position is None and not any(pl.used for pl in r.pairs)
    assert r.reason == "no station pair with a significant correlation peak"
