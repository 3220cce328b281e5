"""Streaming capture's on-store format: each station's samples as fixed-size zarr chunks of the
session's IQ array, written as they fill, each with a sidecar of the frame records and segments
received so far (:class:`StationRecorder`); and the way back, from those objects to the
captures of a session at any chunk boundary (:func:`assemble`).

Layout under a session's prefix (see :mod:`sdrlab.store`)::

    stream/<station>/<k>.iq    chunk k of the station's IQ: samples k*N .. (k+1)*N - 1 as one
                               zarr chunk (int16 I/Q, Blosc lz4 + shuffle), N = chunk_samples
    stream/<station>/<k>.npz   its sidecar: the frame records of the frames received since
                               sidecar k-1, every segment so far, the samples stored through
                               chunk k, the capture's receiver information and events

A chunk and its sidecar are written together, chunk first; a session reads the longest run of
complete pairs 0, 1, 2 ... of each station, so a crash loses at most the chunk being filled (and
the pairs still in flight).  The finished session's IQ references these chunk objects where they
are (kerchunk references): nothing is copied when a recording is finalised.

Pure: no store, no network; the writer gets a ``put(station, k, chunk, sidecar)`` callable.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from . import timing
from .recording_audio import assemble_audio, is_audio
from .capture import (
    GPS_NO_CLOCK,
    SAMPLES_PER_FRAME,
    Capture,
    ReceiverInfo,
    Segment,
    fit_frames,
)

log = logging.getLogger(__name__)

__all__ = ["CHUNK_S", "STREAM", "ChunkWriter", "StationRecorder", "assemble", "chunk_key", "chunk_samples", "decode_chunk",
           "encode_chunk", "read_sidecar"]

#: the prefix of the stream objects under a session's prefix
STREAM = "stream"
#: default signal seconds per chunk (at 12 kHz: 20.5 s in 246 kB-1 MB objects)
CHUNK_S = 20.0
#: the frame record fields a sidecar carries, with their dtypes
FRAME_FIELDS = {
    "frame_seq": np.uint32, "frame_flags": np.uint8, "frame_rssi_dbm": np.float32, "frame_last_gps": np.uint8,
    "frame_gps_ns": np.int64, "frame_received": np.bool_, "frame_sample": np.int64, "frame_segment": np.int16,
}
_NOMINAL_FS = 12000.0
#: an interval with fewer samples than one Welch segment of the metrics measures nothing
INTERVAL_MIN_SAMPLES = 8192


def chunk_samples(chunk_s: float = CHUNK_S) -> int:
    """Samples per chunk for about ``chunk_s`` seconds at 12 kHz: whole 512-sample frames, so a
    GPS-timed frame never straddles two chunks."""
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise ValueError(f"chunk_s must be a positive number of seconds, got {chunk_s!r}")
    return max(1, round(chunk_s * _NOMINAL_FS / SAMPLES_PER_FRAME)) * SAMPLES_PER_FRAME


def chunk_key(station: str, k: int, kind: str) -> str:
    """``stream/<station>/<k>.<kind>`` (kind ``iq`` or ``npz``), relative to the session's prefix."""
    return f"{STREAM}/{station}/{k:06d}.{kind}"


def _blosc() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def encode_chunk(block: npt.NDArray[np.int16]) -> bytes:
    """One IQ chunk (N, 2) as zarr stores it with :func:`sdrlab.model.stream_encoding`: little
    endian int16 bytes, Blosc lz4 + byte shuffle."""
    raw = np.ascontiguousarray(block, dtype="<i2")
    return bytes(_blosc().encode(raw))


def decode_chunk(data: bytes, n: int) -> npt.NDArray[np.int16]:
    out = np.frombuffer(_blosc().decode(data), dtype="<i2").reshape(n, 2)
    return out.astype(np.int16, copy=False)


# ---- writing ---------------------------------------------------------------------------------
Put = Callable[[str, int, bytes, Any], None]


class StationRecorder:
    """One station's streaming writer: receives the client's pieces of segments (in order, as
    they arrive), lays them end to end on the station's sample axis, and hands every full chunk
    with its sidecar to ``put`` (called in the receiving thread: ``put`` should queue, not wait).

    Memory: one chunk of samples and the frame records since the last chunk, whatever the
    capture's length.  Frames missing between two pieces of one segment are zero-filled, as
    inside a piece, so that the sample index stays linear in time."""

    def __init__(self, station: str, n: int, put: Put, *, interval_s: float | None = None) -> None:
        self.station = station
        self.n = n
        self.put = put
        self._buf = np.zeros((n, 2), dtype=np.int16)
        self._fill = 0
        self.k = 0  # chunks handed to put
        self.total = 0  # samples on the station axis so far
        self._frames: dict[str, list[npt.NDArray[Any]]] = {f: [] for f in FRAME_FIELDS}
        self.segments: list[dict[str, Any]] = []
        self._open = False
        self._last_seq = -1
        self._seg_frames = 0
        self.capture: Capture | None = None
        self.closed = False
        #: the metric time series, measured as the samples arrive: interval j holds the station's
        #: samples edge(j) .. edge(j+1) (whole frames, about ``interval_s`` at the rate of its
        #: first GPS fit, as :func:`sdrlab.metrics.interval_metrics` defines them); pieces not
        #: yet measured are kept (at most one interval and a piece)
        self.interval_s = interval_s
        self._tail: list[tuple[int, Segment]] = []
        self._next_interval = 0
        self._fs = 0.0
        self._intervals: list[dict[str, Any]] = []  # measured since the last sidecar
        #: samples stored by an earlier capture of this station this one continues (resume)
        self.resumed_from = 0

    # -- pieces in --
    def piece(self, cap: Capture, seg: Segment, first: bool) -> None:
        """Append a piece; ``first``: it begins a new segment (a new connection, or after a gap
        too long to zero-fill).  ``seg.end_reason`` ``continues`` keeps the segment open."""
        self.capture = cap
        if seg.n_samples == 0 and seg.frame_seq.size == 0:
            return
        if first or not self._open:
            self.segments.append({"start": self.total, "length": 0, "end": "", "timing": seg.timing,
                                  "nominal_fs": float(seg.fit.fs) if np.isfinite(seg.fit.fs) else _NOMINAL_FS,
                                  "receipt_t0_gps_ns": -1, "missing_frames": 0})
            self._open = True
            self._seg_frames = 0
        elif seg.frame_seq.size and self._last_seq >= 0:
            gap = int(seg.frame_seq[0]) - self._last_seq - 1
            if gap > 0:  # frames lost between two pieces of one connection: zero-filled
                width = SAMPLES_PER_FRAME if seg.frame_start is None else int(np.median(np.diff(
                    np.r_[seg.frame_start, seg.n_samples])))
                self._append_gap(gap, width)
        sg = self.segments[-1]
        j = len(self.segments) - 1
        k = seg.frame_seq.size
        starts = seg.frame_start if seg.frame_start is not None else np.arange(k, dtype=np.int64) * SAMPLES_PER_FRAME
        offset = self.total - sg["start"]  # the piece's first sample within its segment
        if seg.timing == "receipt" and seg.receipt_t0_gps_ns >= 0:
            t0 = seg.receipt_t0_gps_ns - round(offset / (sg["nominal_fs"] or _NOMINAL_FS) * 1e9)
            sg["receipt_t0_gps_ns"] = t0 if sg["receipt_t0_gps_ns"] < 0 else min(sg["receipt_t0_gps_ns"], t0)
        self._add_frames(seg.frame_seq, seg.frame_flags, seg.frame_rssi_dbm, seg.frame_last_gps, seg.frame_gps_ns,
                         seg.frame_received, self.total + np.asarray(starts, dtype=np.int64), j)
        sg["missing_frames"] += int(seg.missing_frames)
        if self.interval_s:
            self._keep_for_intervals(self.total, seg, np.asarray(starts, dtype=np.int64))
        self._samples(seg.samples)
        sg["length"] = self.total - sg["start"]
        if k:
            self._last_seq = int(seg.frame_seq[-1])
        if seg.end_reason != "continues":
            sg["end"] = seg.end_reason
            self._open = False
            self._last_seq = -1

    def resume(self, sidecars: list[dict[str, Any]], chunks: int, why: str) -> None:
        """Continue a station whose capture stopped elsewhere (a dask worker that died): from the
        end of its stored run (the sidecars and chunks :func:`assemble` would read), in chunk
        ``chunks``, its next data a new segment; the open segment it had ends with ``why``."""
        if not sidecars:
            return
        stored = stored_samples(sidecars, chunks)
        self.resumed_from = stored
        meta = sidecars[-1]["meta"]
        self.k = len(sidecars) if stored % self.n else chunks
        self.total = stored
        if stored % self.n:  # a final chunk: continue after it, on the chunk grid
            self.total = self.k * self.n
        segs = []
        for sg in meta["segments"]:
            if int(sg["start"]) >= stored:
                break
            sg = dict(sg, length=min(int(sg["length"]), stored - int(sg["start"])))
            sg["end"] = sg["end"] or why
            segs.append(sg)
        self.segments = segs
        self._open = False
        self._last_seq = -1
        self._fs = float(meta.get("interval_fs") or 0.0)
        if self.interval_s:
            j = 0
            while self._edge(j) < self.total:
                j += 1
            self._next_interval = j

    def end_segment(self, reason: str) -> None:
        """The open segment ended with no frames after its last piece."""
        if self._open and self.segments:
            self.segments[-1]["end"] = reason
        self._open = False
        self._last_seq = -1

    def _append_gap(self, frames: int, width: int) -> None:
        j = len(self.segments) - 1
        seq = (self._last_seq + 1 + np.arange(frames)).astype(np.uint32)
        self._add_frames(seq, np.zeros(frames, np.uint8), np.full(frames, np.nan, np.float32),
                         np.full(frames, GPS_NO_CLOCK, np.uint8), np.full(frames, -1, np.int64),
                         np.zeros(frames, bool), self.total + np.arange(frames, dtype=np.int64) * width, j)
        self.segments[-1]["missing_frames"] += frames
        zeros = np.zeros((frames * width, 2), np.int16)
        if self.interval_s:
            filler = Segment(zeros, seq, np.zeros(frames, np.uint8), np.full(frames, np.nan, np.float32),
                             np.full(frames, GPS_NO_CLOCK, np.uint8), np.full(frames, -1, np.int64),
                             np.zeros(frames, bool), timing.TimeFit(-1, self._fs or _NOMINAL_FS, float("nan"), 0, 0, ""),
                             "continues", 0, frames)
            self._keep_for_intervals(self.total, filler, np.arange(frames, dtype=np.int64) * width)
        self._samples(zeros)
        self._last_seq += frames

    def _add_frames(self, *cols: Any) -> None:
        *arrays, segment = cols
        for name, values in zip(list(FRAME_FIELDS)[:-1], arrays):
            self._frames[name].append(np.asarray(values, dtype=FRAME_FIELDS[name]))
        n = len(arrays[0])
        self._frames["frame_segment"].append(np.full(n, segment, np.int16))

    def _samples(self, samples: npt.NDArray[np.int16]) -> None:
        i = 0
        m = samples.shape[0]
        while i < m:
            take = min(self.n - self._fill, m - i)
            self._buf[self._fill:self._fill + take] = samples[i:i + take]
            self._fill += take
            self.total += take
            i += take
            if self._fill == self.n:
                self._flush(final=False)

    # -- chunks out --
    def _flush(self, final: bool) -> None:
        if self._open and self.segments:  # the open segment reaches as far as the samples so far
            self.segments[-1]["length"] = self.total - self.segments[-1]["start"]
        stored = self.k * self.n + self._fill
        chunk = encode_chunk(self._buf) if self._fill else b""
        side = self._sidecar(stored, final)
        k = self.k
        self.k += 1
        self._buf[:] = 0  # reused: no new chunk-sized allocation per chunk
        self._fill = 0
        self.put(self.station, k, chunk, side)

    def close(self, cap: Capture | None = None) -> None:
        """The capture ended: store what is buffered (the last, partly filled chunk) with a final
        sidecar; an open segment ends as the capture did."""
        if self.closed:
            return
        self.closed = True
        if cap is not None:
            self.capture = cap
        if self._open and self.segments and not self.segments[-1]["end"]:
            self.segments[-1]["end"] = "complete"
        self._open = False
        if self.total == 0 and self.k == 0:
            return  # nothing arrived: nothing to store
        if self.interval_s:
            self._measure_due(final=True)
        self._flush(final=True)

    def _sidecar(self, stored: int, final: bool) -> Sidecar:
        cols = {name: (np.concatenate(parts) if parts else np.zeros(0, FRAME_FIELDS[name]))
                for name, parts in self._frames.items()}
        self._frames = {f: [] for f in FRAME_FIELDS}
        cap = self.capture
        meta = {
            "version": 1, "station": self.station, "k": self.k, "chunk_samples": self.n, "stored": int(stored),
            "final": bool(final), "segments": [dict(sg) for sg in self.segments],  # as now: stored later
            "capture": None if cap is None else {
                "frequency_hz": cap.frequency_hz, "low_cut": cap.low_cut, "high_cut": cap.high_cut,
                "requested_s": cap.requested_s, "gps_utc_offset_s": cap.gps_utc_offset_s,
                "info": asdict(cap.info) if cap.info is not None else None,
                "events": list(cap.events), "bad_frames": cap.bad_frames,
            },
        }
        meta["interval_s"] = self.interval_s
        meta["interval_fs"] = self._fs
        meta["intervals"] = self._intervals
        self._intervals = []
        return Sidecar(meta, cols)

    # -- the metric time series --
    def _keep_for_intervals(self, offset: int, seg: Segment, starts: npt.NDArray[np.int64]) -> None:
        if not self._fs and seg.fit.ok:
            self._fs = float(seg.fit.fs)
        self._tail.append((offset, replace(seg, frame_start=starts)))
        self._measure_due(final=False)

    def _edge(self, j: int) -> int:
        fs = self._fs or _NOMINAL_FS
        return int(round(j * float(self.interval_s or 0) * fs / SAMPLES_PER_FRAME)) * SAMPLES_PER_FRAME

    def _measure_due(self, final: bool) -> None:
        """Measure every interval whose samples have all arrived (``final``: the last, shorter
        one too), then let go of the pieces before the next."""
        end = (self._tail[-1][0] + self._tail[-1][1].n_samples) if self._tail else 0
        while self._tail:
            a, b = self._edge(self._next_interval), self._edge(self._next_interval + 1)
            if end < b and not final:
                return
            b = min(b, end)
            if b > a:
                self._intervals.append(self._measure(a, b))
            self._next_interval += 1
            self._tail = [(o, sg) for o, sg in self._tail if o + sg.n_samples > b]
            if end <= b:
                self._tail = [] if final else self._tail
                return

    def _measure(self, a: int, b: int) -> dict[str, Any]:
        """Samples a .. b of the station axis as a one-segment capture, to be measured (every
        metric) by :func:`measure_intervals`."""
        parts = [(o, sg) for o, sg in self._tail if o < b and o + sg.n_samples > a]
        samples = np.concatenate([sg.samples[max(0, a - o):min(sg.n_samples, b - o)] for o, sg in parts])
        cols: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in ("frame_seq", "frame_flags", "frame_rssi_dbm",
                                                                   "frame_last_gps", "frame_gps_ns", "frame_received")}
        first: list[npt.NDArray[np.int64]] = []
        for o, sg in parts:
            st = o + np.asarray(sg.frame_start, dtype=np.int64)
            inside = (st >= a) & (st < b)
            for k in cols:
                cols[k].append(np.asarray(getattr(sg, k))[inside])
            first.append(st[inside] - a)
        fs = self._fs or _NOMINAL_FS
        t0 = -1  # GPS time of sample a: from the first GPS-stamped frame inside the interval
        for o, sg in parts:
            st = o + np.asarray(sg.frame_start, dtype=np.int64)
            stamped = np.flatnonzero((sg.frame_gps_ns >= 0) & (st >= a) & (st < b))
            if stamped.size:
                i = int(stamped[0])
                t0 = int(sg.frame_gps_ns[i]) - round((int(st[i]) - a) / fs * 1e9)
                break
        cap = self.capture
        assert cap is not None
        c = {k: np.concatenate(v) for k, v in cols.items()}
        fit = timing.TimeFit(t0, fs, 0.0, 2, 0, "ok") if t0 >= 0 else timing.TimeFit(-1, fs, float("nan"), 0, 0, "")
        seg = Segment(samples=samples, frame_seq=c["frame_seq"], frame_flags=c["frame_flags"],
                      frame_rssi_dbm=c["frame_rssi_dbm"], frame_last_gps=c["frame_last_gps"],
                      frame_gps_ns=c["frame_gps_ns"], frame_received=c["frame_received"], fit=fit, end_reason="",
                      seq_gaps=0, missing_frames=0, frame_start=np.concatenate(first))
        out: dict[str, Any] = {"first": a, "samples": b - a, "t0_gps_ns": t0}
        if b - a >= INTERVAL_MIN_SAMPLES:  # measured later, many at once (measure_intervals)
            out[_JOB] = replace(cap, segments=[seg], events=[])
        return out


#: the key of an interval's capture until it is measured
_JOB = "_capture"
#: intervals measured together (one metrics pass over this many one-interval stations)
MEASURE_BATCH = 32


class Sidecar:
    """A chunk's sidecar before it is stored: its meta (with intervals that may still wait for
    :func:`measure_intervals`) and frame columns; :meth:`to_bytes` is what is stored."""

    def __init__(self, meta: dict[str, Any], cols: dict[str, npt.NDArray[Any]]) -> None:
        self.meta = meta
        self.cols = cols

    def jobs(self) -> list[dict[str, Any]]:
        return [iv for iv in self.meta.get("intervals", []) if _JOB in iv]

    def to_bytes(self) -> bytes:
        measure_intervals(self.jobs())
        bio = io.BytesIO()
        np.savez(bio, meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8),
                 **self.cols)  # type: ignore[arg-type]
        return bio.getvalue()


def measure_intervals(intervals: list[dict[str, Any]]) -> None:
    """Every metric of each interval waiting with its capture (in place), :data:`MEASURE_BATCH`
    intervals of any stations per metrics pass: one pass costs about 50 ms of xarray overhead
    however many stations it holds, and an interval's own arithmetic ~2 ms."""
    from . import model
    from .metrics import metrics

    todo = [iv for iv in intervals if _JOB in iv]
    for i in range(0, len(todo), MEASURE_BATCH):
        batch = todo[i:i + MEASURE_BATCH]
        caps = [replace(iv[_JOB], station=f"i{j}") for j, iv in enumerate(batch)]
        try:
            ds = model.build_dataset(caps, {})
            with np.errstate(all="ignore"):
                m = metrics(ds).compute()
            values = {str(k): v.values for k, v in m.data_vars.items()}
        except Exception:  # a metric must never cost the chunk: the interval stays unmeasured
            log.exception("interval metrics failed")
            values = {}
        for j, iv in enumerate(batch):
            del iv[_JOB]
            iv.update({k: float(v[j]) for k, v in values.items()})


# ---- reading ---------------------------------------------------------------------------------
def read_sidecar(data: bytes) -> dict[str, Any]:
    """A sidecar's frame columns and its ``meta`` (a dict)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files if k != "meta"}
        out["meta"] = json.loads(bytes(z["meta"]).decode())
    return out


def assemble(station: str, sidecars: list[dict[str, Any]], chunks: int, *,
             recording: bool = False) -> Capture | None:
    """A station's capture from its sidecars 0, 1, ... (read with :func:`read_sidecar`, in
    order, as many as form a run with their chunks) and the number of chunk objects present in
    that run: frame records, segments and their GPS time fits as if captured in one piece; the
    samples are not read (each segment holds none: ``streamed`` says how many it has).  None when nothing was stored.  ``recording``: an open last segment is still
    being captured (else: it ended with the process that captured it)."""
    if not sidecars:
        return None
    if is_audio(sidecars[0]["meta"]):  # an audio receiver's pieces (OpenWebRX)
        return assemble_audio(station, sidecars, recording=recording)
    last = sidecars[-1]["meta"]
    n = int(last["chunk_samples"])
    stored = min(int(last["stored"]), chunks * n)
    c = last.get("capture") or {}
    cap = Capture(station, float(c.get("frequency_hz", np.nan)), float(c.get("low_cut", np.nan)),
                  float(c.get("high_cut", np.nan)), float(c.get("requested_s", np.nan)),
                  int(c.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S)), ReceiverInfo.from_dict(c.get("info")),
                  events=list(c.get("events", [])), bad_frames=int(c.get("bad_frames", 0)))
    cols = {name: np.concatenate([s[name] for s in sidecars]) for name in FRAME_FIELDS}
    keep = cols["frame_sample"] < stored
    cols = {k: v[keep] for k, v in cols.items()}
    for j, sg in enumerate(last["segments"]):
        start = int(sg["start"])
        if start >= stored:
            break
        length = min(int(sg["length"]), stored - start)
        mine = cols["frame_segment"] == j
        f = {k: v[mine] for k, v in cols.items()}
        rel = f["frame_sample"] - start
        rec = f["frame_received"]
        nominal = float(sg.get("nominal_fs") or _NOMINAL_FS)
        if sg["timing"] == "receipt":
            fit = timing.TimeFit(-1, nominal, float("nan"), 0, 0,
                                 "no GPS timestamps (frames without the GPS block: receipt times only)")
        else:
            fit = fit_frames(rel[rec], f["frame_gps_ns"][rec], f["frame_last_gps"][rec], nominal_fs=nominal)
        end = sg["end"] or ("recording" if recording else "the capture stopped with its process (no final chunk)")
        if length < int(sg["length"]):
            end = f"{end}; cut at the last stored chunk" if sg["end"] else end
        gaps = int(np.count_nonzero(np.diff(np.flatnonzero(rec)) > 1)) if rec.sum() > 1 else 0
        cap.segments.append(Segment(
            samples=np.zeros((0, 2), np.int16), streamed=length,
            frame_seq=f["frame_seq"], frame_flags=f["frame_flags"], frame_rssi_dbm=f["frame_rssi_dbm"],
            frame_last_gps=f["frame_last_gps"], frame_gps_ns=f["frame_gps_ns"], frame_received=rec,
            fit=fit, end_reason=end, seq_gaps=gaps, missing_frames=int((~rec).sum()),
            timing=sg["timing"], frame_start=rel if sg["timing"] == "receipt" else None,
            receipt_t0_gps_ns=int(sg.get("receipt_t0_gps_ns", -1)),
        ))
    return cap if cap.segments else None


def _libc() -> Any:
    """glibc, or None (another platform or C library)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  # both exist: glibc
    except (OSError, AttributeError):
        log.debug("glibc malloc controls unavailable", exc_info=True)
        return None
    return libc


def release_heap() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``; elsewhere a no-op).
    Finalising an hour of seven stations reads ~1,300 sidecars of a few kB each: they are freed
    one station at a time, but small blocks come from the heap, whose free pages glibc keeps
    unless asked (``benchmarks/memory.py``: ~25 MB per hour of seven stations otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def steady_heap() -> None:
    """Fix glibc's mmap threshold at 128 kB (Linux; elsewhere a no-op).  glibc raises it after the
    first chunk-sized block is freed, and from then on the chunk-sized buffers of a long capture
    (encoded chunks, sidecars, the pieces of every station) come from the heap, which fragments:
    resident memory grew ~20 % per 10 minutes of seven stations.  With a fixed threshold they are
    mapped and unmapped whole (``benchmarks/memory.py``)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


# ---- the writer thread -----------------------------------------------------------------------
#: seconds between two :func:`release_heap` calls of a writer: the pieces, chunks, sidecars and
#: interval measurements of many threads free small blocks all over glibc's arenas, which keep the
#: free pages (``benchmarks/memory.py``: resident memory crept up ~10 MB over a 10-minute capture
#: of seven stations, and a one-minute one had not reached that level yet); ``malloc_trim`` takes
#: ~20 ms over a fragmented heap of a few hundred MB (0.2 % of one writer thread)
TRIM_S = 10.0


class ChunkWriter:
    """Stores the chunks of many stations in the background, in order of arrival, with
    ``threads`` threads: :meth:`put` never blocks the event loop that receives the frames.  A
    chunk whose store fails is kept in memory and tried again (the store may come back) until
    :meth:`close`; what is still unstored then is in :attr:`unsent` (station, k, chunk, sidecar)
    and :attr:`error` says why."""

    def __init__(self, store_put: Put, *, threads: int = 4, retry_s: float = 2.0,
                 after: Put | None = None, trim_s: float = TRIM_S) -> None:
        self._put = store_put
        #: the freed heap is given back to the system at most this often (see :data:`TRIM_S`)
        self.trim_s = trim_s
        self._trimmed = time.monotonic()
        #: called with each chunk once stored (e.g. to index its metric time series); an error in
        #: it is logged and never costs the chunk
        self._after = after
        self._queue: deque[tuple[str, int, bytes, Any]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._busy = 0
        self._inflight: dict[int, tuple[str, int, bytes, bytes]] = {}
        self.retry_s = retry_s
        self.unsent: list[tuple[str, int, bytes, bytes]] = []
        self.error: str | None = None
        self.stored = 0
        self.stored_bytes = 0
        self._threads = [threading.Thread(target=self._run, name=f"sdrlab-chunks-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def put(self, station: str, k: int, chunk: bytes, sidecar: bytes | Sidecar) -> None:
        with self._cv:
            self._queue.append((station, k, chunk, sidecar))
            self._cv.notify()

    @property
    def backlog(self) -> int:
        with self._cv:
            return len(self._queue) + self._busy

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MEASURE_BATCH))]
                self._busy += len(batch)
            # the sidecars' intervals measured together, then each sidecar serialised once
            pending = [iv for it in batch if isinstance(it[3], Sidecar) for iv in it[3].jobs()]
            measure_intervals(pending)
            items = []
            for st, k, chunk, side in batch:
                try:
                    items.append((st, k, chunk, side.to_bytes() if isinstance(side, Sidecar) else side))
                except Exception as exc:  # a bug: named, and the chunk is not silently dropped
                    log.exception("sidecar %d of %s could not be serialised", k, st)
                    with self._cv:
                        self.error = f"sidecar {k} of {st} could not be serialised: {exc}"
            with self._cv:
                self._busy -= len(batch)
                self._queue.extendleft(reversed(items))
                if not self._queue:
                    continue
                self._busy += 1
                item = self._queue.popleft()
                self._inflight[id(item)] = item
            try:
                self._put(*item)
            except Exception as exc:  # the store failed: keep the chunk, try again later
                with self._cv:
                    self.error = str(exc)
                    self._busy -= 1
                    self._inflight.pop(id(item), None)
                    if self._closing:
                        self.unsent.append(item)
                        continue
                log.warning("chunk %d of %s not stored (%s); kept, trying again", item[1], item[0], exc)
                time.sleep(self.retry_s)
                with self._cv:
                    self._queue.append(item)
                    self._cv.notify()
                continue
            if self._after is not None:
                try:
                    self._after(*item)
                except Exception:
                    log.warning("after storing chunk %d of %s", item[1], item[0], exc_info=True)
            with self._cv:
                self._busy -= 1
                self._inflight.pop(id(item), None)
                self.stored += 1
                self.stored_bytes += len(item[2]) + len(item[3])
                self._cv.notify_all()
                trim = time.monotonic() - self._trimmed >= self.trim_s
                if trim:
                    self._trimmed = time.monotonic()
            if trim:
                release_heap()

    def close(self, timeout_s: float) -> None:
        """Store what is queued (one more try each for failed chunks), waiting at most
        ``timeout_s``; what is left is in :attr:`unsent`."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cv:
            # still queued, or in a store call that did not return (a frozen server): not stored
            self.unsent.extend((st, k, c, side.to_bytes() if isinstance(side, Sidecar) else side)
                               for st, k, c, side in self._queue)
            self.unsent.extend(self._inflight.values())
            self._queue.clear()
        if self.unsent and self.error is None:
            self.error = f"the store did not take {len(self.unsent)} chunk(s) within {timeout_s:g} s"


def intervals(sidecars: list[dict[str, Any]], stored: int) -> list[dict[str, Any]]:
    """The metric time series measured as a station's samples arrived, from its sidecars (those
    of the run :func:`assemble` read), without intervals reaching past the ``stored`` samples."""
    out = [iv for car in sidecars for iv in car["meta"].get("intervals", [])]
    return [iv for iv in out if iv["first"] + iv["samples"] <= stored]


def stored_samples(sidecars: list[dict[str, Any]], chunks: int) -> int:
    """Samples of a station readable from its run of sidecars and ``chunks`` chunk objects."""
    if not sidecars:
        return 0
    last = sidecars[-1]["meta"]
    if is_audio(last):  # audio pieces: no chunk objects, every piece holds its samples
        return int(last["stored"])
    return min(int(last["stored"]), chunks * int(last["chunk_samples"]))


def interval_variables(ds: Any, by_station: dict[str, list[dict[str, Any]]], interval_s: float) -> Any:
    """``ds`` with the metric time series as :func:`sdrlab.acquire.attach_interval_metrics` stores
    it (``interval_<metric>`` (station, interval), ``interval_start``, ``interval_samples``,
    attribute ``interval_s``), from the intervals measured while recording."""
    from .metric_table import LONG_NAMES, UNITS

    ids = [str(s) for s in ds["station"].values]
    n_int = max([len(by_station.get(i, [])) for i in ids] + [0])
    if n_int == 0:
        return ds
    offset = int(ds.attrs.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S))
    start = np.full((len(ids), n_int), np.datetime64("NaT", "ns"))
    samples = np.zeros((len(ids), n_int), np.int64)
    values = {m: np.full((len(ids), n_int), np.nan) for m in UNITS}
    for i, sid in enumerate(ids):
        for j, iv in enumerate(by_station.get(sid, [])):
            if iv["t0_gps_ns"] >= 0:
                start[i, j] = timing.gps_ns_to_utc(int(iv["t0_gps_ns"]), offset)
            samples[i, j] = iv["samples"] if iv["samples"] >= INTERVAL_MIN_SAMPLES else 0
            for m in UNITS:
                if m in iv:
                    values[m][i, j] = iv[m]
    for m in UNITS:
        if np.isfinite(values[m]).any():
            ds[f"interval_{m}"] = (("station", "interval"), values[m],
                                   {"units": UNITS[m], "long_name": f"{LONG_NAMES.get(m, m)} per interval"})
    ds = ds.assign_coords(
        interval_start=(("station", "interval"), start, {"long_name": "UTC of the interval's first sample (GPS time base)"}),
        interval_samples=(("station", "interval"), samples, {"long_name": "valid samples in the interval", "units": "1"}),
    )
    ds.attrs["interval_s"] = float(interval_s)
    return ds


def sidecar_intervals(sidecar: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A sidecar's meta and the intervals measured since the previous one, each with ``utc``
    (numpy datetime64, from its GPS time; NaT where it has none)."""
    meta = read_sidecar(sidecar)["meta"]
    cap = meta.get("capture") or {}
    offset = int(cap.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S))
    out = []
    for iv in meta.get("intervals", []):
        t0 = int(iv.get("t0_gps_ns", -1))
        ok = t0 >= 0 and iv["samples"] >= INTERVAL_MIN_SAMPLES
        out.append({**iv, "utc": timing.gps_ns_to_utc(t0, offset) if ok else None})
    return meta, out
