"""TDoA on three real KiwiSDR recordings of DCF77 (2020-08-13, HB9ODP, JO51xl, pa0rdt; see
``../shared/data/real/README.md``): the method chosen, the lags against the WGS84 geodesics, the
closure, the position and its ellipse against the published antenna position.

What real receivers add to the simulator: a ±500 Hz passband, AGC, receivers that differ by
microseconds to tens of microseconds.  Here the three lags close to ~1 us but are each 2-8 us off
the geometry in a pattern one station offset explains (JO51xl ~7 us early against the other two),
which no method can remove with three stations; the stated uncertainty (a 20 us delay prior per
station) covers it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
from geographiclib.geodesic import Geodesic

from sdrlab import tdoa
from sdrlab.interchange.kiwiwav import import_kiwi_wav
from sdrlab.tdoa.pipeline import _apply_closures

DCF77 = (50.0152, 9.0112)  # the published position of the DCF77 antenna, Mainflingen


@functools.lru_cache(maxsize=4)
def _analyse(folder: Path, **kw: object) -> tdoa.TdoaResult:
    ds = import_kiwi_wav(sorted(folder.glob("*.wav")), positions_dir=folder / "gnss_pos")
    return tdoa.tdoa(ds, truth=DCF77, **kw)  # type: ignore[arg-type]


def _true_lag_s(r: tdoa.TdoaResult, pl: tdoa.PairLag) -> float:
    d = {s: Geodesic.WGS84.Inverse(*DCF77, *r.positions[s])["s12"] for s in (pl.a, pl.b)}
    return (d[pl.b] - d[pl.a]) / tdoa.C_M_S


def test_dcf77_method_is_coherent_on_the_carrier_dominated_signal(dcf77_dir: Path) -> None:
    r = _analyse(dcf77_dir)
    assert r.stations_used == ["HB9ODP", "JO51xl", "pa0rdt"] and r.stations_dropped == {}
    a = r.signal
    assert r.method == "coherent" and a is not None and a.signal == "carrier-dominated"
    assert a.carrier_hz == pytest.approx(0.0, abs=0.01)  # tuned to 77.5 kHz
    assert max(abs(v) for v in a.frequency_offsets_hz.values()) < 2e-3  # GPS-disciplined Kiwis
    lo, hi = a.band_hz or (0.0, 0.0)
    assert -1000 < lo < -300 and 300 < hi < 1000  # the +-500 Hz passband, PN sidebands
    assert a.coherent_pairs == 3


def test_dcf77_lags_within_10_us_of_the_geodesics_and_closing(dcf77_dir: Path) -> None:
    r = _analyse(dcf77_dir)
    for pl in r.pairs:
        err = pl.lag_s - _true_lag_s(r, pl)
        assert pl.used and abs(err) < 10e-6, (pl.name, err * 1e6)
        assert abs(err) < pl.ci95_s  # the stated interval holds the truth
        assert pl.n_windows >= 25
    (c,) = r.closures
    assert c.ok and abs(c.closure_s) < 3e-6


def test_dcf77_position_and_ellipse(dcf77_dir: Path, record_property) -> None:
    r = _analyse(dcf77_dir)
    assert r.position is not None and r.ellipse is not None
    err = r.error_km()
    record_property("dcf77_error_km", err)
    assert err is not None and err < 2.0  # 1.6 km (the community's Octave tools: 1.0 km)
    assert r.contains(DCF77)
    assert r.ellipse.semi_major_km < 20.0  # the 20 us prior per station, GDOP 1.2


@pytest.mark.xfail(strict=True, reason="the lags are mutually consistent (closure ~1 us) but one station "
                   "is ~7 us early against the others; with three stations an unknown station offset cannot "
                   "be separated from the position (1.6 km)")
def test_dcf77_position_within_1_km(dcf77_dir: Path) -> None:
    err = _analyse(dcf77_dir).error_km()
    assert err is not None and err < 1.0


def test_dcf77_envelope_alone_is_further_off(dcf77_dir: Path) -> None:
    """The AM envelope carries only the second marks' slow keying: its lags are further from the
    geometry than the coherent ones (the reason the coherent method is chosen)."""
    env = _analyse(dcf77_dir, method="envelope")
    coh = _analyse(dcf77_dir)
    worst = {name: max(abs(pl.lag_s - _true_lag_s(res, pl)) for pl in res.pairs)
             for name, res in (("envelope", env), ("coherent", coh))}
    assert worst["envelope"] > 10e-6 > worst["coherent"]


def test_dcf77_a_spoiled_lag_fails_the_closure_and_widens(dcf77_dir: Path) -> None:
    """One pair's lag moved by 30 us (a wrong peak): the triangle does not close, and with three
    stations the uncertainty widens to cover it rather than guess which lag is wrong."""
    r = _analyse(dcf77_dir)
    pairs = [tdoa.PairLag(**{**pl.__dict__}) for pl in r.pairs]
    bad = pairs[1]
    bad.lag_s += 30e-6
    bad.window_lag_s = bad.window_lag_s + 30e-6
    found, notes = _apply_closures(pairs, r.sample_rate, {})
    assert not found[0].ok and found[0].closure_s == pytest.approx(-30e-6 + r.closures[0].closure_s, abs=1e-9)
    assert "cannot tell which lag is wrong" in notes[0]
    fix = tdoa.locate(pairs, r.positions, station_sigma_s=r.station_sigma_s)
    assert fix.position is not None and fix.ellipse is not None and r.ellipse is not None
    assert fix.ellipse.semi_major_km > r.ellipse.semi_major_km
    assert all(pl.extra_var_s2 == pytest.approx(found[0].closure_s ** 2 / 3) for pl in pairs)
    assert math.isfinite(fix.ellipse.semi_minor_km)
