"""sdrlab.tdoa.consistency: station-triangle closures -- timing offsets cancel in them, a bad lag
does not; what a failing triangle implies with three, four and five stations."""

from __future__ import annotations

import numpy as np
import pytest

from sdrlab import tdoa
from sdrlab.tdoa.pipeline import _apply_closures
from sdrlab.tdoa.consistency import closures, judge

from .checks import exact_pairs

FS = 12001.0
FOUR = {"a": (50.0, 5.0), "b": (50.0, 10.0), "c": (52.0, 7.5), "d": (48.5, 7.0)}
FIVE = {**FOUR, "e": (51.0, 12.0)}
TX = (50.4, 7.9)


def _spoil(pairs: list[tdoa.PairLag], name: str, by_s: float) -> None:
    for pl in pairs:
        if pl.name == name:
            pl.lag_s += by_s
            pl.window_lag_s = pl.window_lag_s + by_s


def test_station_delays_cancel_in_every_closure() -> None:
    """Stations 40, -25 and 70 us late: lags far from the geometry, closures all zero."""
    pairs = exact_pairs(FOUR, TX, offsets_s={"a": 40e-6, "b": -25e-6, "d": 70e-6})
    found = closures(pairs, FS)
    assert len(found) == 4 and all(c.ok for c in found)
    assert max(abs(c.closure_s) for c in found) < 0.5e-6
    assert all(c.n_windows == 12 and c.stderr_s > 0 for c in found)
    assert judge(found, 4).notes == []


def test_one_bad_pair_among_four_stations_is_named_and_not_used() -> None:
    pairs = exact_pairs(FOUR, TX)
    _spoil(pairs, "b|c", 30e-6)
    found = closures(pairs, FS)
    assert sorted(c.name for c in found if not c.ok) == ["a|b|c", "b|c|d"]
    dropped: dict[str, str] = {}
    found, notes = _apply_closures(pairs, FS, dropped)
    bad = next(pl for pl in pairs if pl.name == "b|c")
    assert not bad.used and bad.reason is not None and bad.reason.startswith("its station triangles do not close (2 of 2")
    assert all(pl.used for pl in pairs if pl.name != "b|c") and dropped == {}
    assert all(c.ok for c in found) and len(found) == 2  # the triangles left
    assert any(n.startswith("pair b - c not used") for n in notes)


def test_three_stations_cannot_tell_which_lag_is_wrong_and_widen() -> None:
    three = {k: FOUR[k] for k in "abc"}
    pairs = exact_pairs(three, TX)
    _spoil(pairs, "a|c", 12e-6)
    found, notes = _apply_closures(pairs, FS, {})
    assert len(found) == 1 and not found[0].ok
    assert found[0].closure_s == pytest.approx(-12e-6, abs=0.5e-6)
    assert all(pl.used for pl in pairs)
    for pl in pairs:  # each pair gets the variance closure^2 / 3
        assert pl.extra_var_s2 == pytest.approx(found[0].closure_s ** 2 / 3)
    assert "cannot tell which lag is wrong" in notes[0] and "widened by 6.9" in notes[0]
    fix = tdoa.locate(pairs, three, station_sigma_s={k: 0.0 for k in three})
    plain = tdoa.locate(exact_pairs(three, TX), three, station_sigma_s={k: 0.0 for k in three})
    assert fix.ellipse is not None and plain.ellipse is not None
    assert fix.ellipse.semi_major_km > 5 * plain.ellipse.semi_major_km


def test_a_station_whose_lags_disagree_is_dropped() -> None:
    """Station e's three-way lags are each off by a different amount (a wrong peak, multipath
    shaping each pair differently -- not a delay, which would close): every failing triangle
    has e and no single pair explains them."""
    pairs = exact_pairs(FIVE, TX)
    for other, by in zip("abcd", (25e-6, -40e-6, 15e-6, -30e-6)):
        _spoil(pairs, f"{other}|e", by)
    dropped: dict[str, str] = {}
    found, notes = _apply_closures(pairs, FS, dropped)
    assert list(dropped) == ["e"] and dropped["e"].startswith("its lags disagree with the other stations'")
    assert all(not pl.used for pl in pairs if "e" in (pl.a, pl.b))
    assert all(pl.used for pl in pairs if "e" not in (pl.a, pl.b))
    assert all(c.ok for c in found) and len(found) == 4


def test_closure_summary_and_dict() -> None:
    pairs = exact_pairs({k: FOUR[k] for k in "abc"}, TX)
    c = closures(pairs, FS)[0]
    d = c.to_dict()
    assert d["stations"] == ["a", "b", "c"] and d["ok"] is True and d["n_windows"] == 12
    assert abs(d["closure_us"]) < 0.5 and d["tolerance_us"] > d["stderr_us"] > 0
    # the tolerance: Student t at 1e-3 two-sided on the windows' standard error, plus the floor
    from scipy import stats

    assert c.tolerance_s == pytest.approx(stats.t.ppf(1 - 5e-4, 11) * c.stderr_s + 0.01 / FS)
    assert np.isfinite(c.closure_s)
