"""The simulator's band model against section 4.5's numbers and its own truth (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from sdrlab.receivers import owrxwire as W
from sdrlab.sim.owrx import Band, Emitter
from sdrlab.sim.owrx.demod import nfm_deemphasis_taps
from sdrlab.sim.owrx.dsp import ChannelChain, SpectrumChain

from .helpers import band


def test_fft_rows_follow_section_4_5() -> None:
    carrier = 145_000_000 + 300 * 2_400_000 // 4096  # exactly on bin 2048 + 300
    chain = SpectrumChain(Band(-110.0, (Emitter(carrier, -40.0),)), 145_000_000, 2_400_000)
    assert (chain.avg, chain.hop) == (93, 2867)
    rows = np.array([chain.row(k) for k in range(40)])
    lin = np.mean(10 ** (rows / 10), axis=0)
    assert 10 * np.log10(lin[2348]) == pytest.approx(W.tone_db(10 ** (-40 / 20), 4096), abs=0.05)
    floor = 10 * np.log10(np.median(lin[100:1500]))
    assert floor == pytest.approx(-110 + 10 * np.log10(2_400_000 * W.window_sums(4096)[1]) - 70, abs=0.05)
    # scatter of an average of 93 periodograms: 4.34 / sqrt(93) dB; neighbours correlated
    assert np.std(rows[:, 100:1500]) == pytest.approx(0.45, abs=0.04)
    assert np.allclose(chain.expected()[2340:2357], 10 * np.log10(lin[2340:2357]), atol=0.3)


@pytest.mark.parametrize("dial,low,high", [(145_500_000, -4000, 4000), (145_200_000, -4000, 4000),
                                           (145_800_000, -4000, 4000), (144_601_500, 300, 3000),
                                           (145_300_000, -6000, 6000), (145_100_000, -4000, 4000)])
def test_channel_power_is_its_truth(dial: int, low: int, high: int) -> None:
    ch = ChannelChain(band(), dial, 12000, low, high, stream=2)
    y = np.concatenate([ch.next(1024) for _ in range(60)])
    assert 10 * np.log10(np.mean(np.abs(y) ** 2)) == pytest.approx(10 * np.log10(ch.truth_power()), abs=0.25)


def test_nfm_deemphasis_is_a_band_pass() -> None:
    taps = nfm_deemphasis_taps(12000)
    f = np.fft.rfftfreq(16384, 1 / 12000)
    h = 20 * np.log10(np.abs(np.fft.rfft(taps, 16384)) + 1e-12)
    at = {x: h[np.argmin(np.abs(f - x))] for x in (0, 300, 3000, 5000)}
    assert at[0] == pytest.approx(-27.0, abs=0.1) and at[300] == pytest.approx(0.0, abs=1.0)
    assert at[3000] == pytest.approx(-20.0, abs=1.0) and at[5000] < -40


def test_a_fast_sdr_clock_shows_every_carrier_lower() -> None:
    """An SDR whose crystal runs 20 ppm fast shows a carrier at f / (1 + 20e-6): its waterfall
    peak moves 2.9 kHz down at 145 MHz and a USB channel's tone with it (to well under 0.1 Hz);
    noise and the emitter's level are untouched."""
    from sdrlab.frequency_offset import tone_frequency
    from sdrlab.sim.owrx.config import OwrxConfig, Profile
    from sdrlab.sim.owrx.demod import Demodulator

    f = 145_012_500.0
    band = Band(-120.0, (Emitter(f, -60.0),))
    cfg = OwrxConfig(id="fast", ppm=20.0, profiles=(Profile("rtl", "2m", "RTL", "2m", 145_000_000, 2_400_000, 145_000_000,
                                                            band=band),))
    seen = band.as_seen(cfg.clock)
    assert seen.emitters[0].freq_hz == pytest.approx(f / (1 + 20e-6), abs=1e-6)
    assert seen.emitters[0].freq_hz - f == pytest.approx(-2900.19, abs=0.01)
    assert seen.n0 == band.n0 and seen.emitters[0].power == band.emitters[0].power
    assert band.as_seen(1.0) is band
    chain = SpectrumChain(seen, 145_000_000, 2_400_000)
    lin = np.mean(10 ** (np.array([chain.row(k) for k in range(8)]) / 10), axis=0)
    assert int(np.argmax(lin)) == round(chain.bin_of(seen.emitters[0].freq_hz))
    assert int(np.argmax(lin)) != round(chain.bin_of(f))
    dial = 145_008_500
    ch, demod = ChannelChain(seen, dial, 12000, 300, 3000), Demodulator("usb", 12000)
    audio = np.concatenate([demod.process(ch.next(1024)) for _ in range(120)])
    tone = tone_frequency(audio[2048:], 12000, 300, 3000)
    assert tone.freq_hz == pytest.approx(f / (1 + 20e-6) - dial, abs=0.05)
    with pytest.raises(ValueError, match="ppm"):
        OwrxConfig(id="bad", ppm=5000.0, profiles=cfg.profiles)
