"""A server posing as a KiwiSDR (UberSDR's KiwiSDR emulation): the simulator serves one, the real client
recognises it over real sockets, keeps its data and marks its timing as receipt, not GPS."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import pytest

from sdrlab import model, timing
from sdrlab.receivers.kiwisdr import KiwiReceiver
from sdrlab.sim.networks import DEMO7_TUNE_HZ
from sdrlab.sim.scene import Scene
from tests.conftest import receiver_for

UBER = "demo-berlin"


@pytest.fixture
def uber_scene(scene: Scene) -> Scene:
    return scene.replace_receiver(UBER, kind="ubersdr", sample_rate=12000.036)


def capture(rx: KiwiReceiver, duration: float) -> object:
    return asyncio.run(rx.capture(DEMO7_TUNE_HZ, duration))


def status(port: int) -> dict[str, str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read().decode()
    return dict(line.partition("=")[::2] for line in text.splitlines() if line)


def test_status_claims_gps_but_has_no_fixes(run_sim, uber_scene) -> None:
    with run_sim(uber_scene) as sim:
        page = status(sim.ports[UBER])
        kiwi = status(sim.ports["demo-paris"])
    assert page["sdr_hw"].startswith("UberSDR") and page["gps_good"] == "1"
    assert (page["fixes"], page["fixes_min"], page["fixes_hour"], page["gps_date"]) == ("0", "0", "0", "0,0")
    assert kiwi["sdr_hw"].startswith("KiwiSDR") and int(kiwi["fixes_hour"]) > 0


def test_iq_without_gps_block_is_kept_and_timed_by_receipt(run_sim, uber_scene, fast_options) -> None:
    with run_sim(uber_scene, speed=1.0, record_frames=True) as sim:
        cap = capture(receiver_for(sim, uber_scene, UBER, fast_options), 1.5)
        rec = sim.streams[-1]
    assert cap.timing == "receipt" and cap.bad_frames == 0
    assert any("without the GPS block" in e for e in cap.events)
    (seg,) = cap.segments
    assert seg.timing == "receipt" and not seg.fit.ok
    assert cap.n_samples >= 1.5 * 12000
    # the samples are the emulation's frames exactly: 10-byte header, no IQ flag, big-endian I, Q
    sent = [f for f in rec.frames if not f[3] & 0x10][: seg.frame_seq.size]
    assert all(len(f) == 10 + 240 * 4 and f[3] == 0 for f in sent)
    wire = np.concatenate([np.frombuffer(f, dtype=">i2", offset=10).reshape(-1, 2) for f in sent])
    assert np.array_equal(seg.samples, wire)
    assert seg.frame_start.tolist()[:3] == [0, 240, 480]
    # and they are the scene's: the transmitter 1 kHz above the tuned frequency
    assert rec.retunes and rec.retunes[0][1] == DEMO7_TUNE_HZ and rec.retunes[0][4] == "iq"
    z = seg.samples[:, 0] + 1j * seg.samples[:, 1].astype(float)
    spec = np.abs(np.fft.fft(z[: 16384])) ** 2
    assert abs(np.fft.fftfreq(16384, 1 / 12000.036)[int(np.argmax(spec))] - 1000.0) < 1.0
    # receipt time: no earlier than the truth, within the loopback latency of it
    late_ms = (seg.receipt_t0_gps_ns - rec.t0_gps_ns) / 1e6
    assert -1.0 <= late_ms < 200.0
    ds = model.build_dataset([cap], {})
    assert ds["timing"].values.tolist() == ["receipt"]
    assert ds["segment_timing"].values[0, 0] == "receipt"
    assert "without GPS" in str(ds["hw"].values[0])
    assert not np.isnat(ds["start_time"].values[0])
    assert abs(int(timing.utc_to_gps_ns(ds["start_time"].values[0])) - seg.receipt_t0_gps_ns) < 1000


def test_a_real_kiwi_beside_it_keeps_gps_time(run_sim, uber_scene, fast_options) -> None:
    with run_sim(uber_scene, speed=10.0) as sim:
        kiwi = capture(receiver_for(sim, uber_scene, "demo-paris", fast_options), 1.0)
    assert kiwi.timing == "gps" and kiwi.segments[0].fit.ok


def test_tdoa_leaves_it_out_with_the_reason(run_sim, uber_scene, fast_options) -> None:
    """Three GPS-timed Kiwis and the emulation in one session: TDoA uses the three, names the
    fourth and why."""
    from sdrlab.acquire import acquire
    from sdrlab.config import Settings
    from sdrlab.demo import demo7_stations

    with run_sim(uber_scene, speed=10.0) as sim:
        stations = [s for s in demo7_stations(sim.ports)
                    if s.id in ("demo-enschede", "demo-munich", "demo-paris", UBER)]
        session = acquire(stations, DEMO7_TUNE_HZ, 12.0, settings=Settings(progress=False), write=False)
    ds = session.dataset
    assert dict(zip(ds["station"].values, ds["timing"].values))[UBER] == "receipt"
    r = ds.sdr.tdoa()
    assert UBER in r.stations_dropped and "not GPS" in r.stations_dropped[UBER]
    assert sorted(r.stations_used) == ["demo-enschede", "demo-munich", "demo-paris"]
    assert r.position is not None


def test_sigmf_round_trip_keeps_receipt_timing(run_sim, uber_scene, fast_options, tmp_path) -> None:
    from sdrlab.interchange.sigmf import export_sigmf, import_sigmf

    with run_sim(uber_scene, speed=5.0) as sim:
        cap = capture(receiver_for(sim, uber_scene, UBER, fast_options), 0.5)
    ds = model.build_dataset([cap], {}, session_id="uber-1")
    back = import_sigmf(export_sigmf(ds, tmp_path))
    assert back["timing"].values.tolist() == ["receipt"]  # never promoted to GPS time
    assert back["segment_timing"].values[0, 0] == "receipt"
    n = int(ds["n_samples"].values[0])
    assert np.array_equal(back["iq"].values[0, :n], ds["iq"].values[0, :n])
    assert abs(int(timing.utc_to_gps_ns(back["start_time"].values[0])) - cap.segments[0].receipt_t0_gps_ns) < 1000
