"""sdrlab.tdoa.timebase: each station's GPS time base (rates off nominal, stale, jumping and
jittering stamps, stored fits, missing GPS, short records, reconnects) and the resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdrlab import tdoa
from sdrlab.tdoa import timebase as tb
from tests import tdoa_scenes as ts

from .checks import assert_lags_match, near_ellipse


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


def test_stamp_errors_per_fix_are_measured_between_intervals_and_stated() -> None:
    """Stamps that err by 3 us, one error per GPS fix (a Kiwi derives its stamps from one clock
    model between fixes; the real DCF77 stamps err ~60 ns RMS with frame-to-frame steps of ~12 ns):
    the scatter within a fix interval is nil, the line's uncertainty is the spread of the
    intervals' means over the root of their number, and it goes into the pairs'."""
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=30.0, seed=21, jitter_s=3e-6)
    r = ts.session(scene, duration_s=12.0, seed=21).sdr.tdoa(station_delay_sigma_s=0.0)
    for sid, st in r.timing.items():
        seg = st.segments[0]
        interval = scene.receiver(sid).gps_fix_interval_s
        n_fix = 12.0 / interval
        assert seg.jitter_s < 1e-6, sid  # little within an interval (the slope the steps tilt)
        assert 0.15 * 3e-6 / math.sqrt(n_fix) < st.sigma_s < 3.0 * 3e-6 / math.sqrt(n_fix - 1), sid
        assert r.station_sigma_s[sid] == pytest.approx(np.hypot(st.sigma_s, 20e-9))
    for pl in r.pairs:
        assert abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) < pl.ci95_s
    # without stamp errors the time base is exact to the stamps' nanosecond rounding
    clean = ts.session(ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=30.0, seed=21), duration_s=12.0, seed=21)
    assert all(st.sigma_s < 1e-9 for st in tdoa.station_times(clean)[0].values())


def _drifting_clock(last: np.ndarray, gsec: np.ndarray, gnsec: np.ndarray) -> None:
    """A clock 1 ppm fast between GPS fixes: each stale stamp is late by 1 us per second since
    the last fix (last_gps_solution), the fresh ones are right."""
    t = gsec.astype(np.int64) * 1_000_000_000 + gnsec.astype(np.int64) + last.astype(np.int64) * 1000
    t[0] = 0
    gsec[:] = t // 1_000_000_000
    gnsec[:] = t % 1_000_000_000


def test_stale_stamps_biased_against_fresh_ones_leave_the_fresh_line() -> None:
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=30.0, seed=23)
    ds = ts.session(scene, duration_s=12.0, seed=23, stamp_edits={"rx-north": _drifting_clock})
    times, _ = tdoa.station_times(ds)
    assert times["rx-north"].segments[0].fit_stamps == "fresh stamps"
    assert times["rx-southwest"].segments[0].fit_stamps == "all stamps"
    r = ds.sdr.tdoa(station_delay_sigma_s=0.0)
    for pl in r.pairs:
        assert abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) < max(pl.ci95_s, 0.2e-6)


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


@pytest.mark.parametrize("ratio", [1.0000123, 0.9999871, 1.6875, 0.5926])
def test_interpolation_by_runs_equals_the_gathered_filter(ratio: float) -> None:
    """Rates a few ppm apart take the fast path (contiguous taps between the rare skips); very
    different rates gather the taps: both are the same windowed-sinc interpolation."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(50_000) + 1j * rng.standard_normal(50_000)).astype(np.complex64)
    u = 20 + np.arange(int(40_000 / max(ratio, 1.0))) * ratio + 0.37
    u = u[u < 50_000 - 20]
    got = tb._interpolate(x, u, 8, 0.95)
    tab = tb._kernel_table(8, 0.95)
    n0 = np.floor(u)
    ph = np.rint((u - n0) * tb._PHASES).astype(int)
    want = np.einsum("ij,ij->i", x.astype(complex)[n0.astype(int)[:, None] + np.arange(-7, 9)], tab[ph])
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_baseband_and_envelopes_on_the_common_clock() -> None:
    """The resampled baseband is complex64 in full-scale units, valid where the record is; the
    envelopes are its magnitude (``resample_envelopes``, the earlier API, still works)."""
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=30.0, seed=22)
    ds = ts.session(scene, duration_s=12.0, seed=22)
    times, _ = tdoa.station_times(ds)
    grid, _ = tdoa.common_grid(times)
    ids, z, valid = tdoa.resample_baseband(ds, times, grid)
    assert z.dtype == np.complex64 and z.shape == (3, grid.n) and valid.all()
    ids2, env, valid2 = tdoa.resample_envelopes(ds, times, grid)
    assert ids2 == ids and np.array_equal(valid2, valid)
    np.testing.assert_allclose(env, np.abs(z), rtol=1e-6)
    rms = float(np.sqrt(np.mean(np.abs(z[0]) ** 2)))
    truth = scene.truth(ids[0], ts.TUNE_HZ)
    assert 20 * np.log10(rms) == pytest.approx(truth["signal_power_dbfs"], abs=0.3)
