"""Coverage of TDoA's stated uncertainty over a larger matrix than the test's, and what it costs.

Like ``tests/tdoa/test_matrix.py`` (3-7 receivers at random places, the transmitter among them,
SNR 0-40 dB, receivers late by a Gaussian processing delay of ``--delay-us`` (the default prior,
20 us) with GPS stamps jittering by 0.5-3 us), with longer sessions and windows of 1 s by default,
plus a row per signal model of the simulator (DCF77-like in a +-500 Hz passband, AM broadcast,
Morse, SSB, OFDM, tones with a sky wave).  Printed: how often the pairs' 95 % intervals and the
95 % ellipses hold the truth, the median distance of the truth in ellipse units (1 = the edge),
how many runs claim no position and why, and the time per analysis.  Nothing is asserted.

    python benchmarks/tdoa_matrix.py --bases 60 --draws 5 --duration 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from sdrlab import tdoa  # noqa: E402
from sdrlab.sim.frontend import AgcSettings  # noqa: E402
from sdrlab.sim.scene import SkyWave  # noqa: E402
from tests import tdoa_scenes as ts  # noqa: E402

MODELS = {
    "am tones": ({}, {}),
    "dcf77 +-500 Hz, AGC": ({"modulation": "dcf77", "frequency_hz": 9_749_000.0},
                            {"passband": (-500.0, 500.0), "agc": AgcSettings(on=True)}),
    "am broadcast": ({"modulation": "am-broadcast"}, {}),
    "morse": ({"modulation": "morse"}, {"passband": (500.0, 1500.0)}),
    "ssb": ({"modulation": "ssb", "frequency_hz": 9_749_000.0}, {"passband": (0.0, 3000.0)}),
    "ofdm": ({"modulation": "ofdm", "frequency_hz": 9_749_000.0}, {}),
    "tones + sky wave": ({"sky_wave": SkyWave(relative_db=-6.0)}, {}),
}


def _geometry(i: int) -> tuple[list[tuple[str, float, float]], tuple[float, float], float]:
    rng = np.random.default_rng([2027, i])
    n = int(rng.integers(3, 8))
    lat, lon = rng.uniform(46.0, 56.0, n), rng.uniform(0.0, 20.0, n)
    w = rng.dirichlet(np.ones(n))
    return ([(f"rx-{i}-{k}", float(a), float(b)) for k, (a, b) in enumerate(zip(lat, lon))],
            (float(w @ lat), float(w @ lon)), float(rng.uniform(0.0, 40.0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=40, help="geometries per signal model")
    ap.add_argument("--draws", type=int, default=4, help="draws of delays and jitter per geometry")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per session")
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--delay-us", type=float, default=20.0)
    ap.add_argument("--models", default="all", help="comma-separated names, or all")
    a = ap.parse_args(argv)
    kw = {"window_s": a.window, "min_overlap_s": min(10.0, a.duration - 1.0)}
    models = MODELS if a.models == "all" else {k: MODELS[k] for k in a.models.split(",")}
    print(f"{'signal':22s} {'runs':>5s} {'pairs in 95%':>13s} {'ellipse in 95%':>15s} {'median r2':>9s} "
          f"{'no position':>11s} {'s/run':>6s}")
    for name, (scene_kw, session_kw) in models.items():
        inside_p: list[bool] = []
        inside_e: list[bool] = []
        r2: list[float] = []
        none: Counter[str] = Counter()
        spent = 0.0
        runs = 0
        for i in range(a.bases):
            stations, tx, snr = _geometry(i)
            scene = ts.make_scene(stations, tx, snr_db=snr, seed=i, **scene_kw)  # type: ignore[arg-type]
            with ts.one_blas_thread():
                base = ts.session(scene, duration_s=a.duration, seed=i, **session_kw)  # type: ignore[arg-type]
            for j in range(a.draws):
                rng = np.random.default_rng([7, i, j])
                delays = {s[0]: float(d) for s, d in zip(stations, rng.normal(0.0, a.delay_us * 1e-6, len(stations)))}
                ds = ts.with_stamp_errors(base, delays_s=delays, jitter_s=float(rng.uniform(0.5e-6, 3e-6)),
                                          seed=100 * i + j)
                t = time.perf_counter()
                r = tdoa.tdoa(ds, station_delay_sigma_s=a.delay_us * 1e-6, **kw)  # type: ignore[arg-type]
                spent += time.perf_counter() - t
                runs += 1
                inside_p += [abs(pl.lag_s - ts.true_lag_s(scene, pl.a, pl.b)) <= pl.ci95_s for pl in r.pairs if pl.used]
                if r.position is None:
                    none[(r.reason or "").split(":")[0][:40]] += 1
                    continue
                inside_e.append(r.contains(tx))
                v = np.array(tdoa.local_offset_km(*r.position, *tx))
                r2.append(float(v @ np.linalg.solve(r.covariance_km2, v)) / r.scale2)
        print(f"{name:22s} {runs:5d} {np.mean(inside_p):13.1%} {np.mean(inside_e):15.1%} "
              f"{np.median(r2):9.2f} {sum(none.values()):11d} {spent / max(runs, 1):6.2f}")
        for why, k in none.most_common():
            print(f"{'':24s}{k} x {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
