"""Continuous capture at scale: N real-rate KiwiSDR streams recorded to the S3 server as they
arrive, with their metric time series indexed in PostgreSQL, on this machine.

SeaweedFS (S3) and PostgreSQL 15 start on loopback (``tests.support.servers``); the simulator
serves N real-rate streams (demo7's scene, 8 channels per receiver, cheap looped synthesis) from
a child process pinned to CPU 1.  In the same run:

* client only: the bare client holds the N streams for ``--probe`` s (benchmarks/streams.py's
  measurement): CPU per stream-second, hence how many streams one core holds;
* sdrlab: ``acquire(..., stream=True)`` of all N for ``--duration`` s into the S3 store (chunks of
  ``--chunk-s``) with the index on PostgreSQL: stations ok, frames lost (sequence gaps), chunks
  stored, interval rows indexed *while recording*, CPU, resident memory over time (flat: the
  last quarter's peak against the first quarter's).

Printed: the figures and N / client-only capacity.  Target: at least 500 streams (aim 1,000),
nothing lost, flat memory.

    python benchmarks/continuous.py --streams 500 --duration 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from simultaneous import stations_for  # noqa: E402
from streams import CHANS, SERVER, endpoints_for, run_sdrlab  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--probe", type=float, default=15.0, help="seconds of the client-only measurement")
    ap.add_argument("--chunk-s", type=float, default=20.0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = ap.parse_args()

    import psutil

    from sdrlab.acquire import acquire
    from sdrlab.config import Settings
    from sdrlab.index import make_engine
    from sdrlab.sim.networks import DEMO7_TUNE_HZ
    from sdrlab.store import Store
    from tests.support.servers import Postgres, SeaweedS3

    s3 = SeaweedS3().start()
    pg = Postgres().start()
    n_rx = -(-a.streams // CHANS)
    sim = subprocess.Popen([sys.executable, "-c", SERVER % {"cpu": 1, "chans": CHANS, "n_rx": n_rx}],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out: dict[str, object] = {"streams": a.streams, "duration_s": a.duration}
    try:
        ports = json.loads(sim.stdout.readline())  # type: ignore[union-attr]
        print(f"simulator: {len(ports)} receivers x {CHANS} channels on CPU 1; S3 (SeaweedFS) and PostgreSQL "
              f"on loopback; {a.streams} real-rate streams", flush=True)
        probe = asyncio.run(run_sdrlab(endpoints_for(ports, a.streams), a.probe))
        capacity = 1000.0 / probe.cpu_ms_per_stream_s
        print(f"client only: {probe.line()}", flush=True)
        print(f"client only: one core holds ~{capacity:.0f} streams", flush=True)
        time.sleep(5)  # the simulator sees the probe's sockets go

        import s3fs

        s3fs.S3FileSystem(**s3.storage_options, skip_instance_cache=True).mkdir("bench")
        store = Store("s3://bench/continuous", s3.storage_options)
        engine = make_engine(pg.url)
        settings = Settings(progress=False, chunk_s=a.chunk_s)
        stations = stations_for(ports, a.streams, CHANS)
        proc = psutil.Process()
        rss: list[tuple[float, float]] = []
        rows: list[tuple[float, int]] = []
        done = threading.Event()
        t0 = time.monotonic()

        cpus: list[tuple[float, float]] = []

        def watch() -> None:
            while not done.wait(2.0):
                rss.append((time.monotonic() - t0, proc.memory_info().rss / 1e6))
                cpus.append((time.monotonic() - t0, cpu_s()))
                try:
                    with engine.connect() as c:
                        rows.append((time.monotonic() - t0,
                                     int(c.exec_driver_sql("SELECT count(*) FROM interval_metrics").scalar() or 0)))
                except Exception:  # not created yet
                    pass

        threading.Thread(target=watch, daemon=True).start()
        c0 = cpu_s()
        session = acquire(stations, DEMO7_TUNE_HZ, a.duration, settings=settings, store=store, index=engine,
                          stream=True, start_wait_s=30.0)
        done.set()
        cpu = cpu_s() - c0
        wall = time.monotonic() - t0
        ds = session.dataset
        assert ds is not None, session.store_error
        lost = int(ds["seq_gaps"].sum())
        from collections import Counter

        secs = (ds["n_samples"] / ds["sample_rate"]).values
        print(f"sdrlab: stored per station {secs.min():.1f} / {float(np.median(secs)):.1f} / {secs.max():.1f} s "
              f"(min / median / max) of {a.duration:g} s", flush=True)
        short = [str(st) for st, v in zip(ds["station"].values, secs) if v < a.duration - 5]
        if short:  # what the store holds of the stations stored short
            from sdrlab import recording

            runs = store.stream_runs(session.session_id, short[:3])
            for st in short[:3]:
                names = sorted(k.rsplit("/", 1)[1] for k in store.fs.find(
                    f"{store.root}/sessions/{session.session_id}/stream/{st}"))
                cars, n = runs[st]
                print(f"  short {st}: objects {names}; run of {len(cars)} sidecar(s), {n} chunk(s); stored "
                      f"{[c['meta']['stored'] for c in cars]}; result {session.results[st].capture.n_samples if session.results[st].capture else None}",
                      flush=True)
        states = Counter(r.status for r in session.results.values())
        why = Counter(f"{r.error_class}: {(r.message or '')[:90]}" for r in session.results.values() if r.status != "ok")
        print(f"sdrlab: stations {dict(states)}; not ok because: {why.most_common(4)}", flush=True)
        record = store.summary(session.session_id)
        chunks = sum(1 for k in record["objects"] if k.endswith(".iq"))
        capture_rss = [m for t, m in rss if t <= a.duration + 30]
        q = max(1, len(capture_rss) // 4)
        first, last = max(capture_rss[:q]), max(capture_rss[-q:])
        during = max((n for t, n in rows if t < a.duration), default=0)
        t_cap = session.timings.get("acquire_s", a.duration)
        cap_cpu = [c for t, c in cpus if t <= t_cap]
        per_stream_s = 1e3 * (cap_cpu[-1] - cap_cpu[0]) / ((len(cap_cpu) - 1) * 2.0) / a.streams \
            if len(cap_cpu) > 2 else float("nan")
        print(f"sdrlab: while capturing {per_stream_s:.3f} ms CPU per stream-second "
              f"(client only: {probe.cpu_ms_per_stream_s:.3f}); finalising (metrics read back from S3, "
              f"index) took {session.timings.get('store_s', float('nan')):.0f} s", flush=True)
        print(f"sdrlab: {len(session.ok)}/{a.streams} ok, {lost} frame(s) lost, {chunks} chunks in S3, "
              f"{int((ds['interval_samples'] > 0).sum())} intervals ({during} indexed while recording), "
              f"cpu {cpu:.0f} s in {wall:.0f} s ({100 * cpu / wall:.0f} % of one core), timings {session.timings}",
              flush=True)
        print(f"sdrlab: resident memory first quarter {first:.0f} MB, last quarter {last:.0f} MB "
              f"({100 * (last - first) / first:+.1f} %), peak {max(m for _, m in rss):.0f} MB", flush=True)
        ratio = a.streams / capacity
        print(f"RESULT streams={a.streams} ok={len(session.ok)} lost_frames={lost} "
              f"capture_cpu_ms_per_stream_s={per_stream_s:.3f} "
              f"memory_growth={100 * (last - first) / first:+.1f}% client_only_capacity={capacity:.0f} "
              f"ratio={ratio:.2f}")
        out.update({"ok": len(session.ok), "lost_frames": lost, "chunks": chunks, "cpu_s": cpu, "wall_s": wall,
                    "rss_first_mb": first, "rss_last_mb": last, "client_capacity": capacity, "ratio": ratio,
                    "indexed_while_recording": during,
                    "capture_cpu_ms_per_stream_s": per_stream_s})
    finally:
        sim.stdin.close()  # type: ignore[union-attr]
        sim.wait(30)
        pg.cleanup()
        s3.cleanup()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
