"""The questions researchers ask, one API on SQLite, PostgreSQL and TimescaleDB.

Time buckets: ``time_bucket`` on TimescaleDB, ``date_bin`` on PostgreSQL (same origin,
2000-01-03, a Monday, as time_bucket), integer division of epoch seconds on SQLite.  Metrics in dB
are averaged in linear power and converted back to dB; others are plain means.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from ..errors import ConfigError
from .models import DB_METRICS, METRIC_COLUMNS
from .schema import backend

ORIGIN = "2000-01-03 00:00:00+00"
ORIGIN_EPOCH = 946857600


def _bucket_sql(kind: str, seconds: int) -> str:
    if kind == "sqlite":  # whole seconds cut, not rounded (strftime rounds .9995 s up to the next second)
        return (f"datetime((cast(strftime('%s', substr(time, 1, 19)) as integer) - {ORIGIN_EPOCH}) / {seconds} * {seconds} "
                f"+ {ORIGIN_EPOCH}, 'unixepoch')")
    if kind == "timescaledb":
        return f"time_bucket(interval '{seconds} seconds', time)"
    return f"date_bin(interval '{seconds} seconds', time, timestamptz '{ORIGIN}')"


def _where(start: datetime | None, end: datetime | None, stations: Sequence[str] | None,
           params: dict[str, Any]) -> str:
    clauses = []
    if start is not None:
        clauses.append("time >= :start")
        params["start"] = start
    if end is not None:
        clauses.append("time < :end")
        params["end"] = end
    if stations:
        names = []
        for i, s in enumerate(stations):
            params[f"st{i}"] = s
            names.append(f":st{i}")
        clauses.append(f"station_id in ({', '.join(names)})")
    return (" where " + " and ".join(clauses)) if clauses else ""


def metric_over_time(
    engine: Engine,
    metric: str = "snr_db",
    *,
    bucket_s: int = 3600,
    start: datetime | None = None,
    end: datetime | None = None,
    stations: Sequence[str] | None = None,
    source: str = "captures",
    _raw: bool = False,
) -> pd.DataFrame:
    """A metric per station in time buckets: columns bucket (UTC), station_id, value, n.

    ``source``: ``"captures"`` (one row per station and session, at the capture's start) or
    ``"intervals"`` (the metric time series: one row per station and interval of each session,
    ``interval_metrics``, aggregated from its raw rows).

    On SQLite and plain PostgreSQL, whole-hour buckets over whole-hour ranges are read from the
    hourly rollup (``metric_hourly``, kept exactly consistent with ``capture_metrics`` by the
    ingest functions, which are the only writers of metrics); other buckets, and TimescaleDB
    (whose retention drops raw chunks), aggregate the raw rows (as does ``_raw=True``).  Both give
    the same answers."""
    if metric not in METRIC_COLUMNS:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(METRIC_COLUMNS)})")
    if bucket_s <= 0:
        raise ConfigError(f"bucket must be a positive number of seconds, got {bucket_s}")
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    kind = backend(engine)
    if (source == "captures" and kind != "timescaledb" and bucket_s % HOUR_S == 0 and _hour_aligned(start)
            and _hour_aligned(end) and not _raw):
        return _from_rollup(engine, metric, bucket_s, start, end, stations)
    params: dict[str, Any] = {}
    agg = (f"10 * log10(avg(power(10.0, {metric} / 10.0)))" if metric in DB_METRICS else f"avg({metric})")
    sql = (f"select {_bucket_sql(kind, bucket_s)} as bucket, station_id, {agg} as value, count({metric}) as n "
           f"from {SOURCES[source]}{_where(start, end, stations, params)} "
           f"group by 1, 2 order by 1, 2")
    with engine.connect() as c:
        df = pd.read_sql_query(text(sql), c, params=params)
    df["bucket"] = pd.to_datetime(df["bucket"], utc=True).dt.tz_convert(None)
    return df


HOUR_S = 3600
#: metric_over_time's sources: their tables
SOURCES = {"captures": "capture_metrics", "intervals": "interval_metrics"}


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _hour_aligned(t: datetime | None) -> bool:
    if t is None:
        return True
    u = _utc(t)
    return u.minute == 0 and u.second == 0 and u.microsecond == 0


def _from_rollup(engine: Engine, metric: str, bucket_s: int, start: datetime | None, end: datetime | None,
                 stations: Sequence[str] | None) -> pd.DataFrame:
    """metric_over_time from metric_hourly: sums and counts re-bucketed to ``bucket_s``."""
    sqlite = engine.dialect.name == "sqlite"

    def ph(name: str) -> str:  # driver-level placeholders: sqlite3 named, psycopg pyformat
        return f":{name}" if sqlite else f"%({name})s"

    params: dict[str, Any] = {}
    clauses = []
    for name, t, op in (("start", start, ">="), ("end", end, "<")):
        if t is not None:
            clauses.append(f"bucket {op} {ph(name)}")
            params[name] = _utc(t).strftime("%Y-%m-%d %H:%M:%S.000000") if sqlite else _utc(t)
    if stations:
        names = []
        for i, s in enumerate(stations):
            params[f"st{i}"] = s
            names.append(ph(f"st{i}"))
        clauses.append(f"station_id in ({', '.join(names)})")
    where = (" where " + " and ".join(clauses)) if clauses else ""
    epoch = "cast(strftime('%s', bucket) as integer)" if sqlite else "cast(extract(epoch from bucket) as bigint)"
    if bucket_s == HOUR_S:
        sql = (f"select {epoch} as b, station_id, {metric}_sum as s, {metric}_n as n from metric_hourly{where} "
               "order by bucket, station_id")
    else:
        if sqlite:  # as the raw path: integer division of epoch seconds
            b = f"({epoch} - {ORIGIN_EPOCH}) / {bucket_s} * {bucket_s} + {ORIGIN_EPOCH}"
        else:  # as date_bin / time_bucket
            b = f"cast(floor(({epoch} - {ORIGIN_EPOCH}) / {bucket_s}.0) as bigint) * {bucket_s} + {ORIGIN_EPOCH}"
        sql = (f"select {b} as b, station_id, sum({metric}_sum) as s, cast(sum({metric}_n) as bigint) as n "
               f"from metric_hourly{where} group by 1, 2 order by 1, 2")
    with engine.connect() as c:  # the DBAPI cursor: plain tuples (binary results on psycopg)
        dbapi = c.connection.dbapi_connection
        assert dbapi is not None
        cur = dbapi.cursor() if sqlite else dbapi.cursor(binary=True)
        try:
            cur.execute(sql, params)
            rows = cur.fetchall()
        finally:
            cur.close()
    if rows:
        b_, st, sm, n = zip(*rows)
    else:
        b_, st, sm, n = (), (), (), ()
    n_arr = np.asarray(n, dtype=np.int64)
    s_arr = np.asarray([np.nan if v is None else v for v in sm], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_arr > 0, s_arr / np.maximum(n_arr, 1), np.nan)
        value = 10 * np.log10(mean) if metric in DB_METRICS else mean
    return pd.DataFrame({
        "bucket": pd.to_datetime(np.asarray(b_, dtype=np.int64), unit="s"),
        "station_id": pd.Series(list(st)),
        "value": value,
        "n": n_arr,
    })


def latest_status(engine: Engine) -> pd.DataFrame:
    """The latest capture of each station: when, status, error."""
    sql = ("select c.station_id, c.start_time, c.status, c.error, c.session_id from captures c "
           "join (select station_id, max(s.indexed_at) as latest from captures c2 join sessions s "
           "on s.id = c2.session_id group by station_id) m on m.station_id = c.station_id "
           "join sessions s on s.id = c.session_id and s.indexed_at = m.latest order by c.station_id")
    with engine.connect() as c:
        return pd.read_sql_query(text(sql), c)


def find_captures(
    engine: Engine,
    *,
    frequency_hz: tuple[float, float] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    stations: Sequence[str] | None = None,
    min_metrics: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Captures matching a band, a time range, stations and metric thresholds, with store keys."""
    params: dict[str, Any] = {}
    where = _where(start, end, stations, params).replace(" where ", "", 1)
    clauses = [f"({where.replace('time', 'm.time').replace('station_id', 'm.station_id')})"] if where else []
    if frequency_hz is not None:
        clauses.append("m.frequency_hz between :flo and :fhi")
        params["flo"], params["fhi"] = frequency_hz
    for i, (name, threshold) in enumerate((min_metrics or {}).items()):
        if name not in METRIC_COLUMNS:
            raise ConfigError(f"unknown metric {name!r}")
        clauses.append(f"m.{name} >= :th{i}")
        params[f"th{i}"] = threshold
    sql = ("select m.time, m.station_id, m.session_id, m.frequency_hz, m.snr_db, c.store_key, c.status "
           "from capture_metrics m join captures c on c.session_id = m.session_id and c.station_id = m.station_id"
           + (" where " + " and ".join(clauses) if clauses else "") + " order by m.time, m.station_id, m.session_id")
    with engine.connect() as c:
        df = pd.read_sql_query(text(sql), c, params=params)
    df["time"] = pd.to_datetime(df["time"], utc=True).dt.tz_convert(None)
    return df
