"""``sdrlab db upgrade`` on an index made before schema 2 (the metric columns of issue 12), on
SQLite and a real PostgreSQL: the columns are added in place, old rows and rollups are kept, new
sessions index every metric, and the rollup stays what a rebuild gives.  And on an index made
before schema 4 (the metric tables keyed (time, station_id, session_id) with an index (station_id,
time)): PostgreSQL rebuilds the keys as (station_id, time, session_id) and drops the index, safely
(a table it cannot lock keeps its old key), SQLite keeps them; the answers are the same.  And on an
index made by schema 4 (before the two metrics of audio receivers, schema 5): the columns are added
to capture_metrics, interval_metrics and the rollup, the rows kept, and audio sessions index them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, Engine, Index, MetaData, Table, func, insert, inspect, select, text

from sdrlab import testing
from sdrlab.cli import main
from sdrlab.errors import IndexStoreError
from sdrlab.index import delete_session, find_captures, index_session, init_db, make_engine, metric_over_time
from sdrlab.index.ingest import rebuild_rollup
from sdrlab.index.models import (
    ADDED_IN, METRIC_COLUMNS, METRIC_KEY, OLD_METRIC_KEY, SCHEMA_VERSION, Base, IntervalMetricRow, MetricHourlyRow,
    MetricRow, SchemaVersion,
)
from sdrlab.metrics import UNITS

#: the columns schema 2 added
NEW = ("cn0_dbhz", "noise_bandwidth_hz", "passband_low_hz", "passband_high_hz", "passband_source",
       "passband_filled", "agc_gain_range_db", "agc_gain_changed")
#: the columns schema 5 added (the two metrics of audio receivers): no index before it has them
V5 = ("occupancy_fraction", "channel_power_fft_dbfs")


def _session(session_id: str, seed: int) -> Any:
    from sdrlab.acquire import add_metrics

    ds = testing.synthetic_dataset(n_stations=2, duration_s=2.0, seed=seed)
    ds.attrs["session_id"] = session_id
    return add_metrics(ds)


def _drop_metric_columns(c: Any, columns: tuple[str, ...], tables: tuple[str, ...]) -> None:
    """Drop metric columns (and their rollup sums and counts) an older schema did not have."""
    for col in columns:
        for table in tables:
            c.execute(text(f"alter table {table} drop column {col}"))
        c.execute(text(f"alter table metric_hourly drop column {col}_sum"))
        c.execute(text(f"alter table metric_hourly drop column {col}_n"))


def _to_schema_1(engine: Engine) -> None:
    """Make a fresh index look like one set up by schema 1: the new columns and table dropped, version 1."""
    with engine.begin() as c:
        _drop_metric_columns(c, NEW + V5, ("capture_metrics",))  # schemas 2 and 5 (interval_metrics: below)
        c.execute(text("drop table interval_metrics"))  # schema 3
        c.execute(text("delete from sdrlab_schema"))
        c.execute(text("insert into sdrlab_schema (version, backend, applied_at) "
                       "values (1, 'old', '2026-01-01 00:00:00')"))


def _columns(engine: Engine, table: str) -> set[str]:
    with engine.connect() as c:
        return {col["name"] for col in inspect(c).get_columns(table)}


def _hourly(engine: Engine) -> pd.DataFrame:
    with engine.connect() as c:
        df = pd.read_sql(select(MetricHourlyRow), c)
    return df.sort_values(["bucket", "station_id"]).reset_index(drop=True)


def test_every_metric_has_a_column() -> None:
    # every per-capture metric is indexed except the S-meter extremes (the mean stands for them)
    # (the two of audio receivers only, occupancy and waterfall channel power, since schema 5)
    assert set(METRIC_COLUMNS) == set(UNITS) - {"rssi_min_dbm", "rssi_max_dbm"}
    assert ADDED_IN == {2: NEW, 5: V5}
    assert set(NEW) <= set(METRIC_COLUMNS) and set(V5) <= set(METRIC_COLUMNS) and SCHEMA_VERSION == 5
    # the metric time series (schema 3) has every metric too
    from sdrlab.index.models import IntervalMetricRow

    assert set(METRIC_COLUMNS) <= set(IntervalMetricRow.__table__.columns.keys())


def test_db_upgrade_adds_the_new_metric_columns(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _session("20261101T060000Z-aaaaaa", seed=1)
    url = engine.url.render_as_string(hide_password=False)
    # an index made by schema 1, holding a session: its rows and the rollup in the schema-1 columns
    _to_schema_1(engine)
    assert not (set(NEW) | set(V5)) & _columns(engine, "capture_metrics")
    with engine.begin() as c:
        c.execute(text("insert into sessions (id, center_frequency_hz, parameters, status, store_url, indexed_at) "
                       "values ('20261101T060000Z-aaaaaa', 1e7, '{}', 'ok', 'file:///old', '2026-11-01 06:00:00')"))
        for i, st in enumerate(old["station"].values):  # schema-1 columns only, stored as the ORM stores them
            c.execute(insert(MetricRow).values(
                time=pd.Timestamp(old["start_time"].values[i], tz="UTC").to_pydatetime(), station_id=str(st),
                session_id="20261101T060000Z-aaaaaa", frequency_hz=1e7, snr_db=float(old["snr_db"].values[i]),
                noise_floor_dbfs_hz=float(old["noise_floor_dbfs_hz"].values[i])))
    # ingest of the new metrics fails on the old schema ...
    with pytest.raises(Exception):
        index_session(engine, _session("20261101T070000Z-bbbbbb", seed=2), "file:///new")

    # ... until `sdrlab db upgrade`
    monkeypatch.setenv("SDRLAB_DB", url)
    assert main(["db", "upgrade"]) == 0
    assert set(NEW) | set(V5) <= _columns(engine, "capture_metrics")  # schemas 2 and 5, in one upgrade
    assert {f"{c}{s}" for c in NEW + V5 for s in ("_sum", "_n")} <= _columns(engine, "metric_hourly")
    assert set(METRIC_COLUMNS) <= _columns(engine, "interval_metrics")  # schema 3: created by the upgrade
    with engine.connect() as c:
        assert c.execute(select(func.max(SchemaVersion.version))).scalar() == SCHEMA_VERSION
        kept = c.execute(select(MetricRow.station_id, MetricRow.snr_db, MetricRow.cn0_dbhz)
                         .order_by(MetricRow.station_id)).all()
    # old rows kept, their new metrics unknown (NULL), not zero
    assert [r[0] for r in kept] == sorted(str(s) for s in old["station"].values)
    for sid, snr, cn0 in kept:
        assert snr == pytest.approx(float(old["snr_db"].sel(station=sid))) and cn0 is None
    # init found capture rows and an empty rollup (the rows were inserted by hand): it rebuilt it
    hourly = _hourly(engine)
    assert (hourly["snr_db_n"] == 1).all() and (hourly["cn0_dbhz_n"] == 0).all()
    assert (hourly["occupancy_fraction_n"] == 0).all()

    # a new session indexes every metric, and the rollup equals a rebuild from the rows
    new = _session("20261101T070000Z-bbbbbb", seed=2)
    assert index_session(engine, new, "file:///new") == 2
    with engine.connect() as c:
        rows = pd.read_sql(select(MetricRow).where(MetricRow.session_id == "20261101T070000Z-bbbbbb"), c)
    for col in NEW:
        got = rows.set_index("station_id")[col].astype(float)
        want = new[col].to_series().astype(float)
        np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), err_msg=col)
    assert rows["passband_source"].eq(1.0).all() and rows["noise_bandwidth_hz"].eq(10000.0).all()
    incremental = _hourly(engine)
    with engine.begin() as c:
        rebuild_rollup(c)
    pd.testing.assert_frame_equal(incremental, _hourly(engine), check_exact=False, rtol=1e-9)

    # idempotent: a second upgrade changes nothing
    before = (_columns(engine, "capture_metrics"), _columns(engine, "metric_hourly"), _hourly(engine))
    assert main(["db", "upgrade"]) == 0
    init_db(engine)
    assert (_columns(engine, "capture_metrics"), _columns(engine, "metric_hourly")) == before[:2]
    pd.testing.assert_frame_equal(_hourly(engine), before[2])
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricRow)).scalar() == 4


#: the metric tables and the (station_id, time) index each had until schema 4
OLD_INDEXES = {"capture_metrics": "ix_metrics_station_time", "interval_metrics": "ix_interval_station_time"}


def _to_schema_3(engine: Engine) -> None:
    """Make a fresh (empty) index look like one set up by schema 3: the metric tables re-created as
    they were, keyed (time, station_id, session_id) (their first three columns) with an index
    (station_id, time), version 3.  (With every metric column of today: the keys are what this
    tests; test_db_upgrade_adds_the_new_metric_columns and ..._from_schema_4 test the columns.)"""
    old = MetaData()
    for table, index in OLD_INDEXES.items():
        now = Base.metadata.tables[table]
        assert tuple(now.columns.keys())[:3] == OLD_METRIC_KEY
        session_index = next(str(i.name) for i in now.indexes if list(i.columns.keys()) == ["session_id"])
        Table(table, old, *[Column(c.name, c.type, primary_key=c.name in OLD_METRIC_KEY, nullable=c.nullable)
                            for c in now.columns],
              Index(index, "station_id", "time"), Index(session_index, "session_id"))
    with engine.begin() as c:
        for table in OLD_INDEXES:
            c.execute(text(f"drop table {table}"))
        old.create_all(c)
        c.execute(text("delete from sdrlab_schema"))
        c.execute(text("insert into sdrlab_schema (version, backend, applied_at) "
                       "values (3, 'old', '2026-11-30 00:00:00')"))


def _layout(engine: Engine) -> dict[str, tuple[tuple[str, ...], set[str]]]:
    """Per metric table: (its primary key's columns in order, the names of its other indexes)."""
    with engine.connect() as c:
        insp = inspect(c)
        return {t: (tuple(insp.get_pk_constraint(t)["constrained_columns"]),
                    {str(i["name"]) for i in insp.get_indexes(t)}) for t in OLD_INDEXES}


def _answers(engine: Engine) -> list[pd.DataFrame]:
    """What the queries say about the index's rows (both sources, rollup and raw, a station filter)."""
    out = []
    for source in ("captures", "intervals"):
        for kw in ({}, {"bucket_s": 60}, {"stations": ["syn0"], "bucket_s": 1}):
            out.append(metric_over_time(engine, "snr_db", source=source, **kw))
    out.append(metric_over_time(engine, "snr_db", bucket_s=3600, _raw=True))
    out.append(find_captures(engine, min_metrics={"snr_db": -100.0}))
    return out


def test_a_new_index_is_keyed_by_station_then_time(engine: Engine) -> None:
    assert METRIC_KEY == ("station_id", "time", "session_id")
    for table, (key, indexes) in _layout(engine).items():
        assert key == METRIC_KEY, table
        assert OLD_INDEXES[table] not in indexes  # the key serves (station_id, time)
        assert any("session" in i for i in indexes)  # delete / re-index of a session
    assert tuple(c.name for c in IntervalMetricRow.__table__.primary_key.columns) == METRIC_KEY


def test_db_upgrade_rekeys_the_metric_tables(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = engine.dialect.name
    _to_schema_3(engine)
    old_layout = {t: (OLD_METRIC_KEY, {i}) for t, i in OLD_INDEXES.items()}
    assert {t: (k, ix & {OLD_INDEXES[t]}) for t, (k, ix) in _layout(engine).items()} == old_layout
    for i, sid in enumerate(("20261101T060000Z-aaaaaa", "20261101T061000Z-bbbbbb", "20261101T062000Z-cccccc")):
        index_session(engine, _session(sid, seed=10 + i), f"file:///old/{sid}")
    with engine.connect() as c:
        n_intervals = c.execute(select(func.count()).select_from(IntervalMetricRow)).scalar()
    assert n_intervals == 6  # the sessions' interval rows are there too (one 10 s interval each)
    before = _answers(engine)

    if kind == "postgresql":  # a table another transaction holds: it keeps its key, nothing fails
        url = engine.url.render_as_string(hide_password=False)
        impatient = make_engine(url, lock_timeout_s=0.3)
        with engine.connect() as reader:
            reader.execute(text("select count(*) from capture_metrics"))  # holds its lock until rollback
            assert init_db(impatient) == "postgresql"
            layout = _layout(impatient)
            reader.rollback()
        impatient.dispose()
        assert layout["capture_metrics"] == (OLD_METRIC_KEY, layout["capture_metrics"][1])
        assert OLD_INDEXES["capture_metrics"] in layout["capture_metrics"][1]
        assert layout["interval_metrics"][0] == METRIC_KEY  # not held: rebuilt

    monkeypatch.setenv("SDRLAB_DB", engine.url.render_as_string(hide_password=False))
    assert main(["db", "upgrade"]) == 0
    after = _layout(engine)
    for table, (key, indexes) in after.items():
        if kind == "postgresql":
            assert key == METRIC_KEY and OLD_INDEXES[table] not in indexes, table
        else:  # SQLite: kept as it was (a key is rebuilt only with the table)
            assert key == OLD_METRIC_KEY and OLD_INDEXES[table] in indexes, table
    with engine.connect() as c:
        assert c.execute(select(func.max(SchemaVersion.version))).scalar() == SCHEMA_VERSION
    for got, want in zip(_answers(engine), before):  # the same answers from the same rows
        pd.testing.assert_frame_equal(got, want)

    # and the index keeps working: re-index (replace), a new session, a delete; the rollup exact
    index_session(engine, _session("20261101T061000Z-bbbbbb", seed=11), "file:///old/20261101T061000Z-bbbbbb")
    for got, want in zip(_answers(engine), before):
        pd.testing.assert_frame_equal(got, want)
    index_session(engine, _session("20261101T063000Z-dddddd", seed=13), "file:///new")
    delete_session(engine, "20261101T060000Z-aaaaaa")
    with engine.connect() as c:
        per_session = dict(c.execute(select(MetricRow.session_id, func.count()).group_by(MetricRow.session_id)).all())
        intervals = set(c.execute(select(IntervalMetricRow.session_id).distinct()).scalars())
    assert per_session == {"20261101T061000Z-bbbbbb": 2, "20261101T062000Z-cccccc": 2, "20261101T063000Z-dddddd": 2}
    assert intervals == set(per_session)
    incremental = _hourly(engine)
    with engine.begin() as c:
        rebuild_rollup(c)
    pd.testing.assert_frame_equal(incremental, _hourly(engine), check_exact=False, rtol=1e-9)

    # idempotent
    init_db(engine)
    assert _layout(engine) == after


def _to_schema_4(engine: Engine) -> None:
    """Make an index look like one set up by schema 4: the columns of schema 5 (the two metrics of
    audio receivers) dropped from the metric tables and the rollup, version 4; the rows kept."""
    with engine.begin() as c:
        _drop_metric_columns(c, V5, ("capture_metrics", "interval_metrics"))
        c.execute(text("delete from sdrlab_schema"))
        c.execute(text("insert into sdrlab_schema (version, backend, applied_at) "
                       "values (4, 'old', '2026-12-01 00:00:00')"))


def _audio_session(session_id: str) -> Any:
    """A mixed session: a KiwiSDR IQ station ``kiwi`` and an OpenWebRX audio station ``owrx``
    (occupancy 0.5: tests/test_metrics_spectrum's band, its wide signal in every other row)."""
    from tests.index.test_ingest_audio import session
    from tests.test_metrics_spectrum import capture
    from tests.test_model_audio import kiwi_capture

    return session(session_id, kiwi_capture(), capture())


def test_db_upgrade_from_schema_4_adds_the_audio_metrics(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = engine.dialect.name
    iq = _session("20261101T060000Z-aaaaaa", seed=21)
    audio = _audio_session("20261130T005000Z-a0d10a")
    index_session(engine, iq, "file:///iq")
    index_session(engine, audio, "file:///audio")
    _to_schema_4(engine)  # a schema-4 index holding both sessions (the audio one without its two metrics)
    for table in ("capture_metrics", "interval_metrics"):
        assert not set(V5) & _columns(engine, table)
    def read(name: str, order: str) -> pd.DataFrame:  # every column the table has (as a schema-4 reader)
        with engine.connect() as c:
            return pd.read_sql(text(f"select * from {name} order by {order}"), c)

    rows_before = read("capture_metrics", "session_id, station_id")
    hourly_before = read("metric_hourly", "bucket, station_id")
    with engine.connect() as c:
        n_intervals = c.execute(select(func.count()).select_from(IntervalMetricRow)).scalar()
    assert len(rows_before) == 4 and n_intervals == 3  # 2 + 2 captures; one 10 s interval of each GPS-timed station
    snr_before = metric_over_time(engine, "snr_db")
    with pytest.raises(IndexStoreError, match="occupancy_fraction"):  # not into a schema-4 index ...
        index_session(engine, audio, "file:///audio")

    if kind == "postgresql":  # ... a table another transaction holds: the upgrade fails whole, and says why
        impatient = make_engine(engine.url.render_as_string(hide_password=False), lock_timeout_s=0.3)
        with engine.connect() as reader:
            reader.execute(text("select count(*) from capture_metrics"))  # holds its lock until rollback
            with pytest.raises(IndexStoreError, match="lock timeout"):
                init_db(impatient)
            reader.rollback()
        impatient.dispose()
        assert not set(V5) & (_columns(engine, "capture_metrics") | _columns(engine, "interval_metrics"))

    # ... until `sdrlab db upgrade`: the columns in every metric table and the rollup
    monkeypatch.setenv("SDRLAB_DB", engine.url.render_as_string(hide_password=False))
    assert main(["db", "upgrade"]) == 0
    for table in ("capture_metrics", "interval_metrics"):
        assert set(V5) <= _columns(engine, table), table
    assert {f"{c}{s}" for c in V5 for s in ("_sum", "_n")} <= _columns(engine, "metric_hourly")
    with engine.connect() as c:
        assert c.execute(select(func.max(SchemaVersion.version))).scalar() == SCHEMA_VERSION == 5
        assert c.execute(select(func.count()).select_from(IntervalMetricRow)).scalar() == n_intervals
    # every row kept, its other metrics as they were, the new ones NULL (unknown, not 0)
    rows = read("capture_metrics", "session_id, station_id")
    pd.testing.assert_frame_equal(rows.drop(columns=list(V5)), rows_before)
    assert rows[list(V5)].isna().all().all()
    hourly = read("metric_hourly", "bucket, station_id")
    pd.testing.assert_frame_equal(hourly.drop(columns=[f"{c}{s}" for c in V5 for s in ("_sum", "_n")]), hourly_before)
    assert (hourly["occupancy_fraction_n"] == 0).all() and hourly["occupancy_fraction_sum"].isna().all()
    pd.testing.assert_frame_equal(metric_over_time(engine, "snr_db"), snr_before)

    # re-indexing the audio session fills them: the measured values, the IQ stations still NULL
    assert index_session(engine, audio, "file:///audio") == 2
    with engine.connect() as c:
        got = pd.read_sql(select(MetricRow.station_id, MetricRow.session_id, *[MetricRow.__table__.c[m] for m in V5]),
                          c).set_index(["session_id", "station_id"])
    owrx = got.loc[("20261130T005000Z-a0d10a", "owrx")]
    assert owrx["occupancy_fraction"] == float(audio["occupancy_fraction"].sel(station="owrx")) == 0.5
    assert owrx["channel_power_fft_dbfs"] == pytest.approx(float(audio["channel_power_fft_dbfs"].sel(station="owrx")),
                                                           rel=1e-15)
    assert got.drop(index=[("20261130T005000Z-a0d10a", "owrx")]).isna().all().all()
    occ = metric_over_time(engine, "occupancy_fraction", stations=["owrx"])
    assert list(occ["value"]) == [0.5] and list(occ["n"]) == [1]
    incremental = _hourly(engine)
    with engine.begin() as c:
        rebuild_rollup(c)
    pd.testing.assert_frame_equal(incremental, _hourly(engine), check_exact=False, rtol=1e-9)

    # idempotent
    before = {t: _columns(engine, t) for t in ("capture_metrics", "interval_metrics", "metric_hourly")}
    init_db(engine)
    assert {t: _columns(engine, t) for t in before} == before
