"""``sdrlab db upgrade`` on an index made before schema 2 (the metric columns of issue 12), on
SQLite and a real PostgreSQL: the columns are added in place, old rows and rollups are kept, new
sessions index every metric, and the rollup stays what a rebuild gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, inspect, select, text

from sdrlab import testing
from sdrlab.cli import main
from sdrlab.index import index_session, init_db
from sdrlab.index.ingest import rebuild_rollup
from sdrlab.index.models import METRIC_COLUMNS, SCHEMA_VERSION, MetricHourlyRow, MetricRow, SchemaVersion
from sdrlab.metrics import UNITS

#: the columns schema 2 added
NEW = ("cn0_dbhz", "noise_bandwidth_hz", "passband_low_hz", "passband_high_hz", "passband_source",
       "passband_filled", "agc_gain_range_db", "agc_gain_changed")


def _session(session_id: str, seed: int) -> Any:
    from sdrlab.acquire import add_metrics

    ds = testing.synthetic_dataset(n_stations=2, duration_s=2.0, seed=seed)
    ds.attrs["session_id"] = session_id
    return add_metrics(ds)


def _to_schema_1(engine: Engine) -> None:
    """Make a fresh index look like one set up by schema 1: the new columns and table dropped, version 1."""
    with engine.begin() as c:
        for col in NEW:
            c.execute(text(f"alter table capture_metrics drop column {col}"))
            c.execute(text(f"alter table metric_hourly drop column {col}_sum"))
            c.execute(text(f"alter table metric_hourly drop column {col}_n"))
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
    assert set(METRIC_COLUMNS) == set(UNITS) - {"rssi_min_dbm", "rssi_max_dbm"}
    assert set(NEW) <= set(METRIC_COLUMNS) and SCHEMA_VERSION == 3
    # the metric time series (schema 3) has every metric too
    from sdrlab.index.models import IntervalMetricRow

    assert set(METRIC_COLUMNS) <= set(IntervalMetricRow.__table__.columns.keys())


def test_db_upgrade_adds_the_new_metric_columns(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _session("20261101T060000Z-aaaaaa", seed=1)
    url = engine.url.render_as_string(hide_password=False)
    # an index made by schema 1, holding a session: its rows and the rollup in the schema-1 columns
    _to_schema_1(engine)
    assert not set(NEW) & _columns(engine, "capture_metrics")
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
    assert set(NEW) <= _columns(engine, "capture_metrics")
    assert {f"{c}{s}" for c in NEW for s in ("_sum", "_n")} <= _columns(engine, "metric_hourly")
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
