"""Writing to the index: a session's rows (session, captures, metrics) in one transaction, only
after its data is committed to the store; bulk metric ingest in batches (COPY on PostgreSQL)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from sqlalchemy import Connection, Engine, delete, insert, select

from ..errors import IndexStoreError
from .models import DB_METRICS, METRIC_COLUMNS, CaptureRow, IntervalMetricRow, MetricRow, SessionRow

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


def _session_id_time(session_id: str) -> datetime:
    """The time a session id carries (``YYYYmmddTHHMMSSZ-...``), else now."""
    try:
        return datetime.strptime(session_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.now(timezone.utc)


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
    timing = ds["timing"].values if "timing" in ds.coords else np.array(["gps"] * ds.sizes["station"])
    for i, st in enumerate(ds["station"].values):
        st = str(st)
        s = ds.isel(station=i)
        t0 = _ts(starts[i])
        note = (status.get(st) or {}).get("message")
        when = t0
        if t0 is None or str(timing[i]) != "gps":
            # no GPS time: indexed all the same (a capture must not vanish from history), at
            # its receipt time or else the session's start, and the capture says so
            when = t0 or session["start_time"] or _session_id_time(sid)
            flag = (f"time not from GPS ({'receipt time' if t0 is not None else 'the session start'}"
                    " used for the metrics)")
            note = f"{note}; {flag}" if note else flag
        captures.append({
            "session_id": sid, "station_id": st, "store_key": f"{store_url}#station={st}", "start_time": t0,
            "sample_rate": _f(fs[i]), "samples": int(n[i]), "status": str(s["status"].values),
            "error": note,
        })
        if when is not None:
            row = {"time": when, "station_id": st, "session_id": sid, "frequency_hz": freq}
            row.update({m: _f(s[m].values) if m in s.variables else None for m in METRIC_COLUMNS})
            metrics.append(row)
    for st, v in status.items():  # stations that delivered nothing
        if st not in {c["station_id"] for c in captures}:
            captures.append({"session_id": sid, "station_id": st, "store_key": "", "start_time": None,
                             "sample_rate": None, "samples": 0, "status": v.get("status", "failed"),
                             "error": f"{v.get('error_class')}: {v.get('message')}"})
    return session, captures, metrics


#: a session Dataset's interval metrics (:func:`sdrlab.metrics.interval_metrics` as stored by
#: acquisition): variables ``interval_<metric>`` (station, interval), coordinates
#: ``interval_start`` and ``interval_samples``, attribute ``interval_s``
INTERVAL_PREFIX = "interval_"


def interval_rows(ds: xr.Dataset) -> list[dict[str, Any]]:
    """The interval metric rows of a session (none when it carries no interval metrics): one per
    station and interval that holds samples; only GPS-timed stations (an interval's time is
    only as good as the time base)."""
    if "interval_start" not in ds.coords or "interval_samples" not in ds.coords:
        return []
    sid = ds.attrs["session_id"]
    freq = float(ds.attrs.get("center_frequency_hz", float("nan")))
    interval_s = float(ds.attrs.get("interval_s", float("nan")))
    starts = ds["interval_start"].transpose("station", "interval").values
    samples = ds["interval_samples"].transpose("station", "interval").values
    timing = ds["timing"].values if "timing" in ds.coords else np.array(["gps"] * ds.sizes["station"])
    cols = {m: ds[INTERVAL_PREFIX + m].transpose("station", "interval").values
            for m in METRIC_COLUMNS if INTERVAL_PREFIX + m in ds.data_vars}
    rows = []
    for i, st in enumerate(ds["station"].values):
        if str(timing[i]) != "gps":
            continue
        for k in range(starts.shape[1]):
            t = _ts(starts[i, k])
            if t is None or samples[i, k] <= 0:
                continue
            row: dict[str, Any] = {"time": t, "station_id": str(st), "session_id": sid, "interval_s": interval_s,
                                   "samples": int(samples[i, k]), "frequency_hz": freq}
            row.update({m: _f(cols[m][i, k]) if m in cols else None for m in METRIC_COLUMNS})
            rows.append(row)
    return rows


def add_interval_rows(engine: Engine, session_id: str, station: str, frequency_hz: float, interval_s: float,
                      intervals: Sequence[Mapping[str, Any]]) -> int:
    """Index one station's intervals of a session still being recorded, as their chunk is
    committed (``intervals``: ``utc`` (datetime64 or ISO), ``samples`` and the metrics by name;
    those without a time or samples are left out).  Rows already there (a chunk stored twice)
    are replaced; :func:`index_session` replaces them all when the session is finalised."""
    rows = []
    for iv in intervals:
        t = _ts(iv.get("utc"))
        if t is None or int(iv.get("samples", 0)) <= 0:
            continue
        row: dict[str, Any] = {"time": t, "station_id": station, "session_id": session_id, "interval_s": interval_s,
                               "samples": int(iv["samples"]), "frequency_hz": float(frequency_hz)}
        row.update({m: _f(iv.get(m)) for m in METRIC_COLUMNS})
        rows.append(row)
    if not rows:
        return 0
    try:
        with engine.begin() as c:
            for row in rows:
                c.execute(delete(IntervalMetricRow).where(
                    IntervalMetricRow.station_id == station, IntervalMetricRow.time == row["time"],
                    IntervalMetricRow.session_id == session_id))
            c.execute(insert(IntervalMetricRow), rows)
    except Exception as exc:
        raise IndexStoreError(f"indexing intervals of {station} in session {session_id} failed: "
                              f"{type(exc).__name__}: {exc}"[:500]) from None
    return len(rows)


def index_session(engine: Engine, ds: xr.Dataset, store_url: str) -> int:
    """Index a committed session (replacing any earlier rows of it) in one transaction; returns
    the number of metric rows."""
    session, captures, metrics = session_rows(ds, store_url)
    intervals = interval_rows(ds)
    sid = session["id"]
    try:
        with engine.begin() as c:
            old = _session_keys(c, sid)
            c.execute(delete(MetricRow).where(MetricRow.session_id == sid))
            c.execute(delete(IntervalMetricRow).where(IntervalMetricRow.session_id == sid))
            c.execute(delete(CaptureRow).where(CaptureRow.session_id == sid))
            c.execute(delete(SessionRow).where(SessionRow.id == sid))
            c.execute(insert(SessionRow), [session])
            if captures:
                c.execute(insert(CaptureRow), captures)
            if metrics:
                c.execute(insert(MetricRow), metrics)
            if intervals:
                c.execute(insert(IntervalMetricRow), intervals)
            new = _hour_keys(pd.Series([m["time"] for m in metrics], dtype=object),
                             pd.Series([m["station_id"] for m in metrics], dtype=object),
                             sqlite=engine.dialect.name == "sqlite")
            _refresh_rollup(c.exec_driver_sql, engine.dialect.name, pd.concat([old, new]))
    except Exception as exc:
        raise IndexStoreError(f"indexing session {sid} failed: {type(exc).__name__}: {exc}"[:500]) from None
    return len(metrics)


def delete_session(engine: Engine, session_id: str) -> None:
    with engine.begin() as c:
        old = _session_keys(c, session_id)
        c.execute(delete(MetricRow).where(MetricRow.session_id == session_id))
        c.execute(delete(IntervalMetricRow).where(IntervalMetricRow.session_id == session_id))
        c.execute(delete(CaptureRow).where(CaptureRow.session_id == session_id))
        c.execute(delete(SessionRow).where(SessionRow.id == session_id))
        _refresh_rollup(c.exec_driver_sql, engine.dialect.name, old)


def bulk_insert_metrics(engine: Engine, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> int:
    """Metric rows in one transaction: binary COPY on PostgreSQL, executemany batches elsewhere.
    The hourly rollup follows incrementally in the same transaction: the new rows' sums and counts
    per (hour, station), computed in numpy, are added to metric_hourly (``_rollup_deltas``,
    ``_add_to_rollup_pg`` / ``_add_to_rollup_sqlite``).  Deletes keep the exact recompute."""
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


def _sqlite_us_strings(us: np.ndarray) -> np.ndarray:
    """Microseconds since the Unix epoch (UTC) as SQLAlchemy's SQLite ``DateTime`` stores them
    (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC wall time)."""
    s = np.datetime_as_string(us.astype("datetime64[us]"), unit="us")  # YYYY-MM-DDTHH:MM:SS.ffffff
    chars = s.view(np.uint32).reshape(len(s), s.dtype.itemsize // 4)  # (UCS-4, NUL padded)
    if chars.shape[1] > 10 and bool(np.all(chars[:, 10] == ord("T"))):  # years 0001-9999: in place
        chars[:, 10] = ord(" ")
    else:
        s = np.char.replace(s, "T", " ")
    return s


def _sqlite_times(col: pd.Series) -> list[str | None]:
    """The time column as SQLAlchemy's SQLite ``DateTime`` stores it (``YYYY-MM-DD HH:MM:SS.ffffff``,
    UTC wall time, as the ORM stores the UTC datetimes of ``_ts``); None for NaT."""
    us, nat = _utc_us(col)
    out: list[str | None] = _sqlite_us_strings(us).tolist()
    for i in np.flatnonzero(nat):
        out[i] = None
    return out


def _columns(df: pd.DataFrame) -> list[list[Any]]:
    """The columns of ``df`` as lists of DBAPI parameters, values as the ORM would store them (None
    for NaN/NaT)."""
    columns: list[list[Any]] = [_sqlite_times(df["time"])]
    for c in list(df.columns)[1:]:
        v = df[c].to_numpy(dtype=object)  # Python floats / str, as astype(object) gives
        na = pd.isna(df[c]).to_numpy()
        if na.any():
            v = v.copy()
            v[na] = None
        columns.append(v.tolist())
    return columns


def _executemany(engine: Engine, df: pd.DataFrame) -> None:
    """DBAPI executemany batches, each converted as it is sent (memory bounded) and its rows
    zipped lazily, then the rollup increments, one transaction."""
    if not len(df):
        return
    cols = list(df.columns)
    sql = f"INSERT INTO capture_metrics ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    deltas = _rollup_deltas(df, sqlite=True)
    with engine.begin() as c:
        dbapi = c.connection.dbapi_connection
        assert dbapi is not None
        cur: Any = dbapi.cursor()  # sqlite3's: takes an iterator of rows
        try:
            for start in range(0, len(df), BATCH):
                cur.executemany(sql, zip(*_columns(df.iloc[start : start + BATCH])))
            if deltas is None:
                _refresh_rollup(c.exec_driver_sql, "sqlite", _hour_keys(df["time"], df["station_id"], sqlite=True))
            else:
                _add_to_rollup_sqlite(cur, deltas)
        finally:
            cur.close()


PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 UTC, in us since the Unix epoch
COPY_BATCH = 50_000
COPY_FIRST = 5_000  # rows of the first batch
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class _Field:
    """One column of a binary COPY: the values (castable to ``fmt``: ``>i8``, ``>f8``, ``>i4`` or
    ``S<width>``) and the field lengths (-1 = NULL; None when no value is NULL or shorter than the
    field's width)."""

    fmt: str
    values: np.ndarray
    lens: np.ndarray | None

    @property
    def width(self) -> int:
        return np.dtype(self.fmt).itemsize


def _fixed_field(values: np.ndarray, null: np.ndarray, fmt: str) -> _Field:
    lens = np.where(null, np.int32(-1), np.int32(np.dtype(fmt).itemsize)) if null.any() else None
    return _Field(fmt, values, lens)


def _time_field(col: pd.Series) -> _Field:
    """timestamptz: microseconds since 2000-01-01 UTC."""
    us, nat = _utc_us(col)
    return _fixed_field(us - PG_EPOCH_US, nat, ">i8")


def _float_field(col: pd.Series) -> _Field:
    v = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return _fixed_field(v, np.isnan(v), ">f8")


def _text_field(col: pd.Series) -> _Field:
    """text, utf-8: each distinct value encoded once (ids repeat over many rows), NUL padded to
    the longest."""
    codes, uniq = pd.factorize(col)  # NA: -1
    enc = [str(u).encode("utf-8") for u in uniq]
    table = np.array(enc + [b""], dtype="S")  # last: for NULL
    lens = np.array([len(b) for b in enc] + [-1], dtype=np.int32)
    codes = np.where(codes < 0, len(enc), codes)
    out = lens[codes]
    return _Field(table.dtype.str, table[codes], None if bool(np.all(out == table.itemsize)) else out)


def _payload(fields: Sequence[_Field]) -> bytes:
    """The rows of ``fields`` in PostgreSQL's binary COPY tuple format (no header or trailer):
    every row laid out in a packed structured array (typed big-endian field copies), then, if any
    field is NULL or shorter than its width, the unused bytes dropped with one boolean mask (set
    only where a field is short)."""
    n = len(fields[0].values)
    names, formats, offsets = ["count"], [">i2"], [0]
    off = 2
    for i, f in enumerate(fields):
        names += [f"len{i}", f"val{i}"]
        formats += [">i4", f.fmt]
        offsets += [off, off + 4]
        off += 4 + f.width
    rec = np.empty(n, np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off}))
    rec["count"] = len(fields)
    for i, f in enumerate(fields):
        rec[f"len{i}"] = f.width if f.lens is None else f.lens
        rec[f"val{i}"] = f.values
    if all(f.lens is None for f in fields):
        return rec.tobytes()
    keep = np.ones((n, off), bool)
    for i, f in enumerate(fields):
        if f.lens is None:
            continue
        w, o = f.width, offsets[2 + 2 * i]
        short = np.flatnonzero(f.lens < w)
        if short.size:
            keep[short, o : o + w] = np.arange(w) < np.maximum(f.lens[short], 0)[:, None]
    return rec.view(np.uint8).reshape(n, off)[keep].tobytes()


def _metric_fields(df: pd.DataFrame) -> list[_Field]:
    return [_time_field(df[c]) if c == "time" else _text_field(df[c]) if c in ("station_id", "session_id")
            else _float_field(df[c]) for c in df.columns]


def _copy(engine: Engine, df: pd.DataFrame) -> None:
    """Binary COPY in batches, then the rollup increments, one transaction.  The batches queue to a
    writer thread (psycopg's QueuedLibpqWriter), so the next batch, and then the rollup increments,
    are built while the server stores the rows already sent (the first batch is small: the server
    starts early)."""
    from psycopg.copy import QueuedLibpqWriter

    n = len(df)
    if not n:
        return
    cols = list(df.columns)
    edges = sorted({0, n, *range(min(COPY_FIRST, COPY_BATCH, n), n, COPY_BATCH)})
    raw = engine.raw_connection()
    try:
        cur: Any = raw.cursor()  # psycopg's
        with cur.copy(f"COPY capture_metrics ({', '.join(cols)}) FROM STDIN (FORMAT binary)",
                      writer=QueuedLibpqWriter(cur)) as cp:
            cp.write(COPY_HEADER)
            for start, stop in zip(edges, edges[1:]):
                cp.write(_payload(_metric_fields(df.iloc[start:stop])))
            cp.write(COPY_TRAILER)
            deltas = _rollup_deltas(df, sqlite=False)
            payload = None if deltas is None else _rollup_payload(deltas)
        if deltas is None:
            _refresh_rollup(cur.execute, "postgresql", _hour_keys(df["time"], df["station_id"]))
        else:
            _add_to_rollup_pg(cur, deltas, payload)
        raw.commit()
    finally:
        raw.close()


# -- the hourly rollup (metric_hourly) -----------------------------------------------------------
# Inserts add the new rows' sums and counts to it (``_rollup_deltas``, ``_add_to_rollup_*``);
# deletes (and re-indexing a session) recompute the touched (hour, station) rows from
# capture_metrics (``_refresh_rollup``).

ORIGIN_EPOCH = 946_857_600  # 2000-01-03 00:00 UTC, the origin of the queries' time buckets
HOUR_S = 3600
ROLLUP_LOCK = 0x5D71AB  # the advisory lock key of rollup writes


def _hour_floor(us: np.ndarray, *, sqlite: bool) -> np.ndarray:
    """The hour bucket (epoch seconds) of times in epoch microseconds, as the bucket expressions
    compute it: ``date_bin`` floors; SQLite's integer division truncates toward zero (hours before
    the origin: the next hour, as the raw SQLite queries bucket them)."""
    d = np.floor_divide(us, 1_000_000) - ORIGIN_EPOCH
    q = np.floor_divide(d, HOUR_S)
    if sqlite:
        q = np.where(d < 0, -np.floor_divide(-d, HOUR_S), q)
    out: np.ndarray = q * HOUR_S + ORIGIN_EPOCH
    return out


def _hour_keys(times: pd.Series, stations: pd.Series, *, sqlite: bool = False) -> pd.DataFrame:
    """The distinct (hour bucket in epoch seconds ``h``, station ``s``) pairs of metric rows."""
    if not len(times):
        return pd.DataFrame({"h": np.array([], np.int64), "s": np.array([], object)})
    us, nat = _utc_us(times.reset_index(drop=True))
    h = _hour_floor(us, sqlite=sqlite)
    keys = pd.DataFrame({"h": h[~nat], "s": stations.reset_index(drop=True).to_numpy(dtype=object)[~nat]})
    return keys.drop_duplicates(ignore_index=True)


def _session_keys(c: Connection, session_id: str) -> pd.DataFrame:
    rows = c.execute(select(MetricRow.time, MetricRow.station_id).where(MetricRow.session_id == session_id)).all()
    return _hour_keys(pd.Series([r[0] for r in rows], dtype=object), pd.Series([r[1] for r in rows], dtype=object),
                      sqlite=c.dialect.name == "sqlite")


def _rollup_columns() -> list[str]:
    return [f"{m}_{part}" for m in METRIC_COLUMNS for part in ("sum", "n")]


def _rollup_aggregates() -> tuple[str, str]:
    """(column list, aggregate list) of the rollup's metric columns."""
    aggs = []
    for m in METRIC_COLUMNS:
        aggs += [f"sum(power(10.0, {m} / 10.0))" if m in DB_METRICS else f"sum({m})", f"count({m})"]
    return ", ".join(_rollup_columns()), ", ".join(aggs)


def _rollup_deltas(df: pd.DataFrame, *, sqlite: bool) -> pd.DataFrame | None:
    """What the metric rows of ``df`` add to the rollup: per (hour, station) with rows (columns
    ``h``, the bucket in epoch seconds, and ``station_id``), each metric's ``<m>_sum`` (linear power
    for DB_METRICS, NaN when no value) and ``<m>_n`` (values that are not NaN, i.e. not NULL),
    summed in row order as the database sums a fresh group.  None when a sum is not finite (an
    infinite value, or 10^(x/10) overflowing), a time or station is missing, or two station ids
    are the same text: the exact recompute from capture_metrics decides then (or the insert has
    failed)."""
    us, nat = _utc_us(df["time"])
    st, uniq = pd.factorize(df["station_id"])
    names = np.array([str(u) for u in uniq], dtype=object)  # as stored (text)
    if not len(df) or nat.any() or (st < 0).any() or len(set(names)) < len(names):
        return None
    order = np.argsort(names)  # groups in (hour, station) order
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    h = _hour_floor(us, sqlite=sqlite)
    h0, n_st = int(h.min()), len(names)
    group, keys = pd.factorize((h - h0) // HOUR_S * n_st + rank[st], sort=True)
    g = len(keys)
    out: dict[str, Any] = {"h": keys // n_st * HOUR_S + h0, "station_id": names[order][keys % n_st]}
    for m in METRIC_COLUMNS:
        s, n = np.full(g, np.nan), np.zeros(g, np.int64)
        if m in df.columns:
            v = df[m].to_numpy(dtype=np.float64, na_value=np.nan)
            ok = ~np.isnan(v)
            idx, x = (group, v) if ok.all() else (group[ok], v[ok])
            if m in DB_METRICS:
                with np.errstate(over="ignore"):
                    x = np.power(10.0, x / 10.0)
            n = np.bincount(idx, minlength=g)
            s = np.bincount(idx, weights=x, minlength=g).astype(np.float64)  # (int when x is empty)
            if not np.isfinite(s).all():
                return None
            s[n == 0] = np.nan
        out[f"{m}_sum"], out[f"{m}_n"] = s, n
    return pd.DataFrame(out)


def _rollup_upsert_sets() -> str:
    """ON CONFLICT assignments adding an increment to a rollup row: counts add; sums add, a NULL
    sum (no value) taking the other side's."""
    return ", ".join(f"{m}_sum = coalesce(metric_hourly.{m}_sum + excluded.{m}_sum, metric_hourly.{m}_sum, "
                     f"excluded.{m}_sum), {m}_n = metric_hourly.{m}_n + excluded.{m}_n" for m in METRIC_COLUMNS)


def _rollup_payload(deltas: pd.DataFrame) -> bytes:
    """The increments in binary COPY format, columns ``bucket, station_id,`` then _rollup_columns."""
    g = len(deltas)
    present = np.zeros(g, bool)
    fields = [_fixed_field(deltas["h"].to_numpy(np.int64) * 1_000_000 - PG_EPOCH_US, present, ">i8"),
              _text_field(deltas["station_id"])]
    for c in _rollup_columns():
        fields.append(_float_field(deltas[c]) if c.endswith("_sum") else
                      _fixed_field(deltas[c].to_numpy().astype(np.int32), present, ">i4"))
    return _payload(fields)


def _copy_in(cur: Any, table: str, columns: str, payload: bytes) -> None:
    """Binary COPY of a payload of ``_payload``."""
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT binary)") as cp:
        cp.write(COPY_HEADER)
        cp.write(payload)
        cp.write(COPY_TRAILER)


def _add_to_rollup_pg(cur: Any, deltas: pd.DataFrame, payload: bytes | None = None) -> None:
    """Add the increments (``_rollup_deltas``; ``payload``: all of them as ``_rollup_payload``, if
    built) to metric_hourly under the rollup lock, which every rollup writer takes (each then sees
    what the others committed, and nobody else adds or removes rollup rows until commit): the
    (hour, station) rows not there yet by COPY, the others by INSERT ... ON CONFLICT DO UPDATE
    from a temp table."""
    columns = f"bucket, station_id, {', '.join(_rollup_columns())}"
    cur.execute(f"select pg_advisory_xact_lock({ROLLUP_LOCK})")
    cur.execute("select cast(extract(epoch from bucket) as bigint), station_id from metric_hourly "
                "where bucket >= to_timestamp(%s) and bucket <= to_timestamp(%s) and station_id = any(%s)",
                (int(deltas["h"].min()), int(deltas["h"].max()), sorted(set(deltas["station_id"]))))
    have = cur.fetchall()
    old = (pd.MultiIndex.from_frame(deltas[["h", "station_id"]]).isin(have) if have
           else np.zeros(len(deltas), bool))
    if not old.all():
        _copy_in(cur, "metric_hourly", columns,
                 payload if payload is not None and not old.any() else _rollup_payload(deltas[~old]))
    if old.any():
        cur.execute("create temp table sdrlab_rollup_add (like metric_hourly) on commit drop")
        _copy_in(cur, "sdrlab_rollup_add", columns, _rollup_payload(deltas[old]))
        cur.execute(f"insert into metric_hourly ({columns}) select {columns} from sdrlab_rollup_add "
                    f"on conflict (bucket, station_id) do update set {_rollup_upsert_sets()}")
        cur.execute("drop table sdrlab_rollup_add")


def _add_to_rollup_sqlite(cur: Any, deltas: pd.DataFrame) -> None:
    """Add the increments to metric_hourly: executemany of INSERT ... ON CONFLICT DO UPDATE
    (``cur``: a sqlite3 cursor in the writing transaction)."""
    cols = _rollup_columns()
    columns: list[list[Any]] = [_sqlite_us_strings(deltas["h"].to_numpy(np.int64) * 1_000_000).tolist(),
                                deltas["station_id"].tolist()]
    for c in cols:
        if c.endswith("_sum"):
            v = deltas[c].to_numpy(dtype=object)
            v[pd.isna(deltas[c]).to_numpy()] = None
            columns.append(v.tolist())
        else:
            columns.append(deltas[c].tolist())
    cur.executemany(f"insert into metric_hourly (bucket, station_id, {', '.join(cols)}) "
                    f"values ({', '.join('?' * (2 + len(cols)))}) "
                    f"on conflict (bucket, station_id) do update set {_rollup_upsert_sets()}", zip(*columns))


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
    if c.dialect.name != "sqlite":  # after concurrent rollup writers, before those that follow
        c.exec_driver_sql(f"select pg_advisory_xact_lock({ROLLUP_LOCK})")
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
    # SQLite's buckets of times before the origin are the next hour (integer division truncates
    # toward zero): a bucket h holds times from h - 1 h on, so the time range starts an hour earlier
    # (the join on the keys keeps only the keys' rows)
    lo -= HOUR_S
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
