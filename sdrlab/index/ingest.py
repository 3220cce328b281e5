"""Writing to the index: a session's rows (session, captures, metrics) in one transaction, only
after its data is committed to the store; bulk metric ingest in batches (COPY on PostgreSQL)."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from sqlalchemy import Connection, Engine, delete, insert, select

from ..errors import IndexStoreError
from .models import DB_METRICS, METRIC_COLUMNS, CaptureRow, MetricRow, SessionRow

log = logging.getLogger(__name__)
BATCH = 20_000


def _ts(v: Any) -> datetime | None:
    if v is None:
        return None
    t = pd.Timestamp(v)
    if pd.isna(t):
        return None
    t = (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).floor("us")  # the index keeps us
    out: datetime = t.to_pydatetime()
    return out


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def session_rows(ds: xr.Dataset, store_url: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of one session: (session, captures, metrics)."""
    sid = ds.attrs["session_id"]
    status = json.loads(ds.attrs.get("station_status", "{}"))
    starts = ds["start_time"].values
    valid = starts[~np.isnat(starts)]
    n = ds["n_samples"].values
    fs = ds["sample_rate"].values
    ends = [s + np.timedelta64(int(k / r * 1e9), "ns") for s, k, r in zip(starts, n, fs) if not np.isnat(s) and r > 0]
    freq = float(ds.attrs.get("center_frequency_hz", float("nan")))
    session = {
        "id": sid,
        "start_time": _ts(valid.min()) if valid.size else None,
        "end_time": _ts(max(ends)) if ends else None,
        "center_frequency_hz": freq,
        "duration_s": _f(ds.attrs.get("requested_duration_s")),
        "parameters": {k: ds.attrs[k] for k in ("passband_low_hz", "passband_high_hz", "protocol", "sdrlab_version")
                       if k in ds.attrs},
        "status": "ok" if all(v.get("status") == "ok" for v in status.values()) else "partial",
        "store_url": store_url,
        "papermill_run_id": ds.attrs.get("papermill_run_id"),
        "indexed_at": datetime.now(timezone.utc),
    }
    captures, metrics = [], []
    for i, st in enumerate(ds["station"].values):
        st = str(st)
        s = ds.isel(station=i)
        t0 = _ts(starts[i])
        captures.append({
            "session_id": sid, "station_id": st, "store_key": f"{store_url}#station={st}", "start_time": t0,
            "sample_rate": _f(fs[i]), "samples": int(n[i]), "status": str(s["status"].values),
            "error": (status.get(st) or {}).get("message"),
        })
        if t0 is not None:
            row = {"time": t0, "station_id": st, "session_id": sid, "frequency_hz": freq}
            row.update({m: _f(s[m].values) if m in s.variables else None for m in METRIC_COLUMNS})
            metrics.append(row)
    for st, v in status.items():  # stations that delivered nothing
        if st not in {c["station_id"] for c in captures}:
            captures.append({"session_id": sid, "station_id": st, "store_key": "", "start_time": None,
                             "sample_rate": None, "samples": 0, "status": v.get("status", "failed"),
                             "error": f"{v.get('error_class')}: {v.get('message')}"})
    return session, captures, metrics


def index_session(engine: Engine, ds: xr.Dataset, store_url: str) -> int:
    """Index a committed session (replacing any earlier rows of it) in one transaction; returns
    the number of metric rows."""
    session, captures, metrics = session_rows(ds, store_url)
    sid = session["id"]
    try:
        with engine.begin() as c:
            old = _session_keys(c, sid)
            c.execute(delete(MetricRow).where(MetricRow.session_id == sid))
            c.execute(delete(CaptureRow).where(CaptureRow.session_id == sid))
            c.execute(delete(SessionRow).where(SessionRow.id == sid))
            c.execute(insert(SessionRow), [session])
            if captures:
                c.execute(insert(CaptureRow), captures)
            if metrics:
                c.execute(insert(MetricRow), metrics)
            new = _hour_keys(pd.Series([m["time"] for m in metrics], dtype=object),
                             pd.Series([m["station_id"] for m in metrics], dtype=object))
            _refresh_rollup(c.exec_driver_sql, engine.dialect.name, pd.concat([old, new]))
    except Exception as exc:
        raise IndexStoreError(f"indexing session {sid} failed: {type(exc).__name__}: {exc}"[:500]) from None
    return len(metrics)


def delete_session(engine: Engine, session_id: str) -> None:
    with engine.begin() as c:
        old = _session_keys(c, session_id)
        c.execute(delete(MetricRow).where(MetricRow.session_id == session_id))
        c.execute(delete(CaptureRow).where(CaptureRow.session_id == session_id))
        c.execute(delete(SessionRow).where(SessionRow.id == session_id))
        _refresh_rollup(c.exec_driver_sql, engine.dialect.name, old)


def bulk_insert_metrics(engine: Engine, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> int:
    """Metric rows in batches: binary COPY on PostgreSQL, executemany batches elsewhere."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    cols = ["time", "station_id", "session_id", "frequency_hz", *[m for m in METRIC_COLUMNS if m in df.columns]]
    df = df[cols]
    if engine.dialect.name == "postgresql":
        _copy(engine, df)
    else:
        _executemany(engine, df)
    return len(df)


def _utc_us(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since the Unix epoch, UTC, floored as ``_ts`` does; NaT mask) of a time column:
    naive times are UTC, aware ones are converted."""
    t = pd.to_datetime(col, utc=True)
    ns = t.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").view(np.int64)
    nat = ns == np.iinfo(np.int64).min
    return np.floor_divide(ns, 1000), nat


def _sqlite_times(col: pd.Series) -> list[str | None]:
    """The time column as SQLAlchemy's SQLite ``DateTime`` stores it (``YYYY-MM-DD HH:MM:SS.ffffff``,
    UTC wall time, as the ORM stores the UTC datetimes of ``_ts``); None for NaT."""
    us, nat = _utc_us(col)
    s = np.datetime_as_string(us.astype("datetime64[us]"), unit="us")  # YYYY-MM-DDTHH:MM:SS.ffffff
    if s.dtype.itemsize == 26 * 4:  # years 0001-9999: replace the "T" in place
        s.view(np.uint32).reshape(len(s), 26)[:, 10] = ord(" ")
    else:
        s = np.char.replace(s, "T", " ")
    out: list[str | None] = s.tolist()
    for i in np.flatnonzero(nat):
        out[i] = None
    return out


def _executemany(engine: Engine, df: pd.DataFrame) -> None:
    """DBAPI executemany batches, values as the ORM would store them (None for NaN/NaT)."""
    if not len(df):
        return
    cols = list(df.columns)
    columns: list[list[Any]] = [_sqlite_times(df["time"])]
    for c in cols[1:]:
        v = df[c].to_numpy(dtype=object)  # Python floats / str, as astype(object) gives
        na = pd.isna(df[c]).to_numpy()
        if na.any():
            v = v.copy()
            v[na] = None
        columns.append(v.tolist())
    sql = f"INSERT INTO capture_metrics ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    records = list(zip(*columns))
    with engine.begin() as c:
        for start in range(0, len(records), BATCH):
            c.exec_driver_sql(sql, records[start : start + BATCH])
        _refresh_rollup(c.exec_driver_sql, engine.dialect.name, _hour_keys(df["time"], df["station_id"]))


PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 UTC, in us since the Unix epoch
COPY_BATCH = 100_000
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"


def _text_field(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, -1 for NULL; utf-8 bytes as an (n, width) uint8 array, NUL padded)."""
    n = len(col)
    na = pd.isna(col).to_numpy()
    obj = col.to_numpy(dtype=object)
    if na.any():
        obj = obj.copy()
        obj[na] = ""
    try:
        b = obj.astype(str).astype("S")  # ASCII: numpy encodes in C
    except UnicodeEncodeError:
        b = np.array([str(x).encode("utf-8") for x in obj], dtype="S")
    if b.dtype.itemsize == 0:  # all empty
        b = b.astype("S1")
    lens = np.char.str_len(b).astype(np.int32)
    lens[na] = -1
    return lens, b.view(np.uint8).reshape(n, b.dtype.itemsize)


def _copy_payload(df: pd.DataFrame) -> bytes:
    """The rows of ``df`` in PostgreSQL's binary COPY tuple format (no header or trailer), built
    with numpy: every row laid out at fixed offsets in an (n, width) array, then the padding of
    text and NULL fields dropped with one boolean mask."""
    n = len(df)
    fields: list[tuple[np.ndarray, np.ndarray]] = []  # (lengths, -1 = NULL; big-endian data (n, w))
    for c in df.columns:
        if c == "time":
            us, nat = _utc_us(df[c])
            lens = np.where(nat, -1, 8).astype(np.int32)
            fields.append((lens, (us - PG_EPOCH_US).astype(">i8").view(np.uint8).reshape(n, 8)))
        elif c in ("station_id", "session_id"):
            fields.append(_text_field(df[c]))
        else:
            v = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
            lens = np.where(np.isnan(v), -1, 8).astype(np.int32)
            fields.append((lens, v.astype(">f8").view(np.uint8).reshape(n, 8)))
    width = 2 + sum(4 + d.shape[1] for _, d in fields)
    rec = np.empty((n, width), np.uint8)
    keep = np.ones((n, width), bool)
    rec[:, 0:2] = np.full(n, len(fields), ">i2").view(np.uint8).reshape(n, 2)
    off = 2
    for lens, data in fields:
        w = data.shape[1]
        rec[:, off : off + 4] = lens.astype(">i4").view(np.uint8).reshape(n, 4)
        off += 4
        rec[:, off : off + w] = data
        if not np.all(lens == w):
            keep[:, off : off + w] = np.arange(w)[None, :] < np.maximum(lens, 0)[:, None]
        off += w
    return rec[keep].tobytes()


def _copy(engine: Engine, df: pd.DataFrame) -> None:
    """Binary COPY in batches, one transaction."""
    if not len(df):
        return
    cols = list(df.columns)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY capture_metrics ({', '.join(cols)}) FROM STDIN (FORMAT binary)") as cp:
            cp.write(COPY_HEADER)
            for start in range(0, len(df), COPY_BATCH):
                cp.write(_copy_payload(df.iloc[start : start + COPY_BATCH]))
            cp.write(COPY_TRAILER)
        _refresh_rollup(cur.execute, "postgresql", _hour_keys(df["time"], df["station_id"]))
        raw.commit()
    finally:
        raw.close()


# -- the hourly rollup (metric_hourly), recomputed from capture_metrics for the touched hours ----

ORIGIN_EPOCH = 946_857_600  # 2000-01-03 00:00 UTC, the origin of the queries' time buckets
HOUR_S = 3600
ROLLUP_LOCK = 0x5D71AB  # the advisory lock key of rollup refreshes


def _hour_keys(times: pd.Series, stations: pd.Series) -> pd.DataFrame:
    """The distinct (hour floor in epoch seconds ``h``, station ``s``) pairs of metric rows."""
    if not len(times):
        return pd.DataFrame({"h": np.array([], np.int64), "s": np.array([], object)})
    us, nat = _utc_us(times.reset_index(drop=True))
    h = np.floor_divide(np.floor_divide(us, 1_000_000) - ORIGIN_EPOCH, HOUR_S) * HOUR_S + ORIGIN_EPOCH
    keys = pd.DataFrame({"h": h[~nat], "s": stations.reset_index(drop=True).to_numpy(dtype=object)[~nat]})
    return keys.drop_duplicates(ignore_index=True)


def _session_keys(c: Connection, session_id: str) -> pd.DataFrame:
    rows = c.execute(select(MetricRow.time, MetricRow.station_id).where(MetricRow.session_id == session_id)).all()
    return _hour_keys(pd.Series([r[0] for r in rows], dtype=object), pd.Series([r[1] for r in rows], dtype=object))


def _rollup_aggregates() -> tuple[str, str]:
    """(column list, aggregate list) of the rollup's metric columns."""
    cols, aggs = [], []
    for m in METRIC_COLUMNS:
        cols += [f"{m}_sum", f"{m}_n"]
        aggs += [f"sum(power(10.0, {m} / 10.0))" if m in DB_METRICS else f"sum({m})", f"count({m})"]
    return ", ".join(cols), ", ".join(aggs)


def _sqlite_hour(epoch_s: int) -> str:
    """An hour (epoch seconds) as SQLAlchemy's SQLite ``DateTime`` stores it."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.000000")


#: the hour floor of ``time``, as the queries' buckets (SQLite: as SQLAlchemy stores DateTime)
_PG_HOUR = f"date_bin(interval '{HOUR_S} seconds', time, to_timestamp({ORIGIN_EPOCH}))"
_SQLITE_HOUR = (f"datetime((cast(strftime('%s', substr(time, 1, 19)) as integer) - {ORIGIN_EPOCH}) / {HOUR_S} "
                f"* {HOUR_S} + {ORIGIN_EPOCH}, 'unixepoch') || '.000000'")


def rebuild_rollup(c: Connection) -> None:
    """Recompute the whole rollup from capture_metrics, in the caller's transaction (``init_db``
    does this for a database indexed before the rollup existed)."""
    cols, aggs = _rollup_aggregates()
    bucket = _SQLITE_HOUR if c.dialect.name == "sqlite" else _PG_HOUR
    c.exec_driver_sql("delete from metric_hourly")
    c.exec_driver_sql(f"insert into metric_hourly (bucket, station_id, {cols}) "
                      f"select {bucket}, station_id, {aggs} from capture_metrics group by 1, 2")


def _refresh_rollup(execute: Any, dialect: str, keys: pd.DataFrame) -> None:
    """Recompute the rollup rows of the (hour, station) ``keys`` from capture_metrics: their rows
    deleted, then one INSERT ... SELECT ... GROUP BY.  ``execute(sql, params)`` runs driver-level
    SQL in the caller's transaction."""
    keys = keys.drop_duplicates(ignore_index=True)
    if not len(keys):
        return
    cols, aggs = _rollup_aggregates()
    hs = [int(h) for h in keys["h"].to_numpy()]
    ss = [str(s) for s in keys["s"].to_numpy(dtype=object)]
    lo, hi = min(hs), max(hs) + HOUR_S
    if dialect == "postgresql":
        params = {"h": hs, "s": ss, "lo": lo, "hi": hi}
        # concurrent writers refresh one after another (until commit), each statement seeing the
        # rows the others committed: no lost update, no duplicate key
        execute(f"select pg_advisory_xact_lock({ROLLUP_LOCK})", ())
        pairs = "select to_timestamp(h) as b, s from unnest(%(h)s::bigint[], %(s)s::text[]) as k(h, s)"
        execute(f"delete from metric_hourly m using ({pairs}) k where m.bucket = k.b and m.station_id = k.s",
                params)
        bucket = _PG_HOUR
        execute(f"insert into metric_hourly (bucket, station_id, {cols}) "
                f"select c.b, c.station_id, {aggs} from "
                f"(select {bucket} as b, * from capture_metrics "
                f"where time >= to_timestamp(%(lo)s) and time < to_timestamp(%(hi)s)) c "
                f"join ({pairs}) k on c.b = k.b and c.station_id = k.s group by c.b, c.station_id", params)
        return
    execute("create temp table if not exists sdrlab_rollup_keys (b text, s text)", ())
    execute("delete from sdrlab_rollup_keys", ())
    execute("insert into sdrlab_rollup_keys (b, s) values (?, ?)", list(zip([_sqlite_hour(h) for h in hs], ss)))
    execute("delete from metric_hourly where (bucket, station_id) in (select b, s from sdrlab_rollup_keys)", ())
    bucket = _SQLITE_HOUR
    execute(f"insert into metric_hourly (bucket, station_id, {cols}) "
            f"select c.b, c.station_id, {aggs} from "
            f"(select {bucket} as b, * from capture_metrics where time >= ? and time < ?) c "
            f"where (c.b, c.station_id) in (select b, s from sdrlab_rollup_keys) group by c.b, c.station_id",
            (_sqlite_hour(lo), _sqlite_hour(hi)))
    execute("delete from sdrlab_rollup_keys", ())


def consistency(engine: Engine, store: Any, *, remove: bool = False) -> tuple[list[str], list[str]]:
    """(sessions with index rows but no committed data in ``store``, committed sessions of
    ``store`` without index rows).  With ``remove``, rows without objects are deleted (objects
    without rows are fixed by indexing them: ``sdrlab index rebuild``)."""
    from sqlalchemy import select

    committed = set(store.sessions().index)
    with engine.connect() as c:
        indexed = dict(c.execute(select(SessionRow.id, SessionRow.store_url)).all())
    mine = {sid for sid, url in indexed.items() if url == store.session_url(sid)}
    rows_without_objects = sorted(mine - committed)
    objects_without_rows = sorted(committed - set(indexed))
    if remove:
        for sid in rows_without_objects:
            delete_session(engine, sid)
    return rows_without_objects, objects_without_rows
