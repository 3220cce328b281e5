"""sdrlab.tdoa.locate (and calibrate): the error model with per-station timing terms, the ellipse's
small-sample factor, ambiguous crossings, a station whose lags look delayed, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from scipy import stats

from sdrlab import tdoa
from sdrlab.errors import ConfigError
from sdrlab.tdoa.locate import satterthwaite
from tests import tdoa_scenes as ts

from .checks import assert_lags_match, exact_pairs, mahalanobis2


@pytest.mark.parametrize("n", [5, 11, 30, 10_000])
def test_hotelling_scale_is_the_f_quantile(n: int) -> None:
    want = 2 * (n - 1) / (n - 2) * stats.f.ppf(0.95, 2, n - 2)
    assert tdoa.hotelling_scale2(n, 0.95) == pytest.approx(want, rel=1e-9)
    assert tdoa.hotelling_scale2(10**7, 0.95) == pytest.approx(stats.chi2.ppf(0.95, 2), rel=1e-5)


def test_satterthwaite_degrees_of_freedom() -> None:
    assert satterthwaite(1.0, 0.0, 11) == pytest.approx(10.0)
    assert satterthwaite(1.0, 1.0, 11) == pytest.approx(40.0)  # a stated half: four times the dof
    assert satterthwaite(0.0, 1.0, 11) == math.inf


def test_station_timing_terms_enter_every_pair_with_the_station() -> None:
    stations = {"a": (50.0, 5.0), "b": (50.0, 10.0), "c": (51.5, 7.5)}
    pairs = exact_pairs(stations, (50.5, 7.5))
    win = tdoa.lag_covariance(pairs, {})
    cov = tdoa.lag_covariance(pairs, {"a": 20e-6, "b": 10e-6, "c": 0.0})
    extra = cov - win
    # pairs (a,b), (a,c), (b,c): variances 20^2+10^2, 20^2, 10^2 us^2; (a,b)-(a,c) share a
    np.testing.assert_allclose(np.diag(extra) * 1e12, [500.0, 400.0, 100.0], rtol=1e-9)
    assert extra[0, 1] * 1e12 == pytest.approx(400.0) and extra[0, 2] * 1e12 == pytest.approx(-100.0)
    fix = tdoa.locate(pairs, stations, station_sigma_s={"a": 20e-6, "b": 10e-6, "c": 0.0})
    tight = tdoa.locate(pairs, stations)
    assert fix.ellipse is not None and tight.ellipse is not None
    assert fix.ellipse.semi_major_km > 20 * tight.ellipse.semi_major_km
    assert math.isinf(fix.dof_eff) or fix.dof_eff > 1000  # the ellipse is the stated prior's


def test_second_crossing_of_the_hyperbolas_is_not_a_coin_flip() -> None:
    """Three stations give two hyperbolas, which can cross twice: when both crossings fit the
    lags, no position is claimed; the reason names both (one of them the truth)."""
    stations = {"a": (50.0, 5.0), "b": (50.0, 10.0), "c": (51.5, 7.5)}
    inside = tdoa.locate(exact_pairs(stations, (47.0, 7.5)), stations)
    assert inside.position is not None and not inside.ambiguous
    assert Geodesic.WGS84.Inverse(47.0, 7.5, *inside.position)["s12"] < 1e3
    tx = (49.0, 14.0)
    fix = tdoa.locate(exact_pairs(stations, tx), stations)
    assert fix.position is None and fix.ambiguous and len(fix.alternatives) == 2
    assert fix.reason is not None and fix.reason.startswith("ambiguous: the hyperbolas cross more than once")
    assert min(Geodesic.WGS84.Inverse(*tx, *c)["s12"] for c in fix.alternatives) < 1e3
    assert fix.likelihood is not None  # the map still shows both


def test_two_pairs_from_one_station_crossing_twice_claim_no_position() -> None:
    """The geometry a -6 dB sweep left (only Stockholm-Gothenburg and Stockholm-Aarhus
    correlating): the two hyperbolas cross twice, 250 km apart, so no position is claimed,
    whether the lags are exact to 1 us or scatter by 65 us; the truth is one of the crossings."""
    stations = {"rx-stockholm": (59.33, 18.07), "rx-gothenburg": (57.71, 11.97), "rx-aarhus": (56.16, 10.20)}
    dist = {s: Geodesic.WGS84.Inverse(*ts.SIX_TX, *p)["s12"] for s, p in stations.items()}
    for scatter_us in (1.0, 65.0):
        z = np.random.default_rng(1).standard_normal((2, 11))
        z = (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, ddof=1, keepdims=True)
        pairs = []
        for b, zz in zip(("rx-gothenburg", "rx-aarhus"), z):
            w = (dist[b] - dist["rx-stockholm"]) / tdoa.C_M_S + scatter_us * 1e-6 * zz
            pairs.append(tdoa.PairLag("rx-stockholm", b, 0.0, 0.0, float(w.mean()), float(w.std(ddof=1)),
                                      float(w.std(ddof=1) / np.sqrt(11)), 0.9, 11, 11, w, np.full(11, 0.9),
                                      ["ok"] * 11, used=True))
        fix = tdoa.locate(pairs, stations)
        assert fix.position is None and fix.ellipse is None and fix.ambiguous, scatter_us
        assert fix.reason is not None and fix.reason.startswith("ambiguous: the hyperbolas cross more than once")
        if scatter_us == 1.0:
            assert min(Geodesic.WGS84.Inverse(*ts.SIX_TX, *c)["s12"] for c in fix.alternatives) < 1e3


def test_a_station_that_looks_delayed_is_named_and_down_weighted() -> None:
    """Six stations, one 150 us late (beyond what the 20 us prior allows): with three degrees of
    freedom to spare its apparent delay is measured, it is named and down-weighted, and the
    others place the transmitter."""
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=25.0, seed=31, delays_s={"rx-kalmar": 150e-6})
    r = ts.session(scene, duration_s=10.0, seed=31).sdr.tdoa(min_overlap_s=8.0)
    assert list(r.stations_downweighted) == ["rx-kalmar"]
    assert r.stations_downweighted["rx-kalmar"].startswith("its lags look 1")
    d, se = r.station_offsets_s["rx-kalmar"]  # se: the other stations' 20 us priors, mostly
    assert d == pytest.approx(150e-6, abs=3 * se) and se < 30e-6
    assert r.station_sigma_s["rx-kalmar"] > 140e-6 and len(r.stations_used) == 6
    assert r.error_km() < 1.0 and r.contains(ts.SIX_TX)
    assert "down-weighted rx-kalmar: its lags look" in r.summary()
    assert r.to_dict()["stations_downweighted"]["rx-kalmar"].endswith("down-weighted")
    assert assert_lags_match(r, scene, arrival=True) == 15  # the lags themselves are right


def test_calibrate_against_a_known_transmitter_then_apply() -> None:
    """Receivers 0, 35, -20 and 10 us late: calibrated on one session of a known transmitter
    (relative delays, summing to zero), then a second session located with them applied and a
    tight delay prior is as good as with perfect receivers."""
    delays = {"rx-oslo": 0.0, "rx-stockholm": 35e-6, "rx-gothenburg": -20e-6, "rx-copenhagen": 10e-6}
    four = ts.SIX[:4]
    scene = ts.make_scene(four, ts.SIX_TX, snr_db=25.0, seed=32, delays_s=delays)
    cal = tdoa.calibrate(ts.session(scene, duration_s=8.0, seed=32), ts.SIX_TX, min_overlap_s=6.0, window_s=0.5)
    mean = np.mean(list(delays.values()))
    for sid, d in delays.items():
        assert cal.delays_s[sid] == pytest.approx(d - mean, abs=max(4 * cal.sigma_s[sid], 0.3e-6)), sid
    assert sum(cal.delays_s.values()) == pytest.approx(0.0, abs=1e-12)
    assert max(abs(v) for v in cal.residuals_s.values()) < 1e-6 and cal.notes == []
    assert set(cal.to_dict()["delays_us"]) == set(delays)
    other = ts.session(scene, duration_s=8.0, seed=33)
    raw = tdoa.tdoa(other, min_overlap_s=6.0, window_s=0.5)
    fixed = tdoa.tdoa(other, min_overlap_s=6.0, window_s=0.5, station_delays_s=cal.delays_s,
                      station_delay_sigma_s=1e-6)
    assert fixed.error_km() < 0.5 < raw.error_km()
    assert fixed.ellipse.semi_major_km < raw.ellipse.semi_major_km / 5
    assert fixed.contains(ts.SIX_TX) and mahalanobis2(fixed, ts.SIX_TX) < 4 * fixed.scale2
    assert all(pl.delay_correction_s != 0.0 for pl in fixed.pairs)
    with pytest.raises(ConfigError, match="do not pass station_delays_s"):
        tdoa.calibrate(other, ts.SIX_TX, station_delays_s={})
