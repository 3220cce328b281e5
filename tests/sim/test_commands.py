"""Command formats the simulator accepts the way the server's sscanf does (reference section 2)."""

from __future__ import annotations

import pytest

from sdrlab.sim.session import scanf

from .kiwi_helpers import Kiwi, run, running, small_scene


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("SET auth t=%16ms p=%256ms ipl=%256ms", "SET auth t=kiwi p=", ["kiwi"]),
        ("SET auth t=%16ms p=%256ms ipl=%256ms", "SET auth t=kiwi p=pw ipl=x", ["kiwi", "pw", "x"]),
        # %s skips blanks: an empty p= swallows the next token (hence kiwiclient's p=#)
        ("SET auth t=%16ms p=%256ms ipl=%256ms", "SET auth t=kiwi p= ipl=x", ["kiwi", "ipl=x"]),
        ("SET mod=%16ms low_cut=%lf high_cut=%lf freq=%lf param=%d",
         "SET mod=iq low_cut=-5000 high_cut=5000 freq=10000.000", ["iq", -5000.0, 5000.0, 10000.0]),
        ("SET agc=%d hang=%d thresh=%d slope=%d decay=%d manGain=%d",
         "SET agc=1 hang=0 thresh=-100 slope=6 decay=1000", [1, 0, -100, 6, 1000]),
        ("SET squelch=%d param=%f", "SET squelch=0 max=0", [0]),
        ("SET AR OK in=%d out=%d", "SET AR OK in=12000 out=44100", [12000, 44100]),
        ("SET zoom=%d cf=%f", "SET zoom=3 cf=7000.5", [3, 7000.5]),
        ("SET agc=%d hang=%d", "SET agc=x hang=1", []),
    ],
)
def test_scanf_matches_c_semantics(fmt: str, text: str, expected: list[object]) -> None:
    assert scanf(fmt, text) == expected


def test_misc_commands_are_accepted_and_ignored() -> None:
    async def body() -> None:
        async with running(small_scene()) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 60)
            await k.send("SET options=1")
            await k.start_iq()
            await k.send(
                "SET ident_user=some%20body", "SET geo=Somewhere%2C%20Earth", "SET OVERRIDE inactivity_timeout=0",
                "SERVER DE CLIENT openwebrx.js SND", "SET nb algo=1", "SET de_emp=0", "SET squelch=0 param=0.00",
                "SET compression=1", "SET gen=0 mix=-1", "SET genattn=0", "SET totally_unknown=1", "GARBAGE",
                "SET keepalive\n",
            )
            frames = await k.frames(30)
            assert len(frames) == 30 and not k.closed
            # compression is never applied to IQ: no 0x10, full 2068-byte frames
            assert all(len(f) == 2068 and not f[3] & 0x10 for f in frames)
            await k.close()

    run(body())


def test_empty_password_with_ipl_needs_hash() -> None:
    """``p= ipl=x`` makes ``ipl=x`` the password (sscanf), so no time-limit exemption."""
    scene = small_scene(rx_a={"tlimit_password": "x"})

    async def body() -> None:
        async with running(scene) as srv:
            k = await Kiwi.open(srv.ports["rx-a"], 61)
            await k.send("SET auth t=kiwi p= ipl=x")
            assert (await k.wait_msg("is_local") or "").endswith(",0,0")
            k2 = await Kiwi.open(srv.ports["rx-a"], 62)
            await k2.send("SET auth t=kiwi p=# ipl=X")
            assert (await k2.wait_msg("is_local") or "").endswith(",0,1")
            await k.close()
            await k2.close()

    run(body())
