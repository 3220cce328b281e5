"""TDoA against the simulator's known scene: lags, position, calibrated uncertainty, the
real-world quirks, the result's dict/summary and the plots.

Sessions come from the simulator's own frame synthesis and the client's segment assembly
(``tests/tdoa_scenes.py``, no sockets, so many seeds are cheap); one test runs the real client
against the simulator over sockets (demo7).
"""

from __future__ import annotations

import json
import math
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from matplotlib.figure import Figure
from scipy import stats

import sdrlab  # noqa: F401  (registers .sdr)
from sdrlab import plots, tdoa
from sdrlab.errors import ConfigError
from sdrlab.sim.scene import Scene
from tests import tdoa_scenes as ts

LAG_TOL_S = 2e-6


def assert_lags_match(result: tdoa.TdoaResult, scene: Scene, tol_s: float = LAG_TOL_S) -> int:
    """Every used pair's lag within ``tol_s`` of the scene's delay difference; returns the count."""
    n = 0
    for pl in result.pairs:
        if pl.used:
            truth = ts.true_lag_s(scene, pl.a, pl.b)
            assert abs(pl.lag_s - truth) < tol_s, (pl.a, pl.b, pl.lag_s * 1e6, truth * 1e6)
            n += 1
    return n


def mahalanobis2(result: tdoa.TdoaResult, point: tuple[float, float]) -> float:
    assert result.position is not None and result.covariance_km2 is not None
    v = np.array(tdoa.local_offset_km(*result.position, *point))
    return float(v @ np.linalg.solve(result.covariance_km2, v))


def near_ellipse(result: tdoa.TdoaResult, point: tuple[float, float]) -> bool:
    """Within twice the ellipse: a sanity bound for single cases (the 95 % rate itself is
    what ``test_ellipse_holds_the_truth_at_the_stated_rate`` checks, over many seeds)."""
    return mahalanobis2(result, point) <= 4 * result.scale2


# ---- building blocks -------------------------------------------------------------------------
def test_vectorised_geodesic_matches_geographiclib() -> None:
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-80, 80, 200), rng.uniform(-80, 80, 200)
    lon1, lon2 = rng.uniform(-180, 180, 200), rng.uniform(-180, 180, 200)
    got = tdoa.geodesic_distance(lat1, lon1, lat2, lon2)
    want = [Geodesic.WGS84.Inverse(a, b, c, d)["s12"] for a, b, c, d in zip(lat1, lon1, lat2, lon2)]
    np.testing.assert_allclose(got, want, atol=1e-3)
    # nearly antipodal points (Vincenty does not converge) fall back to geographiclib
    assert float(tdoa.geodesic_distance(0.0, 0.0, 0.5, 179.7)) == pytest.approx(
        Geodesic.WGS84.Inverse(0.0, 0.0, 0.5, 179.7)["s12"], abs=1e-3)


@pytest.mark.parametrize("n", [5, 11, 30, 10_000])
def test_hotelling_scale_is_the_f_quantile(n: int) -> None:
    want = 2 * (n - 1) / (n - 2) * stats.f.ppf(0.95, 2, n - 2)
    assert tdoa.hotelling_scale2(n, 0.95) == pytest.approx(want, rel=1e-9)
    assert tdoa.hotelling_scale2(10**7, 0.95) == pytest.approx(stats.chi2.ppf(0.95, 2), rel=1e-5)


# ---- the known scene ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo7_socket_session() -> tuple[Scene, object, float, float]:
    """demo7 over real sockets: the real client, 30 s of stream time at 10x real rate."""
    from sdrlab.acquire import acquire
    from sdrlab.config import Settings
    from sdrlab.demo import demo7_stations
    from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=7)
    t = time.perf_counter()
    with SimServer(scene, base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, 30.0, settings=Settings(progress=False),
                          write=False)
    t_acq = time.perf_counter() - t
    ds = session.dataset
    assert ds is not None and ds.sizes["station"] == 7
    tx = scene.transmitters[0]
    ds.attrs.update(transmitter_latitude=tx.latitude, transmitter_longitude=tx.longitude)
    t = time.perf_counter()
    result = ds.sdr.tdoa()
    t_tdoa = time.perf_counter() - t
    return scene, result, t_acq, t_tdoa


def test_demo7_over_sockets_locates_the_transmitter(demo7_socket_session, record_property) -> None:
    scene, r, t_acq, t_tdoa = demo7_socket_session
    tx = scene.transmitters[0]
    assert r.stations_dropped == {}
    assert len(r.stations_used) == 7
    assert assert_lags_match(r, scene) == 21
    err = r.error_km()
    assert err is not None and err < 1.0
    assert near_ellipse(r, (tx.latitude, tx.longitude))
    assert r.n_windows >= 25 and r.gdop is not None and r.gdop < 2
    record_property("demo7_error_km", err)
    record_property("demo7_tdoa_s", t_tdoa)
    print(f"\ndemo7 30 s over sockets: error {err * 1e3:.1f} m, ellipse {r.ellipse.semi_major_km * 1e3:.1f} x "
          f"{r.ellipse.semi_minor_km * 1e3:.1f} m, acquisition {t_acq:.1f} s, tdoa {t_tdoa:.2f} s")


def test_demo7_result_as_dict_summary_and_plots(demo7_socket_session) -> None:
    _, r, _, _ = demo7_socket_session
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["position"]["latitude"] == pytest.approx(r.position[0], abs=1e-6)
    unc = d["uncertainty"]
    assert unc["confidence"] == 0.95 and unc["semi_major_km"] >= unc["semi_minor_km"] > 0
    assert 0 <= unc["orientation_deg"] < 180
    assert len(d["pairs"]) == 21 and all(p["used"] for p in d["pairs"])
    p0 = d["pairs"][0]
    assert p0["lag_us"] == pytest.approx(r.pairs[0].lag_s * 1e6, abs=1e-3)
    assert {"spread_us", "correlation", "n_windows", "residual_us"} <= set(p0)
    assert len(d["residuals_us"]) == 21 and d["stations_dropped"] == {}
    assert d["n_windows"] == r.n_windows and d["parameters"]["window_s"] == 1.0
    lines = r.summary().splitlines()
    assert lines[0] == f"position {r.position[0]:.5f} {r.position[1]:.5f}"
    assert lines[1].startswith("uncertainty 95% ellipse")
    assert sum(ln.startswith("lag ") and " us +- " in ln for ln in lines) == 21
    fig = plots.plot_tdoa_map(r)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "transmitter (truth)" in labels and any(lab.startswith("95 % ellipse") for lab in labels)
    assert "21 pairs" in " ".join(labels)
    lags = plots.plot_tdoa_lags(r)
    assert isinstance(lags, Figure) and sum(a.get_visible() for a in lags.axes) == 21


@pytest.mark.parametrize(
    ("geometry", "snr_db"),
    [("three", 25.0), ("three", 10.0), ("six", 20.0), ("six", 5.0)],
)
def test_scene_lags_position_and_ellipse(geometry: str, snr_db: float) -> None:
    stations, tx = (ts.THREE, ts.THREE_TX) if geometry == "three" else (ts.SIX, ts.SIX_TX)
    scene = ts.make_scene(stations, tx, snr_db=snr_db, seed=3)
    r = ts.session(scene, duration_s=12.0, seed=3).sdr.tdoa()
    n = len(stations)
    assert r.stations_used == [s[0] for s in stations]
    if snr_db >= 20:  # high SNR: every lag within 2 us
        assert assert_lags_match(r, scene) == n * (n - 1) // 2
    for pl in r.pairs:  # any SNR: within the pair's own standard error (Student t, ~11 windows)
        assert abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) < 4.5 * pl.stderr_s + 0.05e-6
    assert r.error_km() < 1.0
    assert near_ellipse(r, tx)


def test_ellipse_holds_the_truth_at_the_stated_rate() -> None:
    """95 % ellipses over many seeds (3 stations at 5 dB SNR, the transmitter moved around inside
    their triangle): the count holding the truth is binomial(n, 0.95) within a 0.1 % two-sided
    tolerance, and the ellipses are not inflated (median Mahalanobis radius as for Hotelling)."""
    n, inside, t2 = 150, 0, []
    rng = np.random.default_rng(2024)
    for seed in range(n):
        tx = (ts.THREE_TX[0] + rng.uniform(-0.5, 0.5), ts.THREE_TX[1] + rng.uniform(-0.7, 0.7))
        scene = ts.make_scene(ts.THREE, tx, snr_db=5.0, seed=100 + seed)
        r = tdoa.tdoa(ts.session(scene, duration_s=6.5, seed=100 + seed), window_s=0.5, min_overlap_s=5.0)
        assert r.position is not None, r.reason
        inside += r.contains(tx)
        t2.append(mahalanobis2(r, tx) / r.scale2)
    lo, hi = stats.binom.ppf(0.0005, n, 0.95), stats.binom.isf(0.0005, n, 0.95)
    assert lo <= inside <= hi, (inside, n)
    # T^2 / k^2 median for n ~ 11 windows: about 0.18 (0.23 for a known covariance)
    assert 0.1 < float(np.median(t2)) < 0.35


def test_degrades_gracefully_as_snr_falls() -> None:
    """Six stations, SNR falling: the ellipse widens, the truth stays inside a generous multiple
    of it, and at the end no position is claimed rather than a wrong confident one."""
    sizes = []
    for snr in (25.0, 10.0, 0.0, -6.0, -30.0):
        scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=snr, seed=5)
        r = ts.session(scene, duration_s=12.0, seed=5).sdr.tdoa()
        if r.position is None:
            sizes.append(math.inf)
            assert r.reason and r.summary().startswith("position none (")
            continue
        assert r.ellipse is not None
        sizes.append(r.ellipse.semi_major_km)
        assert mahalanobis2(r, ts.SIX_TX) <= 4 * r.scale2, (snr, r.summary())
    assert sizes == sorted(sizes), sizes
    assert sizes[0] < 0.5 and sizes[-1] == math.inf
    assert sizes[2] > 3 * sizes[0]


# ---- real-world quirks -----------------------------------------------------------------------
def test_rates_off_nominal_and_mixed() -> None:
    """One receiver announces a rate 300 ppm off its true one (~43 samples over the record), one
    runs at exactly the nominal 12000 Hz (100 ppm from the others), one is a 20.25 kHz 'wide'
    Kiwi: each is timed by its GPS-measured rate and resampled to the common clock."""
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=8,
                          rx_oslo={"announced_rate_error_ppm": 300.0},
                          rx_stockholm={"sample_rate": 12000.0},
                          rx_kalmar={"sample_rate": 20251.094, "audio_rate": 20250})
    oslo = scene.receiver("rx-oslo")
    assert abs(oslo.announced_sample_rate - oslo.sample_rate) * 12.0 > 1.0  # more than a sample
    r = ts.session(scene, duration_s=12.0, seed=8).sdr.tdoa()
    assert len(r.stations_used) == 6
    for rx in scene.receivers:
        assert r.timing[rx.id].fs == pytest.approx(rx.sample_rate, abs=1e-3)
    assert r.sample_rate == pytest.approx(12000.0, abs=1e-3)  # the lowest rate is the common clock
    assert assert_lags_match(r, scene) == 15
    assert r.error_km() < 1.0 and near_ellipse(r, ts.SIX_TX)


def _stale_and_jump(last: np.ndarray, gsec: np.ndarray, gnsec: np.ndarray) -> None:
    """A stale stamp (the previous frame's, on a fresh frame), a +1 s jump and a +3 ms jump."""
    fresh = np.nonzero(np.diff(last.astype(int)) < 0)[0] + 1
    k = int(fresh[len(fresh) // 3])
    gsec[k], gnsec[k] = gsec[k - 1], gnsec[k - 1]
    k = int(fresh[len(fresh) // 2])
    gsec[k] += 1
    k = int(fresh[2 * len(fresh) // 3])
    gnsec[k] = (gnsec[k] + 3_000_000) % 1_000_000_000
    gsec[k] += 1 if gnsec[k] < 3_000_000 else 0


STEP_FRAME = 280


def _step(last: np.ndarray, gsec: np.ndarray, gnsec: np.ndarray) -> None:
    """From frame 280 on (of ~330), every stamp 2 ms late: the time base jumped."""
    t = gsec.astype(np.int64) * 1_000_000_000 + gnsec.astype(np.int64) + 2_000_000
    gsec[STEP_FRAME:] = t[STEP_FRAME:] // 1_000_000_000
    gnsec[STEP_FRAME:] = t[STEP_FRAME:] % 1_000_000_000


def test_stale_and_jumping_gps_stamps() -> None:
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=9)
    ds = ts.session(scene, duration_s=14.0, seed=9,
                    stamp_edits={"rx-oslo": _stale_and_jump, "rx-kalmar": _step})
    # the client's own fit over the few fresh stamps gave up on rx-oslo; the refit does not
    assert ds["gps_status"].sel(station="rx-oslo").item() == "GPS stamps inconsistent"
    r = ds.sdr.tdoa()
    assert len(r.stations_used) == 6
    assert r.timing["rx-oslo"].n_rejected_stamps == 3
    kal = r.timing["rx-kalmar"]
    assert kal.fs == pytest.approx(12001.174, abs=1e-3)
    assert kal.n_rejected_stamps >= 40
    assert kal.segments[0].usable_stop <= STEP_FRAME * 512  # nothing after the step is used
    assert assert_lags_match(r, scene) == 15
    assert r.error_km() < 1.0 and near_ellipse(r, ts.SIX_TX)
    assert any("rx-oslo" in n and "GPS stamp" in n for n in r.notes)


def test_stored_fit_off_the_raw_stamps_is_refitted() -> None:
    """A session whose stored GPS fit is 2 ms off for one station (a reader that swallowed a
    jumped stamp): the raw stamps decide, and the result says so."""
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=20.0, seed=10)
    ds = ts.session(scene, duration_s=12.0, seed=10)
    t0 = ds["segment_t0"].values.copy()
    t0[1, 0] += np.timedelta64(2_000_000, "ns")
    ds["segment_t0"] = (("station", "segment"), t0)
    r = ds.sdr.tdoa()
    assert assert_lags_match(r, scene) == 3
    assert r.error_km() < 1.0
    assert any("refitted" in n for n in r.notes)


def test_station_without_gps_time_is_dropped_with_a_reason() -> None:
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=11)
    ds = ts.session(scene, duration_s=12.0, seed=11, gps={"rx-aarhus": "disabled", "rx-kalmar": "no_fix"})
    r = ds.sdr.tdoa()
    assert set(r.stations_dropped) == {"rx-aarhus", "rx-kalmar"}
    assert r.stations_dropped["rx-aarhus"] == "no GPS time (no GPS timestamps)"
    assert r.stations_dropped["rx-kalmar"].startswith("no GPS time (no GPS clock")
    assert len(r.stations_used) == 4 and assert_lags_match(r, scene) == 6
    assert r.error_km() < 1.0
    assert "dropped rx-aarhus: no GPS time" in r.summary()
    assert r.to_dict()["stations_dropped"]["rx-kalmar"].startswith("no GPS time")


def test_two_stations_left_report_lags_but_no_position() -> None:
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=20.0, seed=12)
    ds = ts.session(scene, duration_s=12.0, seed=12, gps={"rx-southeast": "disabled"})
    r = ds.sdr.tdoa()
    assert r.position is None and r.ellipse is None and r.gdop is None
    assert r.stations_used == ["rx-north", "rx-southwest"]
    assert [pl.name for pl in r.pairs] == ["rx-north|rx-southwest"]
    assert assert_lags_match(r, scene) == 1
    first = r.summary().splitlines()[0]
    assert first == "position none (only 2 stations with usable lags; a position needs at least 3)"
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["position"] is None and d["uncertainty"] is None
    assert d["pairs"][0]["lag_us"] == pytest.approx(ts.true_lag_s(scene, "rx-north", "rx-southwest") * 1e6, abs=2)
    assert isinstance(ds.sdr.plot_tdoa_map(r), Figure)  # one hyperbola, no estimate
    assert isinstance(ds.sdr.plot_tdoa_lags(r), Figure)


def test_short_record_and_deaf_station_are_dropped() -> None:
    """A station whose record leaves less than the minimum overlap, and one that does not hear
    the transmitter (no correlation with anyone), are dropped with reasons; the rest locate."""
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=[20, 20, 20, 20, 20, -45], seed=13)
    ds = ts.session(scene, duration_s=12.0, seed=13, durations={"rx-aarhus": 6.0})
    r = ds.sdr.tdoa()
    assert "common span" in r.stations_dropped["rx-aarhus"]
    assert r.stations_dropped["rx-kalmar"] == "no significant correlation with any other station"
    assert len(r.stations_used) == 4 and r.error_km() < 1.0
    # nothing overlaps long enough: no lags, no position, and a reason
    r2 = ds.sdr.tdoa(min_overlap_s=30.0)
    assert r2.position is None and r2.pairs == [] and "overlap" in (r2.reason or "")


def test_reconnect_gap_only_costs_the_windows_it_covers() -> None:
    """A receiver that reconnected (two segments, each with its own GPS fit, 1.5 s apart): its
    pairs skip the windows in the gap, everything else is as usual."""
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=14)
    ds = ts.session(scene, duration_s=13.0, seed=14, reconnects={"rx-gothenburg": (5.0, 1.5)})
    assert ds.sizes["segment"] == 2
    r = ds.sdr.tdoa()
    assert len(r.stations_used) == 6 and len(r.timing["rx-gothenburg"].segments) == 2
    with_gap = r.pair("rx-gothenburg", "rx-oslo")
    other = r.pair("rx-oslo", "rx-stockholm")
    assert with_gap.n_valid <= other.n_valid - 2
    assert with_gap.window_status.count("gap") >= 2
    assert assert_lags_match(r, scene) == 15
    assert r.error_km() < 1.0 and near_ellipse(r, ts.SIX_TX)


def test_options_and_lazy_data() -> None:
    """A dask-backed session (as opened from the store) gives the same answer; ``stations``
    restricts the analysis; ``band_hz`` band-limits the envelopes."""
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=15.0, seed=15)
    ds = ts.session(scene, duration_s=12.0, seed=15)
    r = tdoa.tdoa(ds)
    lazy = tdoa.tdoa(ds.chunk({"station": 1, "sample": 50_000}))
    assert lazy.position == pytest.approx(r.position, abs=1e-9)
    four = tdoa.tdoa(ds, stations=["rx-oslo", "rx-stockholm", "rx-copenhagen", "rx-kalmar"])
    assert four.stations_used == ["rx-oslo", "rx-stockholm", "rx-copenhagen", "rx-kalmar"]
    assert len(four.pairs) == 6 and four.error_km() < 1.0
    with pytest.raises(ConfigError, match="rx-nowhere"):
        tdoa.tdoa(ds, stations=["rx-oslo", "rx-nowhere"])
    band = tdoa.tdoa(ds, band_hz=(100.0, 3000.0))
    assert assert_lags_match(band, scene) == 15 and band.error_km() < 1.0
    assert band.to_dict()["parameters"]["band_hz"] == [100.0, 3000.0]


def _exact_pairs(stations: dict[str, tuple[float, float]], tx: tuple[float, float]) -> list[tdoa.PairLag]:
    """Pairs with 12 windows of lags around the exact ones (0.3 us scatter, seeded)."""
    rng = np.random.default_rng(0)
    dist = {s: Geodesic.WGS84.Inverse(*tx, *p)["s12"] for s, p in stations.items()}
    ids = list(stations)
    out = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            w = (dist[b] - dist[a]) / tdoa.C_M_S + rng.normal(0.0, 0.3e-6, 12)
            out.append(tdoa.PairLag(a, b, 0.0, 0.0, float(w.mean()), float(w.std(ddof=1)),
                                    float(w.std(ddof=1) / np.sqrt(12)), 0.9, 12, 12, w, np.full(12, 0.9),
                                    ["ok"] * 12, used=True))
    return out


def test_second_crossing_of_the_hyperbolas_is_not_a_coin_flip() -> None:
    """Three stations give two hyperbolas, which can cross twice: when both crossings fit the
    lags, no position is claimed; the reason names both (one of them the truth)."""
    stations = {"a": (50.0, 5.0), "b": (50.0, 10.0), "c": (51.5, 7.5)}
    inside = tdoa.locate(_exact_pairs(stations, (47.0, 7.5)), stations)
    assert inside.position is not None and not inside.ambiguous
    assert Geodesic.WGS84.Inverse(47.0, 7.5, *inside.position)["s12"] < 1e3
    tx = (49.0, 14.0)
    fix = tdoa.locate(_exact_pairs(stations, tx), stations)
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
