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

#: the simulator process, watched: every second one JSON line to ``trace`` with the largest lag of
#: its event loop in that second, its CPU seconds so far and its SND sessions; its log (streams
#: started, closed and why, with the second they happened) to ``log``
SIM_WATCH = """
import asyncio, json, logging, resource, time
class _Rel(logging.Formatter):
    def format(self, r):
        return "%%.2f %%s %%s" %% (r.created, r.name, r.getMessage())
_h = logging.FileHandler(%(log)r)
_h.setFormatter(_Rel())
for _n in ("sdrlab.sim", "websockets"):
    logging.getLogger(_n).addHandler(_h)
    logging.getLogger(_n).setLevel(logging.INFO)
async def _watch():
    out = open(%(trace)r, "w", buffering=1)
    loop = asyncio.get_running_loop()
    worst, t_next = 0.0, loop.time() + 1.0
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        worst = max(worst, loop.time() - t - 0.05)
        if loop.time() >= t_next:
            r = resource.getrusage(resource.RUSAGE_SELF)
            out.write(json.dumps({"t": round(time.time(), 2), "lag": round(worst, 4),
                                  "cpu": round(r.ru_utime + r.ru_stime, 3),
                                  "sessions": len(sim._core.sessions), "streams": len(sim._core.streams)}) + "\\n")
            worst, t_next = 0.0, loop.time() + 1.0
_watching = asyncio.run_coroutine_threadsafe(_watch(), sim._loop)
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def watch_client_loop(lags: list[tuple[float, float]]) -> None:
    """Record the capture event loop's largest lag each second (wall time, seconds) in ``lags``:
    the acquisition's capture task runs its captures in one loop in a thread of this process."""
    import sdrlab.acquire as acq

    inner = acq._capture_group

    async def watched(*args: object, **kwargs: object) -> object:
        async def watch() -> None:
            loop = asyncio.get_running_loop()
            worst, t_next = 0.0, loop.time() + 1.0
            while True:
                t = loop.time()
                await asyncio.sleep(0.05)
                worst = max(worst, loop.time() - t - 0.05)
                if loop.time() >= t_next:
                    lags.append((time.time(), worst))
                    worst, t_next = 0.0, loop.time() + 1.0

        task = asyncio.get_running_loop().create_task(watch())
        try:
            return await inner(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            task.cancel()

    acq._capture_group = watched  # type: ignore[assignment]


def timeline(t0: float, trace: Path, log: Path, client_lags: list[tuple[float, float]],
             cpus: list[tuple[float, float]], bin_s: float = 10.0) -> None:
    """Per ``bin_s`` from the acquisition's start: the simulator's loop lag (max) and CPU (share of
    one core), the client's loop lag and process CPU, streams the simulator started and closed (why)."""
    import re
    from collections import Counter, defaultdict

    sim = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    rows: dict[int, dict[str, object]] = defaultdict(dict)
    for a, b in zip(sim, sim[1:]):
        k = int((b["t"] - t0) // bin_s)
        r = rows[k]
        r["sim_lag"] = max(float(r.get("sim_lag", 0.0)), b["lag"])  # type: ignore[arg-type]
        r["sim_cpu"] = float(r.get("sim_cpu", 0.0)) + b["cpu"] - a["cpu"]  # type: ignore[arg-type]
        r["sessions"] = b["sessions"]
    for t, lag in client_lags:
        r = rows[int((t - t0) // bin_s)]
        r["cl_lag"] = max(float(r.get("cl_lag", 0.0)), lag)  # type: ignore[arg-type]
    for (ta, ca), (tb, cb) in zip(cpus, cpus[1:]):
        r = rows[int((tb - t0) // bin_s)]
        r["cl_cpu"] = float(r.get("cl_cpu", 0.0)) + cb - ca  # type: ignore[arg-type]
    events: dict[int, Counter[str]] = defaultdict(Counter)
    for line in log.read_text().splitlines():
        m = re.match(r"([\d.]+) (\S+) (.*)", line)
        if not m:
            continue
        k = int((float(m.group(1)) - t0) // bin_s)
        msg = m.group(3)
        if "streaming on" in msg:
            events[k]["start"] += 1
        elif "closing (" in msg or "aborting connection (" in msg:
            events[k][msg.rsplit("(", 1)[1].rstrip(")")] += 1
        elif "too busy" in msg:
            events[k]["busy"] += 1
        elif m.group(2).startswith("websockets"):
            events[k]["ws:" + msg[:40]] += 1
    print(f"timeline per {bin_s:g} s from the acquisition's start: sim loop lag max / sim CPU (of one core) / "
          "open SND sessions | client loop lag max / client process CPU | simulator events", flush=True)
    for k in sorted(set(rows) | set(events)):
        if k < -3:
            continue
        r = rows.get(k, {})
        print(f"  {k * bin_s:6.0f} s  sim lag {float(r.get('sim_lag', float('nan'))):6.2f} s "
              f"cpu {100 * float(r.get('sim_cpu', 0.0)) / bin_s:4.0f} % sessions {r.get('sessions', '-'):>4} | "
              f"client lag {float(r.get('cl_lag', float('nan'))):6.2f} s cpu {100 * float(r.get('cl_cpu', 0.0)) / bin_s:4.0f} % | "
              f"{dict(events.get(k, {}))}", flush=True)


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
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="sdrlab-continuous-"))
    trace, simlog = work / "sim-trace.jsonl", work / "sim.log"
    script = (SERVER % {"cpu": 1, "chans": CHANS, "n_rx": n_rx, "uvloop": False}).replace(
        "sys.stdin.read()", SIM_WATCH % {"log": str(simlog), "trace": str(trace)} + "\nsys.stdin.read()"
    ).replace("sim.stop_thread()", "_watching.cancel()\nsim.stop_thread()")
    sim = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
        client_lags: list[tuple[float, float]] = []
        watch_client_loop(client_lags)
        wall_t0 = time.time()
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
        common = (np.datetime64(ds.attrs["common_end"].rstrip("Z")) - np.datetime64(ds.attrs["common_start"].rstrip("Z"))) \
            / np.timedelta64(1, "ms") / 1e3 if "common_start" in ds.attrs else float("nan")
        spread = float(ds.attrs.get("start_spread_s", float("nan")))
        print(f"sdrlab: start spread {spread * 1e3:.1f} ms, common span {common:.3f} s of the {a.duration:g} s window "
              f"({ds.attrs.get('window_start')} .. {ds.attrs.get('window_end')})", flush=True)
        out.update({"start_spread_s": spread, "common_span_s": common})
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
        timeline(wall_t0, trace, simlog, client_lags, [(wall_t0 + t, c) for t, c in cpus])
        bad = [r for r in session.results.values() if r.status != "ok"]
        for r in bad[:6]:
            cap = r.capture
            segs = [(round(sg.n_samples / (sg.fit.fs if sg.fit.ok else 12000.0), 1), sg.end_reason[:60])
                    for sg in (cap.segments if cap else [])]
            print(f"  {r.status} {r.station}: {r.error_class}: {(r.message or '')[:160]}\n    segments (s, end): {segs}"
                  f"\n    events: {[e[:110] for e in (cap.events if cap else [])]}", flush=True)
        ends = Counter(sg.end_reason.split(":")[0][:50] for r in session.results.values() if r.capture
                       for sg in r.capture.segments)
        print(f"sdrlab: segment ends over all stations: {ends.most_common(8)}", flush=True)
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
        print(f"RESULT streams={a.streams} ok={len(session.ok)} partial={states.get('partial', 0)} "
              f"failed={states.get('failed', 0)} lost_frames={lost} "
              f"capture_cpu_ms_per_stream_s={per_stream_s:.3f} start_spread_ms={spread * 1e3:.1f} common_span_s={common:.3f} "
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
