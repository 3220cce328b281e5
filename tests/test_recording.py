"""Streaming capture (issue 13, item 2): the recorder's chunks and sidecars, the session they
make at every chunk boundary, streaming acquisitions against the simulator into a local and the
S3 store, and a SIGKILL of the acquiring process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdrlab import model, recording
from sdrlab.acquire import acquire
from sdrlab.capture import Segment
from sdrlab.config import Settings
from sdrlab.demo import demo7_stations
from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
from sdrlab.store import Store

SETTINGS = Settings(progress=False, chunk_s=2.0, stream_above_s=0.0)
FRAME = 512
N = 8 * FRAME  # 4096-sample chunks: many of them in a few seconds


@pytest.fixture(scope="module")
def captured():
    """Two stations' complete captures (held in memory) and their Dataset: what streaming must give."""
    from sdrlab.sim.server import SimServer

    with SimServer(demo7(seed=11), base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports)[:2], DEMO7_TUNE_HZ, 4.0, settings=SETTINGS, write=False)
    caps = [r.capture for r in session.results.values()]
    assert all(c is not None and c.n_samples for c in caps)
    return caps, model.build_dataset(caps, {})


def piece(seg: Segment, a: int, b: int, end: str = "continues") -> Segment:
    """Frames a..b of a segment as the client hands them over."""
    return replace(seg, samples=seg.samples[a * FRAME:b * FRAME], frame_seq=seg.frame_seq[a:b],
                   frame_flags=seg.frame_flags[a:b], frame_rssi_dbm=seg.frame_rssi_dbm[a:b],
                   frame_last_gps=seg.frame_last_gps[a:b], frame_gps_ns=seg.frame_gps_ns[a:b],
                   frame_received=seg.frame_received[a:b], end_reason=end, missing_frames=0)


def record(store: Store, sid: str, caps, *, cut=None, drop: tuple[int, int] | None = None) -> None:
    """Stream the captures into ``store`` in random pieces (as the client does), optionally
    leaving out frames ``drop`` of the first station (lost between two pieces)."""
    rng = random.Random(5)
    store.begin_recording(sid, {"stations": [c.station for c in caps], "chunk_samples": N,
                                "center_frequency_hz": DEMO7_TUNE_HZ, "duration_s": 4.0})
    for i, cap in enumerate(caps):
        rec = recording.StationRecorder(cap.station, N, lambda st, k, c, s: store.put_stream(sid, st, k, c, s))
        [seg] = cap.segments
        nf = seg.frame_seq.size
        a = 0
        while a < nf:
            b = min(nf, a + rng.randint(1, 40))
            if i == 0 and drop is not None:
                if a == drop[0]:
                    a = drop[1]  # the lost frames: the next piece starts after them
                    continue
                if a < drop[0] < b:
                    b = drop[0]  # this piece ends where they begin
            rec.piece(cap, piece(seg, a, b, "continues" if b < nf else "complete"), a == 0)
            a = b
        rec.close(cap)


def test_a_streamed_session_reads_back_as_captured(captured, tmp_path):
    """Pieces of any size -> chunks and sidecars -> the same Dataset as the capture held in
    memory: IQ bit-exact, every frame record, segments and their GPS time fits."""
    caps, want = captured
    store = Store(f"file://{tmp_path}/store")
    record(store, "rec-1", caps)
    got = store.open("rec-1")
    assert got.attrs["recording_state"] == "recording"
    assert list(store.sessions()["status"]) == ["recording"]
    n = int(want.sizes["sample"])
    np.testing.assert_array_equal(got["iq"].values[:, :n], want["iq"].values)
    assert got["iq"].chunks[1][0] == N  # the stored chunks are the dask chunks
    for name in ("frame_seq", "frame_flags", "frame_rssi_dbm", "frame_last_gps", "frame_gps_ns", "frame_received",
                 "frame_sample", "segment_start", "segment_length", "segment_t0", "segment_fs", "start_time",
                 "sample_rate", "n_samples", "time_fit_rms"):
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_a_crash_loses_at_most_the_chunk_being_filled(captured, tmp_path):
    """The chunk objects a crash did not let through (here: the last three of the first station,
    its last sidecar kept) are not read as zeros: the station ends at the last complete chunk,
    frames after it are dropped, and everything before is exact."""
    caps, want = captured
    store = Store(f"file://{tmp_path}/store")
    record(store, "rec-2", caps)
    base = Path(store.root) / "sessions" / "rec-2" / "stream" / caps[0].station
    chunks = sorted(base.glob("*.iq"))
    for p in chunks[-3:]:
        p.unlink()
    kept = (len(chunks) - 3) * N
    got = store.open("rec-2")
    s = got.sel(station=caps[0].station)
    assert int(s["n_samples"]) == kept
    np.testing.assert_array_equal(s["iq"].values[:kept], want["iq"].isel(station=0).values[:kept])
    assert int((s["frame_sample"] >= 0).sum()) == kept // FRAME
    # the other station is whole
    other = got.sel(station=caps[1].station)
    assert int(other["n_samples"]) == int(want["n_samples"].values[1])


def test_frames_lost_between_pieces_are_zero_filled(captured, tmp_path):
    """Frames missing between two pieces of one connection keep the sample index linear in time,
    as inside a piece: zeros, marked not received, counted."""
    caps, want = captured
    store = Store(f"file://{tmp_path}/store")
    record(store, "rec-3", caps, drop=(40, 43))
    got = store.open("rec-3").isel(station=0)
    n = int(want["n_samples"].values[0])
    assert int(got["n_samples"]) == n and n // FRAME > 60
    rec = got["frame_received"].values
    assert not rec[40:43].any() and rec[:40].all() and rec[43:n // FRAME].all()
    assert int(got["seq_gaps"]) == 3
    assert not got["iq"].values[40 * FRAME:43 * FRAME].any()
    np.testing.assert_array_equal(got["iq"].values[43 * FRAME:n], want["iq"].isel(station=0).values[43 * FRAME:n])
