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
import xarray as xr
import pytest

from sdrlab import model, recording, timing
from sdrlab.acquire import acquire
from sdrlab.capture import Segment
from sdrlab.config import Settings
from sdrlab.demo import demo7_stations
from sdrlab.errors import StorageError
from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
from sdrlab.store import Store
from tests.support.watch import watching_recording

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
        rec = recording.StationRecorder(cap.station, N,
                                        lambda st, k, c, s: store.put_stream(sid, st, k, c, s.to_bytes()))
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


def test_a_finalised_session_keeps_every_frame_record_read_a_station_at_a_time(captured, tmp_path):
    """A recording opens with its frame records still in the store (one dask chunk per station,
    read from that station's sidecars when used), and the session finalised from it holds, station
    by station, exactly the frame records that were captured, in one stored chunk per station."""
    from sdrlab.acquire import finalise

    caps, want = captured
    store = Store(f"file://{tmp_path}/store")
    record(store, "rec-f", caps)
    rec = store.open("rec-f")
    ns, nf = want.sizes["station"], want.sizes["frame"]
    for name in model.FRAME_DTYPES:
        assert rec[name].chunks == ((1,) * ns, (nf,)), name
        assert rec[name].dtype == want[name].dtype, name
    # one station's rows computed alone are that station's record, padding included
    np.testing.assert_array_equal(rec["frame_gps_ns"].isel(station=1).values, want["frame_gps_ns"].values[1])
    session = finalise(store, "rec-f")
    assert session.store_error is None
    got = store.open("rec-f")
    assert got.attrs["recording_state"] == "final"
    assert list(got["station"].values) == [c.station for c in caps]
    for i in range(ns):
        for name in model.FRAME_DTYPES:
            np.testing.assert_array_equal(got[name].isel(station=i).values, want[name].isel(station=i).values,
                                          err_msg=f"{name} of station {i}")
    assert (got["frame_received"].values == want["frame_received"].values).all()
    # the metrics finalising measured read the same frames: the S-meter summary is the captured one
    np.testing.assert_allclose(got["rssi_dbm"].values, want["rssi_dbm"].values)
    refs = json.loads((Path(store.root) / "sessions" / "rec-f" / "refs.json").read_text())["refs"]
    assert sorted(k for k in refs if k.startswith("frame_gps_ns/c/")) == [f"frame_gps_ns/c/{i}/0" for i in range(ns)]


def test_a_crash_loses_at_most_the_chunk_being_filled(captured, tmp_path):
    """The chunk objects a crash did not let through (here: the last three of the first station,
    its last sidecar kept) are not read as zeros: the station ends at the last complete chunk,
    frames after it are dropped, and everything before is exact."""
    caps, want = captured
    store = Store(f"file://{tmp_path}/store")
    record(store, "rec-2", caps)
    whole = store.open("rec-2").attrs["data_version"]
    assert store.open("rec-2").attrs["data_version"] == whole  # the same data: the same version
    base = Path(store.root) / "sessions" / "rec-2" / "stream" / caps[0].station
    chunks = sorted(base.glob("*.iq"))
    for p in chunks[-3:]:
        p.unlink()
    kept = (len(chunks) - 3) * N
    got = store.open("rec-2")
    # a recording's version follows what each station has stored: a report of it says which
    assert got.attrs["data_version"] != whole
    with pytest.raises(StorageError, match=f"not {whole}"):
        store.open("rec-2", version=whole)
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


def test_a_streaming_acquisition_grows_in_the_s3_store_and_is_indexed(s3_server, bucket, tmp_path):
    """Seven stations for 24 s (at speed 10) into the S3 store in 2 s chunks: while it runs the
    session lists as ``recording`` and opens with more samples each time; at the end it is
    committed without copying (its IQ references the chunk objects), measured like a session held
    in memory (the scene's truth), and indexed with its metric time series."""
    from sdrlab.index import find_captures, make_engine
    from sdrlab.index.queries import metric_over_time
    from sdrlab.sim.server import SimServer

    store = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    index = make_engine(f"sqlite:///{tmp_path}/index.db")
    scene = demo7(seed=12)
    rows: list[int] = []

    def look(ds: xr.Dataset) -> tuple[str, int]:
        with index.connect() as c:  # the metric time series is indexed as chunks commit
            rows.append(c.exec_driver_sql("SELECT count(*) FROM interval_metrics").scalar())
        return ds.attrs["recording_state"], int(ds["n_samples"].min())

    with SimServer(scene, base_port=0, speed=10) as sim:
        with watching_recording(store, look) as watched:
            session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, 24.0, settings=SETTINGS, store=store,
                              index=index)
    seen = watched.seen
    assert session.store_error is None and session.index_error is None
    growing = [n for state, n in seen if state == "recording"]
    assert len(growing) >= 3 and growing[-1] > growing[0] > 0, (seen, watched.errors[-3:])
    ds = store.open(session.session_id)
    # whole chunks, never a torn one (but a station's last, once it has ended)
    assert all(n % recording.chunk_samples(2.0) == 0 or n in ds["n_samples"].values for n in growing), seen
    assert ds.attrs["recording_state"] == "final" and session.ok == [rx.id for rx in scene.receivers], \
        session.status().to_dict("index")
    record_ = store.summary(session.session_id)
    assert record_["status"] == "ok" and "pack" not in record_["objects"]
    assert sum(k.endswith(".iq") for k in record_["objects"]) >= 7 * 24 * 12000 // recording.chunk_samples(2.0)
    for rx in scene.receivers:
        truth = scene.truth(rx.id, DEMO7_TUNE_HZ)
        s = ds.sel(station=rx.id)
        assert int(s["n_samples"]) >= 24.0 * rx.sample_rate
        assert float(s["snr_db"]) == pytest.approx(truth["snr_db"], abs=0.5)
        assert float(s["frequency_offset_hz"]) == pytest.approx(truth["frequency_offset_hz"], abs=1.0)
    assert ds.attrs["start_spread_s"] < 512 / 12000 + 1e-3
    assert ds.sizes["interval"] == 3 and bool(np.isfinite(ds["interval_snr_db"]).all())
    assert sorted(find_captures(index)["station_id"]) == sorted(session.ok)
    assert max(rows) >= 7, rows  # while recording: at least an interval of every station
    series = metric_over_time(index, "snr_db", bucket_s=10, source="intervals")
    assert len(series) == 7 * 3
    for rx in scene.receivers:  # every 10 s of every station measures the scene
        truth = scene.truth(rx.id, DEMO7_TUNE_HZ)
        np.testing.assert_allclose(ds["interval_snr_db"].sel(station=rx.id).values[:2], truth["snr_db"], atol=0.7)


def test_sigkill_of_the_acquiring_process_loses_at_most_the_chunk_being_filled(tmp_path, run_sim, monkeypatch):
    """``sdrlab acquire`` killed with SIGKILL at a random moment of a 60 s streaming acquisition:
    the session is there, ``recording``, and opens consistent; each station lost at most the
    chunk it was filling (what the receiver had sent but the store had not: measured on the GPS
    time base against the simulator's count of frames sent); ``sdrlab store finalise`` then
    measures, commits and indexes it, every station ``partial``."""
    from sdrlab.cli import main
    from sdrlab.index import find_captures, make_engine
    from tests.test_cli import _catalog

    chunk_s = 1.0
    n = recording.chunk_samples(chunk_s)
    speed = 4.0
    scene = demo7(seed=13)
    env = {**os.environ, "SDRLAB_PROGRESS": "0", "SDRLAB_STORE": f"file://{tmp_path}/store",
           "SDRLAB_DB": f"sqlite:///{tmp_path}/index.db", "SDRLAB_CHUNK_S": str(chunk_s),
           "SDRLAB_STREAM_ABOVE_S": "0", "SDRLAB_RESCUE": f"file://{tmp_path}/rescue"}
    with run_sim(scene, speed=speed) as sim:
        cat = _catalog(tmp_path, sim.ports)
        p = subprocess.Popen([str(Path(sys.executable).parent / "sdrlab"), "acquire", "--all", "--frequency",
                              str(DEMO7_TUNE_HZ), "--duration", "60", "--catalog", str(cat)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        store = Store(f"file://{tmp_path}/store")
        deadline = time.monotonic() + 60
        # every station's first chunk is in (stream/<station>/<k>.iq): a count of chunk files alone
        # is also reached by six stations while the seventh is still connecting on a loaded machine
        while time.monotonic() < deadline and not (len(store.sessions()) and len(
                {f.parent.name for f in (Path(store.root) / "sessions").rglob("*.iq")}) >= 7):
            time.sleep(0.2)
        time.sleep(random.Random().uniform(0.5, 4.0))  # the first chunks are in: kill at any moment after
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        time.sleep(0.5)
        sent = {r.receiver_id: r for r in sim.streams}
    sid = store.sessions().index[-1]
    assert store.sessions().loc[sid, "status"] == "recording"
    ds = store.open(sid)
    assert ds.attrs["recording_state"] == "recording" and ds.sizes["station"] == 7
    for rx in scene.receivers:
        s = ds.sel(station=rx.id)
        kept = int(s["n_samples"])
        assert kept % n == 0 and kept > 0
        rec = sent[rx.id]
        last_sent_ns = rec.t0_gps_ns + (rec.frames_sent * FRAME) / rx.sample_rate * 1e9
        t0_ns = timing.utc_to_gps_ns(s["start_time"].values, int(ds.attrs["gps_utc_offset_s"]))
        stored_end_ns = t0_ns + kept / float(s["sample_rate"]) * 1e9
        lost_s = (last_sent_ns - stored_end_ns) / 1e9
        # the chunk being filled, the piece the client held (24 frames) and the socket's frames in flight
        assert 0 <= lost_s <= (n + 24 * FRAME + 32 * FRAME) / rx.sample_rate, (rx.id, lost_s)
        np.testing.assert_array_equal(s["frame_received"].values[: kept // FRAME], True)
    for key in ("SDRLAB_STORE", "SDRLAB_DB", "SDRLAB_RESCUE"):
        monkeypatch.setenv(key, env[key])
    assert main(["store", "finalise", "--min-age", "0"]) == 0  # every session left recording
    env_store = Store(f"file://{tmp_path}/store")
    final = env_store.open(sid)
    assert final.attrs["recording_state"] == "final"
    assert set(final["status"].values) == {"partial"}
    assert np.isfinite(final["snr_db"]).all()
    np.testing.assert_array_equal(final["n_samples"].values, ds["n_samples"].values)
    hits = find_captures(make_engine(f"sqlite:///{tmp_path}/index.db"))
    assert len(hits) == 7


def test_a_killed_workers_stations_continue_on_the_other_worker(tmp_path):
    """SIGKILL of one of two dask worker processes mid-way through a streaming acquisition: its
    stations are captured on by the other worker as a new segment after what they had stored (at
    most the chunk in flight lost, nothing captured twice), to the end of the session's window;
    the other stations are untouched; nothing hangs."""
    from distributed import Client

    from sdrlab.acquire import _groups
    from sdrlab.sim.server import SimServer
    from tests.test_acquire import _dask_cluster, _worker_of

    store = Store(f"file://{tmp_path}/store")
    settings = Settings(progress=False, chunk_s=1.0, stream_above_s=0.0)
    with _dask_cluster(tmp_path, n_workers=2, nthreads=4) as (addr, _workers):
        with SimServer(demo7(seed=14), base_port=0, speed=2.0) as sim:
            stations = demo7_stations(sim.ports)[:4]
            box: dict[str, object] = {}
            t = threading.Thread(target=lambda: box.update(s=acquire(
                stations, DEMO7_TUNE_HZ, 24.0, settings=settings, scheduler=addr, store=store, index=False)))
            t.start()
            deadline = time.time() + 60
            def stored_per_station() -> dict[str, int]:
                n: dict[str, int] = {}
                for f in Path(store.root).rglob("*.iq"):
                    n[f.parent.name] = n.get(f.parent.name, 0) + 1
                return n

            # every station has stored chunks before the kill (a total count is also reached while
            # one station is still connecting on a loaded machine: it then has nothing to resume from)
            while time.time() < deadline and (len(stored_per_station()) < len(stations)
                                              or min(stored_per_station().values()) < 3):
                time.sleep(0.1)
            where = _worker_of(addr, "acquire-g")
            assert where, ("the acquisition ended before a worker could be killed (stored chunks per station: "
                           f"{stored_per_station()})")
            victim_addr = sorted(set(where.values()))[0]
            with Client(addr, timeout="5s") as c:
                pids = c.run(os.getpid)
                members = [[st.id for st in g] for _a, g in _groups(c, stations)]
            victims = {sid for k, w in where.items() if w == victim_addr for sid in members[int(k.split("-")[1][1:])]}
            os.kill(pids[victim_addr], signal.SIGKILL)
            t.join(120)
            assert not t.is_alive()
    session = box["s"]
    assert victims and session.store_error is None
    ds = store.open(session.session_id)
    end = np.datetime64(ds.attrs["window_end"].rstrip("Z"))
    for sid, res in session.results.items():
        s = ds.sel(station=sid)
        n_seg = int((s["segment_start"] >= 0).sum())
        if sid not in victims:
            assert res.status == "ok" and n_seg == 1, (sid, res)
            continue
        assert res.status == "partial" and "resumed on another worker" in res.message, (sid, res)
        assert n_seg == 2 and str(s["segment_end"].values[0]).startswith("the dask worker capturing it died")
        first_len, second_start = int(s["segment_length"].values[0]), int(s["segment_start"].values[1])
        assert first_len >= 3 * recording.chunk_samples(1.0) and second_start == first_len
        # in GPS time: the second segment starts after the first ended (nothing twice) and the
        # station reaches the end of the session's window
        t1 = s["segment_t0"].values
        fs = s["segment_fs"].values
        first_end = t1[0] + np.timedelta64(int(first_len / fs[0] * 1e9), "ns")
        assert t1[1] >= first_end
        last_end = t1[1] + np.timedelta64(int(int(s["segment_length"].values[1]) / fs[1] * 1e9), "ns")
        assert abs((last_end - end) / np.timedelta64(1, "s")) < 0.1
        gps = s["frame_gps_ns"].values[: int(s["n_samples"]) // FRAME]
        assert (np.diff(gps[gps >= 0]) > 0).all()


def test_a_frozen_s3_server_mid_stream_loses_nothing(tmp_path, monkeypatch, capsys):
    """The S3 server stops answering (SIGSTOP) while a session streams into it: the capture goes
    on, the chunks it refuses are kept and tried again, the session ends with an error naming the
    timeout and the refused chunks in the rescue directory; once the server is back,
    ``sdrlab store push`` moves them home and finalises the session: every sample of every
    station is there."""
    from sdrlab.cli import main
    from sdrlab.sim.server import SimServer
    from tests.support.servers import SeaweedS3

    srv = SeaweedS3(str(tmp_path / "s3")).start()
    try:
        assert srv.proc is not None
        store = Store("s3://sdrlab-frozen/lab", srv.storage_options, timeout_s=3.0)
        store.health()
        rescue = f"file://{tmp_path}/rescue"
        settings = Settings(progress=False, chunk_s=1.0, stream_above_s=0.0, rescue=rescue)
        with SimServer(demo7(seed=15), base_port=0, speed=4) as sim:
            box: dict[str, object] = {}
            t = threading.Thread(target=lambda: box.update(s=acquire(
                demo7_stations(sim.ports)[:3], DEMO7_TUNE_HZ, 16.0, settings=settings, store=store, index=False)))
            t.start()
            deadline = time.time() + 30
            while time.time() < deadline and len(store.fs.find(f"{store.root}/sessions")) < 6:
                time.sleep(0.2)
            os.killpg(os.getpgid(srv.proc.pid), signal.SIGSTOP)
            try:
                t.join(120)
                assert not t.is_alive()
            finally:
                os.killpg(os.getpgid(srv.proc.pid), signal.SIGCONT)
        session = box["s"]
        assert "no answer within 3 s" in (session.store_error or ""), session.store_error
        assert session.rescued is not None and all(r.status == "ok" for r in session.results.values())
        assert list(Path(tmp_path / "rescue").rglob("*.iq"))
        for key, value in (("SDRLAB_STORE", "s3://sdrlab-frozen/lab"), ("SDRLAB_RESCUE", rescue),
                           ("SDRLAB_S3_ENDPOINT", srv.endpoint_url), ("SDRLAB_S3_KEY", srv.storage_options["key"]),
                           ("SDRLAB_S3_SECRET", srv.storage_options["secret"]),
                           ("SDRLAB_DB", f"sqlite:///{tmp_path}/index.db")):
            monkeypatch.setenv(key, value)
        deadline = time.time() + 60
        while main(["store", "push", session.session_id]) != 0:  # the server may take a moment to come back
            assert time.time() < deadline
            time.sleep(1.0)
        assert f"pushed {session.session_id}" in capsys.readouterr().out
        back = Store("s3://sdrlab-frozen/lab", srv.storage_options).open(session.session_id)
        assert back.attrs["recording_state"] == "final" and set(back["status"].values) == {"ok"}
        for sid in back["station"].values:
            s = back.sel(station=sid)
            assert int(s["n_samples"]) >= 16.0 * 12000 and int((s["segment_start"] >= 0).sum()) == 1
            assert bool(s["frame_received"].values[: int(s["n_samples"]) // FRAME].all())  # nothing lost
        assert not list(Path(tmp_path / "rescue").rglob("*.iq"))
    finally:
        srv.cleanup()


def test_a_sidecar_is_what_its_chunk_saw_even_when_stored_later(captured):
    """Sidecars are serialised in the writer threads, after the capture has gone on: each still
    says what the station's segments were when its chunk filled (the capture's own list changed
    under a queued sidecar, and a stored one claimed samples it did not have)."""
    caps, _ = captured
    cap = caps[0]
    [seg] = cap.segments
    held: list = []
    rec = recording.StationRecorder(cap.station, N, lambda *a: held.append(a), interval_s=None)
    rec.piece(cap, piece(seg, 0, 10), True)  # 5120 samples: chunk 0 (4096) fills
    assert len(held) == 1
    rec.piece(cap, piece(seg, 10, 12, "a reason"), False)
    rec.piece(cap, piece(seg, 12, 30), True)  # a second segment
    meta = recording.read_sidecar(held[0][3].to_bytes())["meta"]
    assert meta["stored"] == N and len(meta["segments"]) == 1
    assert meta["segments"][0]["end"] == "" and meta["segments"][0]["length"] == N
