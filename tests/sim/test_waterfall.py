"""W/F connections: auth, setup MSGs and a spectrum showing the scene's carrier."""

from __future__ import annotations

import asyncio
import math
import struct

import numpy as np
import pytest

from .kiwi_helpers import Kiwi, run, running, small_scene


def _parse_wf(buf: bytes) -> tuple[int, int, int, np.ndarray]:
    assert buf[:3] == b"W/F"
    x_bin, flags_zoom, seq = struct.unpack_from("<III", buf, 4)
    return x_bin, flags_zoom, seq, np.frombuffer(buf, dtype=np.uint8, offset=16)


def test_waterfall_frames_show_the_carrier() -> None:
    scene = small_scene()
    rx = scene.receiver("rx-a")
    tx = scene.transmitters[0]

    async def body() -> None:
        async with running(scene, speed=1.0) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 50, "/{ts}/W/F")
            await k.auth()
            assert await k.wait_msg("wf_setup", 2) is None and "wf_setup" in k.keys()
            assert "client_public_ip" not in k.keys() and k.value("badp") == "0"
            assert k.value("wf_fft_size") == "1024" and k.value("bandwidth") == "30000000"
            await k.send("SET zoom=6 cf=9750.000", "SET maxdb=-10 mindb=-110", "SET wf_speed=4",
                         "SET wf_comp=0", "SET interp=13", "SET keepalive")
            await k.until(lambda c: len(c.other) >= 10, 3)
            loop = asyncio.get_running_loop()
            t0, n0 = loop.time(), len(k.other)
            await k.drain(0.6)
            rate = (len(k.other) - n0) / (loop.time() - t0)
            await k.close()
        frames = [_parse_wf(b) for b in k.other]
        assert all(len(b) == 16 + 1024 for b in k.other)
        assert [f[2] for f in frames] == list(range(1, len(frames) + 1))
        span = 30e6 / 2**6
        start = 9.75e6 - span / 2
        x_bin, flags_zoom, _, _ = frames[0]
        assert flags_zoom & 0xFFFF == 6
        assert x_bin == round(start / 30e6 * (1024 << 14))
        bins = np.mean([f[3].astype(float) for f in frames], axis=0)
        expect_bin = int((tx.frequency_hz - start) // (span / 1024))
        assert int(np.argmax(bins)) == expect_bin
        carrier_dbm = 10 * math.log10(scene.carrier_amplitude(rx, tx) ** 2) + scene.full_scale_dbm
        assert bins[expect_bin] - 255 == pytest.approx(carrier_dbm, abs=1.0)
        noise_dbm = rx.noise_dbfs - 10 * math.log10(rx.sample_rate) + 10 * math.log10(span / 1024) \
            + scene.full_scale_dbm
        floor = np.median(np.delete(bins, expect_bin)) - 255
        assert floor == pytest.approx(noise_dbm - 2.5, abs=1.5)  # mean of log of exponential power
        assert rate == pytest.approx(23.0, rel=0.25)

    run(body())


def test_waterfall_needs_auth_and_shares_ts_with_snd() -> None:
    async def body() -> None:
        async with running(small_scene()) as srv:
            port = srv.ports["rx-a"]
            snd = await Kiwi.open(port, 51)
            wf = await Kiwi.open(port, 51, "/{ts}/W/F")  # same ts: the W/F socket of that client
            await wf.send("SET zoom=0 cf=15000")
            assert await wf.wait_closed()
            assert wf.other == []
            assert await snd.wait_msg("sample_rate")
            await snd.close()

    run(body())
