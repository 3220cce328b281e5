"""Writing to the index: a session's rows (session, captures, metrics) in one transaction, only
after its data is committed to the store; bulk metric ingest in batches (COPY on PostgreSQL)."""

from __future__ import annotations

import io
import json
import logging
import math
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from sqlalchemy import Engine, delete, insert

from ..errors import IndexStoreError
from .models import METRIC_COLUMNS, CaptureRow, MetricRow, SessionRow

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
            c.execute(delete(MetricRow).where(MetricRow.session_id == sid))
            c.execute(delete(CaptureRow).where(CaptureRow.session_id == sid))
            c.execute(delete(SessionRow).where(SessionRow.id == sid))
            c.execute(insert(SessionRow), [session])
            if captures:
                c.execute(insert(CaptureRow), captures)
            if metrics:
                c.execute(insert(MetricRow), metrics)
    except Exception as exc:
        raise IndexStoreError(f"indexing session {sid} failed: {type(exc).__name__}: {exc}"[:500]) from None
    return len(metrics)


def delete_session(engine: Engine, session_id: str) -> None:
    with engine.begin() as c:
        c.execute(delete(MetricRow).where(MetricRow.session_id == session_id))
        c.execute(delete(CaptureRow).where(CaptureRow.session_id == session_id))
        c.execute(delete(SessionRow).where(SessionRow.id == session_id))


def bulk_insert_metrics(engine: Engine, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> int:
    """Metric rows in batches: COPY on PostgreSQL, executemany batches elsewhere."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    cols = ["time", "station_id", "session_id", "frequency_hz", *[m for m in METRIC_COLUMNS if m in df.columns]]
    df = df[cols]
    if engine.dialect.name == "postgresql":
        _copy(engine, df)
    else:
        with engine.begin() as c:
            for start in range(0, len(df), BATCH):
                part = df.iloc[start : start + BATCH]
                recs = part.astype(object).where(part.notna(), None).to_dict("records")
                for r in recs:
                    r["time"] = _ts(r["time"])
                c.execute(insert(MetricRow), recs)
    return len(df)


def _copy(engine: Engine, df: pd.DataFrame) -> None:
    cols = list(df.columns)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY capture_metrics ({', '.join(cols)}) FROM STDIN") as cp:
            for start in range(0, len(df), BATCH):
                buf = io.StringIO()
                part = df.iloc[start : start + BATCH].copy()
                part["time"] = pd.to_datetime(part["time"], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S.%f+00")
                part.to_csv(buf, sep="\t", header=False, index=False, na_rep="\\N")
                cp.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()



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
