"""sdrlab.tdoa.signal: what the signal carries decides the correlation -- carrier-dominated
(DCF77-like, AM broadcast, keyed Morse), no carrier (SSB voice, OFDM), pure carrier (no timing
in it), a fading sky wave, receivers tuned apart -- and the choice and its reason are kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdrlab import tdoa
from sdrlab.sim.frontend import AgcSettings
from sdrlab.sim.scene import SkyWave
from sdrlab.tdoa import signal as sg
from tests import tdoa_scenes as ts

from .checks import within_ci

FOUR = ts.SIX[:4]
#: short sessions: 8 s, windows of 0.5 s
SHORT = {"window_s": 0.5, "min_overlap_s": 6.0}
#: the signal sits at the tuned frequency (no offset) for the models centred on their carrier
CENTRED = 9_749_000.0


def _run(modulation: str, *, seed: int = 4, snr_db: float = 20.0, passband: tuple[float, float] = (-5000.0, 5000.0),
         frequency_hz: float = 9_750_000.0, duration_s: float = 8.0, agc: AgcSettings | None = None,
         **scene_kw: object) -> tuple[tdoa.TdoaResult, object]:
    scene = ts.make_scene(FOUR, ts.SIX_TX, snr_db=snr_db, seed=seed, modulation=modulation,
                          frequency_hz=frequency_hz, **scene_kw)  # type: ignore[arg-type]
    ds = ts.session(scene, duration_s=duration_s, seed=seed, passband=passband, agc=agc)
    return tdoa.tdoa(ds, station_delay_sigma_s=0.0, **SHORT), scene  # type: ignore[arg-type]


@pytest.mark.parametrize(("modulation", "kw", "signal", "band"), [
    ("dcf77", {"frequency_hz": CENTRED, "passband": (-500.0, 500.0)}, "carrier-dominated", (-600, 600)),
    ("dcf77", {"frequency_hz": CENTRED, "passband": (-500.0, 500.0), "agc": AgcSettings(on=True)},
     "carrier-dominated", (-600, 600)),
    ("am-broadcast", {}, "carrier-dominated", (-3000, 5000)),
    ("morse", {"passband": (500.0, 1500.0)}, "carrier and modulation", (700, 1300)),
    ("ssb", {"frequency_hz": CENTRED, "passband": (0.0, 3000.0)}, "no carrier", (200, 3000)),
    ("ofdm", {"frequency_hz": CENTRED, "duration_s": 7.0}, "no carrier", (-5100, 5100)),
])
def test_each_signal_gets_the_coherent_method_and_locates(modulation: str, kw: dict, signal: str,
                                                          band: tuple[float, float]) -> None:
    """Every model that carries timing gets the whitened complex correlation over the band where
    it stands above the noise (inside the passband the receivers filter to); the lags fall
    within their stated intervals (no station delays here) and the transmitter is found."""
    r, scene = _run(modulation, **kw)
    assert r.method == "coherent" and r.signal is not None
    assert r.signal.signal == signal, r.signal.reason
    lo, hi = r.signal.band_hz or (0.0, 0.0)
    assert band[0] <= lo < hi <= band[1], r.signal.band_hz
    assert len(r.stations_used) == 4 and all(pl.used for pl in r.pairs)
    assert sum(within_ci(r, scene)) >= 5  # of 6 (95 % intervals)
    assert all(c.ok for c in r.closures)
    assert r.position is not None and r.error_km() < 3.0
    assert all(pl.method == "coherent" for pl in r.pairs)
    d = r.to_dict()
    assert d["method"] == "coherent" and d["signal"]["signal"] == signal and d["signal"]["reason"]
    assert r.summary().splitlines()[3].startswith(f"method coherent: {signal}")


def test_a_pure_carrier_has_no_timing_and_claims_no_position() -> None:
    """A CW carrier: the line is notched (with its window leakage), nothing else is coherent, the
    envelope is flat: no lag, no position, and the reason says why."""
    r, _ = _run("cw")
    assert r.method == "envelope" and r.signal is not None and r.signal.signal == "carrier-dominated"
    assert "no band where the stations' baseband is coherent" in r.signal.reason
    assert r.position is None and not any(pl.used for pl in r.pairs)
    assert r.reason == "no station pair with a significant correlation peak"


def test_sky_wave_fading_is_not_mistaken_for_tuning_offsets() -> None:
    """A sky wave 3 dB under the ground wave, fading with a Doppler shift: the carrier's phase
    wanders at every receiver, so no offset is 'removed'; the lags stay within their intervals."""
    r, scene = _run("am", sky_wave=SkyWave(relative_db=-3.0))
    assert r.signal is not None and r.signal.frequency_offsets_hz == {}
    assert any("phase wanders" in n for n in r.notes)
    assert r.method == "coherent" and sum(within_ci(r, scene)) >= 5


def _retune(ds: object, station: str, offset_hz: float) -> None:
    """Shift one station's baseband by ``offset_hz``: a receiver tuned that far off (its samples
    requantised to int16)."""
    i = [str(s) for s in ds["station"].values].index(station)  # type: ignore[index]
    iq = ds["iq"].values[i].astype(np.float64)  # type: ignore[index]
    n = np.arange(iq.shape[0])
    fs = float(ds["sample_rate"].values[i])  # type: ignore[index]
    z = (iq[:, 0] + 1j * iq[:, 1]) * np.exp(2j * math.pi * offset_hz * n / fs)
    ds["iq"].values[i, :, 0] = np.clip(np.rint(z.real), -32768, 32767)  # type: ignore[index]
    ds["iq"].values[i, :, 1] = np.clip(np.rint(z.imag), -32768, 32767)  # type: ignore[index]


def test_receivers_tuned_apart_have_their_offset_measured_and_removed() -> None:
    """One receiver tuned 0.7 Hz off: with a carrier its offset is measured (to a few mHz) and
    removed, and its pairs are as coherent and as good as the others."""
    scene = ts.make_scene(FOUR, ts.SIX_TX, snr_db=20.0, seed=6)
    ds = ts.session(scene, duration_s=8.0, seed=6)
    _retune(ds, "rx-gothenburg", 0.7)
    r = tdoa.tdoa(ds, station_delay_sigma_s=0.0, **SHORT)
    assert r.signal is not None
    off = r.signal.frequency_offsets_hz
    assert off["rx-gothenburg"] - np.median([v for k, v in off.items() if k != "rx-gothenburg"]) == pytest.approx(
        0.7, abs=0.005)
    assert r.method == "coherent" and r.signal.coherent_pairs == 6
    assert sum(within_ci(r, scene)) >= 5 and r.position is not None and r.error_km() < 1.0


def test_without_a_carrier_an_offset_leaves_only_the_envelope() -> None:
    """SSB (no carrier) with every receiver tuned a different 2-5 Hz off: the offsets cannot be
    measured, the baseband is coherent nowhere, and the envelope is used, with that reason."""
    scene = ts.make_scene(FOUR, ts.SIX_TX, snr_db=25.0, seed=7, modulation="ssb", frequency_hz=CENTRED)
    ds = ts.session(scene, duration_s=8.0, seed=7, passband=(0.0, 3000.0))
    for sid, hz in zip([s[0] for s in FOUR], (0.0, 2.0, -3.0, 5.0)):
        if hz:
            _retune(ds, sid, hz)
    r = tdoa.tdoa(ds, station_delay_sigma_s=0.0, **SHORT)
    assert r.signal is not None and r.signal.signal == "no carrier"
    assert r.method == "envelope" and "no band where the stations' baseband is coherent" in r.signal.reason
    assert all(pl.method == "envelope" for pl in r.pairs)


def test_method_can_be_forced_and_is_recorded() -> None:
    scene = ts.make_scene(ts.THREE, ts.THREE_TX, snr_db=20.0, seed=8)
    ds = ts.session(scene, duration_s=8.0, seed=8)
    env = tdoa.tdoa(ds, method="envelope", **SHORT)
    assert env.method == "envelope" and env.signal is not None
    assert env.signal.reason.startswith("envelope requested")
    assert env.to_dict()["parameters"]["method"] == "envelope"
    coh = tdoa.tdoa(ds, method="coherent", **SHORT)
    assert coh.method == "coherent"
    for a, b in zip(env.pairs, coh.pairs):  # both find the same lags, the coherent more precisely
        assert abs(a.lag_s - b.lag_s) < 3 * max(a.stderr_s, 0.1e-6)


def test_coherence_threshold_and_helpers() -> None:
    # K independent segments of independent noise exceed the threshold with probability alpha
    rng = np.random.default_rng(1)
    k, n = 60, 4000
    x = rng.standard_normal((k, n)) + 1j * rng.standard_normal((k, n))
    y = rng.standard_normal((k, n)) + 1j * rng.standard_normal((k, n))
    g2 = np.abs((np.conj(x) * y).sum(0)) ** 2 / ((np.abs(x) ** 2).sum(0) * (np.abs(y) ** 2).sum(0))
    assert np.mean(g2 > sg.coherence_threshold(k, 0.01)) == pytest.approx(0.01, abs=0.005)
    assert sg.segment_length(12001.1) == 1024 and sg.segment_length(20250.0) == 2048
    p = sg.phasor(3.3, 10_000, 12000.0)
    np.testing.assert_allclose(p, np.exp(2j * np.pi * 3.3 * np.arange(10_000) / 12000.0), atol=1e-6)
    # the Hann leakage of a line: its density integrates to its power, all of it in the main
    # lobe when it sits on a bin; the spectra analyse() measures have the same scale
    f = np.fft.fftfreq(1024, 1 / 12000.0)
    leak = sg._leakage(f, f[10], 1.0, 12000.0, 1024)
    assert leak.sum() * 12000.0 / 1024 == pytest.approx(1.0, rel=1e-9)
    assert np.count_nonzero(leak > 1e-12) == 3
    z = np.exp(2j * np.pi * f[10] * np.arange(40_000) / 12000.0).astype(np.complex64)[None, :]
    a = sg.analyse(["x"], z, np.ones_like(z, dtype=bool), 12000.0, method="envelope")
    assert a.psd[0].sum() * 12000.0 / 1024 == pytest.approx(1.0, rel=1e-3)
