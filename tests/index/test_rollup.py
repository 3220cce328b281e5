"""The hourly rollup (metric_hourly): the same answers as the raw rows on SQLite and PostgreSQL,
kept exactly consistent by index_session, delete_session and bulk_insert_metrics."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, select

from sdrlab import testing
from sdrlab.index import bulk_insert_metrics, delete_session, index_session, init_db, metric_over_time
from sdrlab.index.models import DB_METRICS, METRIC_COLUMNS, MetricHourlyRow

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
STATIONS = ["st000", "st001", "stä-ü", "st003", "st004"]


def _metrics(n_sessions: int = 150, seed: int = 7, days: float = 3.0) -> pd.DataFrame:
    """Random sessions over several days, each with a random subset of stations, NaNs (and rows
    with no metric at all)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for k in range(n_sessions):
        t_sess = T0 + timedelta(seconds=float(rng.uniform(0, days * 86400)))
        for st in STATIONS:
            if rng.random() < 0.2:
                continue
            t = t_sess + timedelta(microseconds=int(rng.integers(0, 900_000)))
            row: dict[str, Any] = {"time": t, "station_id": st, "session_id": f"sess-{k:04d}",
                                   "frequency_hz": 10e6}
            none = rng.random() < 0.05
            for m in METRIC_COLUMNS:
                ok = not none and rng.random() > 0.15
                row[m] = float(rng.normal(10, 8) if m in DB_METRICS else rng.uniform(0, 1)) if ok else float("nan")
            rows.append(row)
    df = pd.DataFrame(rows)
    df.loc[0, "time"] = T0 + timedelta(hours=5)  # exactly on an hour
    df.loc[1, "time"] = T0 + timedelta(hours=5) - timedelta(microseconds=1)  # just before it
    return df


def _hourly_from_half_hours(engine: Engine, metric: str) -> pd.DataFrame:
    """The raw path (1800 s buckets), re-aggregated to hours in pandas."""
    raw = metric_over_time(engine, metric, bucket_s=1800)
    lin = np.power(10.0, raw["value"] / 10.0) if metric in DB_METRICS else raw["value"]
    raw = raw.assign(s=(lin * raw["n"]).where(raw["n"] > 0), bucket=raw["bucket"].dt.floor("h"))
    g = raw.groupby(["bucket", "station_id"], sort=True).agg(s=("s", "sum"), n=("n", "sum")).reset_index()
    mean = (g["s"] / g["n"]).where(g["n"] > 0)
    g["value"] = 10 * np.log10(mean) if metric in DB_METRICS else mean
    return g[["bucket", "station_id", "value", "n"]]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) == ["bucket", "station_id", "value", "n"]
    assert len(a) == len(b)
    assert list(a["bucket"].astype("datetime64[ns]")) == list(b["bucket"].astype("datetime64[ns]"))
    assert list(a["station_id"].astype(str)) == list(b["station_id"].astype(str))
    assert list(a["n"].astype(int)) == list(b["n"].astype(int))
    np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float), rtol=1e-9, atol=1e-9)


def _consistent(engine: Engine) -> None:
    """Every rollup query equals the raw path; the rollup has one row per (hour, station) with rows."""
    for m in METRIC_COLUMNS:
        got = metric_over_time(engine, m, bucket_s=3600)
        want = metric_over_time(engine, m, bucket_s=3600, _raw=True)
        _same(got, want)
        assert got["bucket"].dtype == want["bucket"].dtype and got["n"].dtype == want["n"].dtype
    _same(metric_over_time(engine, "snr_db"), _hourly_from_half_hours(engine, "snr_db"))
    _same(metric_over_time(engine, "clipped_fraction"), _hourly_from_half_hours(engine, "clipped_fraction"))
    for kw in ({"bucket_s": 7200}, {"bucket_s": 86400}, {"bucket_s": 3 * 3600, "stations": ["stä-ü", "st003"]},
               {"start": T0 + timedelta(hours=5), "end": T0 + timedelta(days=1, hours=7)},
               {"start": (T0 + timedelta(hours=6)).replace(tzinfo=None), "stations": ["st001"]},
               {"end": T0 + timedelta(hours=5), "bucket_s": 7200}):
        _same(metric_over_time(engine, "snr_db", **kw), metric_over_time(engine, "snr_db", _raw=True, **kw))
    with engine.connect() as c:
        n_rollup = c.execute(select(func.count()).select_from(MetricHourlyRow)).scalar()
    assert n_rollup == len(metric_over_time(engine, "snr_db", _raw=True))


def test_rollup_equals_raw_after_bulk_inserts_into_populated_hours(engine: Engine) -> None:
    df = _metrics()
    rng = np.random.default_rng(1)
    first = rng.random(len(df)) < 0.5
    bulk_insert_metrics(engine, df[first])
    _consistent(engine)
    bulk_insert_metrics(engine, df[~first])  # the same hours and stations again
    _consistent(engine)
    got = metric_over_time(engine, "snr_db")
    assert len(got) > 40 and got["value"].isna().any() and (got["n"] == 0).any()
    assert got["station_id"].nunique() == len(STATIONS)
    bulk_insert_metrics(engine, df.iloc[:0])
    _consistent(engine)


def test_rollup_follows_deleted_sessions(engine: Engine) -> None:
    df = _metrics(80, seed=11)
    bulk_insert_metrics(engine, df)
    for sid in sorted(set(df["session_id"]))[::3]:
        delete_session(engine, sid)
    _consistent(engine)
    for sid in sorted(set(df["session_id"])):
        delete_session(engine, sid)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricHourlyRow)).scalar() == 0
    assert len(metric_over_time(engine, "snr_db")) == 0


def _session(shift_h: float, seed: int) -> Any:
    ds = testing.synthetic_dataset(n_stations=3, duration_s=1.0, seed=seed)
    ds.attrs["session_id"] = "20261101T040000Z-abcdef"
    st = json.loads(ds.attrs["station_status"])
    ds.attrs["station_status"] = json.dumps(st)
    t0 = np.datetime64("2026-11-01T04:30:00", "ns") + np.timedelta64(int(shift_h * 3600e9), "ns")
    ds["start_time"] = ("station", np.array([t0 + np.timedelta64(i, "s") for i in range(ds.sizes["station"])]))
    rng = np.random.default_rng(seed)
    for m in METRIC_COLUMNS:
        ds[m] = ("station", rng.normal(10, 3, ds.sizes["station"]))
    return ds


def test_rollup_follows_reindexed_sessions(engine: Engine) -> None:
    df = _metrics(60, seed=5, days=0.5)  # other rows in the same hours
    bulk_insert_metrics(engine, df)
    url = "file:///x/sessions/20261101T040000Z-abcdef"
    assert index_session(engine, _session(0, 1), url) == 3
    _consistent(engine)
    before = metric_over_time(engine, "snr_db", start=T0 + timedelta(hours=4), end=T0 + timedelta(hours=5))
    assert index_session(engine, _session(0, 2), url) == 3  # same hour, new values
    _consistent(engine)
    after = metric_over_time(engine, "snr_db", start=T0 + timedelta(hours=4), end=T0 + timedelta(hours=5))
    assert list(before["n"]) == list(after["n"]) and not np.allclose(before["value"], after["value"])
    assert index_session(engine, _session(3, 3), url) == 3  # moved three hours later
    _consistent(engine)
    delete_session(engine, "20261101T040000Z-abcdef")
    _consistent(engine)
    _same(metric_over_time(engine, "snr_db"), metric_over_time(engine, "snr_db", bucket_s=3600, _raw=True))


def test_init_db_builds_the_rollup_of_an_older_database(engine: Engine) -> None:
    bulk_insert_metrics(engine, _metrics(40, seed=9))
    with engine.begin() as c:  # as a database indexed before the rollup existed
        c.execute(delete(MetricHourlyRow))
    assert len(metric_over_time(engine, "snr_db")) == 0
    init_db(engine)
    _consistent(engine)
    init_db(engine)  # again: nothing changes
    _consistent(engine)
