"""Bulk metric ingest: binary COPY on PostgreSQL, executemany on SQLite; exact round trips and the
same answers as the ORM path."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select

from sdrlab.index import bulk_insert_metrics, init_db, make_engine, metric_over_time
from sdrlab.index import ingest
from sdrlab.index.models import METRIC_COLUMNS, MetricRow

T0 = datetime(2026, 11, 1, 0, 0, 0, tzinfo=timezone.utc)
STATIONS = ["st000", "st001", "stä-ü", "st003"]  # one non-ASCII id: utf-8 in binary COPY


def _metrics(n_sessions: int = 40, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_sessions):
        t_sess = T0 + timedelta(minutes=17 * k)
        for st in STATIONS:
            t = t_sess + timedelta(microseconds=int(rng.integers(0, 900_000)))
            row: dict[str, Any] = {"time": t, "station_id": st, "session_id": f"sess-{k:04d}",
                                   "frequency_hz": float(rng.choice([5e6, 10e6, 14.67e6]))}
            for m in METRIC_COLUMNS:
                row[m] = float(rng.normal(10, 5)) if rng.random() > 0.15 else float("nan")
            rows.append(row)
    df = pd.DataFrame(rows)
    df.loc[0, "time"] = T0 + timedelta(microseconds=1)  # an odd microsecond
    df.loc[1, METRIC_COLUMNS] = np.nan  # a row with no metrics at all
    return df


def _utc_naive(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo is not None else t


def _read_back(engine: Engine) -> list[tuple[Any, ...]]:
    cols = [MetricRow.__table__.c[c] for c in ("time", "station_id", "session_id", "frequency_hz", *METRIC_COLUMNS)]
    with engine.connect() as c:
        rows = c.execute(select(*cols).order_by(MetricRow.session_id, MetricRow.station_id)).all()
    return [(_utc_naive(r[0]), *r[1:]) for r in rows]


def _expected(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    out = []
    for r in df.sort_values(["session_id", "station_id"]).itertuples(index=False):
        vals = [None if (isinstance(v, float) and np.isnan(v)) else v for v in r[3:]]
        out.append((_utc_naive(r[0]), r[1], r[2], *vals))
    return out


def test_round_trip_is_exact(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "BATCH", 37)  # several batches on both paths
    monkeypatch.setattr(ingest, "COPY_BATCH", 37)
    df = _metrics()
    assert bulk_insert_metrics(engine, df) == len(df)
    got, want = _read_back(engine), _expected(df)
    assert len(got) == len(want) == len(df)
    assert got == want  # times to the microsecond, NULL where NaN, floats bit-equal
    assert got[0][0] == _utc_naive(T0 + timedelta(microseconds=1))
    assert any(all(v is None for v in r[4:]) for r in got)


def test_time_zones_and_naive_times_are_utc(engine: Engine) -> None:
    df = _metrics(3)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    aware = df.copy()
    aware["time"] = aware["time"].dt.tz_convert("Europe/Berlin")
    naive = df.copy()
    naive["time"] = naive["time"].dt.tz_convert(None)
    naive["session_id"] = naive["session_id"] + "-naive"
    nanos = df.copy()  # nanoseconds are floored to microseconds, as the ORM path does
    nanos["time"] = nanos["time"] + pd.Timedelta(nanoseconds=999)
    nanos["session_id"] = nanos["session_id"] + "-ns"
    bulk_insert_metrics(engine, aware)
    bulk_insert_metrics(engine, naive.to_dict("records"))  # a sequence of mappings works too
    bulk_insert_metrics(engine, nanos)
    got = {(r[1], r[2]): r[0] for r in _read_back(engine)}
    for r in df.itertuples(index=False):
        t = r.time.to_pydatetime().replace(tzinfo=None)
        assert got[(r.station_id, r.session_id)] == t
        assert got[(r.station_id, r.session_id + "-naive")] == t
        assert got[(r.station_id, r.session_id + "-ns")] == t


def test_empty_and_subset_of_metric_columns(engine: Engine) -> None:
    df = _metrics(2)
    assert bulk_insert_metrics(engine, df.iloc[:0]) == 0
    part = df[["time", "station_id", "session_id", "frequency_hz", "snr_db"]]
    assert bulk_insert_metrics(engine, part) == len(part)
    got = _read_back(engine)
    assert [r[4] for r in got] == [r[4] for r in _expected(df)]
    assert all(v is None for r in got for v in r[5:])


def test_sqlite_stores_what_the_orm_stores(tmp_path: Any) -> None:
    df = _metrics(5)
    df.loc[2, "time"] = T0.astimezone(timezone(timedelta(hours=5, minutes=30))) + timedelta(microseconds=5)
    raws = []
    for name, load in (("bulk", lambda e: bulk_insert_metrics(e, df)), ("orm", None)):
        e = make_engine(f"sqlite:///{tmp_path}/{name}.db")
        init_db(e)
        if load is not None:
            load(e)
        else:
            recs = df.astype(object).where(df.notna(), None).to_dict("records")
            for r in recs:
                r["time"] = ingest._ts(r["time"])
            with e.begin() as c:
                c.execute(insert(MetricRow), recs)
        with e.connect() as c:
            raws.append(c.exec_driver_sql(
                "select time, typeof(time), station_id, session_id, frequency_hz, "
                + ", ".join(f"{m}, typeof({m})" for m in METRIC_COLUMNS)
                + " from capture_metrics order by session_id, station_id").all())
        e.dispose()
    assert raws[0] == raws[1]
    assert raws[0][0][0] == "2026-11-01 00:00:00.000001"  # SQLAlchemy's SQLite DateTime format, UTC


def test_bucket_query_same_on_both_backends(tmp_path: Any, pg_server: Any) -> None:
    df = _metrics(60)
    out = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path}/b.db"),
                      ("postgresql", pg_server.create_database(f"t_{uuid.uuid4().hex[:10]}"))):
        e = make_engine(url)
        init_db(e)
        bulk_insert_metrics(e, df)
        out[name] = {m: metric_over_time(e, m, bucket_s=3600) for m in ("snr_db", "clipped_fraction")}
        out[name]["station"] = metric_over_time(e, "snr_db", bucket_s=900, stations=["stä-ü"],
                                                start=T0 + timedelta(hours=2), end=T0 + timedelta(hours=8))
        e.dispose()
    for key, lite in out["sqlite"].items():
        pg = out["postgresql"][key]
        assert len(lite) > 0
        assert list(lite["bucket"]) == list(pg["bucket"])
        assert list(lite["station_id"]) == list(pg["station_id"])
        assert list(lite["n"].astype(int)) == list(pg["n"].astype(int))
        np.testing.assert_allclose(lite["value"].to_numpy(float), pg["value"].to_numpy(float), rtol=1e-12)
