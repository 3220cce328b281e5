"""How many simultaneous real-rate KiwiSDR IQ streams one client process sustains on one core.

The simulator runs in a child process pinned to CPU 1 (real rate, cheap looped synthesis); the
client runs here pinned to CPU 0.  For each client we hold N streams for D seconds and report:

* CPU per stream-second (user+sys of this process during the captures / (N * D)),
* frames lost (seq gaps, bad frames) and lag: how late the last sample of each stream arrived
  relative to real time (a client that cannot keep up falls further behind the longer it runs),
* the ratio to a baseline measured in the same run: a kiwirecorder-style client built on the
  ``websockets`` library (per-frame header unpack + numpy decode), the usual way to write one.

    python benchmarks/streams.py --streams 600 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrlab.receivers.kiwisdr import KiwiOptions, KiwiReceiver, next_ts

FREQ = 9_749_000.0
CHANS = 8  # streams per simulated receiver


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


SERVER = r"""
import json, os, sys, signal, threading
os.sched_setaffinity(0, {%(cpu)d})
if %(uvloop)r:
    import asyncio, uvloop
    asyncio.new_event_loop = uvloop.new_event_loop
from dataclasses import replace
from sdrlab.sim.networks import demo7
from sdrlab.sim.scene import Scene, SimReceiver
from sdrlab.sim.server import SimServer
base = demo7()
rxs = tuple(replace(base.receivers[i %% 7], id=f"bench-{i}", rx_chans=%(chans)d) for i in range(%(n_rx)d))
scene = Scene(transmitters=base.transmitters, receivers=rxs, seed=0, name="bench")
sim = SimServer(scene, base_port=0, speed=1.0, loop_frames=64).start_in_thread()
print(json.dumps(sim.ports), flush=True)
sys.stdin.read()
sim.stop_thread()
"""


@dataclass
class Result:
    name: str
    streams: int
    duration: float
    cpu_s: float
    wall_s: float
    complete: int
    lost_frames: int
    lag_p50_s: float
    lag_max_s: float

    @property
    def cpu_ms_per_stream_s(self) -> float:
        return 1e3 * self.cpu_s / (self.streams * self.duration)

    def line(self) -> str:
        return (
            f"{self.name:10s} streams={self.streams:4d} complete={self.complete:4d} lost_frames={self.lost_frames} "
            f"cpu={self.cpu_s:6.2f}s ({100 * self.cpu_s / self.wall_s:5.1f}% of one core) "
            f"cpu/stream-s={self.cpu_ms_per_stream_s:.3f} ms lag p50={self.lag_p50_s * 1e3:.0f} ms "
            f"max={self.lag_max_s * 1e3:.0f} ms"
        )


async def run_sdrlab(endpoints: list[tuple[str, int]], duration: float) -> Result:
    opt = KiwiOptions(connect_delay=0.5, busy_delay=0.5)
    async def one(i: int, host: str, port: int) -> tuple[float, int, float]:
        rx = KiwiReceiver(f"s{i}", host, port, channels=CHANS, options=opt)
        cap = await rx.capture(FREQ, duration)
        seg = cap.segments[0]
        # lag: last frame's arrival vs real-rate arrival from the first frame on
        return seg.lag_s, seg.missing_frames + cap.bad_frames + len(cap.segments) - 1, 0.0

    c0, w0 = cpu_s(), time.monotonic()
    res = await asyncio.gather(*(one(i, h, p) for i, (h, p) in enumerate(endpoints)), return_exceptions=True)
    c1, w1 = cpu_s(), time.monotonic()
    ok = [r for r in res if not isinstance(r, BaseException)]
    lags = np.array([r[0] for r in ok]) if ok else np.array([np.nan])
    for r in res:
        if isinstance(r, BaseException):
            print("  error:", r, file=sys.stderr)
    return Result("sdrlab", len(endpoints), duration, c1 - c0, w1 - w0, len(ok),
                  int(sum(r[1] for r in ok)), float(np.median(lags)), float(np.max(lags)))


async def run_baseline(endpoints: list[tuple[str, int]], duration: float) -> Result:
    """kiwirecorder-style: a websockets-library client that unpacks each frame as it arrives."""
    from websockets.asyncio.client import connect

    hdr = struct.Struct("<3sBI")

    async def one(i: int, host: str, port: int) -> tuple[float, int]:
        async with connect(f"ws://{host}:{port}/{next_ts()}/SND", compression=None, ping_interval=None,
                           max_size=None) as ws:
            await ws.send("SET auth t=kiwi p=")
            rate = 0.0
            want = 0
            samples: list[np.ndarray] = []
            gps: list[tuple[int, int, int]] = []
            last_seq = -1
            lost = 0
            got = 0
            last_ka = time.monotonic()
            min_behind = float("inf")
            behind = 0.0
            n_frames = 0
            ar = sr = False
            async for msg in ws:
                if msg[:3] == b"MSG":
                    for tok in msg[4:].decode().split(" "):
                        k, _, v = tok.partition("=")
                        if k == "audio_rate":
                            await ws.send(f"SET AR OK in={v} out=44100")
                            ar = True
                        elif k == "sample_rate":
                            rate = float(v)
                            sr = True
                    if ar and sr and not want:
                        want = int(np.ceil(duration * rate))
                        for cmd in ("SET squelch=0 max=0", "SET genattn=0", "SET gen=0 mix=-1",
                                    f"SET mod=iq low_cut=-5000 high_cut=5000 freq={FREQ / 1e3:.3f}",
                                    "SET agc=0 hang=0 thresh=-100 slope=6 decay=1000 manGain=50",
                                    "SET compression=0", "SET keepalive"):
                            await ws.send(cmd)
                    continue
                _tag, flags, seq = hdr.unpack_from(msg, 0)
                (smeter,) = struct.unpack_from(">H", msg, 8)
                last, _d, gsec, gnsec = struct.unpack_from("<BBII", msg, 10)
                if last_seq >= 0 and seq != last_seq + 1:
                    lost += seq - last_seq - 1
                last_seq = seq
                gps.append((last, gsec, gnsec))
                samples.append(np.frombuffer(msg, dtype=">i2", offset=20).astype(np.int16))
                got += 512
                now = time.monotonic()
                behind = now - n_frames * 512 / rate
                min_behind = min(min_behind, behind)
                n_frames += 1
                if now - last_ka >= 1.0:
                    await ws.send("SET keepalive")
                    last_ka = now
                if got >= want:
                    break
        return behind - min_behind, lost

    c0, w0 = cpu_s(), time.monotonic()
    res = await asyncio.gather(*(one(i, h, p) for i, (h, p) in enumerate(endpoints)), return_exceptions=True)
    c1, w1 = cpu_s(), time.monotonic()
    ok = [r for r in res if not isinstance(r, BaseException)]
    for r in res:
        if isinstance(r, BaseException):
            print("  baseline error:", repr(r), file=sys.stderr)
    lags = np.array([r[0] for r in ok]) if ok else np.array([np.nan])
    return Result("baseline", len(endpoints), duration, c1 - c0, w1 - w0, len(ok),
                  int(sum(r[1] for r in ok)), float(np.median(lags)), float(np.max(lags)))


def _loop_factory(loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def endpoints_for(ports: dict[str, int], n: int) -> list[tuple[str, int]]:
    plist = list(ports.values())
    return [("127.0.0.1", plist[i // CHANS]) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=600)
    ap.add_argument("--baseline-streams", type=int, default=150)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="asyncio",
                    help="the client's event loop: asyncio's, as acquire() runs it, or uvloop (pip install uvloop); "
                         "both: the same streams on each, asyncio first")
    ap.add_argument("--sim-loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="the simulator's event loop")
    a = ap.parse_args()
    n_rx = -(-max(a.streams, a.baseline_streams) // CHANS)
    os.sched_setaffinity(0, {0})
    sim = subprocess.Popen([sys.executable, "-c", SERVER % {"cpu": 1, "chans": CHANS, "n_rx": n_rx,
                                                       "uvloop": a.sim_loop == "uvloop"}],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(sim.stdout.readline())  # type: ignore[union-attr]
        print(f"simulator ({a.sim_loop}): {len(ports)} receivers x {CHANS} channels on CPU 1; client on CPU 0; "
              f"{a.duration:g} s real-rate streams")
        base = asyncio.run(run_baseline(endpoints_for(ports, a.baseline_streams), a.duration))
        print(base.line())
        for loop in (("asyncio", "uvloop") if a.loop == "both" else (a.loop,)):
            with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
                ours = runner.run(run_sdrlab(endpoints_for(ports, a.streams), a.duration))
            ours.name = "sdrlab" if loop == "asyncio" else "sdrlab+uv"
            print(ours.line())
    finally:
        sim.stdin.close()  # type: ignore[union-attr]
        sim.wait(30)
    ratio = ours.cpu_ms_per_stream_s / base.cpu_ms_per_stream_s
    kept_up = ours.complete == a.streams and ours.lost_frames == 0 and ours.lag_max_s < 1.0
    print(f"RESULT cpu_per_stream_s_ms={ours.cpu_ms_per_stream_s:.3f} baseline_ms={base.cpu_ms_per_stream_s:.3f} "
          f"ratio={ratio:.2f} streams={a.streams} kept_up={kept_up} "
          f"one_core_capacity~{int(1000 / ours.cpu_ms_per_stream_s)} streams")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ours": ours.__dict__, "baseline": base.__dict__, "ratio": ratio, "kept_up": kept_up}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
