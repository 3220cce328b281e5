"""Write and read throughput of a session on the S3 server, against raw s3fs put/get of the same
bytes measured in the same run; object count per session; the same on a local directory; and the
time to list a store of 1,000 sessions (S3 and local).

    python benchmarks/store.py [--stations 7] [--duration 60] [--repeat 3] [--sessions 1000]

A SeaweedFS S3 server is started on loopback (as the tests do).  The raw baseline moves the
session's IQ bytes (int16, as stored before compression) as one object with ``fs.pipe`` /
``fs.cat``; the session write is the whole commit (zarr data, then the commit record); the read
is ``Store.open`` plus loading every variable.  For the listing, one tiny session is written with
``Store.write`` and its objects copied under the other ids (commit record's id changed), so each
listed session is complete and opens; ``Store.sessions()`` is then timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # tests.support, from a checkout

from sdrlab import testing  # noqa: E402
from sdrlab.store import Store  # noqa: E402
from tests.support.servers import SeaweedS3  # noqa: E402


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fill(store: Store, n: int) -> None:
    """``n`` committed sessions: one tiny session written, its objects copied under other ids."""
    tiny = testing.synthetic_dataset(n_stations=1, duration_s=0.5, seed=5)
    first = tiny.attrs["session_id"] = "20261201T000000Z-000000"
    store.write(tiny)
    fs = store.fs
    prefix = f"{store.root}/sessions/{first}"
    data = {k[len(prefix) + 1:]: fs.cat(k) for k in fs.find(prefix)}
    record = json.loads(fs.cat(store._commit_key(first)))
    batch: dict[str, bytes] = {}
    for i in range(1, n):
        sid = record["session_id"] = f"20261201T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}Z-{i:06x}"
        batch.update({f"{store.root}/sessions/{sid}/{k}": v for k, v in data.items()})
        batch[store._commit_key(sid)] = json.dumps(record).encode()
        if len(batch) >= 2000 or i == n - 1:
            fs.pipe(batch)
            batch = {}


def listing(store: Store, n: int, repeat: int) -> float:
    fill(store, n)
    assert len(store.sessions()) == n
    return best(store.sessions, repeat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=7)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=1000, help="sessions in the store for the listing")
    a = ap.parse_args()
    ds = testing.synthetic_dataset(n_stations=a.stations, duration_s=a.duration, seed=1)
    raw = ds["iq"].values.tobytes()
    mb = len(raw) / 1e6
    print(f"session: {a.stations} stations x {a.duration:g} s, IQ {mb:.1f} MB raw int16; best of {a.repeat}; "
          "load average %.2f %.2f %.2f" % os.getloadavg())
    srv = SeaweedS3().start()
    try:
        store = Store("s3://sdrlab-bench/lab", srv.storage_options)
        store.health()  # bucket
        fs = store.fs
        key = "sdrlab-bench/raw/blob"
        fs.pipe(key, raw)  # warm-up
        t_put = best(lambda: fs.pipe(key, raw), a.repeat)
        t_get = best(lambda: fs.cat(key), a.repeat)

        counter = [0]

        def write() -> None:
            counter[0] += 1
            ds.attrs["session_id"] = f"20261124T000000Z-{counter[0]:06x}"
            store.write(ds)

        write()  # warm-up
        t_write = best(write, a.repeat)
        sid = ds.attrs["session_id"]
        t_read = best(lambda: store.open(sid).load(), a.repeat)
        n_obj = len(store.objects(sid))
        stored = sum(store.fs.du(f"{store.root}/sessions/{sid}", total=False).values())
        back = store.open(sid)
        assert np.array_equal(back["iq"].values, ds["iq"].values), "round trip not bit-exact"

        print(f"raw s3fs put   {t_put * 1e3:8.1f} ms  {mb / t_put:7.1f} MB/s")
        print(f"raw s3fs get   {t_get * 1e3:8.1f} ms  {mb / t_get:7.1f} MB/s")
        print(f"session write  {t_write * 1e3:8.1f} ms  {mb / t_write:7.1f} MB/s  ratio to raw put {t_put / t_write:.2f}")
        print(f"session read   {t_read * 1e3:8.1f} ms  {mb / t_read:7.1f} MB/s  ratio to raw get {t_get / t_read:.2f}")
        print(f"objects per session: {n_obj}; stored {stored / 1e6:.1f} MB ({stored / len(raw):.2f} of raw IQ)")

        with tempfile.TemporaryDirectory() as d:
            local = Store(f"file://{d}")
            c = [0]

            def lwrite() -> None:
                c[0] += 1
                ds.attrs["session_id"] = f"20261124T000000Z-{c[0]:06x}"
                local.write(ds)

            t_lw = best(lwrite, a.repeat)
            print(f"local write    {t_lw * 1e3:8.1f} ms  {mb / t_lw:7.1f} MB/s")
            t_list_local = listing(Store(f"file://{d}/many"), a.sessions, a.repeat)
        t_list_s3 = listing(Store("s3://sdrlab-bench/many", srv.storage_options), a.sessions, a.repeat)
        print(f"list {a.sessions} sessions: S3 {t_list_s3 * 1e3:.0f} ms, local {t_list_local * 1e3:.0f} ms (aim < 1000 ms)")
        print(f"RESULT s3_write_ratio={t_put / t_write:.2f} s3_read_ratio={t_get / t_read:.2f} "
              f"write_ms={t_write * 1e3:.0f} read_ms={t_read * 1e3:.0f} objects={n_obj} "
              f"list_s3_ms={t_list_s3 * 1e3:.0f} list_local_ms={t_list_local * 1e3:.0f} "
              f"met={t_put / t_write >= 0.8 and t_get / t_read >= 0.5 and max(t_list_s3, t_list_local) < 1.0} "
              f"(write >= 0.8, read >= 0.5, listing < 1 s); load average %.2f %.2f %.2f" % os.getloadavg())
    finally:
        srv.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
