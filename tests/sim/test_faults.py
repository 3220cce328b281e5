"""Every injectable fault: its documented message and behaviour (fault times are stream seconds)."""

from __future__ import annotations

import asyncio
import urllib.parse

from sdrlab.sim.server import Watchdogs

from .kiwi_helpers import (
    NS,
    Kiwi,
    parse_iq,
    run,
    running,
    small_scene,
    with_faults,
)

FPS = 12001.135 / 512  # rx-a's frames per stream second


def test_redirect_message() -> None:
    scene = with_faults(small_scene(), redirect_to_port=8074)

    async def body() -> None:
        async with running(scene) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 20)
            assert await k.wait_closed()
            assert k.keys() == ["redirect"]
            raw = k.msg_frames[0].decode()
            assert raw == "MSG redirect=" + urllib.parse.quote("http://127.0.0.1:8074", safe="")
            assert urllib.parse.unquote(k.value("redirect") or "") == "http://127.0.0.1:8074"

    run(body())


def test_http_redirect_during_upgrade() -> None:
    async def body() -> None:
        async with running(small_scene()) as probe:
            target = probe.ports["rx-b"]
        scene = with_faults(small_scene(), http_redirect_to_port=target)
        async with running(scene) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.ports["rx-a"])
            writer.write(
                b"GET /kiwi/21/SND HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await writer.drain()
            head = (await asyncio.wait_for(reader.read(), 5)).decode().split("\r\n\r\n")[0].split("\r\n")
            writer.close()
            assert head[0].startswith("HTTP/1.1 307")
            headers = dict(line.split(": ", 1) for line in head[1:])
            assert headers["Location"] == f"http://127.0.0.1:{target}/kiwi/21/SND"
            assert srv.connections("rx-a") == 0

    run(body())


def test_down_message() -> None:
    scene = with_faults(small_scene(), down=True)

    async def body() -> None:
        async with running(scene) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 22)
            assert await k.wait_closed()
            assert k.keys() == ["reason_disabled", "down"]
            assert k.value("down") == "0"
            reason = urllib.parse.unquote(k.value("reason_disabled") or "")
            assert " " in reason and "%" in (k.value("reason_disabled") or "")

    run(body())


def test_busy_fault_counts_connections() -> None:
    scene = with_faults(small_scene(), busy=2)

    async def body() -> None:
        async with running(scene) as srv:
            port = srv.ports["rx-a"]
            for ts in (1, 2):
                k = await Kiwi.open(port, ts)
                assert await k.wait_closed()
                assert k.keys() == ["too_busy"] and k.value("too_busy") == "4"
            ok = await Kiwi.open(port, 3)
            assert await ok.wait_msg("sample_rate")
            await ok.close()
        always = with_faults(small_scene(), busy=-1)
        async with running(always) as srv:
            for ts in (1, 2, 3):
                k = await Kiwi.open(srv.ports["rx-a"], ts)
                assert await k.wait_closed() and k.keys() == ["too_busy"]

    run(body())


def test_badp_fault() -> None:
    """v1.711 kicks only on badp=5; badp=1 ("try again") leaves the socket open for another
    SET auth until the password watchdog closes it."""
    for code in (1, 5):
        scene = with_faults(small_scene(), badp=code)

        async def body() -> None:
            async with running(scene, watchdogs=Watchdogs(auth_timeout_s=1.0)) as srv:
                k = await Kiwi.open(srv.ports["rx-a"], 23)
                await k.auth()
                if code == 5:
                    assert await k.wait_closed()
                else:
                    assert await k.wait_msg("badp") == "1"
                    assert not await k.wait_closed(timeout=0.5)  # still open: may retry auth
                    assert await k.wait_closed(timeout=3.0)  # then password_timeout
                    assert "password_timeout" in k.keys()
                assert k.value("badp") == str(code)
                assert "version_maj" not in k.keys()

        run(body())


def test_abrupt_close_first_connection_only() -> None:
    scene = with_faults(small_scene(), close_after_s=1.0, close_times=1)

    async def body() -> None:
        async with running(scene) as srv:
            port = srv.ports["rx-a"]
            k = await Kiwi.open(port, 24)
            await k.start_iq()
            assert await k.wait_closed(5)
            assert k.close_rcvd is False, "abrupt close: no close frame"
            assert len(k.snd) == int(FPS) + 1  # frames 0..23 cover stream time < 1 s
            again = await Kiwi.open(port, 25)
            await again.start_iq()
            await again.until(lambda c: len(c.snd) > 2 * FPS or c.closed, 10)
            assert not again.closed and len(again.snd) > 2 * FPS
            await again.close()
            await asyncio.sleep(0.05)
            assert [s.close_reason for s in srv.streams] == ["close_fault", "client"]

    run(body())


def test_stall_keeps_socket_open() -> None:
    scene = with_faults(small_scene(), stall_after_s=0.5, stall_times=1)

    async def body() -> None:
        async with running(scene) as srv:
            port = srv.ports["rx-a"]
            k = await Kiwi.open(port, 26)
            await k.start_iq()
            await k.until(lambda c: len(c.snd) >= 12, 10)
            await k.drain(0.4)  # >= 8 more stream seconds
            assert not k.closed
            assert len(k.snd) == 12  # frames 0..11 are before 0.5 s
            await k.send("SET keepalive", "SET mod=iq low_cut=-5000 high_cut=5000 freq=9750.000")
            await k.drain(0.2)
            assert not k.closed and len(k.snd) == 12
            other = await Kiwi.open(port, 27)
            await other.start_iq()
            await other.until(lambda c: len(c.snd) > 2 * FPS or c.closed, 10)
            assert not other.closed and len(other.snd) > 2 * FPS
            await k.close()
            await other.close()

    run(body())


def test_seq_gaps() -> None:
    scene = with_faults(small_scene(), seq_gap_every=5)

    async def body() -> None:
        async with running(scene, record_frames=True) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 28)
            await k.start_iq()
            frames = [parse_iq(b) for b in await k.frames(40)]
            await k.close()
            await asyncio.sleep(0.05)
            rec = srv.streams[0]
        seqs = [f.seq for f in frames]
        assert seqs == [s for s in range(1, 51) if s % 5][:40]
        assert rec.seqs_skipped[:9] == [5, 10, 15, 20, 25, 30, 35, 40, 45]
        assert rec.frames_sent == len(rec.frames or []) >= 40
        for f in frames[1:]:  # stamps follow seq, not the count of frames received
            stamp = rec.t0_gps_ns + round(512 * (f.seq - 1) * 1e9 / rec.sample_rate)
            assert f.gpssec * NS + f.gpsnsec == stamp % (604800 * NS)

    run(body())


def test_inactivity_timeout_retune_resets_and_ipl_exempts() -> None:
    scene = with_faults(small_scene(rx_a={"tlimit_password": "Let-Me-Stay"}), inactivity_after_s=1.0)

    async def body() -> None:
        async with running(scene) as srv:
            port = srv.ports["rx-a"]
            k = await Kiwi.open(port, 29)
            await k.start_iq()
            assert await k.wait_closed(5)
            assert k.value("inactivity_timeout") == "1"
            assert len(k.snd) == int(FPS) + 1
            # a matching time-limit password (ipl=, case-insensitive) exempts
            x = await Kiwi.open(port, 31)
            await x.start_iq(ipl="let-me-stay")
            assert (await x.wait_msg("is_local") or "").endswith(",0,1")
            await x.until(lambda c: len(c.snd) > 3 * FPS or c.closed, 10)
            assert not x.closed and len(x.snd) > 3 * FPS
            await x.close()
            await asyncio.sleep(0.05)
            assert [s.close_reason for s in srv.streams] == ["inactivity_timeout", "client"]

    run(body())


def test_retune_restarts_inactivity_timer() -> None:
    # slower stream so the retune surely lands before the 4 stream-second deadline
    scene = with_faults(small_scene(), inactivity_after_s=4.0)

    async def body() -> None:
        async with running(scene, speed=5.0) as srv:
            r = await Kiwi.open(srv.ports["rx-a"], 30)
            await r.start_iq()
            await r.until(lambda c: len(c.snd) >= 12, 5)  # about 0.5 stream seconds
            await r.send("SET mod=iq low_cut=-5000 high_cut=5000 freq=9750.000")
            assert await r.wait_closed(5)
            assert r.value("inactivity_timeout") == "1"
            rec = srv.streams[0]
            at = rec.retunes[0][0]
            assert len(r.snd) == at + int(4.0 * FPS) + 1  # the timer restarted at the retune
            assert at < 4.0 * FPS

    run(body())


def test_ip_limit_while_streaming_and_at_auth() -> None:
    async def body() -> None:
        async with running(with_faults(small_scene(), ip_limit_after_s=1.0)) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 32)
            await k.start_iq()
            assert await k.wait_closed(3)
            assert urllib.parse.unquote(k.value("ip_limit") or "") == "1,127.0.0.1"
            assert len(k.snd) == int(FPS) + 1
            assert srv.streams[0].close_reason == "ip_limit"
        async with running(with_faults(small_scene(), ip_limit_after_s=0.0)) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 33)
            await k.start_iq()
            assert await k.wait_closed(3)
            assert k.keys() == ["sample_rate", "ip_limit"]
            assert urllib.parse.unquote(k.value("ip_limit") or "").endswith(",127.0.0.1")
            assert k.snd == []

    run(body())


def test_garbage_frames() -> None:
    scene = with_faults(small_scene(), garbage_after_s=0.5)

    async def body() -> None:
        async with running(scene) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 34)
            await k.start_iq()
            await k.until(lambda c: len(c.other) >= 3 and len(c.snd) >= 16)
            await k.close()
        good = [b for b in k.snd if len(b) == 2068]
        bad = [b for b in k.snd if len(b) != 2068]
        assert len(good) == 12 and [parse_iq(b).seq for b in good] == list(range(1, 13))
        assert bad and all(b[:3] == b"SND" for b in bad)
        assert all(b[:3] not in (b"MSG", b"SND", b"W/F", b"EXT", b"DAT") for b in k.other)

    run(body())


def test_gps_disabled_and_no_fix() -> None:
    async def body() -> None:
        async with running(with_faults(small_scene(), gps="disabled")) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 35)
            await k.start_iq()
            frames = [parse_iq(b) for b in await k.frames(30)]
            await k.close()
        assert all((f.last, f.gpssec, f.gpsnsec) == (0, 0, 0) for f in frames)
        async with running(with_faults(small_scene(), gps="no_fix")) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 36)
            await k.start_iq()
            frames = [parse_iq(b) for b in await k.frames(30)]
            await k.close()
        assert frames[0].last == 0 and all(f.last == 255 for f in frames[1:])

    run(body())
