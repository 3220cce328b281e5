"""SND streaming against the scene's truth: gate, exact IQ bytes, GPS stamps, retunes, pacing."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from sdrlab.sim.scene import Transmitter

from .kiwi_helpers import (
    IQ_FRAME_LEN,
    NS,
    SETUP,
    TUNE_KHZ,
    WEEK_S,
    Kiwi,
    parse_iq,
    run,
    running,
    small_scene,
)


AR_OK = "SET AR OK in=12000 out=44100"
MOD = "SET mod=iq low_cut=-5000 high_cut=5000 freq=9749.000"
AGC = "SET agc=1 hang=0 thresh=-100 slope=6 decay=1000 manGain=50"


@pytest.mark.parametrize(
    "incomplete, completing",
    [
        ((MOD, AGC, "SET AR OK in=12000 out=0"), AR_OK),  # AR OK needs out != 0
        ((MOD, AR_OK, "SET agc=1 hang=0 thresh=-100 slope=6 decay=1000"), AGC),  # agc needs 6 fields
        ((AGC, AR_OK, "SET mod=iq low_cut=0 high_cut=0 freq=9749.000"), MOD),  # no passband
        ((AGC, AR_OK), MOD),  # no freq/mode at all
    ],
)
def test_no_snd_before_cmd_all(incomplete: tuple[str, ...], completing: str) -> None:
    async def body() -> None:
        async with running(small_scene()) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 10)
            await k.auth()
            await k.send(*incomplete, "SET keepalive")
            await k.drain(0.3)
            assert k.snd == [] and srv.streams == []
            await k.send(completing)
            frames = await k.frames(2, timeout=2)
            assert len(frames) == 2 and len(srv.streams) == 1
            await k.close()

    run(body())


@pytest.mark.parametrize("little_endian", [False, True])
def test_iq_frames_exact_against_scene(little_endian: bool) -> None:
    scene = small_scene()
    rx = scene.receiver("rx-a")
    n = 60

    async def body() -> None:
        async with running(scene, record_frames=True) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 12)
            await k.start_iq(little_endian=little_endian)
            raw = await k.frames(n)
            await k.close()
            await asyncio.sleep(0.05)
            rec = srv.streams[0]
            assert rec.receiver_id == "rx-a" and rec.ts == 12 and rec.path == "/12/SND"
            assert rec.tuned_hz == TUNE_KHZ * 1000 and (rec.low_cut, rec.high_cut) == (-5000.0, 5000.0)
            assert rec.little_endian is little_endian and rec.sample_rate == rx.sample_rate
            assert rec.frames is not None and rec.frames[:n] == raw
            truth = scene.stream("rx-a", tuned_hz=rec.tuned_hz, t0_gps_ns=rec.t0_gps_ns,
                                 t_ref_gps_ns=srv.t_ref_gps_ns, low_cut=rec.low_cut, high_cut=rec.high_cut,
                                 stream_seed=rec.stream_seed, agc=rec.agc)
            assert rec.agc.on  # kiwiclient's SET agc=1 ...
            frames = [parse_iq(b) for b in raw]
            for k_, (buf, f) in enumerate(zip(raw, frames)):
                assert len(buf) == IQ_FRAME_LEN
                assert f.seq == k_ + 1
                expected_flags = 0x08 | (0x80 if little_endian else 0) | (0x05 if k_ == 0 else 0)
                assert f.flags & ~0x02 == expected_flags
                assert not f.flags & 0x10
                iq = truth.frame(k_)
                assert bool(f.flags & 0x02) == truth.overflow
                want = iq.astype("<i2" if little_endian else ">i2").tobytes()
                assert buf[20:] == want, f"frame {k_} samples differ"
                assert np.array_equal(f.samples(), iq)
                # the S-meter reads the passband signal before the AGC
                assert f.smeter == truth.smeter
            # the first frame has no GPS data; later stamps follow the real rate from t0
            assert (frames[0].last, frames[0].gpssec, frames[0].gpsnsec) == (0, 0, 0)
            for k_, f in enumerate(frames[1:], start=1):
                stamp = rec.t0_gps_ns + round(512 * k_ * 1e9 / rx.sample_rate)
                assert (f.gpssec, f.gpsnsec) == ((stamp // NS) % WEEK_S, stamp % NS)
            stamps = [f.gpssec * NS + f.gpsnsec for f in frames[1:]]
            step = 512 * 1e9 / rx.sample_rate
            assert all(abs((b - a) - step) <= 1.0 for a, b in zip(stamps, stamps[1:]))
            # the scene's truth: the carrier is in the passband, power as synthesised
            rssi = 10 * math.log10(np.mean([10 ** (f.rssi / 10) for f in frames]))
            t = scene.truth("rx-a", rec.tuned_hz)
            total = 10 * math.log10(10 ** (t["signal_power_dbfs"] / 10) + 10 ** (t["noise_power_dbfs"] / 10))
            assert rssi == pytest.approx(total + scene.full_scale_dbm, abs=0.5)

    run(body())


def test_last_gps_solution_counts_up_and_resets() -> None:
    scene = small_scene(rx_a={"gps_fix_interval_s": 2.0})
    fs = scene.receiver("rx-a").sample_rate
    n = int(7.0 * fs / 512)

    async def body() -> None:
        async with running(scene, speed=50.0, loop_frames=16) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 13)
            await k.start_iq()
            frames = [parse_iq(b) for b in await k.frames(n, timeout=10)]
            await k.close()
            t0 = srv.streams[-1].t0_gps_ns
        lasts = [f.last for f in frames]
        # fixes belong to the receiver: every 2 s of GPS time (phase 0 for receiver 0),
        # whoever is connected; frame 0 carries zeros
        stamps = [(t0 + round(512 * i * 1e9 / fs)) / 1e9 for i in range(n)]
        assert lasts == [0] + [min(252, int(math.fmod(s, 2.0))) for s in stamps[1:]]
        resets = sum(1 for a, b in zip(lasts[1:], lasts[2:]) if b < a)
        assert resets in (3, 4) and max(lasts) == 1

    run(body())


def test_last_gps_solution_caps_at_252() -> None:
    scene = small_scene(rx_a={"gps_fix_interval_s": 1e12})  # no fix for ages: since = GPS time
    fs = scene.receiver("rx-a").sample_rate
    n = int(254.0 * fs / 512)

    async def body() -> None:
        async with running(scene, speed=400.0, loop_frames=4) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 14)
            await k.start_iq()
            raw = await k.frames(n, timeout=20)
            await k.close()
        lasts = [raw_[10] for raw_ in raw]
        assert lasts[0] == 0 and set(lasts[1:]) == {252}

    run(body(), timeout=40)


def test_retune_keeps_seq_and_t0_and_switches_tuning() -> None:
    scene = small_scene()

    async def body() -> None:
        async with running(scene, record_frames=True) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 15)
            await k.start_iq()
            await k.frames(10)
            await k.send("SET mod=iq low_cut=-4000 high_cut=4000 freq=9751.000")
            rec = srv.streams[0]
            await k.until(lambda c: len(rec.retunes) == 1 and len(c.snd) > rec.retunes[0][0] + 10, 10)
            await k.close()
            await asyncio.sleep(0.05)
            rec = srv.streams[0]
            assert len(srv.streams) == 1 and len(rec.retunes) == 1
            at, tuned, lo, hi, mode = rec.retunes[0]
            assert (tuned, lo, hi, mode) == (9_751_000.0, -4000.0, 4000.0, "iq")
            frames = [parse_iq(b) for b in k.snd]
            assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
            assert len(frames) > at + 3
            # new freq + new passband flagged on the first frame after the retune only
            assert frames[at].flags & 0x05 == 0x05
            assert all(f.flags & 0x05 == 0 for f in frames[1:at] + frames[at + 1:])
            before = scene.stream("rx-a", tuned_hz=rec.tuned_hz, t0_gps_ns=rec.t0_gps_ns,
                                  t_ref_gps_ns=srv.t_ref_gps_ns, stream_seed=rec.stream_seed, agc=rec.agc)
            for i in range(at):
                assert k.snd[i][20:] == before.frame(i).astype(">i2").tobytes()
            after = scene.stream("rx-a", tuned_hz=tuned, t0_gps_ns=rec.t0_gps_ns, t_ref_gps_ns=srv.t_ref_gps_ns,
                                 low_cut=lo, high_cut=hi, stream_seed=rec.stream_seed, agc=rec.agc)
            for i in range(at, len(frames)):
                assert k.snd[i][20:] == after.frame(i).astype(">i2").tobytes()
            # stamps continue on the same time line
            fs = rec.sample_rate
            for i, f in enumerate(frames[1:], start=1):
                stamp = rec.t0_gps_ns + round(512 * i * 1e9 / fs)
                assert f.gpssec * NS + f.gpsnsec == stamp % (WEEK_S * NS)

    run(body())


def test_tone_offset_at_receiver() -> None:
    """The carrier shows up at tx_freq - tuned freq in the received IQ (CW transmitter)."""
    scene = small_scene()
    cw = Transmitter(id="tx-cw", latitude=50.2, longitude=8.6, frequency_hz=9_750_000.0, power_dbm=40.0,
                     modulation="cw")
    scene = scene.__class__(transmitters=(cw,), receivers=scene.receivers, seed=3)

    async def body() -> None:
        async with running(scene, speed=50.0) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 16)
            await k.start_iq()
            raw = await k.frames(64)
            await k.close()
        iq = np.concatenate([parse_iq(b).samples() for b in raw]).astype(np.float64)
        z = iq[:, 0] + 1j * iq[:, 1]
        spec = np.abs(np.fft.fft(z)) ** 2
        freqs = np.fft.fftfreq(z.size, 1 / scene.receiver("rx-a").sample_rate)
        assert freqs[int(np.argmax(spec))] == pytest.approx(1000.0, abs=1.0)

    run(body())


def test_speed_pacing() -> None:
    scene = small_scene()
    fs = scene.receiver("rx-a").sample_rate

    async def body() -> None:
        async with running(scene, speed=10.0, loop_frames=8) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 17)
            await k.start_iq()
            assert await k.frames(1)
            loop = asyncio.get_running_loop()
            t0, n0 = loop.time(), len(k.snd)
            await k.drain(1.5)
            rate = (len(k.snd) - n0) / (loop.time() - t0)
            await k.close()
        assert rate == pytest.approx(10.0 * fs / 512, rel=0.2)

    run(body())


def test_adc_overflow_flag() -> None:
    scene = small_scene()
    loud = Transmitter(id="tx-loud", latitude=51.12, longitude=6.66, frequency_hz=9_750_000.0, power_dbm=60.0,
                       modulation="am", mod_index=0.9)
    scene = scene.__class__(transmitters=(loud,), receivers=scene.receivers, seed=5)

    async def body() -> None:
        async with running(scene, record_frames=True) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 18)
            await k.start_iq()
            raw = await k.frames(20)
            await k.close()
            rec = srv.streams[0]
            truth = scene.stream("rx-a", tuned_hz=rec.tuned_hz, t0_gps_ns=rec.t0_gps_ns,
                                 t_ref_gps_ns=srv.t_ref_gps_ns, stream_seed=rec.stream_seed, agc=rec.agc)
            flags = []
            for i, b in enumerate(raw):
                truth.frame(i)
                flags.append(bool(parse_iq(b).flags & 0x02))
                assert flags[-1] == truth.overflow
            assert any(flags)
            # the S-meter reads the antenna power (+12 dBm here): pinned at its +3.4 dBm ceiling
            assert parse_iq(raw[0]).rssi == pytest.approx(3.4, abs=0.05)

    run(body())


def test_mono_frames_in_audio_modes() -> None:
    scene = small_scene()

    async def body() -> None:
        async with running(scene, record_frames=True) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 19)
            await k.auth()
            await k.send(*(c.format(freq=TUNE_KHZ).replace("mod=iq", "mod=usb") for c in SETUP))
            raw = await k.frames(5)
            await k.close()
            rec = srv.streams[0]
            truth = scene.stream("rx-a", tuned_hz=rec.tuned_hz, t0_gps_ns=rec.t0_gps_ns,
                                 t_ref_gps_ns=srv.t_ref_gps_ns, low_cut=rec.low_cut, high_cut=rec.high_cut,
                                 stream_seed=rec.stream_seed, agc=rec.agc)
        for i, b in enumerate(raw):
            assert len(b) == 10 + 1024 and b[:3] == b"SND"
            assert not b[3] & 0x08 and not b[3] & 0x10
            assert int.from_bytes(b[4:8], "little") == i + 1
            assert b[10:] == truth.frame(i)[:, 0].astype(">i2").tobytes()

    run(body())
