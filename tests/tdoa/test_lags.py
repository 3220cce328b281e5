"""sdrlab.tdoa.lags on synthetic baseband with known delays: the sub-sample peak (also on a
strong pedestal), window normalisation, bounds, outlier windows, significance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdrlab import tdoa
from sdrlab.tdoa.lags import pair_lags
from sdrlab.tdoa.timebase import CommonGrid

FS = 12000.0
POS = {"a": (50.0, 8.0), "b": (50.0, 12.0)}  # ~286 km: bound ~1.15 ms


def _delayed(x: np.ndarray, d_samples: float) -> np.ndarray:
    """``x`` delayed by a fractional number of samples (exact for a periodic band-limited x)."""
    f = np.fft.fftfreq(x.size)
    return np.fft.ifft(np.fft.fft(x) * np.exp(-2j * np.pi * f * d_samples))


def _signal(n: int, seed: int, band: float = 0.3) -> np.ndarray:
    """Complex noise band-limited to +-band of the sample rate (periodic)."""
    rng = np.random.default_rng(seed)
    spec = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * (np.abs(np.fft.fftfreq(n)) < band)
    out: np.ndarray = np.fft.ifft(spec)
    return out / np.sqrt(np.mean(np.abs(out) ** 2))


@pytest.mark.parametrize("pedestal", [0.0, 30.0])
@pytest.mark.parametrize("delay", [3.37, -7.81])
def test_sub_sample_lag_of_complex_baseband(delay: float, pedestal: float) -> None:
    """A delay of a fraction of a sample is recovered to 1/200 of a sample, also when the
    signal sits on a carrier 30 dB stronger (the correlation on a pedestal: the interpolator's
    rows have unit gain at DC, or their ripple would move the peak)."""
    n = 12 * int(FS)
    s = _signal(n, 1) + pedestal
    x = np.stack([s, _delayed(s, delay)]).astype(np.complex64)
    pairs, centres = pair_lags(["a", "b"], x, np.ones(x.shape, bool), CommonGrid(0, FS, n), POS)
    pl = pairs[0]
    assert pl.used and pl.n_windows == len(centres) >= 10 and pl.method == "coherent"
    assert (pl.lag_s * FS) == pytest.approx(delay, abs=0.005)
    assert pl.spread_s * FS < 0.01 and pl.correlation > 0.99


def test_keyed_signal_is_not_pulled_towards_its_quiet_lags() -> None:
    """A carrier keyed down to 15 % for 100 ms every second (DCF77's AM), with a weak wideband
    modulation: normalising each lag by b's energy there would favour the lags where the keying
    leaves b quiet; the windows' energies do not, and the lag is the delay."""
    n = 12 * int(FS)
    t = np.arange(n) / FS
    key = np.where((t % 1.0) < 0.1, 0.15, 1.0)
    s = key * (1.0 + 0.05 * _signal(n, 2))
    delay = 5.6
    x = np.stack([s, _delayed(s, delay)]).astype(np.complex64)
    pairs, _ = pair_lags(["a", "b"], x, np.ones(x.shape, bool), CommonGrid(0, FS, n), POS)
    assert pairs[0].lag_s * FS == pytest.approx(delay, abs=0.02)


def test_peak_beyond_the_baseline_is_refused_and_noise_is_not_a_peak() -> None:
    n = 12 * int(FS)
    s = _signal(n, 3)
    far = np.stack([s, _delayed(s, 30.0)]).astype(np.complex64)  # 2.5 ms: beyond the 1.15 ms bound
    pl = pair_lags(["a", "b"], far, np.ones(far.shape, bool), CommonGrid(0, FS, n), POS)[0][0]
    assert not pl.used and pl.reason  # whatever the search inside the bound finds, it does not hold
    rng = np.random.default_rng(4)
    noise = (rng.standard_normal((2, n)) + 1j * rng.standard_normal((2, n))).astype(np.complex64)
    pl = pair_lags(["a", "b"], noise, np.ones(noise.shape, bool), CommonGrid(0, FS, n), POS)[0][0]
    assert not pl.used and (pl.reason or "").startswith("no significant correlation peak (|r|=")
    env = np.abs(noise).astype(np.float64)
    pl = pair_lags(["a", "b"], env, np.ones(env.shape, bool), CommonGrid(0, FS, n), POS)[0][0]
    assert not pl.used and (pl.reason or "").startswith("no significant correlation peak (r=")
    assert pl.method == "envelope"


def test_a_disagreeing_window_is_an_outlier_and_a_gap_costs_its_windows() -> None:
    n = 12 * int(FS)
    s = _signal(n, 5)
    b = _delayed(s, 4.2)
    b[int(5.2 * FS) : int(5.9 * FS)] = _delayed(s, 6.5)[int(5.2 * FS) : int(5.9 * FS)]  # one window off by 2 samples
    x = np.stack([s, b]).astype(np.complex64)
    valid = np.ones(x.shape, bool)
    valid[1, int(8.3 * FS) : int(8.6 * FS)] = False
    pl = pair_lags(["a", "b"], x, valid, CommonGrid(0, FS, n), POS)[0][0]
    assert pl.window_status.count("outlier") == 1
    assert pl.window_status.count("gap") == 1
    assert pl.lag_s * FS == pytest.approx(4.2, abs=0.01)
    assert math.isfinite(pl.stderr_s) and pl.n_windows == pl.n_valid - 1
    assert tdoa.PairLag is type(pl)
