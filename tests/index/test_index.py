"""The index on SQLite and a real PostgreSQL 15, the same cases giving the same answers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from sdrlab import testing
from sdrlab.index import (
    backend, bulk_insert_metrics, delete_session, find_captures, index_session, init_db, latest_status,
    make_engine, metric_over_time,
)
from sdrlab.index.models import CaptureRow, MetricRow, SchemaVersion, SessionRow


@pytest.fixture(scope="module")
def session_ds() -> Any:
    ds = testing.synthetic_dataset(n_stations=3, duration_s=2.0, seed=5)
    ds.attrs["session_id"] = "20261124T140000Z-1d1d1d"
    st = json.loads(ds.attrs["station_status"])
    st["lost-station"] = {"status": "failed", "error_class": "ReceiverDown", "message": "receiver is down"}
    ds.attrs["station_status"] = json.dumps(st)
    from sdrlab.acquire import StationResult, attach_metrics
    from sdrlab.metrics import metrics

    m = metrics(ds).compute()
    results = [StationResult(str(s), "ok", None, metrics={k: float(m[k].sel(station=s)) for k in m.data_vars})
               for s in ds["station"].values]
    return attach_metrics(ds, results)


def test_init_is_idempotent(engine):
    kind = init_db(engine)  # second time
    assert kind == backend(engine) and kind in ("sqlite", "postgresql", "timescaledb")
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(SchemaVersion)).scalar() == 1


def test_index_session_rows_and_reindex(engine, session_ds):
    n = index_session(engine, session_ds, "file:///x/sessions/20261124T140000Z-1d1d1d")
    assert n == 3
    n = index_session(engine, session_ds, "file:///x/sessions/20261124T140000Z-1d1d1d")  # replaces, no dupes
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricRow)).scalar() == 3
        caps = {r.station_id: r for r in c.execute(select(CaptureRow)).all()}
        sess = c.execute(select(SessionRow)).one()
    assert set(caps) == {*map(str, session_ds["station"].values), "lost-station"}
    assert caps["lost-station"].status == "failed" and "ReceiverDown" in caps["lost-station"].error
    assert sess.status == "partial"
    s0 = str(session_ds["station"].values[0])
    with engine.connect() as c:
        snr = c.execute(select(MetricRow.snr_db).where(MetricRow.station_id == s0)).scalar()
    assert snr == pytest.approx(float(session_ds["snr_db"].sel(station=s0)))
    delete_session(engine, session_ds.attrs["session_id"])
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(CaptureRow)).scalar() == 0


def _rows(t0: datetime) -> pd.DataFrame:
    """Two stations; in each hour 'a' has SNR 10 and 20 dB (linear mean 17.404 dB), 'b' 30 dB."""
    rows = []
    for h in range(3):
        for k, snr in enumerate((10.0, 20.0)):
            rows.append({"time": t0 + timedelta(hours=h, minutes=10 + 20 * k), "station_id": "a",
                         "session_id": f"s{h}{k}", "frequency_hz": 10e6 if h < 2 else 14e6, "snr_db": snr})
        rows.append({"time": t0 + timedelta(hours=h, minutes=30), "station_id": "b", "session_id": f"s{h}b",
                     "frequency_hz": 10e6, "snr_db": 30.0})
    return pd.DataFrame(rows)


T0 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)


def test_hourly_snr_buckets_in_linear_power(engine):
    assert bulk_insert_metrics(engine, _rows(T0)) == 9
    df = metric_over_time(engine, "snr_db", bucket_s=3600)
    a = df[df.station_id == "a"]
    assert list(a["bucket"]) == [pd.Timestamp("2026-11-20 06:00") + pd.Timedelta(hours=h) for h in range(3)]
    np.testing.assert_allclose(a["value"], 10 * np.log10((10 + 100) / 2), atol=1e-6)  # not 15 dB
    assert (a["n"] == 2).all()
    b = df[df.station_id == "b"]
    np.testing.assert_allclose(b["value"], 30.0, atol=1e-9)
    only_b = metric_over_time(engine, "snr_db", bucket_s=7200, stations=["b"], start=T0 + timedelta(hours=1))
    assert list(only_b["station_id"].unique()) == ["b"] and only_b["n"].sum() == 2


def test_find_captures_by_band_time_station_and_threshold(engine, session_ds):
    index_session(engine, session_ds, "s3://bucket/lab/sessions/20261124T140000Z-1d1d1d")
    f0 = float(session_ds.attrs["center_frequency_hz"])
    snr = session_ds["snr_db"].values
    thr = float(np.median(snr))
    hits = find_captures(engine, frequency_hz=(f0 - 1, f0 + 1), min_metrics={"snr_db": thr})
    assert set(hits["station_id"]) == {str(s) for s, v in zip(session_ds["station"].values, snr) if v >= thr}
    assert all(k.startswith("s3://bucket/lab/sessions/") for k in hits["store_key"])
    assert find_captures(engine, frequency_hz=(1e6, 2e6)).empty
    latest = latest_status(engine)
    assert set(latest["station_id"]) >= set(map(str, session_ds["station"].values))


def test_same_answers_on_both_backends(tmp_path, pg_server):
    out = []
    for url in (f"sqlite:///{tmp_path}/x.db", pg_server.create_database(f"t_{uuid.uuid4().hex[:10]}")):
        eng = make_engine(url)
        init_db(eng)
        bulk_insert_metrics(eng, _rows(T0))
        out.append(metric_over_time(eng, "snr_db", bucket_s=1800).reset_index(drop=True))
        eng.dispose()
    pd.testing.assert_frame_equal(out[0], out[1], check_dtype=False, atol=1e-9)


def test_database_that_goes_away_is_a_clear_error(tmp_path):
    from sdrlab.errors import IndexStoreError
    from tests.support.servers import Postgres

    srv = Postgres().start()
    eng = make_engine(srv.create_database("gone"))
    init_db(eng)
    srv.kill()
    ds = testing.synthetic_dataset(n_stations=1, duration_s=1.0)
    ds.attrs["session_id"] = "20261124T150000Z-0ff0ff"
    with pytest.raises(IndexStoreError, match="indexing session 20261124T150000Z-0ff0ff failed"):
        index_session(eng, ds, "file:///x")
    eng.dispose()
    srv.cleanup()


def test_found_captures_open_as_one_lazy_dataset(tmp_path):
    """Two sessions in a store, indexed; a query's captures open as one lazy Dataset."""
    import sdrlab
    from sdrlab.acquire import add_metrics
    from sdrlab.store import Store

    store = Store(f"file://{tmp_path}/store")
    eng = make_engine(f"sqlite:///{tmp_path}/i.db")
    init_db(eng)
    sessions = []
    for i, dur in enumerate((1.0, 2.0)):
        ds = add_metrics(testing.synthetic_dataset(n_stations=3, duration_s=dur, seed=20 + i))
        ds.attrs["session_id"] = f"20261124T19000{i}Z-00000{i}"
        store.write(ds)
        index_session(eng, ds, store.session_url(ds.attrs["session_id"]))
        sessions.append(ds)
    hits = find_captures(eng, stations=[str(sessions[0]["station"].values[1])])
    assert len(hits) == 2
    both = sdrlab.open_captures(hits, store)
    assert both["iq"].chunks is not None  # lazy
    assert sorted(both["session_id"].values) == sorted(s.attrs["session_id"] for s in sessions)
    for ds in sessions:
        st = str(ds["station"].values[1])
        got = both.sel(station=f"{st}@{ds.attrs['session_id']}")
        n = int(ds["n_samples"].sel(station=st))
        np.testing.assert_array_equal(got["iq"].values[:n], ds["iq"].sel(station=st).values[:n])


def test_fsck_reports_rows_without_objects_and_objects_without_rows(tmp_path, capsys, monkeypatch):
    from sdrlab.cli import main
    from sdrlab.store import Store

    monkeypatch.setenv("SDRLAB_STORE", f"file://{tmp_path}/store")
    monkeypatch.setenv("SDRLAB_DB", f"sqlite:///{tmp_path}/i.db")
    store = Store(f"file://{tmp_path}/store")
    eng = make_engine(f"sqlite:///{tmp_path}/i.db")
    init_db(eng)
    a = testing.synthetic_dataset(n_stations=1, duration_s=1.0, seed=1)
    a.attrs["session_id"] = "20261124T200000Z-aaaaaa"
    b = testing.synthetic_dataset(n_stations=1, duration_s=1.0, seed=2)
    b.attrs["session_id"] = "20261124T200001Z-bbbbbb"
    store.write(a)  # stored, never indexed
    index_session(eng, b, store.session_url(b.attrs["session_id"]))  # indexed, never stored
    assert main(["store", "fsck"]) == 1
    out = capsys.readouterr().out
    assert "index rows without objects: 20261124T200001Z-bbbbbb" in out
    assert "not indexed: 20261124T200000Z-aaaaaa" in out
    assert main(["store", "fsck", "--remove"]) == 1  # rows removed; the unindexed one remains to index
    assert main(["index", "rebuild"]) == 0
    assert main(["store", "fsck"]) == 0


def test_concurrent_schema_setups_on_a_fresh_postgresql(pg_server):
    """Several processes' first `db init` at once (issue 13: 4 in 10 failed with a pg_type unique
    violation): they run one after another under an advisory lock, every one succeeds."""
    import threading
    import uuid

    from sdrlab.index import init_db, make_engine

    for _ in range(3):
        url = pg_server.create_database(f"c_{uuid.uuid4().hex[:10]}")
        errors: list[BaseException] = []

        def one() -> None:
            eng = make_engine(url)
            try:
                init_db(eng)
            except BaseException as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)
            finally:
                eng.dispose()

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []


def test_a_held_lock_ends_the_index_step_with_an_error_not_a_hang(pg_server):
    """Another client holds capture_metrics locked: indexing fails after the lock timeout with an
    IndexStoreError naming the problem, instead of blocking an acquisition for good."""
    import time
    import uuid

    import pytest
    from sqlalchemy import text

    from sdrlab import testing
    from sdrlab.errors import IndexStoreError
    from sdrlab.index import index_session, init_db, make_engine

    url = pg_server.create_database(f"l_{uuid.uuid4().hex[:10]}")
    init_db(make_engine(url))
    eng = make_engine(url, lock_timeout_s=1.0)
    holder = make_engine(url).connect()
    tx = holder.begin()
    holder.execute(text("lock table capture_metrics in access exclusive mode"))
    try:
        t = time.monotonic()
        with pytest.raises(IndexStoreError, match="lock"):
            index_session(eng, testing.synthetic_dataset(2, 1.0), "file:///x")
        assert time.monotonic() - t < 10
    finally:
        tx.rollback()
        holder.close()


def test_a_capture_without_gps_time_is_indexed_with_its_time_flagged(engine, session_ds):
    """Station 1 has no GPS start time (issue 13: it got no metric row, vanished from history,
    and `latest` then showed an older session): it is indexed at the session's start, and the
    capture row says the time is not from GPS."""
    from sdrlab.index import latest_status

    ds = session_ds.copy(deep=True)
    ds.attrs["session_id"] = "20261124T150000Z-2e2e2e"
    st = ds["start_time"].values.copy()
    st[1] = np.datetime64("NaT")
    ds = ds.assign_coords(start_time=("station", st))
    assert index_session(engine, ds, "file:///x") == 3
    no_gps = str(ds["station"].values[1])
    with engine.connect() as c:
        caps = {r.station_id: r for r in c.execute(select(CaptureRow).where(
            CaptureRow.session_id == "20261124T150000Z-2e2e2e")).all()}
        t = c.execute(select(MetricRow.time).where(MetricRow.station_id == no_gps,
                                                    MetricRow.session_id == "20261124T150000Z-2e2e2e")).scalar()
    assert "time not from GPS" in caps[no_gps].error and caps[no_gps].start_time is None
    got = pd.Timestamp(t)
    got = got.tz_convert(None) if got.tzinfo is not None else got
    assert abs(got - pd.Timestamp(st[~np.isnat(st)].min())) < pd.Timedelta("1ms")  # the session's start
    latest = latest_status(engine).set_index("station_id")
    assert latest.loc[no_gps, "session_id"] == "20261124T150000Z-2e2e2e"


def test_interval_metrics_are_a_time_series_in_the_index(engine):
    """Every metric of every station per 10 s interval goes to interval_metrics with the session
    (issue 13, item 4): one row per station and interval, the Dataset's values at the intervals'
    GPS times; queried by bucket like the captures; re-indexing replaces, deleting removes."""
    from sdrlab.acquire import attach_interval_metrics
    from sdrlab.index.models import IntervalMetricRow

    ds = testing.synthetic_dataset(n_stations=3, duration_s=25.0, seed=6)
    ds.attrs["session_id"] = "20261207T050000Z-2e2e2e"
    ds = attach_interval_metrics(ds)
    assert ds.attrs["interval_s"] == 10.0 and ds.sizes["interval"] == 3
    url = "file:///x/sessions/" + ds.attrs["session_id"]
    index_session(engine, ds, url)
    index_session(engine, ds, url)  # replaces
    with engine.connect() as c:
        rows = c.execute(select(IntervalMetricRow).order_by(IntervalMetricRow.station_id,
                                                            IntervalMetricRow.time)).all()
    have = ds["interval_samples"].values > 0
    assert len(rows) == int(have.sum()) == 8  # the third station is shorter: its last interval is empty
    for r in rows:
        i = list(ds["station"].values).index(r.station_id)
        starts = ds["interval_start"].values[i]
        t = np.datetime64(r.time.replace(tzinfo=None), "ns")  # stored to the microsecond
        k = int(np.flatnonzero(np.abs(starts - t) < np.timedelta64(1000, "ns"))[0])
        assert r.samples == int(ds["interval_samples"].values[i, k]) and r.interval_s == 10.0
        assert r.snr_db == pytest.approx(float(ds["interval_snr_db"].values[i, k]))
        assert r.noise_floor_dbfs_hz == pytest.approx(float(ds["interval_noise_floor_dbfs_hz"].values[i, k]))
    # one bucket per interval: the interval values themselves
    got = metric_over_time(engine, "snr_db", bucket_s=1, source="intervals")
    assert len(got) == 8 and (got["n"] == 1).all()
    # a bucket over the whole session: the linear-power mean of the station's intervals
    whole = metric_over_time(engine, "snr_db", bucket_s=86400, source="intervals")
    for _, row in whole.iterrows():
        v = ds["interval_snr_db"].sel(station=row["station_id"]).values
        v = v[~np.isnan(v)]
        assert row["n"] == len(v) >= 2
        assert row["value"] == pytest.approx(10 * np.log10(np.mean(10 ** (v / 10))), abs=1e-9)
    with pytest.raises(Exception, match="unknown source"):
        metric_over_time(engine, "snr_db", source="frames")
    delete_session(engine, ds.attrs["session_id"])
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(IntervalMetricRow)).scalar() == 0
