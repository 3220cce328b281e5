"""A session is simultaneous at any scale: hundreds of real-rate receivers over two dask worker
processes start capturing together.

A `dask scheduler` and two ordinary `dask worker` processes (dask's default threads: one per core)
run on loopback; the simulator serves ``--stations`` real-rate KiwiSDR streams (receivers of
``--channels`` channels, demo7's scene) from a child process.  In the same run:

* sdrlab: ``acquire(stations, ..., scheduler=addr)`` of all of them for ``--duration`` s (the
  stations split into one task per worker, each an event loop holding its captures, one window
  decided across both).  Printed: stations ok, the spread of their first-sample GPS times
  (``start_spread_s``), the span they all cover (``common_start`` .. ``common_end``) against the
  window asked for, and the wall time.
* baseline: how acquisition ran before issue 13 on the same cluster, one dask task per station
  capturing ``--duration`` s from its own first frame (each holding a worker thread), for the
  first ``--baseline-stations`` stations: the same figures.  Ratio = baseline spread / ours.

Target: all stations start within 1 s of each other (spread < 1 s) and cover the whole window.

    python benchmarks/simultaneous.py --stations 500 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sdrlab.acquire import acquire
from sdrlab.config import Settings
from sdrlab.demo import demo7_stations
from sdrlab.receivers import KiwiOptions, make_receiver
from sdrlab.sim.networks import DEMO7_TUNE_HZ
from sdrlab.stations import Station

SERVER = r"""
import json, sys
from dataclasses import replace
from sdrlab.sim.networks import demo7
from sdrlab.sim.scene import Scene
from sdrlab.sim.server import SimServer
base = demo7()
rxs = tuple(replace(base.receivers[i %% 7], id=f"bench-{i}", rx_chans=%(chans)d) for i in range(%(n_rx)d))
scene = Scene(transmitters=base.transmitters, receivers=rxs, seed=0, name="bench")
sim = SimServer(scene, base_port=0, speed=1.0, loop_frames=64).start_in_thread()
print(json.dumps(sim.ports), flush=True)
sys.stdin.read()
sim.stop_thread()
"""


def stations_for(ports: dict[str, int], n: int, chans: int) -> list[Station]:
    """``n`` catalogue stations: demo7's positions, ``chans`` per simulated receiver."""
    demo = demo7_stations({s: 0 for s in ("demo-enschede", "demo-hamburg", "demo-berlin", "demo-munich",
                                          "demo-zurich", "demo-paris", "demo-brussels")})
    plist = list(ports.values())
    return [replace(demo[(i // chans) % 7], id=f"bench-{i:04d}", name=f"bench {i}", host="127.0.0.1",
                    port=plist[i // chans], channels=chans) for i in range(n)]


def capture_alone(station: Station, frequency_hz: float, duration_s: float) -> tuple[int, int, float]:
    """The pre-issue-13 way: one task captures one station from its own first frame.
    (GPS ns of the first sample or -1, samples, sample rate)."""
    cap = asyncio.run(make_receiver(station, KiwiOptions()).capture(frequency_hz, duration_s))
    if not cap.segments or not cap.segments[0].fit.ok:
        return -1, cap.n_samples, 12000.0
    seg = cap.segments[0]
    return seg.fit.t0_gps_ns, cap.n_samples, seg.fit.fs


def cluster(tmp: Path, n_workers: int) -> tuple[str, list[subprocess.Popen[bytes]]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "scheduler.log", "w"), cwd=tmp)]
    procs += [subprocess.Popen([str(bindir / "dask"), "worker", addr, "--host", "127.0.0.1", "--no-nanny",
                                "--dashboard-address", "127.0.0.1:0", "--local-directory", str(tmp)],
                               stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker{i}.log", "w"), cwd=tmp)
              for i in range(n_workers)]
    from distributed import Client

    deadline = time.time() + 60
    while True:
        try:
            with Client(addr, timeout="2s") as c:
                if len(c.scheduler_info()["workers"]) == n_workers:
                    return addr, procs
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("dask cluster did not come up")
        time.sleep(0.3)


def spans(t0: np.ndarray, n: np.ndarray, fs: np.ndarray) -> tuple[float, float]:
    """(start spread s, common span s) of captures starting at GPS ns ``t0``."""
    ends = t0 + n / fs * 1e9
    return float(t0.max() - t0.min()) / 1e9, float(ends.min() - t0.max()) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=500)
    ap.add_argument("--channels", type=int, default=8, help="channels per simulated receiver")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-stations", type=int, default=21)
    ap.add_argument("--start-wait", type=float, default=20.0,
                    help="how long the session's start waits for stations still connecting (acquire's start_wait_s)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = ap.parse_args()
    n_rx = -(-a.stations // a.channels)
    sim = subprocess.Popen([sys.executable, "-c", SERVER % {"chans": a.channels, "n_rx": n_rx}],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sdrlab-bench-sim-") as tmp:
        addr, procs = cluster(Path(tmp), a.workers)
        try:
            ports = json.loads(sim.stdout.readline())  # type: ignore[union-attr]
            stations = stations_for(ports, a.stations, a.channels)
            from distributed import Client

            with Client(addr) as c:
                threads = [w["nthreads"] for w in c.scheduler_info()["workers"].values()]
            print(f"cluster: scheduler + {a.workers} dask workers ({threads} threads, dask's default); "
                  f"simulator: {n_rx} receivers x {a.channels} channels, real rate; {a.duration:g} s window")
            t = time.perf_counter()
            session = acquire(stations, DEMO7_TUNE_HZ, a.duration, settings=Settings(progress=False),
                              scheduler=addr, write=False, start_wait_s=a.start_wait)
            wall = time.perf_counter() - t
            ds = session.dataset
            assert ds is not None
            win_start = np.datetime64(ds.attrs["window_start"].rstrip("Z"))
            win_end = np.datetime64(ds.attrs["window_end"].rstrip("Z"))
            starts = ds["start_time"].values
            ends = starts + (ds["n_samples"].values / ds["sample_rate"].values * 1e9).astype("timedelta64[ns]")
            us = np.timedelta64(1000, "ns")
            covering = int(((starts <= win_start + us) & (ends >= win_end)).sum())
            spread = float(ds.attrs["start_spread_s"])
            common = float((ends.min() - starts.max()) / np.timedelta64(1, "ns")) / 1e9
            bad = {s: f"{r.status}: {r.message}" for s, r in session.results.items() if r.status != "ok"}
            print(f"sdrlab   {a.stations:5d} stations  ok {len(session.ok):5d}  start spread {spread * 1e3:8.1f} ms  "
                  f"common span {common:7.3f} s of {a.duration:g}  covering the window {covering}  "
                  f"wall {wall:6.1f} s")
            from collections import Counter

            kinds = Counter(why.split(" after ")[0][:70] for why in bad.values())
            for kind, n in kinds.most_common(6):
                print(f"    {n:4d} x {kind}")
            for s, why in list(bad.items())[:3]:
                cap = session.results[s].capture
                events = "; ".join(cap.events[-3:]) if cap is not None else ""
                print(f"    {s}: {why[:160]}  [{events[:200]}]")
            out["sdrlab"] = {"stations": a.stations, "ok": len(session.ok), "start_spread_s": spread,
                             "common_span_s": common, "covering": covering, "wall_s": wall}
            del session, ds
            # the baseline: one task per station, as before
            base = stations[: a.baseline_stations]
            with Client(addr) as c:
                t = time.perf_counter()
                futs = [c.submit(capture_alone, st, DEMO7_TUNE_HZ, a.duration, pure=False) for st in base]
                got = np.array([f.result() for f in futs], dtype=float)
                bwall = time.perf_counter() - t
            okb = got[:, 0] > 0
            bspread, bcommon = spans(got[okb, 0], got[okb, 1], got[okb, 2])
            print(f"baseline {len(base):5d} stations  ok {int(okb.sum()):5d}  start spread {bspread * 1e3:8.1f} ms  "
                  f"common span {bcommon:7.3f} s of {a.duration:g}  (one task per station)  wall {bwall:6.1f} s")
            out["baseline"] = {"stations": len(base), "ok": int(okb.sum()), "start_spread_s": bspread,
                               "common_span_s": bcommon, "wall_s": bwall}
        finally:
            sim.stdin.close()  # type: ignore[union-attr]
            sim.wait(30)
            for p in procs[::-1]:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
    ours = out["sdrlab"]
    met = ours["ok"] == a.stations and ours["start_spread_s"] < 1.0 and ours["covering"] == a.stations
    ratio = out["baseline"]["start_spread_s"] / max(ours["start_spread_s"], 1e-9)
    print(f"RESULT stations={a.stations} ok={ours['ok']} start_spread_ms={ours['start_spread_s'] * 1e3:.1f} "
          f"common_span_s={ours['common_span_s']:.3f} window_s={a.duration:g} "
          f"baseline_spread_ms={out['baseline']['start_spread_s'] * 1e3:.1f} ratio_baseline_to_ours={ratio:.0f} "
          f"target_spread<1s_all_covering met={met}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
