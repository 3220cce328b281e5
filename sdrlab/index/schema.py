"""Schema set-up, chosen by the database URL: SQLite (embedded default), PostgreSQL with
TimescaleDB when the extension is available, plain PostgreSQL otherwise.  Idempotent: running it
again changes nothing (``sdrlab db init`` / ``upgrade``).  Upgrades: tables a newer schema adds are
created, and metric columns it adds to ``capture_metrics`` / ``interval_metrics`` / ``metric_hourly``
are added in place (``ALTER TABLE ... ADD COLUMN``: NULL in the rows already there, count 0 in the
rollup, which is what rebuilding the rollup from those rows would give; schema 2's metrics, and
schema 5's two of audio receivers).  On plain PostgreSQL the metric tables' primary
keys of schemas 1-3 (time, station_id, session_id) are rebuilt as (station_id, time, session_id) and
their (station_id, time) indexes dropped (schema 4; ``_rekey``); SQLite and TimescaleDB databases
keep the old keys, which give the same answers."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text

from ..errors import IndexStoreError
from ..redact import mask_url
from .models import (
    METRIC_KEY, OLD_METRIC_KEY, SCHEMA_VERSION, Base, IntervalMetricRow, MetricHourlyRow, MetricRow, SchemaVersion,
)

log = logging.getLogger(__name__)


def _sqlite_functions(dbapi_conn: Any, _record: Any) -> None:
    """log10 / pow for the linear-power averages (not every SQLite build has math functions)."""
    def log10(x: float | None) -> float | None:
        return math.log10(x) if x is not None and x > 0 else None

    def pow_(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else math.pow(x, y)

    dbapi_conn.create_function("log10", 1, log10, deterministic=True)
    dbapi_conn.create_function("power", 2, pow_, deterministic=True)
    dbapi_conn.execute("PRAGMA foreign_keys=ON")


#: advisory lock key of schema set-up (PostgreSQL)
SCHEMA_LOCK = 0x5D71AC
#: PostgreSQL: a statement waiting this long for a lock, or running this long, fails instead of
#: hanging (an acquisition's index step must end; what is stored stays stored)
LOCK_TIMEOUT_S = 15.0
STATEMENT_TIMEOUT_S = 600.0
#: SQLite: how long a writer waits for another's lock
SQLITE_BUSY_TIMEOUT_S = 15.0


def make_engine(url: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S,
                statement_timeout_s: float = STATEMENT_TIMEOUT_S, create_dir: bool = False) -> Engine:
    """The SQLAlchemy engine for ``sqlite:///PATH`` or ``postgresql+psycopg://...``, with timeouts
    on connecting (5 s), waiting for locks and running statements.  A URL that cannot make an
    engine (unknown scheme or driver, an SQLite path under a file, or in a directory that does not
    exist, unless ``create_dir``) is an :class:`~sdrlab.errors.IndexStoreError` naming the URL
    (password masked) and the reason.  The SQLite file itself is made on first use."""
    shown = mask_url(url)
    try:
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
            if path and path != ":memory:":
                parent = Path(path).expanduser().parent
                if create_dir:
                    parent.mkdir(parents=True, exist_ok=True)
                elif not parent.is_dir():  # a typo must not silently make a second index somewhere
                    why = (f"{parent} is not a directory" if parent.exists() else
                           f"the directory {parent} does not exist (create it, or fix SDRLAB_DB)")
                    raise IndexStoreError(f"index URL {shown!r}: cannot use it: {why}")
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_functions)
            return engine
        if url.startswith(("postgresql://", "postgresql+")):
            opts = (f"-c lock_timeout={int(lock_timeout_s * 1000)} "
                    f"-c statement_timeout={int(statement_timeout_s * 1000)}")
            return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "options": opts})
    except IndexStoreError:
        raise
    except ImportError as exc:
        hint = " (pip install 'sdrlab[db]' for postgresql+psycopg)" if "psycopg" in str(exc) or "psycopg" in url else ""
        raise IndexStoreError(f"index URL {shown!r}: its driver is not installed: {exc}{hint}") from None
    except (OSError, ValueError) as exc:
        raise IndexStoreError(f"index URL {shown!r}: cannot use it: {exc}") from None
    except Exception as exc:  # sqlalchemy.exc.ArgumentError / NoSuchModuleError: a bad URL
        raise IndexStoreError(f"index URL {shown!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    raise IndexStoreError(f"unsupported index URL {shown!r} (sqlite:///PATH or postgresql+psycopg://...)")


def backend(engine: Engine) -> str:
    """``sqlite``, ``timescaledb`` or ``postgresql`` (what this database offers)."""
    if engine.dialect.name == "sqlite":
        return "sqlite"
    try:
        with engine.connect() as c:
            have = c.execute(text("select 1 from pg_available_extensions where name = 'timescaledb'")).first()
    except Exception as exc:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        raise IndexStoreError(f"the index at {where} is unreachable: {reason}") from None
    return "timescaledb" if have else "postgresql"


def init_db(engine: Engine, *, retention_days: int = 365) -> str:
    """Create or upgrade the schema; returns the backend used."""
    kind = backend(engine)
    where = mask_url(str(engine.url.render_as_string(hide_password=True)))
    try:
        with engine.begin() as c:
            if kind != "sqlite":  # concurrent set-ups run one after another (CREATE TABLE races)
                c.execute(text("select pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            if kind == "timescaledb":
                c.execute(text("create extension if not exists timescaledb"))
            Base.metadata.create_all(c)
            added = _add_columns(c)
            if added:
                log.info("index at %s upgraded: added %s", where, ", ".join(added))
            if kind == "timescaledb":
                _timescale(c, retention_days)
            elif kind == "postgresql":
                _rekey(c, where)
                # plain PostgreSQL: BRIN on time (cheap, append-ordered data) + the btree indexes
                c.execute(text("create index if not exists ix_metrics_time_brin on capture_metrics "
                               "using brin (time) with (pages_per_range = 32)"))
                c.execute(text("create index if not exists ix_availability_time_brin on availability "
                               "using brin (time) with (pages_per_range = 32)"))
                c.execute(text("create index if not exists ix_interval_time_brin on interval_metrics "
                               "using brin (time) with (pages_per_range = 32)"))
            if (c.execute(text("select 1 from capture_metrics limit 1")).first() is not None
                    and c.execute(text("select 1 from metric_hourly limit 1")).first() is None):
                from .ingest import rebuild_rollup  # a database indexed before the hourly rollup

                rebuild_rollup(c)
            have = c.execute(select(SchemaVersion.version).where(SchemaVersion.version == SCHEMA_VERSION)).first()
            if have is None:
                c.execute(insert(SchemaVersion).values(
                    version=SCHEMA_VERSION, backend=kind, applied_at=datetime.now(timezone.utc)))
    except IndexStoreError:
        raise
    except Exception as exc:
        raise IndexStoreError(f"setting up the index at {where} failed: {type(exc).__name__}: {exc}"[:500]) from None
    log.info("index schema v%d ready on %s (%s)", SCHEMA_VERSION, where, kind)
    return kind


def _add_columns(c: Connection) -> list[str]:
    """Add the columns of the metric tables that an existing database lacks (``create_all`` only
    creates missing tables); returns them as ``table.column``.  New metric columns are nullable;
    the rollup's new counts are NOT NULL DEFAULT 0.  (interval_metrics, created by schema 3 with
    every metric then known, gains those of schema 5 here.)"""
    added = []
    insp = inspect(c)
    for row in (MetricRow, IntervalMetricRow, MetricHourlyRow):
        table = Base.metadata.tables[row.__tablename__]
        have = {col["name"] for col in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            ddl = f"alter table {table.name} add column {col.name} {col.type.compile(dialect=c.dialect)}"
            if not col.nullable:
                ddl += " not null default 0"
            c.execute(text(ddl))
            added.append(f"{table.name}.{col.name}")
    return added


#: the metric tables whose primary key schema 4 reorders, with the (station_id, time) index the
#: reordered key replaces
REKEYED = {"capture_metrics": "ix_metrics_station_time", "interval_metrics": "ix_interval_station_time"}
#: the longest a key rebuild may take (init_db runs before writes: a table too big for it keeps its
#: old key rather than hold every write for the whole statement timeout, again at each init_db)
REKEY_TIMEOUT_S = 120.0


def _rekey(c: Connection, where: str) -> None:
    """Plain PostgreSQL: rebuild a metric table's primary key (time, station_id, session_id) of
    schemas 1-3 as (station_id, time, session_id) and drop its (station_id, time) index, which the
    new key serves (one btree less to maintain on every insert).  Each table in a savepoint, waiting
    for its lock at most the engine's lock timeout and rebuilding for at most REKEY_TIMEOUT_S: if
    that fails (the table busy, or too big), the old key and index stay, which give the same
    answers, with a warning, and the next ``init_db`` tries again."""
    for table, index in REKEYED.items():
        pk = inspect(c).get_pk_constraint(table)
        if tuple(pk["constrained_columns"]) != OLD_METRIC_KEY:
            continue
        name = pk["name"]
        try:
            with c.begin_nested():
                limit = c.execute(text("select current_setting('statement_timeout')")).scalar_one()
                c.execute(text(f"set local statement_timeout = {int(REKEY_TIMEOUT_S * 1000)}"))
                c.execute(text(f'alter table {table} drop constraint "{name}", '
                               f"add constraint {table}_pkey primary key ({', '.join(METRIC_KEY)})"))
                c.execute(text(f"drop index if exists {index}"))
                c.execute(text("select set_config('statement_timeout', :v, true)"), {"v": limit})
        except Exception as exc:
            log.warning("index at %s: %s keeps its schema-3 primary key (%s) and index %s (same answers, "
                        "slower ingest): %s: %s", where, table, ", ".join(OLD_METRIC_KEY), index,
                        type(exc).__name__, str(exc).splitlines()[0][:200])
            continue
        log.info("index at %s upgraded: %s primary key (%s), %s dropped", where, table, ", ".join(METRIC_KEY), index)


def _timescale(c: Any, retention_days: int) -> None:
    """Hypertables (time in every unique key), segment-by-station compression, retention of raw
    rows, and a real continuous aggregate of hourly SNR per station with a bounded refresh."""
    for table in ("capture_metrics", "interval_metrics", "availability"):
        c.execute(text(f"select create_hypertable('{table}', by_range('time', interval '7 days'), "
                       "if_not_exists => true, migrate_data => true)"))
    c.execute(text("select remove_retention_policy('interval_metrics', if_exists => true)"))
    c.execute(text(f"select add_retention_policy('interval_metrics', interval '{int(retention_days)} days')"))
    c.execute(text("alter table capture_metrics set (timescaledb.compress, "
                   "timescaledb.compress_segmentby = 'station_id', "
                   "timescaledb.compress_orderby = 'time desc, session_id')"))
    c.execute(text("select add_compression_policy('capture_metrics', interval '30 days', if_not_exists => true)"))
    # replaced each time, so a changed retention takes effect on an existing database
    c.execute(text("select remove_retention_policy('capture_metrics', if_exists => true)"))
    c.execute(text(f"select add_retention_policy('capture_metrics', interval '{int(retention_days)} days')"))
    c.execute(text(
        "create materialized view if not exists snr_hourly with (timescaledb.continuous) as "
        "select time_bucket(interval '1 hour', time) as bucket, station_id, "
        "avg(power(10.0, snr_db / 10.0)) as snr_linear, count(snr_db) as n "
        "from capture_metrics group by bucket, station_id with no data"))
    c.execute(text("select add_continuous_aggregate_policy('snr_hourly', start_offset => interval '3 days', "
                   "end_offset => interval '1 hour', schedule_interval => interval '30 minutes', "
                   "if_not_exists => true)"))
