"""Streaming capture of audio receivers (issue 15, item 2: OpenWebRX streamed to the store as in
the continuous-acquisition issue): the recorder's pieces and the capture they assemble into, a
streaming acquisition of simulated OpenWebRX receivers into the S3 store (sample-exact against
the bytes the receivers sent), a session mixing both families streamed, and a SIGKILL of the
acquiring process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdrlab import recording
from sdrlab.acquire import acquire
from sdrlab.capture import AudioSegment, Capture, ReceiverInfo, SmeterReadings, SpectrumRows
from sdrlab.config import Settings
from sdrlab.receivers import owrxwire as ow
from sdrlab.recording_audio import STOPPED, AudioRecorder, assemble_audio
from sdrlab.sim.owrx.networks import ITALY7_TUNE_HZ, italy7
from sdrlab.sim.owrx.server import OwrxSimServer
from sdrlab.stations import load_catalog
from sdrlab.store import Store
from tests.support.watch import watching_recording

SETTINGS = Settings(progress=False, chunk_s=1.0, stream_above_s=0.0)
TUNE = dict(frequency_hz=145.5e6, mode="nfm", low_cut=-4000.0, high_cut=4000.0, center_freq_hz=145.0e6,
            samp_rate_hz=2.4e6, profile="rtl|2m")


def _segment(rng: np.random.Generator, n_msgs: int, t0: int, end: str, **tune: object) -> AudioSegment:
    sizes = rng.integers(100, 1500, n_msgs)
    ends = np.cumsum(sizes).astype(np.int64)
    return AudioSegment(samples=rng.integers(-32768, 32767, int(ends[-1]), dtype=np.int16), nominal_rate_hz=12000.0,
                        message_end=ends, message_receipt_ns=t0 + np.round(ends / 12000 * 1e9).astype(np.int64)
                        + rng.integers(0, 5_000_000, n_msgs), end_reason=end, **{**TUNE, **tune})  # type: ignore[arg-type]


def _capture(seed: int = 1) -> Capture:
    """Two audio segments (a profile change ended the first), waterfall rows of two FFT sizes and
    S-meter readings: what an OpenWebRX client would hold in memory."""
    rng = np.random.default_rng(seed)
    t0 = 1_800_000_000 * 10**9
    a = _segment(rng, 40, t0, "the receiver's profile changed (another listener): rtl|2m -> rtl|70cm")
    b = _segment(rng, 30, t0 + 3 * 10**9, "complete", center_freq_hz=435.0e6, profile="rtl|70cm")
    rows = 50
    db = rng.normal(-90, 3, (rows, 4096)).astype(np.float32)
    db[30:, 2048:] = np.nan  # rows of a smaller FFT, NaN-padded
    spec = SpectrumRows(db=db, receipt_ns=t0 + np.arange(rows, dtype=np.int64) * 111_000_000,
                        center_freq_hz=np.r_[np.full(30, 145.0e6), np.full(20, 435.0e6)],
                        samp_rate_hz=np.full(rows, 2.4e6), fft_size=np.r_[np.full(30, 4096), np.full(20, 2048)])
    sm = SmeterReadings(power=rng.uniform(1e-7, 1e-5, 20), receipt_ns=t0 + np.arange(20, dtype=np.int64) * 250_000_000)
    return Capture("owrx-x", 145.5e6, -4000.0, 4000.0, 6.0, info=ReceiverInfo("127.0.0.1", 8073, audio_rate=12000),
                   audio=[a, b], spectrum=spec, smeter=sm, kind="audio", protocol="openwebrx", hw="OpenWebRX v1.2.2",
                   events=["connected"])


def _stream(cap: Capture, rec: AudioRecorder, seed: int = 2, *, close: bool = True) -> None:
    """Hand the capture to the recorder in random pieces, as the client does (audio by messages,
    rows and readings in between, each segment's last piece with its end)."""
    rng = random.Random(seed)
    spec, sm = cap.spectrum, cap.smeter
    assert spec is not None and sm is not None
    r = s = 0
    for seg in cap.audio:
        m = 0
        first = True
        while m < seg.message_end.size:
            k = min(seg.message_end.size, m + rng.randint(1, 9))
            lo = int(seg.message_end[m - 1]) if m else 0
            hi = int(seg.message_end[k - 1])
            part = replace(seg, samples=seg.samples[lo:hi], message_end=seg.message_end[m:k] - lo,
                           message_receipt_ns=seg.message_receipt_ns[m:k],
                           end_reason=seg.end_reason if k == seg.message_end.size else "continues")
            r2, s2 = min(spec.n_rows, r + rng.randint(0, 6)), min(sm.n, s + rng.randint(0, 3))
            rows = SpectrumRows(spec.db[r:r2, : int(spec.fft_size[r:r2].max(initial=0))], spec.receipt_ns[r:r2],
                                spec.center_freq_hz[r:r2], spec.samp_rate_hz[r:r2], spec.fft_size[r:r2]) if r2 > r else None
            readings = SmeterReadings(sm.power[s:s2], sm.receipt_ns[s:s2]) if s2 > s else None
            rec.piece(cap, part, first, rows, readings)
            first = False
            m, r, s = k, r2, s2
    rest = SpectrumRows(spec.db[r:], spec.receipt_ns[r:], spec.center_freq_hz[r:], spec.samp_rate_hz[r:],
                        spec.fft_size[r:]) if r < spec.n_rows else None
    rec.piece(cap, None, False, rest, SmeterReadings(sm.power[s:], sm.receipt_ns[s:]) if s < sm.n else None)
    if close:
        rec.close(cap)


def _pieces(objects: dict[int, bytes]) -> list[dict]:
    return [recording.read_sidecar(objects[k]) for k in sorted(objects)]


def _assert_same(got: Capture, want: Capture, *, last_end: str | None = None) -> None:
    assert got.kind == "audio" and got.protocol == "openwebrx" and got.hw == want.hw
    assert got.info == want.info and got.events == want.events
    assert len(got.audio) == len(want.audio)
    for g, w in zip(got.audio, want.audio):
        np.testing.assert_array_equal(g.samples, w.samples)
        np.testing.assert_array_equal(g.message_end, w.message_end)
        np.testing.assert_array_equal(g.message_receipt_ns, w.message_receipt_ns)
        for f in ("frequency_hz", "mode", "low_cut", "high_cut", "center_freq_hz", "samp_rate_hz", "profile"):
            assert getattr(g, f) == getattr(w, f), f
        assert g.rate_hz == w.rate_hz and g.receipt_t0_ns == w.receipt_t0_ns
    assert [g.end_reason for g in got.audio[:-1]] == [w.end_reason for w in want.audio[:-1]]
    assert got.audio[-1].end_reason == (last_end or want.audio[-1].end_reason)
    assert got.spectrum is not None and want.spectrum is not None
    np.testing.assert_array_equal(got.spectrum.db, want.spectrum.db)
    for f in ("receipt_ns", "center_freq_hz", "samp_rate_hz", "fft_size"):
        np.testing.assert_array_equal(getattr(got.spectrum, f), getattr(want.spectrum, f))
    assert got.smeter is not None and want.smeter is not None
    np.testing.assert_array_equal(got.smeter.power, want.smeter.power)
    np.testing.assert_array_equal(got.smeter.receipt_ns, want.smeter.receipt_ns)


def test_pieces_assemble_into_the_capture_as_held_in_memory():
    cap = _capture()
    objects: dict[int, bytes] = {}
    rec = AudioRecorder(cap.station, lambda st, k, chunk, side: objects.__setitem__(k, side))
    _stream(cap, rec)
    assert len(objects) > 10 and rec.total == cap.n_samples and rec.rows == 50 and rec.readings == 20
    got = recording.assemble(cap.station, _pieces(objects), 0)  # the stream layout's reader dispatches on kind
    assert got is not None
    _assert_same(got, cap)
    assert recording.stored_samples(_pieces(objects), 0) == cap.n_samples


def test_a_crash_keeps_every_stored_piece_and_says_the_capture_stopped():
    cap = _capture(3)
    objects: dict[int, bytes] = {}
    rec = AudioRecorder(cap.station, lambda st, k, chunk, side: objects.__setitem__(k, side))
    _stream(cap, rec, close=False)
    cut = len(objects) - 3  # the process died: the last pieces never reached the store
    kept = _pieces({k: v for k, v in objects.items() if k < cut})
    got = assemble_audio(cap.station, kept)
    assert got is not None
    stored = sum(int(p["audio"].size) for p in kept)
    assert got.n_samples == stored == kept[-1]["meta"]["stored"]
    # everything stored is there, sample for sample, and the open segment ended with its process
    whole = np.concatenate([a.samples for a in cap.audio])
    np.testing.assert_array_equal(np.concatenate([a.samples for a in got.audio]), whole[:stored])
    assert got.audio[-1].end_reason == STOPPED
    assert assemble_audio(cap.station, kept, recording=True).audio[-1].end_reason == "recording"


def test_a_resumed_station_continues_as_a_new_segment():
    """A dask worker died: the station's capture continues on another worker after its stored
    pieces; the segment it had open ends saying why."""
    cap = _capture(4)
    objects: dict[int, bytes] = {}
    put = lambda st, k, chunk, side: objects.__setitem__(k, side)  # noqa: E731
    first = AudioRecorder(cap.station, put)
    only_a = replace(cap, audio=cap.audio[:1])
    only_a.audio = [replace(cap.audio[0], end_reason="continues")]
    _stream(only_a, first, close=False)  # died with its segment open
    again = AudioRecorder(cap.station, put)
    again.resume(_pieces(objects), 0, "the dask worker capturing it died")
    assert again.resumed_from == cap.audio[0].n_samples
    again.piece(cap, cap.audio[1], True)
    again.close(cap)
    got = assemble_audio(cap.station, _pieces(objects))
    assert got is not None and [a.end_reason for a in got.audio] == ["the dask worker capturing it died", "complete"]
    np.testing.assert_array_equal(got.audio[1].samples, cap.audio[1].samples)


def _reference(stream: bytes) -> np.ndarray:
    """The reference decoding of one encoder's SYNC-framed stream (protocol page section 12)."""
    return np.concatenate([ow.decode_adpcm(stream[i + 8: i + 8 + ow.SYNC_BLOCK],
                                           ow.AdpcmState(*np.frombuffer(stream[i + 4: i + 8], "<i2").tolist()))[0]
                           for i in range(0, len(stream), ow.SYNC_SIZE + ow.SYNC_BLOCK)])


def _assert_exact(audio: np.ndarray, wire: bytes) -> None:
    """``audio`` is, sample for sample, a stretch of the reference decoding of what was sent."""
    ref = _reference(wire)
    head = audio[:256]
    starts = [k for k in range(ref.size - head.size) if ref[k] == head[0] and np.array_equal(ref[k:k + head.size], head)]
    assert starts, "the stored audio's first samples are not in the reference decoding of what was sent"
    np.testing.assert_array_equal(audio, ref[starts[0]:starts[0] + audio.size])


def _italy(sim: OwrxSimServer) -> list:
    return [replace(s, port=sim.ports[s.id]) for s in load_catalog().network("italy7") if s.id in sim.ports]


def test_openwebrx_receivers_stream_into_the_s3_store_sample_exact(s3_server, bucket, tmp_path):
    """Three simulated OpenWebRX receivers for 8 s streamed into the S3 store in 1 s pieces: while
    it runs the session lists as ``recording`` and grows; once finalised its audio is the exact
    decoding of the bytes each receiver sent, its rows and readings all there, its metrics the
    simulator's truth, and the pieces (copies of what the session now holds) are gone."""
    from sdrlab.index import find_captures, make_engine

    store = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    index = make_engine(f"sqlite:///{tmp_path}/index.db")
    receivers = italy7()[:3]
    with OwrxSimServer(receivers, base_port=0) as sim:
        with watching_recording(store, lambda ds: int(ds["n_samples"].min())) as watched:
            session = acquire(_italy(sim), ITALY7_TUNE_HZ, 8.0, settings=SETTINGS, store=store, index=index,
                              stream=True)
        truth = {r.id: sim.truth(r.id) for r in receivers}
    assert session.store_error is None and session.index_error is None
    assert sorted(session.ok) == sorted(r.id for r in receivers), session.status().to_dict("index")
    seen = watched.seen
    assert len(seen) >= 3 and seen[-1] > seen[0] > 0, seen  # it grew in the store while it ran
    ds = store.open(session.session_id)
    assert ds.attrs["recording_state"] == "final" and set(ds["kind"].values) == {"audio"} and "iq" not in ds
    record = store.summary(session.session_id)
    assert record["status"] == "ok" and not [k for k in store.objects(session.session_id) if "/stream/" in k]
    # the audio and rows were written chunk by chunk beside the session, not packed in memory
    assert any(k.startswith("audio.zarr/audio/c/") for k in record["objects"])
    assert any(k.startswith("audio.zarr/spectrum/c/") for k in record["objects"])
    for rx in receivers:
        s = ds.sel(station=rx.id)
        [listened] = [x for x in truth[rx.id].sessions if x.started]
        n = int(s["n_samples"])
        assert n >= 0.9 * 8.0 * 12000
        _assert_exact(s["audio"].values[:n], bytes(listened.audio_wire))
        rows = int((s["spectrum_fft_size"].values > 0).sum())
        assert 0.8 * 8 * 9 <= rows <= listened.fft_rows_sent  # ~9 rows/s, none invented
        assert float(s["total_power_dbfs"]) == pytest.approx(10 * np.log10(listened.truth_power), abs=1.0)
        assert float(s["noise_floor_dbfs_hz"]) == pytest.approx(truth[rx.id].noise_dbfs_hz[listened.sdr_id], abs=1.0)
    assert sorted(find_captures(index)["station_id"]) == sorted(r.id for r in receivers)


def test_a_session_mixing_both_families_streams_each_kind(tmp_path, run_sim):
    """A KiwiSDR and an OpenWebRX receiver (an HF profile) in one streamed session: the IQ
    station's samples stay in their chunk objects (referenced, not copied), the audio station's
    come from its pieces, each station keeps its own kind and timing and is measured by its kind."""
    from sdrlab.demo import demo7_stations
    from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
    from sdrlab.sim.owrx.config import OwrxConfig, Profile
    from sdrlab.sim.owrx.dsp import Band
    from sdrlab.stations import Station

    hf = OwrxConfig(id="owrx-hf", profiles=(Profile("rtlsdr", "hf", "RTL-SDR", "31m", 10_000_000, 2_400_000,
                                                    int(DEMO7_TUNE_HZ), band=Band(-118.0, (), seed=5)),))
    store = Store(f"file://{tmp_path}/store")
    scene = demo7(seed=21)
    with run_sim(scene, speed=1) as kiwi, OwrxSimServer([hf], base_port=0) as sim:
        owrx = Station("owrx-hf", "HF OpenWebRX", "127.0.0.1", sim.ports["owrx-hf"], 45.0, 7.6, protocol="openwebrx")
        stations = [demo7_stations(kiwi.ports)[0], owrx]
        session = acquire(stations, DEMO7_TUNE_HZ, 5.0, settings=SETTINGS, store=store, index=False, stream=True)
        [listened] = [x for x in sim.truth("owrx-hf").sessions if x.started]
    assert sorted(session.ok) == sorted(s.id for s in stations), session.status().to_dict("index")
    ds = store.open(session.session_id)
    kiwi_id = stations[0].id
    assert ds.attrs["protocol"] == "kiwisdr+openwebrx" and ds.attrs["recording_state"] == "final"
    assert ds["kind"].sel(station=[kiwi_id, "owrx-hf"]).values.tolist() == ["iq", "audio"]
    assert ds["timing"].sel(station=[kiwi_id, "owrx-hf"]).values.tolist() == ["gps", "receipt"]
    objects = store.summary(session.session_id)["objects"]
    assert any(k.startswith(f"stream/{kiwi_id}/") and k.endswith(".iq") for k in objects)  # referenced in place
    assert not any("owrx-hf" in k for k in store.objects(session.session_id) if "/stream/" in k)  # pieces gone
    n_iq = int(ds["n_samples"].sel(station=kiwi_id))
    assert n_iq >= 5.0 * 12000 * 0.95 and ds.sizes["sample"] == n_iq
    assert (ds["iq"].sel(station="owrx-hf") == 0).all()  # the audio station's IQ row is padding
    n_audio = int(ds["n_samples"].sel(station="owrx-hf"))
    _assert_exact(ds["audio"].sel(station="owrx-hf").values[:n_audio], bytes(listened.audio_wire))
    truth = scene.truth(kiwi_id, DEMO7_TUNE_HZ)
    assert float(ds["snr_db"].sel(station=kiwi_id)) == pytest.approx(truth["snr_db"], abs=0.5)
    assert float(ds["noise_floor_dbfs_hz"].sel(station="owrx-hf")) == pytest.approx(-118.0, abs=1.0)


def test_sigkill_of_the_acquiring_process_keeps_every_stored_piece(tmp_path, monkeypatch):
    """``sdrlab acquire --network italy7`` streaming, killed with SIGKILL after its first pieces:
    the session is there, ``recording``, and opens with the audio stored so far, sample-exact;
    each station lost at most the piece it was filling; ``sdrlab store finalise`` then commits and
    indexes it, every station ``partial``."""
    from sdrlab import acquire as acquire_mod
    from sdrlab.cli import main
    from sdrlab.index import find_captures, make_engine
    from tests.test_italy7 import _catalog

    piece_s = 1.0
    env = {**os.environ, "SDRLAB_PROGRESS": "0", "SDRLAB_STORE": f"file://{tmp_path}/store",
           "SDRLAB_DB": f"sqlite:///{tmp_path}/index.db", "SDRLAB_CHUNK_S": str(piece_s),
           "SDRLAB_STREAM_ABOVE_S": "0", "SDRLAB_RESCUE": f"file://{tmp_path}/rescue"}
    receivers = italy7()[:3]
    with OwrxSimServer(receivers, base_port=0) as sim:
        cat = _catalog(tmp_path, {**{s.id: 1 for s in load_catalog().network("italy7")}, **sim.ports})
        ids = [r.id for r in receivers]
        p = subprocess.Popen([sys.executable, "-m", "sdrlab", "acquire", *sum((["--station", i] for i in ids), []),
                              "--frequency", str(ITALY7_TUNE_HZ), "--duration", "60", "--catalog", str(cat)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        store = Store(f"file://{tmp_path}/store")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(store.sessions()) and len(
                {f.parent.name for f in (Path(store.root) / "sessions").rglob("000002.npz")}) >= 3):
            time.sleep(0.2)
        time.sleep(random.Random().uniform(0.5, 3.0))
        os.killpg(p.pid, signal.SIGKILL)
        out = p.communicate(timeout=10)[0].decode(errors="replace")
        time.sleep(0.5)
        truth = {r.id: sim.truth(r.id) for r in receivers}
    sid = store.sessions().index[-1]
    assert store.sessions().loc[sid, "status"] == "recording", out
    ds = store.open(sid)
    assert ds["audio"].chunks is not None  # read from the pieces when computed, not held
    ds = ds.load()  # finalising removes the pieces this view reads from (the session then holds them)
    assert ds.attrs["recording_state"] == "recording" and ds.sizes["station"] == 3
    for rx in receivers:
        s = ds.sel(station=rx.id)
        [listened] = [x for x in truth[rx.id].sessions if x.started]
        kept = int(s["n_samples"])
        _assert_exact(s["audio"].values[:kept], bytes(listened.audio_wire))
        sent = listened.audio_samples
        # lost: the piece being filled, the messages in flight and the pre-window samples not kept
        assert 0 < sent - kept <= (piece_s + 1.5) * 12000, (rx.id, sent, kept)
    for key in ("SDRLAB_STORE", "SDRLAB_DB", "SDRLAB_RESCUE"):
        monkeypatch.setenv(key, env[key])
    assert main(["store", "finalise", "--min-age", "0"]) == 0
    final = Store(f"file://{tmp_path}/store").open(sid)
    assert final.attrs["recording_state"] == "final" and set(final["status"].values) == {"partial"}
    np.testing.assert_array_equal(final["n_samples"].values, ds["n_samples"].values)
    np.testing.assert_array_equal(final["audio"].values, ds["audio"].values)
    assert set(final["audio_segment_end"].values[:, 0]) == {acquire_mod.STOPPED}
    assert len(find_captures(make_engine(f"sqlite:///{tmp_path}/index.db"))) == 3

