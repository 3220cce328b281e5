"""The session's common window (sdrlab.receivers.window): who reports, which start wins."""

from __future__ import annotations

import asyncio

import pytest

from sdrlab.receivers.window import Window


def test_the_start_is_the_latest_first_frame_once_everyone_reported():
    w = Window(2.0, ["a", "b", "c"], auto=True)
    w.arrived("a", 1_000)
    w.arrived("c", 5_000)
    assert w.start_ns is None and not w.reported and w.candidate() == 5_000
    w.arrived("a", 9_999)  # a station's first report stands
    assert w.first["a"] == 1_000
    w.arrived("b", 3_000)
    assert w.reported and w.start_ns == 5_000 and w.end_ns == 5_000 + 2_000_000_000


def test_a_station_that_gave_up_or_has_no_gps_time_does_not_hold_or_set_the_start():
    w = Window(1.0, ["a", "b", "c"], auto=True)
    w.arrived("a", None)  # receipt-timed: no GPS time to offer
    w.gave_up("b")
    assert w.start_ns is None
    w.arrived("c", 7)
    assert w.start_ns == 7
    w.arrived("b", 100)  # too late to move it
    assert w.start_ns == 7 and w.first["b"] is None


def test_without_auto_only_the_coordinator_sets_the_start_and_only_once():
    w = Window(1.0, ["a"])
    w.arrived("a", 10)
    assert w.reported and w.start_ns is None
    w.set_start(42)
    w.set_start(43)
    assert w.start_ns == 42


def test_wait_wakes_on_reports_and_times_out():
    async def main() -> tuple[bool, bool, bool]:
        w = Window(1.0, ["a", "b"])
        timed_out = await w.wait(reported=True, timeout=0.05)

        async def later() -> None:
            await asyncio.sleep(0.02)
            w.arrived("a", 1)
            await asyncio.sleep(0.02)
            w.gave_up("b")

        task = asyncio.create_task(later())
        everyone = await w.wait(reported=True, timeout=2.0)
        start_timed_out = await w.wait(timeout=0.05)
        await task
        return timed_out, everyone, start_timed_out

    timed_out, everyone, start_timed_out = asyncio.run(main())
    assert (timed_out, everyone, start_timed_out) == (False, True, False)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_window_needs_a_positive_finite_duration(bad):
    with pytest.raises(ValueError, match="positive"):
        Window(bad, ["a"])
