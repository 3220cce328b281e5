"""Peak memory against capture length: streaming capture keeps it flat.

Seven simulated real-time KiwiSDRs (demo7, served from a child process at ``--speed`` times real
time so an hour takes minutes) are captured by ``acquire()`` into a local store (or ``--store``
URL) for each length of ``--minutes``; each run is a fresh Python process and reports its peak
RSS (``ru_maxrss``: the acquisition, the dask LocalCluster of threads, the store writes, the
finalisation that measures the session chunk by chunk and the index).  In the same run, the
baseline: the same captures held in memory and stored when complete (``stream=False``, how every
session was acquired before streaming), for the lengths up to ``--baseline-max`` minutes.

Target: streaming peak RSS flat within 10 % from 1 to 60 minutes.

    python benchmarks/memory.py --minutes 1 10 60 --speed 20

``--network italy7``: seven simulated OpenWebRX receivers instead (real time only: their audio,
waterfall rows and S-meter readings streamed as pieces, :mod:`sdrlab.recording_audio`), e.g.
``--network italy7 --minutes 0.5 2 --baseline-max 2``.  Each run also reports its peak while
capturing and while finalising apart (RSS sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = r"""
import json, sys
from sdrlab.sim.networks import demo7
from sdrlab.sim.server import SimServer
sim = SimServer(demo7(seed=1), base_port=0, speed=%(speed)r).start_in_thread()
print(json.dumps(sim.ports), flush=True)
sys.stdin.read()
sim.stop_thread()
"""

SERVER_OWRX = r"""
import json, sys
from sdrlab.sim.owrx.networks import italy7
from sdrlab.sim.owrx.server import OwrxSimServer
with OwrxSimServer(italy7(), base_port=0) as sim:
    print(json.dumps(sim.ports), flush=True)
    sys.stdin.read()
"""


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def one(minutes: float, stream: bool, ports: dict[str, int], store: str, chunk_s: float,
        network: str = "demo7") -> dict[str, float]:
    """One acquisition in this process; its figures."""
    import threading
    from dataclasses import replace

    from sdrlab.acquire import acquire
    from sdrlab.config import Settings

    if network == "italy7":
        from sdrlab.sim.owrx.networks import ITALY7_TUNE_HZ as freq
        from sdrlab.stations import load_catalog

        stations = [replace(st, host="127.0.0.1", port=ports[st.id]) for st in load_catalog().network("italy7")]
    else:
        from sdrlab.demo import demo7_stations
        from sdrlab.sim.networks import DEMO7_TUNE_HZ as freq

        stations = demo7_stations(ports)
    settings = Settings(progress=False, store=store, db=f"sqlite:///{tempfile.mkdtemp()}/index.db", chunk_s=chunk_s)
    started: list[float] = []
    peaks = {"capture": 0.0, "finalise": 0.0}
    done = threading.Event()

    def sample() -> None:  # capturing: until 1 s before the window's end; then the captures end and finalise
        while not done.wait(0.2):
            phase = "finalise" if started and time.perf_counter() > started[0] + minutes * 60.0 - 1.0 else "capture"
            peaks[phase] = max(peaks[phase], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    session = acquire(stations, freq, minutes * 60.0, settings=settings, stream=stream,
                      on_start=lambda _ns: started.append(time.perf_counter()))
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    ds = session.dataset
    assert ds is not None and session.store_error is None, session.store_error
    n = float(ds["n_samples"].sum())
    return {"minutes": minutes, "stream": stream, "ok": len(session.ok), "wall_s": wall, "samples": int(n),
            "data_mb": n * (2 if network == "italy7" else 4) / 1e6,
            "capture_peak_mb": peaks["capture"], "finalise_peak_mb": peaks["finalise"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    ap.add_argument("--speed", type=float, default=20.0, help="simulator speed-up (1 = real time)")
    ap.add_argument("--baseline-max", type=float, default=10.0, help="longest in-memory baseline run, minutes")
    ap.add_argument("--store", help="store URL (default: a temporary local directory)")
    ap.add_argument("--chunk-s", type=float, default=20.0)
    ap.add_argument("--network", choices=("demo7", "italy7"), default="demo7",
                    help="demo7: simulated KiwiSDRs (IQ); italy7: simulated OpenWebRX receivers (audio, real time)")
    ap.add_argument("--one", nargs=3, metavar=("MINUTES", "STREAM", "PORTS"), help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(float(a.one[0]), a.one[1] == "1", json.loads(a.one[2]), a.store, a.chunk_s, a.network)))
        return 0
    code = SERVER_OWRX if a.network == "italy7" else SERVER % {"speed": a.speed}
    sim = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        ports = sim.stdout.readline().strip()  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="sdrlab-bench-mem-") as tmp:
            runs = [(m, True) for m in a.minutes] + [(m, False) for m in a.minutes if m <= a.baseline_max]
            for m, stream in runs:
                store = a.store or f"file://{tmp}/store-{m:g}-{int(stream)}"
                p = subprocess.run([sys.executable, __file__, "--one", str(m), "1" if stream else "0", ports,
                                    "--store", store, "--chunk-s", str(a.chunk_s), "--network", a.network],
                                   capture_output=True, text=True, env={**os.environ, "SDRLAB_PROGRESS": "0"})
                if p.returncode:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(p.stdout.strip().splitlines()[-1])
                rows.append(row)
                what = "audio" if a.network == "italy7" else "IQ"
                print(f"{'streaming' if stream else 'in memory'}: {m:g} min of 7 stations "
                      f"({row['data_mb']:.0f} MB of {what}, {row['ok']} ok, {row['wall_s']:.0f} s wall): "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB (capturing {row['capture_peak_mb']:.0f}, "
                      f"finalising {row['finalise_peak_mb']:.0f})", flush=True)
    finally:
        sim.stdin.close()  # type: ignore[union-attr]
        sim.wait(30)
    streamed = [r["peak_rss_mb"] for r in rows if r["stream"]]
    spread = (max(streamed) - min(streamed)) / min(streamed)
    print(f"streaming: peak RSS {min(streamed):.0f} .. {max(streamed):.0f} MB over "
          f"{min(a.minutes):g} .. {max(a.minutes):g} min: spread {100 * spread:.1f} % (target <= 10 %)")
    for r in rows:
        if not r["stream"]:
            same = next((s for s in rows if s["stream"] and s["minutes"] == r["minutes"]), None)
            if same:
                print(f"in memory at {r['minutes']:g} min: {r['peak_rss_mb']:.0f} MB = "
                      f"{r['peak_rss_mb'] / same['peak_rss_mb']:.2f}x streaming")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
