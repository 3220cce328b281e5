"""Transmitted-signal models: one function of time whatever the grid, powers, spectra, DCF77 and Morse
timing, measured against each model's definition."""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Callable
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal as sps

from sdrlab.errors import ConfigError
from sdrlab.sim import signals as S

FS = 12001.188
C128 = npt.NDArray[np.complex128]

MODELS: dict[str, Callable[[], S.Signal]] = {
    "cw": S.Carrier,
    "am-tones": S.ToneAm,
    "am-speech": lambda: S.AmBroadcast("speech"),
    "am-music": lambda: S.AmBroadcast("music", mod_index=0.5, seed=3),
    "dcf77": S.Dcf77,
    "morse": S.Morse,
    "ssb-usb": S.Ssb,
    "ssb-lsb-music": lambda: S.Ssb("lsb", "music", seed=2),
    "ofdm": S.Ofdm,
    "ofdm-4.5k-qpsk": lambda: S.Ofdm(occupancy=0, qam=4, seed=1),
}


class _FadingAsSignal(S.Signal):
    """Fading.gain seen through the Signal interface, so it shares the exactness checks."""

    name = "fading"

    def __init__(self) -> None:
        self.fading = S.Fading(spread_hz=0.2, n_paths=16, seed=5)

    def sample(self, t0: float, dt: float, n: int, *, epoch_gps_ns: int = 0) -> C128:
        return self.fading.gain(t0, dt, n, epoch_gps_ns=epoch_gps_ns)

    def _eval(self, s: int, f: float, dt: float, n: int) -> C128:
        raise AssertionError("not used")

    mean_power = 1.0  # type: ignore[assignment]
    peak_amplitude = 4.0  # type: ignore[assignment]
    band_hz = (-1.0, 1.0)  # type: ignore[assignment]

    def _params(self) -> dict[str, object]:
        return {}


ALL = {**MODELS, "fading": _FadingAsSignal}


def _same(a: C128, b: C128, what: str, tol: float = 1e-9) -> None:
    scale = max(float(np.max(np.abs(a))), 1e-3)
    err = float(np.max(np.abs(a - b))) / scale
    assert err < tol, f"{what}: max relative difference {err:.2e}"


# ---- exact at any instant ---------------------------------------------------------------------
GRIDS = [
    # (t0, dt, epoch): crosses second marks, programme slots, the 2-s OFDM block and a Morse repeat
    pytest.param(14.7654321, 1.0 / FS, 0, id="t14-12001Hz"),
    pytest.param(-3.1, 1.0 / 20250.0, 0, id="negative-t-20250Hz"),
    # large t and a GPS epoch of today: dyadic dt so the split points are the same instants exactly
    pytest.param(987653.75, 2.0**-13, 1_400_000_000_123_456_789, id="t1e6-epoch2024"),
]


@pytest.mark.parametrize(("t0", "dt", "epoch"), GRIDS)
@pytest.mark.parametrize("key", list(ALL))
def test_one_function_whatever_the_grid(key: str, t0: float, dt: float, epoch: int) -> None:
    n = 9000  # 0.44 to 1.1 s, across a second mark, a programme slot or a 2-s OFDM block
    sig = ALL[key]()
    ref = sig.sample(t0, dt, n, epoch_gps_ns=epoch)
    assert ref.dtype == np.complex128 and ref.shape == (n,)

    # split into two calls, on a fresh instance (nothing cached)
    fresh = ALL[key]()
    n1 = 2500
    two = np.concatenate(
        [fresh.sample(t0, dt, n1, epoch_gps_ns=epoch), fresh.sample(t0 + n1 * dt, dt, n - n1, epoch_gps_ns=epoch)]
    )
    _same(ref, two, "two calls")

    # every third instant through a grid three times coarser
    _same(ref[::3], sig.sample(t0, 3 * dt, n // 3, epoch_gps_ns=epoch), "coarser grid")

    # irregular re-evaluation: single instants and short runs with unrelated step sizes
    rng = np.random.default_rng(1)
    for k in rng.integers(0, n - 3, 20):
        other_dt = float(rng.uniform(1e-6, 0.5))
        got = sig.sample(t0 + int(k) * dt, other_dt, 1, epoch_gps_ns=epoch)
        _same(ref[k : k + 1], got, f"instant {k}")
        run = fresh.sample(t0 + int(k) * dt, dt, 3, epoch_gps_ns=epoch)
        _same(ref[k : k + 3], run, f"run at {k}")

    # the same absolute instants from another time origin (epoch 1.5 s later)
    shifted = sig.sample(t0 - 1.5, dt, n, epoch_gps_ns=epoch + 1_500_000_000)
    _same(ref, shifted, "shifted epoch")

    # call order: a fresh instance asked for the frames backwards
    back = ALL[key]()
    starts = range(n - 512, -1, -512)
    frames = [back.sample(t0 + k * dt, dt, 512, epoch_gps_ns=epoch) for k in starts]
    _same(ref[starts[-1] :], np.concatenate(frames[::-1]), "backwards")


def test_grid_checks_can_fail() -> None:
    """The exactness check sees a 1-sample or 1-ns shift of the instants."""
    sig = S.AmBroadcast("speech")
    ref = sig.sample(14.7, 1.0 / FS, 2000)
    with pytest.raises(AssertionError):
        _same(ref[1:], sig.sample(14.7, 1.0 / FS, 1999), "shifted")
    with pytest.raises(AssertionError):
        _same(ref, sig.sample(14.7, 1.0 / FS, 2000, epoch_gps_ns=1), "1 ns")


# ---- power, peak and band -------------------------------------------------------------------
@functools.cache
def _long(key: str) -> tuple[S.Signal, C128]:
    """20 s at 12001.188 Hz from t = 100 s, a whole number of programme slots (Morse: one period)."""
    sig = MODELS[key]()
    if isinstance(sig, S.Morse):
        per = sig.period_s
        return sig, sig.sample(1000 * per, per / 200_000, 200_000)
    return sig, sig.sample(100.0, 1.0 / FS, 20 * 12001)


@pytest.mark.parametrize("key", [k for k in MODELS if k != "dcf77"])
def test_mean_power_peak_and_band(key: str) -> None:
    sig, x = _long(key)
    measured = float(np.mean(np.abs(x) ** 2))
    assert 10 * math.log10(measured / sig.mean_power) == pytest.approx(0.0, abs=0.05)
    assert float(np.max(np.abs(x))) <= sig.peak_amplitude + 1e-12
    # at least 99 % of the power (carrier included) inside band_hz
    fs = 1.0 / (sig.period_s / 200_000) if isinstance(sig, S.Morse) else FS
    f, p = sps.welch(x, fs=fs, nperseg=8192, return_onesided=False, detrend=False)
    lo, hi = sig.band_hz
    df = f[1] - f[0]
    inside = (f >= lo - df) & (f <= hi + df)
    assert p[inside].sum() / p.sum() > 0.99


@pytest.mark.parametrize(
    ("sig", "seconds"),
    [(S.AmBroadcast("speech", seed=8), 20), (S.AmBroadcast("music", seed=8), 20), (S.Ssb(seed=8), 60)],
    ids=["am-speech", "am-music", "ssb"],
)
def test_programme_power_over_any_window(sig: S.Signal, seconds: int) -> None:
    """Windows that cut talk spurts still average to the long-run power (speech on SSB varies most:
    20 s windows have a standard deviation of ~0.04 dB, so SSB is measured over a minute)."""
    x = sig.sample(123.456, 1.0 / 3001.7, seconds * 3001)  # sparse sampling: power only
    assert 10 * math.log10(float(np.mean(np.abs(x) ** 2)) / sig.mean_power) == pytest.approx(0.0, abs=0.05)


def test_dcf77_mean_power_long_run() -> None:
    """Four quarter-hours on four dates sampled at ~50 Hz average to the long-run expectation (one
    quarter-hour alone is within ~0.03 dB: its date, hour and bits 1-14 have their own 1s)."""
    sig = S.Dcf77(seed=4)
    epochs = [_gps_ns(datetime(y, m, d, h)) for y, m, d, h in [(2024, 2, 29, 3), (2025, 7, 14, 12),
                                                                 (2026, 3, 29, 0), (2031, 11, 7, 21)]]
    x = np.concatenate([sig.sample(0.0, 1 / 50.0123, 45_000, epoch_gps_ns=e) for e in epochs])
    assert 10 * math.log10(float(np.mean(np.abs(x) ** 2)) / sig.mean_power) == pytest.approx(0.0, abs=0.05)
    assert float(np.max(np.abs(x))) <= sig.peak_amplitude + 1e-12


def test_dcf77_band() -> None:
    sig = S.Dcf77()
    x = sig.sample(100.0, 1 / 48000.0, 10 * 48000)
    f, p = sps.welch(x, fs=48000.0, nperseg=16384, return_onesided=False, detrend=False)
    lo, hi = sig.band_hz
    assert p[(f >= lo) & (f <= hi)].sum() / p.sum() > 0.99


def test_fading_unit_mean_power_and_rayleigh() -> None:
    fading = S.Fading(spread_hz=0.2, n_paths=16, seed=5)
    g = fading.gain(0.0, 0.1, 40_000)  # 4000 s
    assert 10 * math.log10(float(np.mean(np.abs(g) ** 2))) == pytest.approx(0.0, abs=0.3)
    assert np.std(fading.frequencies_hz) == pytest.approx(0.2, rel=0.3)
    # Rayleigh: |g|^2 roughly exponential, P(|g|^2 < 0.1) = 1 - exp(-0.1) ~ 0.095
    assert float(np.mean(np.abs(g) ** 2 < 0.1)) == pytest.approx(0.095, abs=0.04)
    assert S.Fading(seed=5).gain(10.0, 0.5, 10).tolist() == fading.gain(10.0, 0.5, 10).tolist()


# ---- spectra ----------------------------------------------------------------------------------
def _psd(x: C128, fs: float, nperseg: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    f, p = sps.welch(x, fs=fs, nperseg=nperseg, return_onesided=False)  # carrier removed per segment
    return f, p


def _top_percent_fraction(key: str) -> float:
    _, x = _long(key)
    f, p = _psd(x, FS, 8192)
    side = np.sort(p[(np.abs(f) >= 150.0) & (np.abs(f) <= 5000.0)])[::-1]
    return float(side[: len(side) // 100].sum() / side.sum())


@pytest.mark.parametrize("key", ["am-speech", "am-music"])
def test_am_broadcast_has_a_continuous_spectrum_inside_its_audio_band(key: str) -> None:
    assert _top_percent_fraction(key) < 0.15  # no isolated lines...
    assert _top_percent_fraction("am-tones") > 0.5  # ...unlike the tone comb
    sig = S.AmBroadcast("speech", audio_band_hz=(300.0, 3000.0), seed=7)
    f, p = _psd(sig.sample(50.0, 1.0 / FS, 10 * 12001), FS, 4096)
    assert p[(np.abs(f) >= 290.0) & (np.abs(f) <= 3010.0)].sum() / p.sum() > 0.99
    assert np.min(sig.sample(50.0, 1.0 / FS, 10 * 12001).real) >= 0.05 - 1e-12  # limiter floor


@pytest.mark.parametrize("key", ["ssb-usb", "ssb-lsb-music"])
def test_ssb_opposite_sideband_suppressed(key: str) -> None:
    sig, x = _long(key)
    f, p = _psd(x, FS, 4096)
    wanted, other = p[f > 0].sum(), p[f < 0].sum()
    if sig.band_hz[0] < 0:
        wanted, other = other, wanted
    assert 10 * math.log10(wanted / other) > 30.0
    lo, hi = sig.band_hz
    assert p[(f >= lo - 10.0) & (f <= hi + 10.0)].sum() / p.sum() > 0.99


@pytest.mark.parametrize("key", ["ofdm", "ofdm-4.5k-qpsk"])
def test_ofdm_flat_in_band_and_down_outside(key: str) -> None:
    sig, x = _long(key)
    f, p = _psd(x, FS, 1024)
    k_of_bin = np.round(f / S.OFDM_SPACING_HZ).astype(int)
    per_carrier = np.array([p[k_of_bin == k].mean() for k in sig.carriers[1:-1]])  # type: ignore[attr-defined]
    db = 10 * np.log10(per_carrier / np.median(per_carrier))
    assert db.max() - db.min() < 3.0
    if sig.carriers[0] < 0:  # type: ignore[attr-defined]
        beside_dc = p[(np.abs(f) > 0) & (np.abs(f) < 15.0)]  # the unused carrier k = 0
        assert beside_dc.max() < 0.25 * np.median(per_carrier)
    fs = 48000.0
    f, p = _psd(sig.sample(40.0, 1.0 / fs, 4 * 48000), fs, 4096)
    lo, hi = sig.band_hz
    in_band = p[(f > lo + 50.0) & (f < hi - 50.0)].mean()
    outside = p[(f < lo - 1500.0) | (f > hi + 1500.0)]
    assert 10 * math.log10(outside.max() / in_band) < -30.0


# ---- Morse timing ---------------------------------------------------------------------------
def _runs(on: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    starts = [int(e) + 1 for e in edges if not on[e]]
    stops = [int(e) + 1 for e in edges if on[e]]
    return list(zip(starts, stops))


def test_morse_letter_timing() -> None:
    sig = S.Morse("E T", wpm=20.0, rise_s=0.005, gap_s=1.0)
    dit = 0.06
    assert sig.period_s == pytest.approx((1 + 7 + 3) * dit + 1.0)
    dt = 1e-5
    t0 = 1000 * sig.period_s - 0.01
    env = sig.sample(t0, dt, round((sig.period_s + 0.2) / dt)).real
    runs = _runs(env >= 0.5)
    assert len(runs) == 3  # E, T, and the next repeat's E
    (e0, e1), (t_0, t_1), (r0, _) = runs
    assert (e1 - e0) * dt == pytest.approx(dit, abs=2 * dt)  # E: one dit at 50 %
    assert (t_1 - t_0) * dt == pytest.approx(3 * dit, abs=2 * dt)  # T: three dits
    assert (t_0 - e1) * dt == pytest.approx(7 * dit, abs=2 * dt)  # word gap
    assert (r0 - e0) * dt == pytest.approx(sig.period_s, abs=2 * dt)  # repeated after gap_s
    assert e0 * dt == pytest.approx(0.01 + 0.005 / 2, abs=2 * dt)  # 50 % point mid-edge, period-aligned
    assert np.all(env[: int(0.009 / dt)] == 0.0) and env.max() == pytest.approx(1.0)
    # PARIS: 50 dits a word, so 20 wpm sends PARIS every 3 s with a 7-dit gap
    assert S.Morse("PARIS", wpm=20.0, gap_s=7 * dit).period_s == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        S.Morse("E#")


# ---- DCF77 ----------------------------------------------------------------------------------
def _gps_ns(utc: datetime) -> int:
    return (int((utc - datetime(1980, 1, 6)).total_seconds()) + 18) * 1_000_000_000


def _from_bcd(bits: list[int], weights: tuple[int, ...]) -> int:
    return sum(b * w for b, w in zip(bits, weights))


def _lfsr_chips() -> list[int]:
    c = [1] * 9
    for n in range(9, 511):
        c.append(c[n - 5] ^ c[n - 9])
    return c + [0]


DCF77_MINUTES = [
    # UTC minute sent, then what it must encode (the next minute, local time), CEST?, A1
    pytest.param(datetime(2026, 3, 29, 0, 40), (1, 41, 29, 7, 3, 26), False, 1, id="CET-before-switch"),
    pytest.param(datetime(2025, 7, 14, 12, 0), (14, 1, 14, 1, 7, 25), True, 0, id="CEST"),
]


@pytest.mark.parametrize(("utc", "expected", "cest", "a1"), DCF77_MINUTES)
def test_dcf77_second_marks_decode_to_the_minute(utc: datetime, expected: tuple[int, ...], cest: bool, a1: int) -> None:
    sig = S.Dcf77(seed=11)
    epoch = _gps_ns(utc)
    fs = 12000.0
    bits = []
    for sec in range(60):
        x = sig.sample(sec - 0.01, 1 / fs, 4000, epoch_gps_ns=epoch)  # 10 ms before the mark to 323 ms after
        low = np.abs(x) < (1 + S.DCF77_LOW) / 2
        if sec == 59:
            assert not low.any()
            assert np.max(np.abs(x[120:2400] - 1.0)) < 1e-12  # no mark, no phase modulation before 0.2 s
            continue
        (start, stop), = _runs(low)
        # first-order edges: the half-depth point comes tau*ln 2 after the mark on both edges
        assert start / fs - 0.01 == pytest.approx(S.DCF77_TAU_S * math.log(2), abs=1.5 / fs)
        duration = (stop - start) / fs
        assert duration == pytest.approx(0.1, abs=1.5 / fs) or duration == pytest.approx(0.2, abs=1.5 / fs)
        assert np.min(np.abs(x)) == pytest.approx(S.DCF77_LOW, abs=1e-6)
        bits.append(int(duration > 0.15))
    assert bits[0] == 0 and bits[20] == 1 and bits[15] == 0 and bits[19] == 0
    assert (bits[17], bits[18], bits[16]) == (int(cest), int(not cest), a1)
    minute = _from_bcd(bits[21:28], (1, 2, 4, 8, 10, 20, 40))
    hour = _from_bcd(bits[29:35], (1, 2, 4, 8, 10, 20))
    day = _from_bcd(bits[36:42], (1, 2, 4, 8, 10, 20))
    weekday = _from_bcd(bits[42:45], (1, 2, 4))
    month = _from_bcd(bits[45:50], (1, 2, 4, 8, 10))
    year = _from_bcd(bits[50:58], (1, 2, 4, 8, 10, 20, 40, 80))
    assert (hour, minute, day, weekday, month, year) == expected
    for a, b in ((21, 29), (29, 36), (36, 59)):  # even parity including the parity bit
        assert sum(bits[a:b]) % 2 == 0
    assert bits == sig.time_code(int((utc - datetime(1980, 1, 6)).total_seconds()) // 60).tolist()[:59]


def test_dcf77_phase_modulation_chips() -> None:
    sig = S.Dcf77()
    epoch = _gps_ns(datetime(2025, 7, 14, 12, 0))
    chip = 120.0 / 77500.0
    expected = np.array(_lfsr_chips())
    assert expected[:511].sum() == 256 and len(expected) == 512
    for sec, bit in ((0, 0), (20, 1)):
        # 16 samples a chip, the first 48 us into it (past the 40 us phase step)
        x = sig.sample(sec + 0.2 + chip / 32, chip / 16, 512 * 16, epoch_gps_ns=epoch)
        deg = np.degrees(np.angle(x)).reshape(512, 16)
        assert np.ptp(deg, axis=1).max() < 1e-9  # constant within each chip: chips are 120 cycles
        sign = np.where(expected == 1, 1.0, -1.0) * (1 - 2 * bit)
        np.testing.assert_allclose(deg[:, 0], 15.6 * sign, atol=1e-9)
        # no phase modulation before 0.2 s or after the 512 chips
        before = sig.sample(sec + 0.1 + 0.05, 1e-4, 499, epoch_gps_ns=epoch)
        after = sig.sample(sec + 0.2 + 512 * chip + 1e-6, 1e-4, 70, epoch_gps_ns=epoch)
        assert np.max(np.abs(np.angle(before))) == 0.0 and np.max(np.abs(np.angle(after))) == 0.0


def test_dcf77_chip_sequence_is_the_m_sequence() -> None:
    chips = S.dcf77_chips().tolist()
    assert chips == _lfsr_chips()
    seq = chips[:511]
    states = {tuple(seq[i : i + 9]) for i in range(511 - 9)}
    assert len(states) == 511 - 9  # no state repeats within the period: maximal length


# ---- registry, legacy tones, errors -----------------------------------------------------------
@pytest.mark.parametrize("key", list(MODELS))
def test_describe_round_trips_through_make_signal(key: str) -> None:
    sig = MODELS[key]()
    desc = json.loads(json.dumps(sig.describe()))
    again = S.make_signal(**desc)
    assert again == sig and hash(again) == hash(sig) and desc["name"] == sig.name
    np.testing.assert_array_equal(again.sample(3.3, 1e-3, 50), sig.sample(3.3, 1e-3, 50))


def test_make_signal_errors() -> None:
    with pytest.raises(ConfigError, match="unknown signal"):
        S.make_signal("fm")
    with pytest.raises(ConfigError):
        S.make_signal("ofdm", occupancy=9)
    with pytest.raises(ConfigError):
        S.make_signal("am-broadcast", wrong=1)
    with pytest.raises(ConfigError):
        S.Carrier().sample(0.0, 0.0, 10)


def test_tone_am_reproduces_the_legacy_scene_tones() -> None:
    """Seeded with the old FrameSource key, ToneAm is the old message (to the 2^-24 Hz rounding)."""
    key = [1, 7919, zlib.crc32(b"tx-1")]
    sig = S.ToneAm(mod_index=0.3, n_tones=24, band_hz=(150.0, 2800.0), seed=key)
    trng = np.random.default_rng(key)
    freq, phase = trng.uniform(150.0, 2800.0, 24), trng.uniform(0.0, 2 * math.pi, 24)
    t = 7.0 + np.arange(600) / FS
    msg = (math.sqrt(2 / 24) * np.exp(1j * (2 * np.pi * np.outer(t, freq) + phase))).sum(axis=1).real
    np.testing.assert_allclose(sig.sample(7.0, 1 / FS, 600).real, 1 + 0.3 * msg, atol=1e-5)
    assert sig.mean_power == pytest.approx(1.09)


@pytest.mark.parametrize("analytic", [False, True])
def test_programme_interpolates_its_audio_samples_continuously(analytic: bool) -> None:
    """At the audio instants i/12000 the programme is its audio samples (the kernel interpolates),
    and it is continuous there (the kernel's polynomial pieces meet)."""
    prog = S._Programme("speech", (50.0, 4500.0), 3, analytic)
    start = 5 * prog.length - 300  # across a slot boundary
    audio = prog.span(start, start + 600)
    t = np.arange(start, start + 600) / S.AUDIO_RATE
    s, f = divmod(float(t[0]), 1.0)
    on = prog.values(int(s), f, 1.0 / S.AUDIO_RATE, 600)
    np.testing.assert_allclose(on, audio, rtol=0, atol=1e-7 * np.abs(audio).max())
    for eps in (2e-15, -2e-15):  # either side of the knot, where the polynomial pieces meet
        near = np.array([prog.values(int(s), f + eps + k / S.AUDIO_RATE, 1.0, 1)[0] for k in range(0, 600, 37)])
        np.testing.assert_allclose(near, on[::37], rtol=0, atol=1e-9 * np.abs(audio).max())


@pytest.mark.parametrize("key", ["am-speech", "dcf77", "ofdm"])
def test_pickled_signal_is_the_same_function(key: str) -> None:
    import pickle

    sig = MODELS[key]()
    ref = sig.sample(10.3, 1.0 / FS, 700)
    again = pickle.loads(pickle.dumps(sig))
    assert again == sig
    np.testing.assert_array_equal(again.sample(10.3, 1.0 / FS, 700), ref)


@pytest.mark.parametrize("key", list(ALL))
def test_sparse_grids(key: str) -> None:
    """Steps of seconds to minutes (long-run averages) touch only the slots, symbols and seconds
    that hold samples, and still give the function's values.  Instants k*dt up to 2 hours from t0
    are themselves rounded to ~1e-16 (k*dt) s, so the values agree to ~1e-10 (k*dt) relative."""
    epoch = 1_300_000_000 * 10**9
    sig = ALL[key]()
    for dt in (0.7317, 61.37):
        ref = sig.sample(5.5, dt, 60, epoch_gps_ns=epoch)  # programmes: a new 2.5 s slot per sample
        for k in (0, 17, 59):
            one = ALL[key]().sample(5.5 + k * dt, 1.0, 1, epoch_gps_ns=epoch)
            _same(ref[k : k + 1], one, f"dt {dt} k {k}", tol=max(1e-9, 1e-10 * k * dt))
