"""Server watchdogs (reference section 8), with durations scaled down through ``Watchdogs``."""

from __future__ import annotations

import asyncio

from sdrlab.sim.server import Watchdogs

from .kiwi_helpers import Kiwi, run, running, small_scene

LONG = 30.0


def test_password_timeout_before_auth() -> None:
    wd = Watchdogs(keepalive_timeout_s=LONG, auth_timeout_s=0.3, hang_keepalives=1000, incomplete_s=LONG)

    async def body() -> None:
        async with running(small_scene(), watchdogs=wd) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            k = await Kiwi.open(srv.ports["rx-a"], 40)
            assert await k.wait_closed(3)
            elapsed = loop.time() - t0
            assert k.keys() == ["sample_rate", "password_timeout"]
            assert 0.25 <= elapsed <= 1.5
            # keepalives before auth reset the same clock
            k2 = await Kiwi.open(srv.ports["rx-a"], 41)
            for _ in range(5):
                await asyncio.sleep(0.1)
                await k2.send("SET keepalive")
            await k2.drain(0.05)
            assert not k2.closed
            await k2.close()

    run(body())


def test_keepalive_expiry_after_auth() -> None:
    # 2 s: far above how long a loaded machine may keep the chatty client from sending (a 0.5 s
    # expiry closed it too in a CI run at load 8)
    wd = Watchdogs(keepalive_timeout_s=2.0, auth_timeout_s=LONG, hang_keepalives=1000, incomplete_s=LONG)

    async def body() -> None:
        async with running(small_scene(), watchdogs=wd) as srv:
            port = srv.ports["rx-a"]
            quiet = await Kiwi.open(port, 42)
            chatty = await Kiwi.open(port, 43)
            await quiet.start_iq()
            await chatty.start_iq()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while loop.time() - t0 < 3.0:
                await chatty.send("SET keepalive")
                await chatty.drain(0.1)
                await quiet.drain(0.01)
            await quiet.wait_closed(1)
            assert quiet.closed and quiet.value("password_timeout") is None
            assert not chatty.closed
            await chatty.close()
            await asyncio.sleep(0.05)
            reasons = {s.ts: s.close_reason for s in srv.streams}
            assert reasons == {42: "keepalive", 43: "client"}

    run(body())


def test_connection_hang() -> None:
    wd = Watchdogs(keepalive_timeout_s=LONG, auth_timeout_s=LONG, hang_keepalives=4, incomplete_s=LONG)

    async def body() -> None:
        async with running(small_scene(), watchdogs=wd) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 44)
            await k.auth()
            await k.send("SET AR OK in=12000 out=44100", *["SET keepalive"] * 4)
            await k.drain(0.4)
            assert not k.closed, "four keepalives are still fine"
            await k.send("SET keepalive")
            assert await k.wait_closed(2)
            assert k.snd == []
            # with the full command set, keepalives are what they should be
            ok = await Kiwi.open(srv.ports["rx-a"], 45)
            await ok.start_iq()
            await ok.send(*["SET keepalive"] * 8)
            await ok.drain(0.4)
            assert not ok.closed and ok.snd
            await ok.close()

    run(body())


def test_incomplete_connection_kicked() -> None:
    wd = Watchdogs(keepalive_timeout_s=LONG, auth_timeout_s=LONG, hang_keepalives=1000, incomplete_s=0.4)

    async def body() -> None:
        async with running(small_scene(), watchdogs=wd) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            k = await Kiwi.open(srv.ports["rx-a"], 46)
            await k.auth()
            await k.send("SET mod=iq low_cut=-5000 high_cut=5000 freq=9749.000")  # no agc, no AR OK
            while not k.closed and loop.time() - t0 < 3:
                await k.send("SET keepalive")
                await k.drain(0.1)
            elapsed = loop.time() - t0
            assert k.closed and 0.35 <= elapsed <= 1.6
            assert srv.connections("rx-a") == 0
            done = await Kiwi.open(srv.ports["rx-a"], 47)
            await done.start_iq()
            await done.drain(0.7)
            assert not done.closed
            await done.close()

    run(body())
