"""Metrics-index ingest rate and hourly SNR query time on PostgreSQL and SQLite, against naive
baselines measured in the same run.

    python benchmarks/index.py [--rows 1000000] [--stations 50] [--repeat 5]

``--rows`` synthetic metric rows (``--stations`` stations per session, sessions spread evenly over
30 days, every column of ``sdrlab.index.models.METRIC_COLUMNS``, a few percent NaN) are built
with numpy.  A real PostgreSQL 15 is started on loopback (``tests.support.servers.Postgres`` from the
checkout: fsync off, as the tests run it) and SQLite uses a temporary file.  On each backend, in the same run:

* ingest: ``bulk_insert_metrics(engine, df)`` of all rows into a fresh schema (``init_db``),
  timed once (COPY on PostgreSQL, executemany batches on SQLite), conversion from the DataFrame
  included.  Baseline: the first ``--naive-rows`` rows inserted one ``execute`` per row (a prebuilt
  ``insert(MetricRow)``) in one transaction into another fresh schema, conversion included,
  extrapolated to rows/s.  Ratio = bulk rows/s / naive rows/s.  Beside the wall time: the CPU
  seconds the ingest used in this process (conversion, rollup deltas) and, on PostgreSQL, in the
  server's processes (from /proc): on a shared machine the wall time is what the other jobs leave,
  the CPU time is what the ingest costs.
* query: ``metric_over_time(engine, "snr_db", bucket_s=3600)`` over all rows, and with one station
  and a 1-day range; best of ``--repeat`` after one untimed warm-up (PostgreSQL is ANALYZEd after
  the ingest).  Baseline: the same aggregation (hourly buckets, linear-power mean, count) in pandas
  on the DataFrame already in memory, best of ``--repeat`` after a warm-up.  Ratio = pandas time /
  query time (above 1: the database is faster).  The query results are checked against pandas.
  On the raw rows (``_raw=True``: what other bucket sizes and unaligned ranges read), one station
  and one day, and all stations and one day, best of ``--repeat``, checked the same way.
* delete / re-index one session (50 rows of a 1M-row table, the hourly rollup refreshed):
  ``delete_session`` of ``--repeat`` sessions from the middle of the month after one untimed, and
  ``index_session`` of a Dataset holding another session's rows (replacing them), best of
  ``--repeat`` after a warm-up; each checked to leave the row count it should.

Targets: ingest >= 100k rows/s on PostgreSQL; the hourly SNR query over all rows < 100 ms on
PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from sqlalchemy import Engine, func, insert, inspect, select, text

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # tests.support, from a checkout

from sdrlab.index import (  # noqa: E402
    bulk_insert_metrics, delete_session, index_session, init_db, make_engine, metric_over_time,
)
from sdrlab.index.ingest import _ts  # noqa: E402
from sdrlab.index.models import METRIC_COLUMNS, MetricRow  # noqa: E402
from tests.support.servers import Postgres  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAYS = 30
INGEST_TARGET = 100_000.0  # rows/s, PostgreSQL
QUERY_TARGET_MS = 100.0  # hourly SNR over all rows, PostgreSQL


def synthetic_metrics(n: int, n_stations: int, seed: int = 1) -> pd.DataFrame:
    """``n`` metric rows: sessions every ~30 d / (n / stations), each with all stations."""
    rng = np.random.default_rng(seed)
    n_sess = -(-n // n_stations)
    span_us = DAYS * 86_400 * 10**6
    step = max(span_us // n_sess, 2)
    start_us = np.arange(n_sess, dtype=np.int64) * step + rng.integers(0, step // 2, n_sess)
    base = np.datetime64(T0.replace(tzinfo=None), "us")
    sess_start = base + start_us.astype("timedelta64[us]")
    sess_names = pd.DatetimeIndex(sess_start).strftime("%Y%m%dT%H%M%SZ")
    sess_ids = np.array([f"{s}-{i:06x}" for i, s in enumerate(sess_names)], dtype=object)
    freqs = np.array([5.0e6, 7.85e6, 10.0e6, 14.67e6, 15.0e6])
    sess_freq = freqs[rng.integers(0, len(freqs), n_sess)]

    si = np.repeat(np.arange(n_sess), n_stations)[:n]  # session of each row
    st = np.tile(np.arange(n_stations), n_sess)[:n]  # station of each row
    names = np.array([f"st{i:03d}" for i in range(n_stations)], dtype=object)
    lag_us = rng.integers(0, 500_000, n_stations)  # per-station start latency
    t = sess_start[si] + (lag_us[st] + rng.integers(0, 200_000, n)).astype("timedelta64[us]")

    hours = (t - base).astype(np.int64) / 3.6e9
    lon = rng.uniform(-180, 180, n_stations)
    diurnal = np.sin(2 * np.pi * (hours + lon[st] / 15.0) / 24.0)
    snr_mean = rng.uniform(5, 30, n_stations)
    noise = -140 + rng.normal(0, 3, n_stations)[st] + rng.normal(0, 1, n)
    snr = snr_mean[st] + 6 * diurnal + rng.normal(0, 3, n)
    signal = noise + snr + 34.0
    cols: dict[str, Any] = {
        "snr_db": snr,
        "noise_floor_dbfs_hz": noise,
        "signal_power_dbfs": signal,
        "total_power_dbfs": 10 * np.log10(10 ** (signal / 10) + 10 ** ((noise + 37.0) / 10)),
        "frequency_offset_hz": rng.normal(0, 2, n),
        "occupied_bandwidth_hz": rng.uniform(2000, 3000, n),
        "rssi_mean_dbm": -90 + rng.normal(0, 5, n_stations)[st] + 4 * diurnal + rng.normal(0, 2, n),
        "clipped_fraction": rng.beta(0.5, 200, n),
        "overload_fraction": np.where(rng.random(n) < 0.95, 0.0, rng.exponential(1e-3, n)),
        "cn0_dbhz": snr + 40.0,
        "noise_bandwidth_hz": np.full(n, 10_000.0),
        "passband_low_hz": np.full(n, -5000.0),
        "passband_high_hz": np.full(n, 5000.0),
        "passband_source": np.ones(n),
        "passband_filled": (rng.random(n) < 0.02).astype(np.float64),
        "agc_gain_range_db": np.abs(rng.normal(0.1, 0.05, n)),
        "agc_gain_changed": np.zeros(n),
    }
    missing = set(METRIC_COLUMNS) ^ set(cols)
    assert not missing, f"synthetic columns out of step with METRIC_COLUMNS: {missing}"
    failed = rng.random(n) < 0.005  # captures whose metrics all failed
    for name in METRIC_COLUMNS:
        v = np.asarray(cols[name], dtype=np.float64)
        v[failed | (rng.random(n) < 0.02)] = np.nan
        cols[name] = v
    return pd.DataFrame({
        "time": pd.DatetimeIndex(t).tz_localize("UTC"),
        "station_id": names[st],
        "session_id": sess_ids[si],
        "frequency_hz": sess_freq[si],
        **{m: cols[m] for m in METRIC_COLUMNS},
    })


def server_cpu_s(data_dir: str | None) -> float:
    """CPU seconds (user + system) used so far by the PostgreSQL server whose data directory is
    ``data_dir``: its postmaster, every process the postmaster started, and the children it has
    reaped (from /proc; NaN where that cannot be read, or without a server)."""
    if data_dir is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # from the state on (field 3)
            except OSError:  # ended meanwhile
                continue
            if int(pid) == postmaster:
                total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
            elif int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / tick
    except (OSError, ValueError):
        return float("nan")


def best_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time (ms) of ``repeat`` calls after one untimed warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3, out


def naive_insert(engine: Engine, sample: pd.DataFrame) -> float:
    """One execute per row of a prebuilt insert, one transaction; returns seconds (conversion included)."""
    stmt = insert(MetricRow)
    t = time.perf_counter()
    recs = sample.astype(object).where(sample.notna(), None).to_dict("records")
    with engine.begin() as c:
        for r in recs:
            r["time"] = _ts(r["time"])
            c.execute(stmt, r)
    return time.perf_counter() - t


def selected(df: pd.DataFrame, start: datetime | None = None, end: datetime | None = None,
             stations: Sequence[str] | None = None) -> Any:
    """The boolean mask of the rows a time range and station filter select."""
    mask = np.ones(len(df), dtype=bool)
    if start is not None:
        mask &= (df["time"] >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        mask &= (df["time"] < pd.Timestamp(end)).to_numpy()
    if stations:
        mask &= df["station_id"].isin(list(stations)).to_numpy()
    return mask


def pandas_hourly(df: pd.DataFrame, start: datetime | None = None, end: datetime | None = None,
                  stations: Sequence[str] | None = None) -> pd.DataFrame:
    """What metric_over_time(..., "snr_db", bucket_s=3600) computes, on the in-memory frame."""
    sub = df.loc[selected(df, start, end, stations), ["time", "station_id", "snr_db"]]
    snr = sub["snr_db"]
    g = pd.DataFrame({
        "bucket": sub["time"].dt.floor("h").dt.tz_convert(None),  # hourly buckets from midnight
        "station_id": sub["station_id"],
        "lin": np.power(10.0, snr / 10.0),
        "snr": snr,
    }).groupby(["bucket", "station_id"], sort=True)
    out = g.agg(lin=("lin", "mean"), n=("snr", "count")).reset_index()
    out["value"] = 10 * np.log10(out["lin"])
    return out[["bucket", "station_id", "value", "n"]]


def check(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """The database's answer equals the pandas one (same groups, counts, values to 1e-9)."""
    a = got.assign(bucket=got["bucket"].astype("datetime64[ns]"), station_id=got["station_id"].astype(str))
    b = want.assign(bucket=want["bucket"].astype("datetime64[ns]"), station_id=want["station_id"].astype(str))
    m = a.merge(b, on=["bucket", "station_id"], how="outer", suffixes=("_db", "_pd"), indicator=True)
    only = int((m["_merge"] != "both").sum())
    bad_n = int((m["n_db"] != m["n_pd"]).sum())
    va, vb = m["value_db"].to_numpy(float), m["value_pd"].to_numpy(float)
    bad_v = int((~np.isclose(va, vb, rtol=1e-9, atol=1e-9, equal_nan=True)).sum())
    if only or bad_n or bad_v:
        raise AssertionError(f"{what}: {len(a)} rows vs pandas {len(b)}; {only} unmatched groups, "
                             f"{bad_n} wrong counts, {bad_v} wrong values")


def session_dataset(df: pd.DataFrame, session_id: str) -> xr.Dataset:
    """A Dataset as ``index_session`` reads it, holding the metric rows of one session of ``df``
    (GPS start times as stored, every station ok)."""
    rows = df[df["session_id"] == session_id]
    st = rows["station_id"].astype(str).to_numpy()
    n = len(rows)
    return xr.Dataset(
        {"n_samples": ("station", np.full(n, 120_000)), "sample_rate": ("station", np.full(n, 12_000.0)),
         "status": ("station", np.array(["ok"] * n)),
         **{m: ("station", rows[m].to_numpy()) for m in METRIC_COLUMNS}},
        coords={"station": st, "start_time": ("station", rows["time"].dt.tz_convert(None).to_numpy()),
                "timing": ("station", np.array(["gps"] * n))},
        attrs={"session_id": session_id, "center_frequency_hz": float(rows["frequency_hz"].iloc[0]),
               "station_status": json.dumps({s: {"status": "ok"} for s in st})})


def count_rows(engine: Engine, session_id: str | None = None) -> int:
    q = select(func.count()).select_from(MetricRow)
    if session_id is not None:
        q = q.where(MetricRow.session_id == session_id)
    with engine.connect() as c:
        return int(c.execute(q).scalar_one())


def bench_sessions(label: str, engine: Engine, df: pd.DataFrame, repeat: int) -> tuple[float, float]:
    """(delete_session ms, index_session ms) of one session in the full table."""
    sids = df["session_id"].unique()
    mid = len(sids) // 2
    doomed, again = sids[mid : mid + repeat + 1], sids[mid + repeat + 1]
    n0 = count_rows(engine)
    times = []
    for i, sid in enumerate(doomed):
        t = time.perf_counter()
        delete_session(engine, sid)
        if i:  # the first: untimed warm-up
            times.append(time.perf_counter() - t)
        assert count_rows(engine, sid) == 0, f"{label}: session {sid} still has rows"
    removed = int(df["session_id"].isin(doomed).sum())
    assert count_rows(engine) == n0 - removed, f"{label}: delete removed other rows"
    del_ms = min(times) * 1e3
    ds = session_dataset(df, again)
    idx_ms, got = best_ms(lambda: index_session(engine, ds, "file:///bench/sessions/" + again), repeat)
    assert got == ds.sizes["station"] == count_rows(engine, again), f"{label}: re-index of {again}"
    assert count_rows(engine) == n0 - removed, f"{label}: re-index changed the row count"
    print(f"{label:6s} delete session {len(df):>9,} rows {del_ms:8.1f} ms  (best of {len(times)}; "
          f"{removed // len(doomed)} rows each, rollup refreshed)")
    print(f"{label:6s} index session  {len(df):>9,} rows {idx_ms:8.1f} ms  (re-index: its rows replaced)")
    return del_ms, idx_ms


def bench_backend(label: str, engine: Engine, naive_engine: Engine, df: pd.DataFrame, n_naive: int,
                  repeat: int, filt: dict[str, Any], n_filt: int, pd_ms: dict[str, float],
                  want: dict[str, pd.DataFrame], data_dir: str | None = None) -> dict[str, float]:
    """Ingest, query and session figures of one backend: ingest rows/s and CPU s, query / delete /
    index ms (``data_dir``: the PostgreSQL server's, for its CPU time)."""
    kind = init_db(engine)
    init_db(naive_engine)
    with engine.connect() as c:
        key = inspect(c).get_pk_constraint("capture_metrics")["constrained_columns"]
    n = len(df)
    cpu0, srv0, load = time.process_time(), server_cpu_s(data_dir), os.getloadavg()
    t = time.perf_counter()
    bulk_insert_metrics(engine, df)
    t_bulk = time.perf_counter() - t
    cpu, srv_cpu = time.process_time() - cpu0, server_cpu_s(data_dir) - srv0
    with engine.connect() as c:
        stored = c.execute(text("select count(*) from capture_metrics")).scalar_one()
    assert stored == n, f"{label}: {stored} rows stored, {n} inserted"
    sample = df.iloc[:n_naive]
    t_naive = naive_insert(naive_engine, sample)
    rate, naive_rate = n / t_bulk, len(sample) / t_naive
    print(f"{label:6s} ingest bulk    {n:>9,} rows {t_bulk:8.2f} s {rate:>10,.0f} rows/s  "
          f"ratio to per-row INSERT {rate / naive_rate:.1f}  [{kind}, single run, key ({', '.join(key)})]")
    server = "" if np.isnan(srv_cpu) else f", server {srv_cpu:.2f} s ({n / srv_cpu:,.0f} rows per server CPU s)"
    print(f"{label:6s} ingest CPU     client {cpu:.2f} s{server}; load average {load[0]:.2f} {load[1]:.2f}")
    print(f"{label:6s} ingest naive   {len(sample):>9,} rows {t_naive:8.2f} s {naive_rate:>10,.0f} rows/s  "
          f"(one execute per row, one transaction; extrapolated)")
    if kind != "sqlite":
        t = time.perf_counter()
        with engine.begin() as c:
            c.execute(text("analyze capture_metrics"))
        print(f"{label:6s} analyze                       {time.perf_counter() - t:8.2f} s")

    q_all, got_all = best_ms(lambda: metric_over_time(engine, "snr_db", bucket_s=3600), repeat)
    check(got_all, want["all"], f"{label} all rows")
    print(f"{label:6s} query all      {n:>9,} rows {q_all:8.1f} ms -> {len(got_all):>6,} buckets  "
          f"ratio to pandas {pd_ms['all'] / q_all:.2f}  (pandas {pd_ms['all']:.1f} ms)")
    q_f, got_f = best_ms(lambda: metric_over_time(engine, "snr_db", bucket_s=3600, **filt), repeat)
    check(got_f, want["filtered"], f"{label} filtered")
    print(f"{label:6s} query 1 st 1 d {n_filt:>9,} rows {q_f:8.1f} ms -> {len(got_f):>6,} buckets  "
          f"ratio to pandas {pd_ms['filtered'] / q_f:.2f}  (pandas {pd_ms['filtered']:.1f} ms)")
    day = {"start": filt["start"], "end": filt["end"]}
    n_day = int(selected(df, **day).sum())
    for what, kw, n_sel in (("raw 1 st 1 d", filt, n_filt), ("raw 1 d", day, n_day)):
        raw = partial(metric_over_time, engine, "snr_db", bucket_s=3600, _raw=True, **kw)
        q_r, got_r = best_ms(raw, repeat)
        check(got_r, pandas_hourly(df, **kw), f"{label} {what}")
        print(f"{label:6s} query {what:9s}{n_sel:>9,} rows {q_r:8.1f} ms -> {len(got_r):>6,} buckets  "
              f"(raw rows, no rollup)")
    del_ms, idx_ms = bench_sessions(label, engine, df, repeat)
    return {"rate": rate, "query_ms": q_all, "delete_ms": del_ms, "index_ms": idx_ms, "cpu_s": cpu,
            "server_cpu_s": srv_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-rows", type=int, default=20_000, help="rows of the per-row INSERT baseline")
    a = ap.parse_args()

    t = time.perf_counter()
    df = synthetic_metrics(a.rows, a.stations)
    t_gen = time.perf_counter() - t
    nan = float(df[list(METRIC_COLUMNS)].isna().to_numpy().mean())
    print(f"data: {len(df):,} metric rows, {a.stations} stations, {df['session_id'].nunique():,} sessions, "
          f"{df['time'].min():%Y-%m-%d} .. {df['time'].max():%Y-%m-%d %H:%M}, {nan:.1%} NaN metric values; "
          f"generated in {t_gen:.2f} s; queries best of {a.repeat} after a warm-up")

    day = T0 + timedelta(days=DAYS // 2)
    filt: dict[str, Any] = {"start": day, "end": day + timedelta(days=1), "stations": [f"st{a.stations // 2:03d}"]}
    n_filt = int(selected(df, **filt).sum())
    pd_ms: dict[str, float] = {}
    want: dict[str, pd.DataFrame] = {}
    pd_ms["all"], want["all"] = best_ms(lambda: pandas_hourly(df), a.repeat)
    pd_ms["filtered"], want["filtered"] = best_ms(lambda: pandas_hourly(df, **filt), a.repeat)
    print(f"pandas query all      {len(df):>9,} rows {pd_ms['all']:8.1f} ms -> {len(want['all']):>6,} buckets  "
          f"(baseline, DataFrame in memory)")
    print(f"pandas query 1 st 1 d {n_filt:>9,} rows {pd_ms['filtered']:8.1f} ms -> "
          f"{len(want['filtered']):>6,} buckets  (baseline; station {filt['stations'][0]}, {day:%Y-%m-%d})")

    srv = Postgres()
    tmp = tempfile.TemporaryDirectory(prefix="sdrlab-bench-index-")
    engines: list[Engine] = []
    try:
        srv.start()
        pg = make_engine(srv.create_database("sdrlab_bench"))
        pg_naive = make_engine(srv.create_database("sdrlab_bench_naive"))
        lite = make_engine(f"sqlite:///{os.path.join(tmp.name, 'index.db')}")
        lite_naive = make_engine(f"sqlite:///{os.path.join(tmp.name, 'naive.db')}")
        engines += [pg, pg_naive, lite, lite_naive]
        with pg.connect() as c:
            version = c.execute(text("show server_version")).scalar_one()
        print(f"postgresql {version} on 127.0.0.1:{srv.port} (fsync off); sqlite {sqlite3.sqlite_version} "
              f"in {tmp.name}")

        pg_r = bench_backend("pg", pg, pg_naive, df, a.naive_rows, a.repeat, filt, n_filt, pd_ms, want,
                             str(srv.data_dir))
        lite_r = bench_backend("sqlite", lite, lite_naive, df, a.naive_rows, a.repeat, filt, n_filt, pd_ms,
                               want)
        ingest_ok, query_ok = pg_r["rate"] >= INGEST_TARGET, pg_r["query_ms"] < QUERY_TARGET_MS
        print(f"RESULT rows={len(df)} ingest_pg_rows_s={pg_r['rate']:.0f} "
              f"ingest_sqlite_rows_s={lite_r['rate']:.0f} ingest_pg_client_cpu_s={pg_r['cpu_s']:.2f} "
              f"ingest_pg_server_cpu_s={pg_r['server_cpu_s']:.2f} query_pg_ms={pg_r['query_ms']:.1f} "
              f"query_sqlite_ms={lite_r['query_ms']:.1f} delete_session_pg_ms={pg_r['delete_ms']:.1f} "
              f"delete_session_sqlite_ms={lite_r['delete_ms']:.1f} index_session_pg_ms={pg_r['index_ms']:.1f} "
              f"index_session_sqlite_ms={lite_r['index_ms']:.1f} "
              f"target_ingest_pg>=100000 met={ingest_ok} target_query_pg<100ms met={query_ok}")
    finally:
        for e in engines:
            e.dispose()
        try:
            srv.cleanup()
        finally:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
