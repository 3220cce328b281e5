"""The real KiwiSDR client against the simulator over real sockets, measured against the scene."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from sdrlab import timing
from sdrlab.errors import (
    ReceiverAuthError,
    ReceiverBusy,
    ReceiverDown,
    ReceiverLimitError,
    ReceiverProtocolError,
    ReceiverUnreachable,
)
from sdrlab.receivers import kiwiwire as kw
from sdrlab.receivers.kiwisdr import KiwiReceiver, next_ts
from sdrlab.sim.networks import DEMO7_TUNE_HZ
from sdrlab.sim.scene import Faults
from tests.conftest import exact_clocks, receiver_for

RX = "demo-berlin"


def capture(rx: KiwiReceiver, duration: float = 1.0, freq: float = DEMO7_TUNE_HZ):  # type: ignore[no-untyped-def]
    return asyncio.run(rx.capture(freq, duration))


def wire_samples(frames: list[bytes]) -> np.ndarray:
    """Samples of recorded frames decoded independently of the client, per the flag 0x80."""
    out = []
    for f in frames:
        dt = "<i2" if f[3] & 0x80 else ">i2"
        out.append(np.frombuffer(f, dtype=dt, offset=20).astype(np.int16).reshape(-1, 2))
    return np.concatenate(out)


@pytest.mark.parametrize("little_endian", [False, True], ids=["big-endian", "little-endian"])
def test_frames_byte_exact(run_sim, scene, fast_options, little_endian):
    with run_sim(scene, speed=20, record_frames=True) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options, little_endian=little_endian), 1.0)
        rec = sim.streams[-1]
    assert len(cap.segments) == 1
    seg = cap.segments[0]
    n_frames = seg.frame_seq.size
    assert rec.little_endian is little_endian
    le = [bool(f[3] & 0x80) for f in rec.frames]
    if little_endian:  # frames the server sent before it took SET little-endian (in flight on a loaded
        k = le.index(True)  # host) are big-endian, as a real KiwiSDR's are; from the switch on, all little
        assert all(le[k:]) and k < len(le) // 2, k
    else:
        assert not any(le)
    assert len(rec.frames) >= n_frames
    sent = rec.frames[:n_frames]
    # every header field and every sample, exactly as sent
    assert np.array_equal(seg.samples, wire_samples(sent))
    assert [int.from_bytes(f[4:8], "little") for f in sent] == seg.frame_seq.tolist()
    assert seg.frame_seq[0] == 1
    assert [f[3] for f in sent] == seg.frame_flags.tolist()
    assert np.allclose(seg.frame_rssi_dbm, [kw.smeter_to_dbm(int.from_bytes(f[8:10], "big")) for f in sent])
    assert seg.frame_gps_ns[0] == -1  # the first frame carries zero stamps
    assert [f[10] for f in sent] == seg.frame_last_gps.tolist()
    tow = [(int.from_bytes(f[12:16], "little"), int.from_bytes(f[16:20], "little")) for f in sent]
    got = [(int(g // 10**9) % 604800, int(g % 10**9)) if g >= 0 else (0, 0) for g in seg.frame_gps_ns]
    assert got == tow
    # samples are what the scene synthesises for this stream
    src = scene.stream(RX, tuned_hz=rec.tuned_hz, t0_gps_ns=rec.t0_gps_ns, t_ref_gps_ns=sim.t_ref_gps_ns,
                       low_cut=rec.low_cut, high_cut=rec.high_cut, stream_seed=rec.stream_seed)
    expect = np.concatenate([src.frame(k) for k in range(n_frames)])
    assert np.array_equal(seg.samples, expect)


def test_time_fit_matches_scene(run_sim, scene, fast_options):
    scene = exact_clocks(scene)
    with run_sim(scene, speed=20) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options), 6.0)
        rec = sim.streams[-1]
    seg = cap.segments[0]
    assert seg.fit.ok, seg.fit
    duration = seg.n_samples / seg.fit.fs
    truth_fs = scene.receiver(RX).sample_rate
    # rate good enough that the time error over the whole capture stays under 1 us
    assert abs(seg.fit.fs - truth_fs) / truth_fs * duration < 1e-6
    assert abs(seg.fit.t0_gps_ns - rec.t0_gps_ns) < 1_000
    assert seg.fit.residual_rms_s < 1e-6
    # UTC of sample 0 per section 7 (GPS - 18 s)
    want = timing.gps_ns_to_utc(rec.t0_gps_ns, 18)
    assert abs(int((cap.utc(seg.fit.t0_gps_ns) - want) / np.timedelta64(1, "ns"))) < 1_000
    assert cap.sample_rate == seg.fit.fs
    assert cap.info is not None and cap.info.version == "1.711"
    assert cap.info.rx_chans == scene.receiver(RX).rx_chans
    rxs = scene.receiver(RX)
    assert cap.info.position == pytest.approx((rxs.latitude, rxs.longitude), abs=1e-4)


def test_time_fit_with_stamp_errors(run_sim, scene, fast_options):
    """Stamps that err by microseconds, one error per GPS fix (the receiver's clock model): the fit
    scatters by that much and its start time is good to a few of it."""
    sigma = 2e-6
    scene = scene.replace_receiver(RX, gps_jitter_s=sigma, gps_fix_interval_s=1.0)
    with run_sim(scene, speed=20) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options), 12.0)
        rec = sim.streams[-1]
    seg = cap.segments[0]
    assert seg.fit.ok and seg.fit.n_stamps >= 8
    assert 0.3 * sigma < seg.fit.residual_rms_s < 2.0 * sigma
    assert abs(seg.fit.t0_gps_ns - rec.t0_gps_ns) < 3 * sigma * 1e9
    truth_fs = scene.receiver(RX).sample_rate
    assert abs(seg.fit.fs - truth_fs) / truth_fs * 12.0 < 4 * sigma


def test_gps_utc_offset_is_configurable(run_sim, scene, fast_options):
    scene = exact_clocks(scene)
    with run_sim(scene, speed=20) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options, gps_utc_offset_s=17), 1.0)
        rec = sim.streams[-1]
    got = cap.utc(cap.segments[0].fit.t0_gps_ns)
    assert abs(int((got - timing.gps_ns_to_utc(rec.t0_gps_ns, 17)) / np.timedelta64(1, "ns"))) < 1_000


def test_keepalive_keeps_connection_open(run_sim, scene, fast_options):
    """Keepalives about every interval: with a 0.6 s server keepalive watchdog and a client
    interval of 0.15 s, a 3 s (wall) capture is never kicked."""
    from sdrlab.sim.server import Watchdogs

    with run_sim(scene, speed=1.0, watchdogs=Watchdogs(keepalive_timeout_s=0.6)) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options, keepalive_interval=0.15), 3.0)
    assert len(cap.segments) == 1
    assert cap.n_samples >= 3.0 * scene.receiver(RX).sample_rate


def test_busy_then_free_retries(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(busy=2))
    with run_sim(sc) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 0.5)
    assert sum("busy" in e for e in cap.events) == 2
    assert cap.n_samples >= 0.5 * 12001


def test_always_busy_gives_up_with_typed_error(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(busy=-1))
    with run_sim(sc) as sim:
        with pytest.raises(ReceiverBusy, match="busy") as ei:
            capture(receiver_for(sim, sc, RX, fast_options, busy_retries=2), 0.5)
    assert ei.value.station == RX
    assert ei.value.partial is not None and ei.value.partial.n_samples == 0


@pytest.mark.parametrize("kind", ["msg", "http"])
def test_redirect_is_followed(run_sim, scene, fast_options, kind):
    with run_sim(scene) as sim:
        target = sim.ports["demo-paris"]
        f = Faults(redirect_to_port=target) if kind == "msg" else Faults(http_redirect_to_port=target)
        sim.set_faults(RX, f)
        cap = capture(receiver_for(sim, scene, RX, fast_options), 0.5)
        rec = sim.streams[-1]
    assert cap.info is not None and cap.info.port == target
    assert rec.receiver_id == "demo-paris"
    assert any("redirected" in e for e in cap.events)


@pytest.mark.parametrize(
    ("faults", "error", "pattern"),
    [
        (Faults(badp=1), ReceiverAuthError, "badp=1"),
        (Faults(badp=5), ReceiverAuthError, "badp=5"),
        (Faults(down=True), ReceiverDown, "down"),
        (Faults(ip_limit_after_s=0), ReceiverLimitError, "ip_limit"),
    ],
    ids=["badp1", "badp5", "down", "ip_limit-at-auth"],
)
def test_fatal_conditions_stop_without_retry(run_sim, scene, fast_options, faults, error, pattern):
    sc = scene.with_faults(demo_berlin=faults)
    with run_sim(sc) as sim:
        with pytest.raises(error, match=pattern) as ei:
            capture(receiver_for(sim, sc, RX, fast_options), 0.5)
        assert sim.connection_count(RX) == 1  # no retry
    assert RX in str(ei.value)


def test_wrong_password_is_auth_error_and_right_one_works(run_sim, scene, fast_options):
    sc = scene.replace_receiver(RX, password="s3cret-pw")
    with run_sim(sc) as sim:
        with pytest.raises(ReceiverAuthError) as ei:
            capture(receiver_for(sim, sc, RX, fast_options, password="wrong"), 0.5)
        assert "s3cret-pw" not in str(ei.value) and "wrong" not in str(ei.value)
        cap = capture(receiver_for(sim, sc, RX, fast_options, password="s3cret-pw"), 0.5)
    assert cap.n_samples > 0
    assert "s3cret-pw" not in repr(fast_options.__class__(password="s3cret-pw"))


def test_ip_limit_midstream_keeps_what_arrived(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(ip_limit_after_s=0.5))
    with run_sim(sc, speed=5) as sim:
        with pytest.raises(ReceiverLimitError) as ei:
            capture(receiver_for(sim, sc, RX, fast_options), 3.0)
        sent = sim.streams[-1].frames_sent
    part = ei.value.partial
    assert part is not None and part.n_samples > 0
    assert part.segments[0].frame_received.sum() == sent  # nothing received is lost


@pytest.mark.parametrize(
    "faults",
    [Faults(close_after_s=0.5), Faults(stall_after_s=0.5), Faults(inactivity_after_s=0.5)],
    ids=["abrupt-close", "stall", "inactivity"],
)
def test_interruptions_reconnect_as_new_segment(run_sim, scene, fast_options, faults):
    sc = scene.with_faults(demo_berlin=faults)
    with run_sim(sc, speed=5) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 2.0)
        recs = [r for r in sim.streams if r.receiver_id == RX]
    # close and stall hit the first connection only; the inactivity kick every 0.5 s of stream
    expected = 4 if faults.inactivity_after_s else 2
    assert len(cap.segments) == len(recs) == expected
    # everything the simulator sent before each interruption arrived and was kept
    for seg, rec in zip(cap.segments[:-1], recs[:-1]):
        assert seg.frame_received.sum() == rec.frames_sent
    assert cap.n_samples >= 2.0 * scene.receiver(RX).sample_rate
    for seg, rec in zip(cap.segments, recs):
        assert seg.fit.ok
        assert abs(seg.fit.t0_gps_ns - rec.t0_gps_ns) < 1_000
    assert any("reconnect" in e for e in cap.events)


def test_inactivity_exemption_with_time_limit_password(run_sim, scene, fast_options):
    sc = scene.replace_receiver(RX, tlimit_password="tl-pw", faults=Faults(inactivity_after_s=0.3))
    with run_sim(sc, speed=5) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options, tlimit_password="tl-pw"), 1.5)
    assert len(cap.segments) == 1


def test_seq_gaps_are_tracked_and_zero_filled(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(seq_gap_every=10))
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 2.0)
        rec = sim.streams[-1]
    seg = cap.segments[0]
    skipped = [s for s in rec.seqs_skipped if s <= int(seg.frame_seq[-1])]
    assert skipped
    assert seg.missing_frames == len(skipped)
    missing_seqs = seg.frame_seq[~seg.frame_received].tolist()
    assert missing_seqs == skipped
    for s in skipped:
        k = s - int(seg.frame_seq[0])
        assert not seg.samples[k * 512 : (k + 1) * 512].any()
    assert seg.fit.ok and abs(seg.fit.t0_gps_ns - rec.t0_gps_ns) < 1_000


@pytest.mark.parametrize(("mode", "status"), [("disabled", "no GPS timestamps"), ("no_fix", "no GPS clock")])
def test_without_gps_time_no_fit_is_claimed(run_sim, scene, fast_options, mode, status):
    sc = scene.with_faults(demo_berlin=Faults(gps=mode))  # type: ignore[arg-type]
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 1.0)
    seg = cap.segments[0]
    assert not seg.fit.ok and status in seg.fit.status
    assert (seg.frame_gps_ns == -1).all()
    # the announced rate stands in for the unmeasured one
    assert cap.sample_rate == pytest.approx(scene.receiver(RX).announced_sample_rate, abs=1e-6)


def test_legacy_combined_message(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(legacy_msgs=True))
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 1.0)
    assert cap.info is not None and cap.info.audio_rate == 12000
    assert cap.segments[0].fit.ok
    assert cap.n_samples >= 12001


def test_wide_20250_mode(run_sim, scene, fast_options):
    sc = scene.replace_receiver(RX, audio_rate=20250, sample_rate=20251.094, rx_chans=3)
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 1.0)
    assert cap.info is not None and cap.info.audio_rate == 20250
    assert cap.sample_rate == pytest.approx(20251.094, abs=1e-3)
    assert cap.n_samples >= 20251


def test_garbage_is_a_protocol_error_keeping_good_data(run_sim, scene, fast_options):
    sc = scene.with_faults(demo_berlin=Faults(garbage_after_s=0.5))
    with run_sim(sc, speed=5) as sim:
        with pytest.raises(ReceiverProtocolError, match="garbage") as ei:
            capture(receiver_for(sim, sc, RX, fast_options), 5.0)
    part = ei.value.partial
    assert part is not None and part.n_samples > 0 and part.segments[0].fit.ok


def test_unreachable_receiver(fast_options):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    rx = KiwiReceiver("nowhere", "127.0.0.1", port, options=replace(fast_options, connect_retries=1))
    with pytest.raises(ReceiverUnreachable, match=f"127.0.0.1:{port}"):
        capture(rx, 0.5)


def test_a_connection_closed_during_the_upgrade_is_one_clear_error_and_no_asyncio_noise(fast_options, caplog):
    """A server that accepts and closes at once (an overloaded or refusing host): the client
    retries, then names the receiver; asyncio logs no "Future exception was never retrieved"
    (each refused attempt used to leave one)."""
    import gc
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def refuse() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.recv(4096)  # the upgrade request
            conn.close()

    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    try:
        rx = KiwiReceiver("refusing", "127.0.0.1", port, options=replace(fast_options, connect_retries=3))
        with caplog.at_level("ERROR", logger="asyncio"):
            with pytest.raises(ReceiverUnreachable, match=f"127.0.0.1:{port}"):
                capture(rx, 0.5)
            gc.collect()
    finally:
        stop.set()
        t.join(2)
        srv.close()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_never_more_connections_than_channels(run_sim, scene, fast_options):
    """Two captures from one receiver with a single channel: the client queues the second, so
    the simulator never answers too_busy."""
    sc = scene.replace_receiver(RX, rx_chans=1)
    results = []
    with run_sim(sc, speed=10) as sim:
        def one() -> None:
            results.append(capture(receiver_for(sim, sc, RX, fast_options, busy_retries=0), 0.5))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sim.max_connections(RX) == 1
    assert len(results) == 2
    assert not any("busy" in e for c in results for e in c.events)


def test_ts_unique_across_threads():
    seen: list[int] = []

    def grab() -> None:
        seen.extend(next_ts() for _ in range(1000))

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4000


def test_repeated_short_segments_give_up_but_long_ones_never_do(run_sim, scene, fast_options):
    """Inactivity kicks every 0.5 s of stream: with long_segment_s=0.4 each segment counts as
    progress and the capture completes; with long_segment_s=10 they are short and, after
    reconnect_retries in a row, the client stops with ReceiverStalled keeping every segment."""
    from sdrlab.errors import ReceiverStalled

    sc = scene.with_faults(demo_berlin=Faults(inactivity_after_s=0.5))
    with run_sim(sc, speed=10) as sim:
        ok = capture(receiver_for(sim, sc, RX, fast_options, reconnect_retries=2, long_segment_s=0.4), 3.0)
        assert len(ok.segments) == 6
        with pytest.raises(ReceiverStalled, match="in a row") as ei:
            capture(receiver_for(sim, sc, RX, fast_options, reconnect_retries=2, long_segment_s=10), 3.0)
    assert len(ei.value.partial.segments) == 3


def test_reconnects_without_data_are_bounded_after_a_long_segment(run_sim, scene, fast_options):
    """A long first segment, then a receiver that kicks every connection before any frame: the
    budget of reconnects in a row still runs out (the review's endless-loop case)."""
    from sdrlab.errors import ReceiverStalled

    sc = scene.with_faults(demo_berlin=Faults(close_after_s=1.0, close_times=1))
    with run_sim(sc, speed=5) as sim:
        def switch() -> None:
            while not sim.streams:
                threading.Event().wait(0.01)
            sim.set_faults(RX, Faults(inactivity_after_s=0))

        t = threading.Thread(target=switch)
        t.start()
        with pytest.raises(ReceiverStalled, match="in a row") as ei:
            capture(receiver_for(sim, sc, RX, fast_options, reconnect_retries=3, long_segment_s=0.5), 10.0)
        t.join()
        assert sim.connection_count(RX) <= 5
    part = ei.value.partial
    assert part.segments and part.segments[0].n_samples >= 0.9 * scene.receiver(RX).sample_rate


def test_sample_rate_after_ar_ok_order(run_sim, scene, fast_options):
    """kiwiclient's test-server order: sample_rate arrives in its own frame only after SET AR OK."""
    sc = scene.with_faults(demo_berlin=Faults(sample_rate_after_ar=True))
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options), 1.0)
    assert cap.segments[0].fit.ok and cap.n_samples >= 12001


def test_measured_rate_is_the_true_rate_not_the_announced_one(run_sim, scene, fast_options):
    scene = exact_clocks(scene)
    rx = scene.receiver(RX)
    assert abs(rx.announced_sample_rate - rx.sample_rate) > 0.005  # the scene makes them differ
    with run_sim(scene, speed=20) as sim:
        cap = capture(receiver_for(sim, scene, RX, fast_options), 3.0)
    assert cap.info is not None and cap.info.sample_rate == pytest.approx(rx.announced_sample_rate, abs=1e-6)
    assert cap.sample_rate == pytest.approx(rx.sample_rate, abs=1e-4)


def test_passwords_with_spaces_and_percent_are_encoded(run_sim, scene, fast_options):
    pw, tl = "two words 100%41", "t l%"
    sc = scene.replace_receiver(RX, password=pw, tlimit_password=tl)
    with run_sim(sc, speed=20) as sim:
        cap = capture(receiver_for(sim, sc, RX, fast_options, password=pw, tlimit_password=tl), 0.5)
    assert cap.n_samples > 0


@pytest.mark.parametrize(
    ("msg", "pattern"),
    [("sample_rate=nan", "sample_rate"), ("sample_rate=-5", "sample_rate"), ("badp=x", "badp"),
     ("rx_chans=four", "rx_chans")],
)
def test_malformed_msg_values_are_protocol_errors(fast_options, msg, pattern):
    """A fake receiver (the websockets library) that answers the auth with a malformed value."""
    import websockets.asyncio.server as wss

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.recv()
        await ws.send(b"MSG audio_init=0 audio_rate=12000 " + msg.encode())
        await asyncio.sleep(2)

    async def main():  # type: ignore[no-untyped-def]
        async with wss.serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            rx = KiwiReceiver("fake", "127.0.0.1", port, options=fast_options)
            return await rx.capture(DEMO7_TUNE_HZ, 0.5)

    with pytest.raises(ReceiverProtocolError, match=pattern):
        asyncio.run(main())


class _Gate:
    """A TCP proxy on loopback in front of a simulated receiver: passes connections through, or
    (``refusing``) takes each one and closes it after reading the upgrade request, as a receiver
    host that is rebooting or overloaded does; ``upgrade_delay_s`` holds each upgrade request that
    long before passing it on (a slow host or network)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.refusing = False
        self.upgrade_delay_s = 0.0
        self.refused = 0
        self.passed = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if self.refusing:
            self.refused += 1
            writer.close()
            return
        self.passed += 1
        await asyncio.sleep(self.upgrade_delay_s)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        up_w.write(request)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _gated(sim, sc, fast_options, **changes):  # type: ignore[no-untyped-def]
    rx = receiver_for(sim, sc, RX, fast_options, **changes)
    gate = _Gate(rx.port)
    rx.port = gate.port
    return rx, gate


def test_a_receiver_slow_to_take_a_new_connection_is_waited_for(run_sim, scene, fast_options):
    """The first connection is dropped after 0.5 s, then the receiver refuses new connections for
    1.5 s (many more attempts than ``connect_retries``, 2 here): having delivered, the client keeps
    trying for as long as the rest of the capture, so the capture completes as two segments with
    only the outage missing, instead of ending with ReceiverUnreachable."""
    sc = exact_clocks(scene).with_faults(demo_berlin=Faults(close_after_s=0.5, close_times=1))
    with run_sim(sc, speed=1) as sim:
        rx, gate = _gated(sim, sc, fast_options)
        try:
            def outage() -> None:
                while not sim.streams or sim.streams[0].close_reason is None:
                    threading.Event().wait(0.01)
                gate.refusing = True
                threading.Event().wait(1.5)
                gate.refusing = False

            t = threading.Thread(target=outage)
            t.start()
            cap = capture(rx, 3.0)
            t.join()
        finally:
            gate.close()
        recs = [r for r in sim.streams if r.receiver_id == RX]
    fs = scene.receiver(RX).sample_rate
    assert gate.refused > fast_options.connect_retries + 1
    assert len(cap.segments) == len(recs) == 2
    assert cap.segments[0].frame_received.sum() == recs[0].frames_sent  # nothing received is lost
    assert cap.n_samples >= 3.0 * fs
    # the second segment starts after the outage: the gap between them is the outage, named in time
    gap_s = (cap.segments[1].fit.t0_gps_ns - cap.segments[0].fit.t0_gps_ns) / 1e9 - cap.segments[0].n_samples / fs
    assert 1.4 < gap_s < 3.0
    assert sum("attempt" in e for e in cap.events) == gate.refused


def test_a_slow_upgrade_is_waited_for_not_counted_as_a_drop(run_sim, scene, fast_options):
    """A receiver (or network) that answers the WebSocket upgrade 1.5 s late: the client waits for
    it (its connect timeout, not the delay, bounds the wait) and the capture is one segment."""
    sc = exact_clocks(scene)
    with run_sim(sc, speed=1) as sim:
        rx, gate = _gated(sim, sc, fast_options, connect_retries=0)
        gate.upgrade_delay_s = 1.5
        try:
            cap = capture(rx, 1.0)
        finally:
            gate.close()
    assert gate.passed == 1 and len(cap.segments) == 1
    assert not [e for e in cap.events if "attempt" in e]
    assert cap.n_samples >= scene.receiver(RX).sample_rate


def test_a_stalled_receiver_that_stays_away_ends_partial_with_its_gap_named(run_sim, scene, fast_options):
    """The stream stalls after 0.5 s and the receiver then refuses every connection: the stall is
    detected (no frame for ``read_timeout``), the client retries for as long as the rest of the
    capture would have taken and no longer, then stops with ReceiverUnreachable carrying the
    first segment, whose end names the stall."""
    sc = exact_clocks(scene).with_faults(demo_berlin=Faults(stall_after_s=0.5, stall_times=1))
    with run_sim(sc, speed=1) as sim:
        rx, gate = _gated(sim, sc, fast_options)
        try:
            def refuse_after_stall() -> None:
                while not sim.streams:
                    threading.Event().wait(0.01)
                gate.refusing = True

            t = threading.Thread(target=refuse_after_stall)
            t.start()
            t0 = time.monotonic()
            with pytest.raises(ReceiverUnreachable, match="for as long as the rest of the capture") as ei:
                capture(rx, 3.0)
            elapsed = time.monotonic() - t0
            t.join()
        finally:
            gate.close()
    part = ei.value.partial
    assert len(part.segments) == 1 and part.segments[0].end_reason.startswith("stalled: no frame for 0.6 s")
    assert 0.4 * scene.receiver(RX).sample_rate < part.n_samples < 0.7 * scene.receiver(RX).sample_rate
    assert gate.refused > fast_options.connect_retries + 1
    # it kept trying for about the 2.5 s of data still due (plus the stall), not for ever
    assert 3.0 < elapsed < 6.0
