"""The questions researchers ask, one API on SQLite, PostgreSQL and TimescaleDB.

Time buckets: ``time_bucket`` on TimescaleDB, ``date_bin`` on PostgreSQL (same origin,
2000-01-03, a Monday, as time_bucket), integer division of epoch seconds on SQLite.  Metrics in dB
are averaged in linear power and converted back to dB; others are plain means.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import pandas as pd
from sqlalchemy import Engine, text

from ..errors import ConfigError
from .models import DB_METRICS, METRIC_COLUMNS
from .schema import backend

ORIGIN = "2000-01-03 00:00:00+00"
ORIGIN_EPOCH = 946857600


def _bucket_sql(kind: str, seconds: int) -> str:
    if kind == "sqlite":
        return (f"datetime((cast(strftime('%s', time) as integer) - {ORIGIN_EPOCH}) / {seconds} * {seconds} "
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
) -> pd.DataFrame:
    """A metric per station in time buckets: columns bucket (UTC), station_id, value, n."""
    if metric not in METRIC_COLUMNS:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(METRIC_COLUMNS)})")
    if bucket_s <= 0:
        raise ConfigError(f"bucket must be a positive number of seconds, got {bucket_s}")
    kind = backend(engine)
    params: dict[str, Any] = {}
    agg = (f"10 * log10(avg(power(10.0, {metric} / 10.0)))" if metric in DB_METRICS else f"avg({metric})")
    sql = (f"select {_bucket_sql(kind, bucket_s)} as bucket, station_id, {agg} as value, count({metric}) as n "
           f"from capture_metrics{_where(start, end, stations, params)} "
           f"group by 1, 2 order by 1, 2")
    with engine.connect() as c:
        df = pd.read_sql_query(text(sql), c, params=params)
    df["bucket"] = pd.to_datetime(df["bucket"], utc=True).dt.tz_convert(None)
    return df


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
           + (" where " + " and ".join(clauses) if clauses else "") + " order by m.time, m.station_id")
    with engine.connect() as c:
        df = pd.read_sql_query(text(sql), c, params=params)
    df["time"] = pd.to_datetime(df["time"], utc=True).dt.tz_convert(None)
    return df


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
