"""What all the metrics of a session cost, against one bare FFT pass over the same samples.

A 7-station session of ``--duration`` seconds at ~12 kHz is built with
:func:`sdrlab.testing.synthetic_dataset` (int16 ``iq``, as stored).  In the same run, best of
``--repeat`` (after one untimed warm-up call each), we time:

* baseline: ``numpy.fft.fft`` over the stored samples as complex64 (station, sample), one FFT of
  length n per station; the int16 -> complex64 conversion is done beforehand and not timed;
* eager: ``sdrlab.metrics.metrics(ds)`` on the numpy-backed session;
* dask: ``sdrlab.metrics.metrics(ds.chunk(...)).compute()``, the chunked copy made beforehand
  (default chunks as the store writes them: one station x ``model.CHUNK_BYTES`` per chunk);
* detect: ``metrics(ds, passband="detect")``, eager, the passband detected from the PSD as for a
  session that does not record it (kiwi-wav imports).

Every case includes the per-frame IQ power sums of the AGC metric (same pass) and the S-meter /
AGC / overload metrics of the frame records.

Also printed, as a reference only (not the baseline): ``numpy.fft.fft`` over the same samples cut
into ``nperseg``-long segments, i.e. the FFT work the Welch pass itself has to do.  Wall time and
process CPU time are shown; ratios are of wall times.  Target: metrics <= 2x the baseline.

    python benchmarks/metrics.py --repeat 5 --duration 60
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import numpy.typing as npt
import xarray as xr

from sdrlab import model
from sdrlab.metrics import metrics
from sdrlab.testing import synthetic_dataset

NPERSEG = 8192  # metrics() default
TARGET = 2.0


@dataclass
class Timing:
    name: str
    wall_s: float
    cpu_s: float

    def line(self, baseline: Timing | None = None) -> str:
        ratio = "" if baseline is None else f"  ratio {self.wall_s / baseline.wall_s:5.2f}x"
        return f"{self.name:<34s} wall {self.wall_s * 1e3:8.1f} ms  cpu {self.cpu_s * 1e3:8.1f} ms{ratio}"


def best_of(name: str, fn: Callable[[], Any], repeat: int) -> Timing:
    """Best wall and best CPU time of ``repeat`` calls, after one untimed warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(name, min(walls), min(cpus))


def as_complex64(ds: xr.Dataset) -> npt.NDArray[np.complex64]:
    """The stored int16 samples (station, sample, I/Q) as full-scale complex64 (station, sample)."""
    iq = np.asarray(ds["iq"].transpose("station", "sample", "component").values)
    z = np.empty(iq.shape[:2], dtype=np.complex64)
    z.real = iq[..., 0]
    z.imag = iq[..., 1]
    z *= np.float32(1.0 / model.FULL_SCALE)
    return z


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per case (best is kept)")
    ap.add_argument("--duration", type=float, default=60.0, help="session length, seconds")
    ap.add_argument("--stations", type=int, default=7)
    ap.add_argument("--fs", type=float, default=12000.0)
    ap.add_argument("--chunk-samples", type=int, default=None,
                    help="dask chunk along sample (default: as stored, model.CHUNK_BYTES // 4)")
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")

    t0 = time.perf_counter()
    ds = synthetic_dataset(a.stations, a.duration, fs=a.fs)
    build_s = time.perf_counter() - t0
    n = ds.sizes["sample"]
    valid = int(ds["n_samples"].sum())
    chunk = a.chunk_samples or int(max(1, min(n, model.CHUNK_BYTES // 4)))
    lazy = ds.chunk({"station": 1, "sample": chunk})
    z = as_complex64(ds)
    segs = z[:, : (n // NPERSEG) * NPERSEG].reshape(a.stations, -1, NPERSEG)
    print(f"session: {a.stations} stations x {a.duration:g} s at {a.fs:g} Hz, iq {ds['iq'].dtype} "
          f"{tuple(ds['iq'].shape)} ({ds['iq'].nbytes / 1e6:.1f} MB), {valid} valid of "
          f"{a.stations * n} samples; built in {build_s:.1f} s")
    print(f"dask copy: chunks station=1 x sample={chunk} ({lazy['iq'].data.npartitions} chunks), "
          f"threaded scheduler, {os.cpu_count()} CPUs; best of {a.repeat}")

    base = best_of("baseline numpy.fft.fft (7, n) c64", lambda: np.fft.fft(z, axis=-1), a.repeat)
    ref = best_of(f"reference fft of {NPERSEG}-segments", lambda: np.fft.fft(segs, axis=-1), a.repeat)
    eager = best_of("metrics(ds) eager numpy", lambda: metrics(ds), a.repeat)
    lazy_t = best_of("metrics(ds.chunk()).compute() dask", lambda: metrics(lazy).compute(), a.repeat)
    detect = best_of("metrics(ds, passband='detect') eager", lambda: metrics(ds, passband="detect"), a.repeat)

    # the two paths must agree, or the timings compare different work (not bit for bit: the
    # float32 periodograms are summed per chunk, in another order than the eager slabs)
    xr.testing.assert_allclose(metrics(ds), metrics(lazy).compute(), rtol=1e-5, atol=1e-4)

    print(base.line())
    print(ref.line(base))
    print(eager.line(base))
    print(lazy_t.line(base))
    print(detect.line(base))
    r_eager, r_dask, r_detect = (t.wall_s / base.wall_s for t in (eager, lazy_t, detect))
    ok = max(r_eager, r_dask, r_detect) <= TARGET
    print(f"RESULT eager_ratio={r_eager:.2f} dask_ratio={r_dask:.2f} detect_ratio={r_detect:.2f} "
          f"target<={TARGET:g} met={ok} "
          f"baseline_ms={base.wall_s * 1e3:.1f} eager_ms={eager.wall_s * 1e3:.1f} dask_ms={lazy_t.wall_s * 1e3:.1f} "
          f"segment_fft_ratio={ref.wall_s / base.wall_s:.2f} n={n} stations={a.stations} repeat={a.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
