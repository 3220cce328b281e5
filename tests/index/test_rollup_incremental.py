"""The incremental rollup of bulk inserts (sums and counts per (hour, station) added to
metric_hourly) equals a full ``rebuild_rollup`` on SQLite and PostgreSQL: overlapping inserts,
subsets of the metric columns, NULLs, dB metrics in linear power, times before the buckets' origin;
a failing insert leaves nothing; non-finite sums go through the exact recompute; concurrent writers
on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from sdrlab.index import bulk_insert_metrics, delete_session, metric_over_time
from sdrlab.index.ingest import rebuild_rollup
from sdrlab.index.models import DB_METRICS, METRIC_COLUMNS, MetricHourlyRow, MetricRow

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
STATIONS = ["st000", "st001", "stä-ü", "a-much-longer-station-id"]


def _rows(n_sessions: int, seed: int, t0: datetime = T0, hours: float = 30.0, prefix: str = "s") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for k in range(n_sessions):
        t_sess = t0 + timedelta(seconds=float(rng.uniform(0, hours * 3600)))
        for st in STATIONS:
            if rng.random() < 0.25:
                continue
            row: dict[str, Any] = {"time": t_sess + timedelta(microseconds=int(rng.integers(0, 900_000))),
                                   "station_id": st, "session_id": f"{prefix}-{k:05d}", "frequency_hz": 7e6}
            none = rng.random() < 0.05  # a capture whose metrics all failed
            for m in METRIC_COLUMNS:
                ok = not none and rng.random() > 0.2
                row[m] = float(rng.normal(0, 25) if m in DB_METRICS else rng.normal(1e3, 1e3)) if ok else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _rollup(engine: Engine) -> pd.DataFrame:
    with engine.connect() as c:
        df = pd.read_sql(select(MetricHourlyRow).order_by(MetricHourlyRow.bucket, MetricHourlyRow.station_id), c)
    df["bucket"] = pd.to_datetime(df["bucket"], utc=True)
    return df


def _equals_rebuild(engine: Engine) -> pd.DataFrame:
    """The rollup as kept by the ingest functions equals a rebuild from capture_metrics: the same
    rows, counts exactly, sums to rounding (the same values summed in another order)."""
    kept = _rollup(engine)
    with engine.begin() as c:
        rebuild_rollup(c)
    full = _rollup(engine)
    assert list(kept["bucket"]) == list(full["bucket"])
    assert list(kept["station_id"]) == list(full["station_id"])
    for m in METRIC_COLUMNS:
        assert list(kept[f"{m}_n"]) == list(full[f"{m}_n"]), m
        a, b = kept[f"{m}_sum"].to_numpy(float), full[f"{m}_sum"].to_numpy(float)
        assert list(np.isnan(a)) == list(np.isnan(b)), m
        assert list(np.isnan(a)) == list(kept[f"{m}_n"] == 0), m  # no value: NULL sum, count 0
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=m)
    assert len(kept) == len(metric_over_time(engine, "snr_db", _raw=True))  # one per (hour, station) with rows
    return kept


def test_overlapping_bulk_inserts_equal_a_rebuild(engine: Engine) -> None:
    a, b = _rows(120, seed=1), _rows(120, seed=2, prefix="t")  # the same hours and stations
    bulk_insert_metrics(engine, a)
    first = _equals_rebuild(engine)
    bulk_insert_metrics(engine, b)
    second = _equals_rebuild(engine)
    assert len(second) >= len(first) > 40
    assert (second["snr_db_n"] > first.set_index(["bucket", "station_id"])["snr_db_n"]
            .reindex(pd.MultiIndex.from_frame(second[["bucket", "station_id"]])).fillna(0).to_numpy()).any()
    # a subset of the metric columns into the same hours: the others' sums and counts unchanged
    part = _rows(60, seed=3, prefix="u")[["time", "station_id", "session_id", "frequency_hz", "snr_db",
                                          "clipped_fraction"]]
    bulk_insert_metrics(engine, part)
    third = _equals_rebuild(engine)
    mi = pd.MultiIndex.from_frame(third[["bucket", "station_id"]])
    before = second.set_index(["bucket", "station_id"]).reindex(mi)
    assert (third["cn0_dbhz_n"].to_numpy() == before["cn0_dbhz_n"].fillna(0).to_numpy()).all()
    # rows with no metric at all still make their (hour, station) rows, with NULL sums
    empty = _rows(5, seed=4, t0=T0 + timedelta(days=3), hours=1, prefix="v")
    empty[list(METRIC_COLUMNS)] = np.nan
    bulk_insert_metrics(engine, empty)
    last = _equals_rebuild(engine)
    new = last[last["bucket"] >= pd.Timestamp(T0 + timedelta(days=3))]
    assert len(new) > 0 and (new["snr_db_n"] == 0).all() and new["snr_db_sum"].isna().all()
    for m in ("snr_db", "clipped_fraction", "agc_gain_changed"):
        raw = metric_over_time(engine, m, _raw=True)
        got = metric_over_time(engine, m)
        assert list(got["n"]) == list(raw["n"])
        np.testing.assert_allclose(got["value"].to_numpy(float), raw["value"].to_numpy(float), rtol=1e-9)


def test_a_failing_insert_leaves_nothing(engine: Engine) -> None:
    df = _rows(40, seed=5)
    bulk_insert_metrics(engine, df.iloc[::2])
    before = _rollup(engine)
    dup = pd.concat([df.iloc[1::2], df.iloc[[0]]])  # new rows, and one already stored
    with pytest.raises(Exception):
        bulk_insert_metrics(engine, dup)
    inner = pd.concat([df.iloc[1::2], df.iloc[[1]]])  # the same row twice in one insert
    with pytest.raises(Exception):
        bulk_insert_metrics(engine, inner)
    for col, missing in (("time", pd.NaT), ("station_id", None)):  # NOT NULL
        bad = df.iloc[1::2].copy()
        bad.iloc[3, bad.columns.get_loc(col)] = missing
        with pytest.raises(Exception):
            bulk_insert_metrics(engine, bad)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricRow)).scalar() == len(df.iloc[::2])
    pd.testing.assert_frame_equal(_rollup(engine), before)
    bulk_insert_metrics(engine, df.iloc[1::2])  # and the connection is fine for the next
    _equals_rebuild(engine)


def test_non_finite_sums_take_the_exact_recompute(engine: Engine) -> None:
    df = _rows(30, seed=6)
    bulk_insert_metrics(engine, df.iloc[:40])
    inf = df.iloc[40:].copy()
    inf.iloc[0, inf.columns.get_loc("clipped_fraction")] = np.inf
    inf.iloc[1, inf.columns.get_loc("snr_db")] = np.inf
    bulk_insert_metrics(engine, inf)
    kept = _rollup(engine)
    assert np.isinf(kept["clipped_fraction_sum"]).sum() == 1 and np.isinf(kept["snr_db_sum"]).sum() == 1
    with engine.begin() as c:
        rebuild_rollup(c)
    pd.testing.assert_frame_equal(_rollup(engine), kept, check_exact=False, rtol=1e-12)
    # 10^(x/10) beyond the float range fails the insert, as the database's power() does
    over = _rows(3, seed=7, prefix="o")
    over.loc[0, "snr_db"] = 4000.0
    with pytest.raises(Exception):
        bulk_insert_metrics(engine, over)
    pd.testing.assert_frame_equal(_rollup(engine), kept)


def test_times_before_the_bucket_origin(engine: Engine) -> None:
    # the buckets start at 2000-01-03: earlier hours as the raw queries bucket them on each backend
    old = _rows(40, seed=8, t0=datetime(1999, 12, 31, 20, tzinfo=timezone.utc), hours=60, prefix="old")
    bulk_insert_metrics(engine, old.iloc[::2])
    bulk_insert_metrics(engine, old.iloc[1::2])
    _equals_rebuild(engine)
    delete_session(engine, "old-00003")
    _equals_rebuild(engine)
    for kw in ({}, {"bucket_s": 7200}):
        got, raw = metric_over_time(engine, "snr_db", **kw), metric_over_time(engine, "snr_db", _raw=True, **kw)
        assert list(got["bucket"]) == list(raw["bucket"]) and list(got["n"]) == list(raw["n"])
        np.testing.assert_allclose(got["value"].to_numpy(float), raw["value"].to_numpy(float), rtol=1e-9)


def test_deleting_a_session_in_an_hour_before_the_origin_keeps_the_others(engine: Engine) -> None:
    # SQLite buckets 09:20 and 09:57 on 2000-01-02 (before the origin) as 10:00: deleting one
    # session recomputes that bucket from all its rows, the 09:xx ones included
    bulk_insert_metrics(engine, pd.DataFrame([
        {"time": pd.Timestamp(t, tz="UTC"), "station_id": "a", "session_id": sid, "frequency_hz": 1e6, "snr_db": snr}
        for t, sid, snr in (("2000-01-02 09:57:13", "s1", 10.0), ("2000-01-02 09:20:00", "s2", 20.0))]))
    delete_session(engine, "s1")
    _equals_rebuild(engine)
    got = metric_over_time(engine, "snr_db")
    assert list(got["n"]) == [1] and list(got["value"]) == [20.0]


def test_concurrent_writers_keep_the_rollup_exact(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers on the database lock")
    base = _rows(60, seed=9, prefix="base")
    bulk_insert_metrics(engine, base)
    parts = [_rows(50, seed=10 + i, prefix=f"w{i}") for i in range(4)]  # all in the same hours
    errors: list[BaseException] = []

    def write(df: pd.DataFrame) -> None:
        try:
            for chunk in np.array_split(np.arange(len(df)), 3):
                bulk_insert_metrics(engine, df.iloc[chunk])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def remove() -> None:
        try:
            for sid in sorted(set(base["session_id"]))[::4]:
                delete_session(engine, sid)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in parts] + [threading.Thread(target=remove)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _equals_rebuild(engine)
