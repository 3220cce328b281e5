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

import numpy as np
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


#: the community's figures for these files (``../shared/data/real/README.md``): t_i - t_j, us
COMMUNITY_LAGS_US = {("HB9ODP", "JO51xl"): 417.7, ("HB9ODP", "pa0rdt"): -77.4, ("JO51xl", "pa0rdt"): -500.2}


def _plain_xcorr_lags(folder: Path, *, highpass_hz: float | None, offset_at: str) -> dict[tuple[str, str], float]:
    """Lags (t_i - t_j, s) the way the KiwiSDR community's Octave tools take them, on sdrlab's own
    GPS time base: each station's native samples with their fitted GPS times, cut to the common
    span, index-aligned 1 s windows, the magnitude of the complex cross-correlation, a parabola
    through its five samples around the peak; the two stations' time offset read at the window's
    ``end`` (as those tools do) or its ``middle``.  ``highpass_hz``: a 1025-tap FIR high-pass
    first (their DCF77 script's), or the whole baseband."""
    from scipy import signal as ss

    from sdrlab.tdoa.timebase import station_times

    ds = import_kiwi_wav(sorted(folder.glob("*.wav")), positions_dir=folder / "gnss_pos")
    times, _ = station_times(ds)
    ids = [str(s) for s in ds["station"].values]
    t_ref = min(times[s].segments[0].t0_gps_ns for s in ids)
    series = {}
    for i, s in enumerate(ids):
        seg = times[s].segments[0]
        k = np.arange(seg.usable_start, seg.usable_stop)
        iq = ds["iq"].values[i, seg.usable_start : seg.usable_stop].astype(np.float64)
        series[s] = ((seg.t0_gps_ns - t_ref) / 1e9 + (k - seg.start) / seg.fs, iq[:, 0] + 1j * iq[:, 1], seg.fs)
    t0 = max(t[0] for t, _, _ in series.values())
    t1 = min(t[-1] for t, _, _ in series.values())
    taps = None if highpass_hz is None else ss.firwin(1025, highpass_hz, pass_zero=False, fs=12000.0)
    for s, (t, z, fs) in series.items():
        keep = (t >= t0) & (t <= t1)
        t, z = t[keep], z[keep]
        if taps is not None:  # the FIR's 512-sample delay taken off
            z = ss.lfilter(taps, 1.0, z)[512:]
            t = t[: len(z)]
        series[s] = (t, z, fs)
    out: dict[tuple[str, str], float] = {}
    dt = 12000
    for ai, a in enumerate(ids):
        for b in ids[ai + 1 :]:
            (ta, za, fa), (tb, zb, fb) = series[a], series[b]
            m = np.arange(-dt, dt + 1)
            lags = []
            for i0 in range(0, min(len(za), len(zb)) - dt - 1, dt):
                r = np.abs(ss.correlate(za[i0 : i0 + dt + 1], zb[i0 : i0 + dt + 1], mode="full"))
                ref = i0 + (dt if offset_at == "end" else dt // 2)
                lag = ta[ref] - tb[ref] + m / ((fa + fb) / 2)
                j = int(np.argmax(np.where(np.abs(lag) < 5e-3, r, 0.0)))
                p = np.polyfit(lag[j - 2 : j + 3] - lag[j], r[j - 2 : j + 3], 2)
                lags.append(lag[j] - p[1] / (2 * p[0]))
            out[(a, b)] = float(np.mean(lags))
    return out


def test_dcf77_community_figures_are_their_method_on_our_time_base(dcf77_dir: Path) -> None:
    """The community's lags (1.0 km on their grid) differ from ours by ~13 us on the JO51xl pairs.
    Their method, run on sdrlab's GPS time base, gives their figures: the time bases agree, and
    the difference is the method (the offset read at the window's end, biased by half a window of
    the receivers' 4.9 ppm clock difference, and the carrier, AM keying and PN correlated as one).
    The same plain correlation restricted to the PN band (their DCF77 script's 250 Hz high-pass),
    with the offset at the window's middle, agrees with sdrlab's lags to ~1 us: JO51xl's ~7 us is
    in the data, not in sdrlab's estimator."""
    theirs = _plain_xcorr_lags(dcf77_dir, highpass_hz=None, offset_at="end")
    for pair, ref in COMMUNITY_LAGS_US.items():
        assert theirs[pair] * 1e6 == pytest.approx(ref, abs=1.5), pair
    pn_band = _plain_xcorr_lags(dcf77_dir, highpass_hz=250.0, offset_at="middle")
    ours = {(pl.a, pl.b): -pl.lag_s for pl in _analyse(dcf77_dir).pairs}  # ours: t_b - t_a
    for pair, lag in ours.items():
        assert pn_band[pair] == pytest.approx(lag, abs=2e-6), pair
