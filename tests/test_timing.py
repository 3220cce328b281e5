"""sdrlab.timing: GPS week inference, TOW -> UTC, and the fit t(n) = t0 + n/fs (reference section 7).

Expected UTC values are computed independently with datetime arithmetic from the GPS epoch
1980-01-06T00:00:00Z and the leap-second count, or taken from published dates (GPS week 2048 began
2019-04-07T00:00:00 GPS, the second week-number rollover).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from sdrlab import timing

GPS_EPOCH = dt.datetime(1980, 1, 6, tzinfo=dt.timezone.utc)
WEEK = 604800
NS = 10**9


def _utc_to_gps_s(utc: dt.datetime, leap: int = 18) -> int:
    """Whole GPS seconds since the GPS epoch for a whole-second UTC time (independent of timing)."""
    d = utc - GPS_EPOCH
    assert d.microseconds == 0
    return d.days * 86400 + d.seconds + leap


def _unix_ns(utc: dt.datetime) -> int:
    d = utc - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (d.days * 86400 + d.seconds) * NS + d.microseconds * 1000


def _dt64(utc: dt.datetime, extra_ns: int = 0) -> np.datetime64:
    return np.datetime64(_unix_ns(utc) + extra_ns, "ns")


# --------------------------------------------------------------------------------------------------
# host clock and week


def test_epoch_constant() -> None:
    assert timing.GPS_EPOCH_UNIX_S * NS == _unix_ns(GPS_EPOCH)
    assert timing.WEEK_S == WEEK
    assert timing.DEFAULT_GPS_UTC_OFFSET_S == 18


def test_gps_now_ns_at_week_2048_start() -> None:
    # GPS week 2048 TOW 0 is 2019-04-06T23:59:42 UTC (18 leap seconds)
    utc = dt.datetime(2019, 4, 6, 23, 59, 42, tzinfo=dt.timezone.utc)
    assert timing.gps_now_ns(unix_ns=_unix_ns(utc)) == 2048 * WEEK * NS
    assert timing.gps_now_ns(17, unix_ns=_unix_ns(utc)) == 2048 * WEEK * NS - NS


def test_gps_now_ns_uses_host_clock() -> None:
    import time

    before = time.time_ns()
    g = timing.gps_now_ns()
    after = time.time_ns()
    lo = before - timing.GPS_EPOCH_UNIX_S * NS + 18 * NS
    hi = after - timing.GPS_EPOCH_UNIX_S * NS + 18 * NS
    assert lo <= g <= hi


def _host(week: int, tow_s: float) -> int:
    return week * WEEK * NS + int(round(tow_s * NS))


@pytest.mark.parametrize(
    ("host_week", "host_tow", "frame_tow", "expected"),
    [
        (2343, 100_000.0, 99_999.5, 2343),  # ordinary: frame a little behind the host
        (2343, 100_000.0, 100_002.0, 2343),  # frame a little ahead (host clock slow)
        # host already in the new week, frame stamped at the end of the previous one
        (2343, 5.0, 604_795.25, 2342),
        (2343, 0.0, 604_799.999, 2342),
        # host still in the old week, frame already in the next (host clock behind)
        (2343, 604_798.0, 1.5, 2344),
        (2343, 604_799.9, 0.0, 2344),
        # within half a week either way: no shift
        (2343, 302_000.0, 1.0, 2343),
        (2343, 302_000.0, 604_000.0, 2343),
    ],
)
def test_gps_week_for(host_week: int, host_tow: float, frame_tow: float, expected: int) -> None:
    assert timing.gps_week_for(frame_tow, _host(host_week, host_tow)) == expected


def test_week_rollover_backward_to_utc() -> None:
    """Host just past the week-2048 boundary, frame from the last second of week 2047."""
    host_utc = dt.datetime(2019, 4, 6, 23, 59, 50, tzinfo=dt.timezone.utc)  # GPS TOW 8 of 2048
    host_gps = timing.gps_now_ns(unix_ns=_unix_ns(host_utc))
    week = timing.gps_week_for(604799.5, host_gps)
    assert week == 2047
    g = timing.tow_to_gps_ns(604799, 500_000_000, week)
    # half a second before the week start, which is 23:59:42 UTC
    expected = dt.datetime(2019, 4, 6, 23, 59, 41, tzinfo=dt.timezone.utc)
    assert timing.gps_ns_to_utc(g) == _dt64(expected, 500_000_000)


def test_week_rollover_forward_to_utc() -> None:
    """Host a few seconds before the week-2048 boundary, frame already 2 s into week 2048."""
    host_utc = dt.datetime(2019, 4, 6, 23, 59, 39, tzinfo=dt.timezone.utc)  # TOW 604797 of 2047
    host_gps = timing.gps_now_ns(unix_ns=_unix_ns(host_utc))
    week = timing.gps_week_for(2.25, host_gps)
    assert week == 2048
    g = timing.tow_to_gps_ns(2, 250_000_000, week)
    expected = dt.datetime(2019, 4, 6, 23, 59, 44, tzinfo=dt.timezone.utc)
    assert timing.gps_ns_to_utc(g) == _dt64(expected, 250_000_000)


# --------------------------------------------------------------------------------------------------
# UTC conversion


def test_utc_of_known_stamp() -> None:
    utc = dt.datetime(2024, 12, 3, 12, 34, 56, tzinfo=dt.timezone.utc)
    gps_s = _utc_to_gps_s(utc)
    week, tow = divmod(gps_s, WEEK)
    assert week == 2343  # GPS week 2343 began Sunday 2024-12-01
    g = timing.tow_to_gps_ns(tow, 123_456_789, week)
    assert g == gps_s * NS + 123_456_789
    out = timing.gps_ns_to_utc(g)
    assert out.dtype == np.dtype("datetime64[ns]")
    assert out == np.datetime64("2024-12-03T12:34:56.123456789", "ns")
    assert out == _dt64(utc, 123_456_789)


def test_week_2048_tow_0_literal() -> None:
    g = timing.tow_to_gps_ns(0, 0, 2048)
    assert timing.gps_ns_to_utc(g) == np.datetime64("2019-04-06T23:59:42", "ns")
    assert timing.gps_ns_to_utc(g, 0) == np.datetime64("2019-04-07T00:00:00", "ns")


@pytest.mark.parametrize("offset", [0, 17, 18, 19])
def test_gps_utc_offset_is_configurable(offset: int) -> None:
    utc = dt.datetime(2025, 6, 30, 23, 59, 59, tzinfo=dt.timezone.utc)
    gps_s = _utc_to_gps_s(utc, leap=offset)
    week, tow = divmod(gps_s, WEEK)
    g = timing.tow_to_gps_ns(tow, 999_999_999, week)
    assert timing.gps_ns_to_utc(g, offset) == _dt64(utc, 999_999_999)
    assert timing.utc_to_gps_ns(_dt64(utc, 999_999_999), offset) == g


def test_utc_round_trip_default_offset() -> None:
    t = np.datetime64("2031-02-28T01:02:03.000000007", "ns")
    assert timing.gps_ns_to_utc(timing.utc_to_gps_ns(t)) == t


def test_full_pipeline_from_frame_stamp() -> None:
    """gpssec/gpsnsec from a frame, week from a host clock a few seconds later, UTC out."""
    utc = dt.datetime(2024, 12, 3, 12, 34, 56, tzinfo=dt.timezone.utc)
    gps_s = _utc_to_gps_s(utc)
    tow = gps_s % WEEK
    host_gps = timing.gps_now_ns(unix_ns=_unix_ns(utc) + 3 * NS)
    week = timing.gps_week_for(tow + 0.25, host_gps)
    assert timing.gps_ns_to_utc(timing.tow_to_gps_ns(tow, 250_000_000, week)) == _dt64(
        utc, 250_000_000
    )


# --------------------------------------------------------------------------------------------------
# fit_time

FS = 12001.150
NOMINAL = 12000.0
T0 = timing.tow_to_gps_ns(215_696, 28_926_838, 2343)  # some time in week 2343


def _stamps(n_frames: int = 200, fs: float = FS, t0: int = T0, first: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact stamps of frames first..first+n_frames-1 (frame 0 dropped: it carries zeros)."""
    idx = np.arange(first, first + n_frames, dtype=np.int64) * 512
    t = np.array([t0 + round(int(k) * NS / fs) for k in idx], dtype=np.int64)
    return idx, t


def test_fit_time_exact() -> None:
    idx, t = _stamps()
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok and fit.status == "ok"
    assert abs(fit.t0_gps_ns - T0) <= 1
    assert fit.fs == pytest.approx(FS, abs=1e-5)
    assert fit.n_stamps == 200
    assert fit.n_outliers == 0
    assert fit.residual_rms_s < 1e-9


def test_fit_time_t0_is_sample_zero_of_segment() -> None:
    # stamps start at a later sample index (frame 100, 4.3 s in); t0 still refers to sample 0.
    # (Extrapolating further back magnifies the 0.5 ns rounding of the stamps, hence the margin.)
    idx, t = _stamps(n_frames=200, first=100)
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok
    assert abs(fit.t0_gps_ns - T0) <= 3
    assert fit.fs == pytest.approx(FS, abs=1e-4)


@pytest.mark.parametrize("fs", [12001.188, 20251.094, 12000.0])
def test_fit_time_other_rates(fs: float) -> None:
    idx, t = _stamps(fs=fs)
    fit = timing.fit_time(idx, t, nominal_fs=round(fs))
    assert fit.ok
    assert abs(fit.t0_gps_ns - T0) <= 1
    assert fit.fs == pytest.approx(fs, abs=1e-5)


def test_fit_time_with_50ns_jitter() -> None:
    rng = np.random.default_rng(20241203)
    idx, t = _stamps(n_frames=400)
    t_j = t + np.round(rng.normal(0.0, 50.0, size=t.size)).astype(np.int64)
    fit = timing.fit_time(idx, t_j, nominal_fs=NOMINAL)
    assert fit.ok
    assert fit.n_outliers == 0
    assert abs(fit.t0_gps_ns - T0) < 1_000  # < 1 us
    assert fit.fs == pytest.approx(FS, abs=1e-3)
    assert 20e-9 < fit.residual_rms_s < 100e-9


@pytest.mark.parametrize("pos", [0, 1, 100, 199])
def test_fit_time_ignores_jumping_stamp(pos: int) -> None:
    idx, t = _stamps()
    t = t.copy()
    t[pos] += NS // 2  # +0.5 s
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok
    assert fit.n_outliers == 1
    assert abs(fit.t0_gps_ns - T0) <= 1
    assert fit.fs == pytest.approx(FS, abs=1e-5)


@pytest.mark.parametrize("pos", [1, 2, 100, 199])
def test_fit_time_ignores_stale_stamp(pos: int) -> None:
    idx, t = _stamps()
    t = t.copy()
    t[pos] = t[pos - 1]  # stale: the previous frame's stamp repeated
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok
    assert fit.n_outliers == 1
    assert abs(fit.t0_gps_ns - T0) <= 1
    assert fit.fs == pytest.approx(FS, abs=1e-5)


def test_fit_time_ignores_jump_and_stale_together() -> None:
    idx, t = _stamps()
    t = t.copy()
    t[50] += NS // 2
    t[120] = t[119]
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok and fit.n_outliers == 2
    assert abs(fit.t0_gps_ns - T0) <= 1


def test_fit_time_two_stamps_is_enough() -> None:
    idx, t = _stamps(n_frames=2)
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert fit.ok
    assert abs(fit.t0_gps_ns - T0) <= 2
    assert fit.fs == pytest.approx(FS, rel=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_fit_time_too_few_stamps(n: int) -> None:
    idx, t = _stamps(n_frames=n) if n else (np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    assert not fit.ok
    assert fit.status != "ok"
    assert fit.t0_gps_ns == -1
    assert fit.fs == NOMINAL
    assert fit.n_stamps == n


def test_fit_time_same_index_twice_is_not_a_fit() -> None:
    fit = timing.fit_time([512, 512], [T0, T0 + 10], nominal_fs=NOMINAL)
    assert not fit.ok
    assert fit.t0_gps_ns == -1


def test_fit_time_accepts_lists() -> None:
    idx, t = _stamps(n_frames=20)
    fit = timing.fit_time(idx.tolist(), t.tolist(), nominal_fs=NOMINAL)
    assert fit.ok and abs(fit.t0_gps_ns - T0) <= 1


def test_fit_time_then_utc() -> None:
    """A whole capture: t0 from the fit, UTC of sample 0 as datetime64[ns]."""
    idx, t = _stamps()
    fit = timing.fit_time(idx, t, nominal_fs=NOMINAL)
    utc = timing.gps_ns_to_utc(fit.t0_gps_ns)
    assert abs(int((utc - timing.gps_ns_to_utc(T0)).astype(np.int64))) <= 1
