"""Signal metrics against synthetic signals with known truth (sdrlab.testing), the known traps,
scaling invariances (hypothesis) and laziness on dask."""

from __future__ import annotations

import math
from typing import Any, Callable

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from sdrlab import metrics as M
from sdrlab import model
from sdrlab import testing as T

FS = 12000.0
NOISE = -60.0
DENSITY = T.noise_density_dbfs_hz(NOISE, FS)  # -100.79 dBFS/Hz


def one(x: xr.DataArray) -> float:
    """The single station's value."""
    return float(x.values.reshape(-1)[0])


def db(x: float) -> float:
    return 10.0 * math.log10(x)


# ---- tones with known SNR, power, noise and offset -------------------------------------------
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 31.0, 40.0])
def test_tone_snr_power_and_noise_floor(snr_db: float) -> None:
    z = T.tone(snr_db, 1234.5, fs=FS, duration_s=1.0, noise_dbfs=NOISE, seed=7)
    m = M.metrics(z, fs=FS)
    tol = 1.0 if snr_db == 0.0 else 0.5
    assert abs(one(m["snr_db"]) - snr_db) <= tol
    assert abs(one(m["signal_power_dbfs"]) - (NOISE + snr_db)) <= tol
    assert abs(one(m["noise_floor_dbfs_hz"]) - DENSITY) <= 0.5
    total = db(10 ** ((NOISE + snr_db) / 10) + 10 ** (NOISE / 10))
    # absolute dBFS (never normalised to the peak): a -60 dBFS noise + tone reads its true level
    assert abs(one(m["total_power_dbfs"]) - total) <= 0.1
    assert m["snr_db"].attrs["noise_bandwidth"].startswith("sample_rate")


def test_snr_in_a_stated_bandwidth() -> None:
    z = T.tone(31.0, 500.0, fs=FS, seed=3)
    full = one(M.snr(z, fs=FS))
    narrow = M.snr(z, fs=FS, bandwidth_hz=2500.0)
    assert narrow.attrs["noise_bandwidth_hz"] == 2500.0
    assert abs(one(narrow) - (full + db(FS / 2500.0))) < 1e-9


@pytest.mark.parametrize(
    "offset_hz", [0.0, 0.4, -0.7, 123.45, -987.6, 2999.5, 3000.4, -2999.8, -3000.6, 4321.1, -4888.8]
)
@pytest.mark.parametrize("snr_db", [0.0, 20.0])
def test_frequency_offset_within_1hz(offset_hz: float, snr_db: float) -> None:
    z = T.tone(snr_db, offset_hz, fs=FS, duration_s=1.0, seed=11)
    err = abs(one(M.frequency_offset(z, fs=FS)) - offset_hz)
    assert err <= 1.0
    assert err <= 0.15  # sub-bin: a tenth of the 1.46 Hz bin (the peak bin alone errs up to 0.73 Hz)


@pytest.mark.parametrize("window", ["hamming", "blackman"])
@pytest.mark.parametrize("offset_hz", [-2999.8, 17.3, 3000.4])
def test_frequency_offset_other_windows(window: str, offset_hz: float) -> None:
    z = T.tone(20.0, offset_hz, fs=FS, duration_s=1.0, seed=5)
    assert abs(one(M.frequency_offset(z, fs=FS, window=window)) - offset_hz) <= 0.15


def test_noise_floor_is_bias_corrected() -> None:
    """With one Welch segment (1 s) the raw median of the bins is ln 2 of the mean (-1.59 dB):
    the corrected floor is right, the uncorrected one would fail the 0.5 dB tolerance."""
    errs, raw = [], []
    for seed in range(5):
        z = T.tone(-300.0, 0.0, fs=FS, duration_s=1.0, seed=seed)  # noise only
        p = M.psd(z, FS)
        assert int(p["n_segments"][0]) == 1
        errs.append(one(M.noise_floor(p)) - DENSITY)
        raw.append(db(float(np.median(p.values))) - DENSITY)
    assert max(abs(e) for e in errs) <= 0.3
    assert abs(float(np.mean(errs))) <= 0.1
    assert float(np.mean(raw)) < -1.3  # what an uncorrected median would report


def test_chi2_ratio_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k in (1, 2, 5, 87, 1000, 30000):
        for q in (0.5, 0.25):
            want = stats.chi2.ppf(q, 2 * k) / (2 * k)
            assert M.chi2_quantile_ratio(k, q) == pytest.approx(want, rel=1e-6)
    assert M.chi2_quantile_ratio(1) == pytest.approx(math.log(2.0))
    assert np.isnan(M.chi2_quantile_ratio(0))


@pytest.mark.parametrize(
    ("bandwidth_hz", "mod_index", "snr_db"), [(1000.0, 0.7, 30.0), (2500.0, 1.0, 20.0), (400.0, 0.5, 10.0)]
)
def test_occupied_bandwidth_of_am(bandwidth_hz: float, mod_index: float, snr_db: float) -> None:
    z = T.am(snr_db, -700.0, fs=FS, duration_s=4.0, seed=2, mod_index=mod_index, bandwidth_hz=bandwidth_hz)
    want = T.am_occupied_bandwidth(mod_index, bandwidth_hz)
    got = one(M.occupied_bandwidth(z, fs=FS))
    assert abs(got - want) <= 0.05 * want
    # the signal power of the AM signal (carrier + sidebands) is right too
    assert abs(one(M.signal_power(z, fs=FS)) - (NOISE + snr_db)) <= 0.5


def test_psd_matches_scipy_welch_and_is_fft_shifted() -> None:
    signal = pytest.importorskip("scipy.signal")
    z = T.tone(20.0, -2500.0, fs=FS, duration_s=1.0, seed=4)
    for noverlap in (0, 512):
        p = M.psd(z, FS, nperseg=1024, noverlap=noverlap, center_hz=7_000_000.0)
        f, ref = signal.welch(z, fs=FS, window="hann", nperseg=1024, noverlap=noverlap, detrend=False,
                              return_onesided=False, scaling="density")
        np.testing.assert_allclose(p.values[0], np.fft.fftshift(ref), rtol=2e-4)
        np.testing.assert_allclose(p["frequency"].values, np.fft.fftshift(f))
    assert np.all(np.diff(p["frequency"].values) > 0)
    assert float(p["frequency"][p.argmax("frequency").values[0]]) == pytest.approx(-2500.0, abs=FS / 1024)
    assert float(p["frequency_abs"][0]) == 7_000_000.0 - FS / 2
    assert p.attrs["units"] == "FS^2/Hz"
    assert M.psd_db(p).attrs["units"] == "dBFS/Hz"


# ---- the traps -------------------------------------------------------------------------------
@pytest.mark.parametrize("offset_hz", [3.0, -12.0, 40.0])
def test_noise_not_taken_from_bins_next_to_dc(offset_hz: float) -> None:
    """A 31 dB tone a few Hz from the tuned frequency: the noise comes from the passband median,
    not from 'edge' bin indices of an unshifted spectrum (which sit next to DC, on the tone)."""
    z = T.tone(31.0, offset_hz, fs=FS, duration_s=1.0, seed=9)
    p = M.psd(z, FS)
    assert abs(one(M.snr(p)) - 31.0) <= 0.5
    assert abs(one(M.noise_floor(p)) - DENSITY) <= 0.5
    # the trap, for contrast: the "edge" bins of the unshifted (scipy-order) spectrum as noise,
    # believed to be at +-fs/2 but really next to DC
    unshifted = np.fft.ifftshift(p.values[0])
    naive_noise = float(np.mean(np.r_[unshifted[:64], unshifted[-64:]]))
    signal = float(np.sum(p.values[0]) * FS / p.sizes["frequency"])
    naive_snr = db(signal / (naive_noise * FS) - 1.0) if signal > naive_noise * FS else -math.inf
    assert naive_snr < 20.0  # the trap is real: it reads ~0 dB, not 31


def test_snr_is_not_s_plus_n_over_n() -> None:
    z = T.tone(0.0, 700.0, fs=FS, duration_s=2.0, seed=1)
    s = one(M.snr(z, fs=FS))
    s_plus_n_over_n = one(M.total_power(z)) - NOISE  # ~3.01 dB for a 0 dB SNR
    assert abs(s - 0.0) <= 1.0
    assert abs(s_plus_n_over_n - 3.01) <= 0.2
    assert abs(s - s_plus_n_over_n) > 2.0


def test_rssi_mean_is_linear_not_db() -> None:
    ds = xr.Dataset(
        {
            "frame_rssi_dbm": (("station", "frame"), np.array([[-100.0, -80.0, np.nan, -30.0]], np.float32)),
            "frame_received": (("station", "frame"), np.array([[True, True, False, False]])),
            "frame_flags": (("station", "frame"), np.array([[0, 2, 0, 2]], np.uint8)),
        },
        coords={"station": ["a"]},
    )
    r = M.rssi_summary(ds)
    want = db((1e-10 + 1e-8) / 2.0)  # -83.01 dBm; the dB mean would be -90
    assert one(r["rssi_mean_dbm"]) == pytest.approx(want, abs=1e-6)
    assert one(r["rssi_min_dbm"]) == -100.0
    assert one(r["rssi_max_dbm"]) == -80.0  # the -30 of a frame that never arrived is ignored
    assert r["rssi_mean_dbm"].attrs["units"] == "dBm"


def test_noise_floor_averages_in_linear_power() -> None:
    """Averaging PSD bins in dB would read 2.5 dB low for K = 1 (E[10 log10 chi2_2/2] = -2.51 dB)."""
    z = T.tone(-300.0, 0.0, fs=FS, duration_s=1.0, seed=21)
    p = M.psd(z, FS)
    in_db = float(np.mean(10 * np.log10(p.values[0])))
    assert abs(one(M.noise_floor(p)) - DENSITY) <= 0.3
    assert in_db - DENSITY < -2.0


def test_units_dbfs_unless_calibrated() -> None:
    ds = T.synthetic_dataset(2, 2.0)
    m = M.metrics(ds)
    for name, var in m.data_vars.items():
        assert var.attrs["units"] == M.UNITS[str(name)]
        if str(name).startswith("rssi_"):
            assert var.attrs["units"] == "dBm"
        else:
            assert "dBm" not in var.attrs["units"]
    table = M.metrics_table(m)
    assert [c for c in table.columns if "dbm" in c] == ["rssi_mean_dbm", "rssi_min_dbm", "rssi_max_dbm"]
    assert table.attrs["units"]["total_power_dbfs"] == "dBFS"
    assert list(table.index) == ["syn0", "syn1"]


# ---- scaling invariances ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    g=st.floats(1e-3, 30.0),
    snr_db=st.floats(5.0, 40.0),
    offset_hz=st.floats(-4500.0, 4500.0),
    seed=st.integers(0, 2**16),
)
def test_scaling_iq_shifts_powers_only(g: float, snr_db: float, offset_hz: float, seed: int) -> None:
    z = T.tone(snr_db, offset_hz, fs=FS, duration_s=1.0, seed=seed)
    a = M.metrics(z, fs=FS)
    b = M.metrics((z * np.float32(g)).astype(np.complex64), fs=FS)
    shift = 20.0 * math.log10(g)
    for name in ("signal_power_dbfs", "total_power_dbfs", "noise_floor_dbfs_hz"):
        assert one(b[name]) - one(a[name]) == pytest.approx(shift, abs=1e-3)
    assert one(b["snr_db"]) == pytest.approx(one(a["snr_db"]), abs=1e-3)
    assert one(b["frequency_offset_hz"]) == pytest.approx(one(a["frequency_offset_hz"]), abs=1e-4)
    assert one(b["occupied_bandwidth_hz"]) == pytest.approx(one(a["occupied_bandwidth_hz"]), rel=1e-4)


@settings(max_examples=10, deadline=None)
@given(g=st.floats(0.05, 20.0), seed=st.integers(0, 1000))
def test_scaling_am_keeps_bandwidth(g: float, seed: int) -> None:
    z = T.am(25.0, 300.0, fs=FS, duration_s=2.0, seed=seed, bandwidth_hz=1500.0)
    a = M.metrics(z, fs=FS)
    b = M.metrics((z * np.float32(g)).astype(np.complex64), fs=FS)
    assert one(b["occupied_bandwidth_hz"]) == pytest.approx(one(a["occupied_bandwidth_hz"]), rel=1e-4)
    assert one(b["snr_db"]) == pytest.approx(one(a["snr_db"]), abs=1e-3)
    assert one(b["signal_power_dbfs"]) - one(a["signal_power_dbfs"]) == pytest.approx(20 * math.log10(g), abs=1e-3)


# ---- whole sessions: padding, per-station rates, clipping, laziness --------------------------
@pytest.fixture(scope="module")
def session() -> xr.Dataset:
    return T.synthetic_dataset(7, 60.0, seed=3)


def check_against_truth(m: xr.Dataset, ds: xr.Dataset) -> None:
    truth = T.truth(ds)
    width = ds.attrs["passband_high_hz"] - ds.attrs["passband_low_hz"]  # the recorded +-5 kHz
    for sid, t in truth.items():
        r = m.sel(station=sid)
        tol = 1.0 if t["snr_db"] == 0.0 else 0.5
        # the truth's SNR is over fs; the metric's over the passband (the noise is white over fs)
        assert float(r["noise_bandwidth_hz"]) == width and int(r["passband_source"]) == 1, sid
        assert abs(float(r["snr_db"]) - (t["snr_db"] + db(t["sample_rate"] / width))) <= tol, sid
        assert abs(float(r["cn0_dbhz"]) - (t["signal_power_dbfs"] - t["noise_density_dbfs_hz"])) <= tol, sid
        assert float(r["passband_filled"]) == 0.0, sid
        assert abs(float(r["frequency_offset_hz"]) - t["frequency_offset_hz"]) <= 1.0, sid
        assert abs(float(r["noise_floor_dbfs_hz"]) - t["noise_density_dbfs_hz"]) <= 0.5, sid
        assert abs(float(r["signal_power_dbfs"]) - t["signal_power_dbfs"]) <= tol, sid
        # padding past n_samples (the last station holds half) is not counted: it would read -3 dB
        assert abs(float(r["total_power_dbfs"]) - t["total_power_dbfs"]) <= 0.05, sid
        assert float(r["rssi_mean_dbm"]) == pytest.approx(t["rssi_mean_dbm"], abs=1e-4)
        assert float(r["rssi_min_dbm"]) == t["rssi_min_dbm"]
        assert float(r["rssi_max_dbm"]) == t["rssi_max_dbm"]
        assert float(r["clipped_fraction"]) == t["clipped_fraction"]
        assert float(r["overload_fraction"]) == t["overload_fraction"]


def test_session_metrics_match_truth(session: xr.Dataset) -> None:
    assert len(set(session["n_samples"].values)) == 2  # the last station is shorter
    m = M.metrics(session)
    check_against_truth(m, session)
    # the S-meter mean is linear: 2.4 dB above the mean of the dB values
    received = session["frame_received"]
    db_mean = session["frame_rssi_dbm"].where(received).mean("frame")
    assert float((m["rssi_mean_dbm"] - db_mean).min()) > 2.0


def test_session_metrics_are_lazy_on_dask(session: xr.Dataset) -> None:
    ds = session.chunk({"station": 1, "sample": 2**17})
    with T.raise_if_dask_computes():
        m = M.metrics(ds)
        table_input = m
    for name, var in m.data_vars.items():
        assert isinstance(var.data, da.Array), name
    # the one pass reads the samples chunk by chunk: one task per input chunk, no rechunk/concatenate
    layers = m["snr_db"].data.__dask_graph__().layers
    welch = [v for k, v in layers.items() if str(k).startswith("sdrlab-welch-sums")]
    assert len(welch) == 1 and len(welch[0]) == ds["iq"].data.npartitions == 7 * 6
    assert not any("rechunk" in str(k) or "concatenate" in str(k) for k in layers)
    computed = table_input.compute()
    check_against_truth(computed, session)
    eager = M.metrics(session)
    for name in eager.data_vars:
        np.testing.assert_allclose(computed[name].values, eager[name].values, rtol=1e-6, atol=1e-4)


def test_raise_if_dask_computes_raises() -> None:
    x = da.ones(10, chunks=5)
    with pytest.raises(RuntimeError, match="too many dask computes"):
        with T.raise_if_dask_computes():
            x.sum().compute()
    with T.raise_if_dask_computes(max_computes=1) as sched:
        assert float(x.sum().compute()) == 10.0
    assert sched.total_computes == 1


def test_psd_on_dask_reads_only_the_rate_coordinate() -> None:
    ds = T.synthetic_dataset(3, 3.0, seed=1)
    lazy = ds.chunk({"station": 1, "sample": 10000})  # chunks not aligned to nperseg
    with T.raise_if_dask_computes(max_computes=1):
        p = M.psd(lazy, nperseg=4096)
    assert isinstance(p.data, da.Array)
    np.testing.assert_allclose(p.values, M.psd(ds, nperseg=4096).values, rtol=1e-5)
    assert "frequency_abs" in p.coords
    np.testing.assert_allclose(p["station_frequency"].values[:, -1] * 4096 / 2047,
                               ds["sample_rate"].values, rtol=1e-12)


def test_public_functions_agree_with_metrics() -> None:
    ds = T.synthetic_dataset(3, 5.0, seed=4)
    m = M.metrics(ds)
    p = M.psd(ds)
    pairs = [
        (M.noise_floor(p), "noise_floor_dbfs_hz"),
        (M.frequency_offset(ds), "frequency_offset_hz"),
        (M.signal_power(p), "signal_power_dbfs"),
        (M.snr(p), "snr_db"),
        (M.occupied_bandwidth(p), "occupied_bandwidth_hz"),
        (M.total_power(ds), "total_power_dbfs"),
        (M.clipping_fraction(ds)["clipped_fraction"], "clipped_fraction"),
        (M.rssi_summary(ds)["rssi_mean_dbm"], "rssi_mean_dbm"),
    ]
    for got, name in pairs:
        np.testing.assert_allclose(got.values, m[name].values, rtol=1e-9, err_msg=name)
    # overlapping segments: int16 and complex, numpy and dask (one chunk per station) agree
    ref = M.psd(model.to_complex(ds), noverlap=4096).values
    assert int(M.psd(ds, noverlap=4096)["n_segments"][0]) == 2 * (5 * 12000 // 8192) - 1
    np.testing.assert_allclose(M.psd(ds, noverlap=4096).values, ref, rtol=1e-5)
    lazy = ds.chunk({"station": 1, "sample": 8192 * 2})
    np.testing.assert_allclose(M.psd(lazy, noverlap=4096).values, ref, rtol=1e-5)
    # complex64 input (to_complex) gives the same as the int16 session
    mc = M.metrics(model.to_complex(ds), passband=(-5000.0, 5000.0))
    for name in ("snr_db", "noise_floor_dbfs_hz", "total_power_dbfs", "frequency_offset_hz"):
        np.testing.assert_allclose(mc[name].values, m[name].values, rtol=1e-5, err_msg=name)


def test_clipping_and_adc_overload() -> None:
    ds = T.synthetic_dataset(2, 6.0, overload_station=0, seed=5)
    truth = T.truth(ds)
    m = M.metrics(ds)
    assert truth["syn0"]["clipped_fraction"] > 0
    assert truth["syn0"]["overload_fraction"] == pytest.approx(3 / 140)
    for sid in ("syn0", "syn1"):
        assert float(m["clipped_fraction"].sel(station=sid)) == pytest.approx(truth[sid]["clipped_fraction"])
        assert float(m["overload_fraction"].sel(station=sid)) == pytest.approx(truth[sid]["overload_fraction"])
    assert float(m["clipped_fraction"].sel(station="syn1")) == 0.0
    # the complex path counts the same samples
    c = M.clipping_fraction(model.to_complex(ds))
    np.testing.assert_allclose(c["clipped_fraction"].values, m["clipped_fraction"].values)


def test_input_checks() -> None:
    z = T.tone(10.0, 0.0)
    with pytest.raises(ValueError, match="noverlap"):
        M.psd(z, FS, noverlap=8192)
    with pytest.raises(ValueError, match="pass fs"):
        M.psd(xr.DataArray(z[None], dims=("station", "sample")))
    with pytest.raises(ValueError, match="unknown window"):
        M.psd(z, FS, window="kaiser")
    short = M.metrics(z[:1000], fs=FS)  # fewer samples than one segment: NaN, not garbage
    assert np.isnan(one(short["snr_db"]))
    assert not np.isnan(one(short["total_power_dbfs"]))


# ---- band-limited captures as a KiwiSDR delivers them (issue 12) ---------------------------------
#: the Kiwi's passband FIR: 513-tap windowed sinc, Blackman-Nuttall window
KIWI_TAPS = 513
BLACKMAN_NUTTALL = [0.3635819, 0.4891775, 0.1365995, 0.0106411]
QUANTISATION_DBFS_HZ = 10 * math.log10(2 / 12 / model.FULL_SCALE**2 / FS)  # -138.9 dBFS/Hz at 12 kHz
N0 = -100.0  # in-band noise density of the band-limited captures, dBFS/Hz
Signal = Callable[[np.random.Generator, int], np.ndarray]


def kiwi_fir(lo: float, hi: float, fs: float = FS) -> np.ndarray:
    """Complex bandpass lo..hi Hz: windowed sinc, passband gain 1, -6 dB at lo and hi."""
    windows = pytest.importorskip("scipy.signal").windows
    n = np.arange(KIWI_TAPS) - (KIWI_TAPS - 1) / 2
    h = np.sinc((hi - lo) / fs * n) * windows.general_cosine(KIWI_TAPS, BLACKMAN_NUTTALL, sym=True)
    return h / h.sum() * np.exp(2j * np.pi * (lo + hi) / 2 / fs * n)


def tone_sig(power_dbfs: float, offset_hz: float, fs: float = FS) -> Signal:
    amp = math.sqrt(10 ** (power_dbfs / 10))
    return lambda rng, n: amp * np.exp(1j * (2 * np.pi * offset_hz / fs * np.arange(n) + rng.uniform(0, 2 * np.pi)))


def am_sig(power_dbfs: float, audio_hz: float, m: float = 0.7, fs: float = FS) -> Signal:
    """Full-carrier AM whose sidebands are flat out to +-audio_hz (an AM broadcast, idealised)."""
    def make(rng: np.random.Generator, n: int) -> np.ndarray:
        spec = np.zeros(n // 2 + 1, complex)
        k = int(audio_hz * n / fs)
        spec[1 : k + 1] = np.exp(1j * rng.uniform(0, 2 * np.pi, k))
        x = np.fft.irfft(spec, n)
        x /= np.sqrt(np.mean(x * x))
        return math.sqrt(10 ** (power_dbfs / 10) / (1 + m * m)) * (1 + m * x)
    return make


def dcf77_sig(power_dbfs: float, fs: float = FS) -> Signal:
    """DCF77-like: a carrier phase-modulated +-15.6 deg by random chips at 646 chip/s (sinc^2
    sidebands that fill +-500 Hz)."""
    def make(rng: np.random.Generator, n: int) -> np.ndarray:
        t = np.arange(n) / fs
        chips = rng.choice([-1.0, 1.0], size=int(t[-1] * 646.0) + 2)
        return math.sqrt(10 ** (power_dbfs / 10)) * np.exp(1j * np.deg2rad(15.6) * chips[(t * 646.0).astype(int)])
    return make


def received(sig: Signal | None, lo: float, hi: float, n: int, seed: int, n0: float = N0,
             filtered: bool = True) -> np.ndarray:
    """Complex white noise of density n0 (dBFS/Hz) plus the signal, through the Kiwi FIR (full scale)."""
    rng = np.random.default_rng(seed)
    m = n + KIWI_TAPS - 1
    sigma = math.sqrt(10 ** (n0 / 10) * FS / 2)
    z = sigma * (rng.standard_normal(m) + 1j * rng.standard_normal(m))
    if sig is not None:
        z = z + sig(rng, m)
    if not filtered:
        return z[:n]
    return pytest.importorskip("scipy.signal").fftconvolve(z, kiwi_fir(lo, hi), mode="valid")


def session_of(zs: list[np.ndarray], *, lo: float, hi: float, recorded: bool = True,
               rssi_dbm: list[np.ndarray] | None = None) -> xr.Dataset:
    """A session Dataset (sdrlab.model schema, int16) of complex full-scale captures, one per station."""
    from sdrlab import timing
    from sdrlab.receivers.kiwisdr import Capture, ReceiverInfo, Segment

    t0 = timing.utc_to_gps_ns(np.datetime64("2026-06-01T12:00:00", "ns"))
    caps = []
    for i, z in enumerate(zs):
        nf = z.size // 512
        iq = np.empty((nf * 512, 2), np.int16)
        iq[:, 0] = np.clip(np.rint(z[: nf * 512].real * model.FULL_SCALE), -32768, 32767)
        iq[:, 1] = np.clip(np.rint(z[: nf * 512].imag * model.FULL_SCALE), -32768, 32767)
        seg = Segment(
            samples=iq, frame_seq=np.arange(1, nf + 1, dtype=np.uint32), frame_flags=np.zeros(nf, np.uint8),
            frame_rssi_dbm=(rssi_dbm[i] if rssi_dbm else np.full(nf, np.nan)).astype(np.float32),
            frame_last_gps=np.zeros(nf, np.uint8),
            frame_gps_ns=t0 + np.rint(np.arange(nf) * 512 * 1e9 / FS).astype(np.int64),
            frame_received=np.ones(nf, bool), fit=timing.TimeFit(int(t0), FS, 1e-7, nf, 0, "ok"),
            end_reason="complete", seq_gaps=0, missing_frames=0,
        )
        info = ReceiverInfo(host="test", port=0, version="test", rx_chans=4, audio_rate=int(FS), sample_rate=FS,
                            name=f"band {i}", position=(48.0, 8.0 + i))
        caps.append(Capture(station=f"st{i}", frequency_hz=77_500.0, low_cut=lo, high_cut=hi, requested_s=nf * 512 / FS,
                            info=info, segments=[seg]))
    ds = model.build_dataset(caps, {}, session_id="band-limited")
    if not recorded:  # as the kiwi-wav importer records it
        ds.attrs.update(passband_low_hz=None, passband_high_hz=None, passband_source="not recorded")
    return ds


SNRS = [0.0, 10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "detected"])
@pytest.mark.parametrize("lo,hi", [(-500.0, 500.0), (-2500.0, 2500.0), (-5000.0, 5000.0), (300.0, 2700.0)])
def test_band_limited_tones_snr_and_noise_floor(lo: float, hi: float, recorded: bool) -> None:
    """Tones at 0..40 dB SNR in a Kiwi-filtered noise floor, int16-quantised: SNR (in the passband
    width) within 0.5 dB, C/N0 within 0.5 dB, noise floor within 1 dB of the in-band density, far
    above the quantisation floor the whole band's median would give; a detected passband within
    10 % of its width."""
    width = hi - lo
    f_tone = lo + 0.37 * width
    n = int(8 * FS)
    zs = [received(tone_sig(N0 + 10 * math.log10(width) + snr, f_tone), lo, hi, n, seed=i)
          for i, snr in enumerate(SNRS)]
    m = M.metrics(session_of(zs, lo=lo, hi=hi, recorded=recorded)).compute()
    assert (m["passband_source"] == (1 if recorded else 2)).all()
    assert (m["passband_filled"] == 0).all()
    np.testing.assert_allclose(m["passband_low_hz"], lo, atol=0.1 * width)
    np.testing.assert_allclose(m["passband_high_hz"], hi, atol=0.1 * width)
    np.testing.assert_allclose(m["passband_low_hz"], lo, atol=0.03 * width)  # in fact within a few Hz
    np.testing.assert_allclose(m["passband_high_hz"], hi, atol=0.03 * width)
    np.testing.assert_allclose(m["noise_bandwidth_hz"], m["passband_high_hz"] - m["passband_low_hz"])
    for i, snr in enumerate(SNRS):
        r = m.isel(station=i)
        assert abs(float(r["snr_db"]) - snr) <= 0.5, (snr, float(r["snr_db"]))
        assert abs(float(r["cn0_dbhz"]) - (snr + 10 * math.log10(width))) <= 0.5
        assert abs(float(r["noise_floor_dbfs_hz"]) - N0) <= 1.0
        assert abs(float(r["frequency_offset_hz"]) - f_tone) <= 1.0
    if width <= 2500.0:  # what the metrics reported before: the whole band's median, the quantisation
        old = M.metrics(session_of(zs[:1], lo=lo, hi=hi), passband=(-FS / 2, FS / 2))
        assert one(old["noise_floor_dbfs_hz"]) - QUANTISATION_DBFS_HZ < 3.0
        assert one(old["snr_db"]) > one(m["snr_db"].isel(station=0)) + 20.0


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "detected"])
@pytest.mark.parametrize("audio_hz", [4000.0, 4500.0])
def test_am_broadcast_filling_most_of_the_passband(audio_hz: float, recorded: bool) -> None:
    """An AM broadcast whose sidebands cover 80 / 90 % of +-5 kHz: the noise floor still within
    1 dB (the passband median, as before, reads the sidebands), not flagged, C/N0 right."""
    zs = [received(am_sig(N0 + 40.0 + 30.0, audio_hz), -5000.0, 5000.0, int(8 * FS), seed=s) for s in (1, 2)]
    ds = session_of(zs, lo=-5000.0, hi=5000.0, recorded=recorded)
    m = M.metrics(ds).compute()
    np.testing.assert_allclose(m["noise_floor_dbfs_hz"], N0, atol=1.0)
    assert (m["passband_filled"] == 0).all()
    np.testing.assert_allclose(m["cn0_dbhz"], 70.0, atol=0.5)
    np.testing.assert_allclose(m["snr_db"], 30.0, atol=0.5)
    # the estimator that was replaced: the bias-corrected median of the passband bins
    p = M.psd(ds)
    band = (p["frequency"] >= -4930) & (p["frequency"] <= 4930)
    median = float(p.where(band).median("frequency")[0]) / float(M.chi2_quantile_ratio(int(p["n_segments"][0])))
    assert 10 * math.log10(median) - N0 > 10.0


@pytest.mark.parametrize("duration_s", [4.0, 30.0])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "detected"])
def test_a_signal_that_fills_its_passband_is_flagged(duration_s: float, recorded: bool) -> None:
    """DCF77-like phase modulation fills +-500 Hz 50 dB over the noise: passband_filled, the noise
    floor an upper bound (and the bottom of the in-band spectrum, not a level inside it), SNR and
    C/N0 lower bounds; the detected passband still within 10 %."""
    power = N0 + 30.0 + 80.0
    zs = [received(dcf77_sig(power), -500.0, 500.0, int(duration_s * FS), seed=s) for s in (3, 4)]
    m = M.metrics(session_of(zs, lo=-500.0, hi=500.0, recorded=recorded)).compute()
    assert (m["passband_filled"] == 1).all()
    assert (m["noise_floor_dbfs_hz"] > N0 + 20).all()  # an upper bound, far above the true floor
    assert (m["snr_db"] < power - N0 - 30.0).all() and (m["cn0_dbhz"] < power - N0).all()
    np.testing.assert_allclose(m["passband_low_hz"], -500.0, atol=100.0)
    np.testing.assert_allclose(m["passband_high_hz"], 500.0, atol=100.0)
    # the floor reported is the lowest level the smoothed in-band PSD reaches, not above it
    p = M.psd_db(M.psd(zs[0].astype(np.complex64), FS)).values[0]
    f = np.fft.fftshift(np.fft.fftfreq(8192, 1 / FS))
    inner = p[(f > -400) & (f < 400)]
    assert float(m["noise_floor_dbfs_hz"][0]) <= np.percentile(inner, 50)


def test_passband_not_detectable_means_whole_band() -> None:
    """No skirt (white noise over the whole band: nothing filtered it) and a skirt only 7 dB over the
    quantisation floor: the whole band, said so (passband_source 0), SNR in fs."""
    n = int(8 * FS)
    snr_fs = 20.0
    wide = received(tone_sig(N0 + 10 * math.log10(FS) + snr_fs, 700.0), 0, 0, n, seed=5, filtered=False)
    faint = received(None, -2500.0, 2500.0, n, seed=6, n0=QUANTISATION_DBFS_HZ + 7.0)
    m = M.metrics(session_of([wide, faint], lo=-2500.0, hi=2500.0, recorded=False)).compute()
    assert list(m["passband_source"].values) == [0.0, 0.0]
    np.testing.assert_allclose(m["noise_bandwidth_hz"], FS)
    assert abs(float(m["snr_db"][0]) - snr_fs) <= 0.5
    assert abs(float(m["noise_floor_dbfs_hz"][0]) - N0) <= 0.5
    assert m.attrs["passband_source"].startswith("detected")
    # a bare array says nothing of a receiver: the whole band, unless asked to detect
    z = received(None, -500.0, 500.0, n, seed=7)
    assert int(M.passband(z, fs=FS)["passband_source"][0]) == 0
    pb = M.passband(z, fs=FS, passband="detect")
    assert int(pb["passband_source"][0]) == 2 and abs(float(pb["passband_high_hz"][0]) - 500.0) < 10.0


def test_passband_mode_and_recorded_passband() -> None:
    from sdrlab.welch import passband_mode, recorded_passband

    rec = {"passband_low_hz": -5000.0, "passband_high_hz": 5000.0}
    assert passband_mode(rec, None) == ("receiver", -5000.0, 5000.0)
    assert passband_mode(rec, (-100.0, 100.0)) == ("given", -100.0, 100.0)
    assert passband_mode(rec, "detect")[0] == "detect"
    assert passband_mode({}, None, session=True)[0] == "detect"
    assert passband_mode({}, None)[0] == "whole band"
    assert recorded_passband({**rec, "passband_source": "not recorded"}) is None
    assert recorded_passband({"passband_low_hz": None, "passband_high_hz": None}) is None
    # a kiwi-wav import made before "not recorded" existed claimed +-rate/2: not a passband
    assert recorded_passband({"passband_low_hz": -6000.5, "passband_high_hz": 6000.5, "import_format": "kiwi-wav"}) is None
    with pytest.raises(ValueError, match="detect"):
        passband_mode(rec, "auto")
    with pytest.raises(ValueError, match="above"):
        passband_mode(rec, (100.0, -100.0))


# ---- AGC --------------------------------------------------------------------------------------
def agc_session(step_db: float, *, chunks: dict[str, int] | None = None) -> tuple[xr.Dataset, float]:
    """Two stations of a noisy tone in +-2.5 kHz; the S-meter (dBm, 0.1 dB steps) reads the
    filtered signal before the gain; station 1's gain steps by ``step_db`` half way through."""
    n = 512 * 200
    zs, rssi = [], []
    for i in range(2):
        y = received(tone_sig(-40.0, 300.0), -2500.0, 2500.0, n, seed=10 + i)
        frame_dbfs = 10 * np.log10(np.mean(np.abs(y.reshape(-1, 512)) ** 2, axis=1))
        rssi.append(np.round(frame_dbfs - 10.0, 1))  # this receiver's calibration: 0 dBFS = -10 dBm
        gain = np.ones(n)
        if i == 1:
            gain[n // 2 :] = 10 ** (step_db / 20)
        zs.append(y * gain * 10 ** (-20 / 20))  # and a 20 dB gain before the IQ leaves it
    ds = session_of(zs, lo=-2500.0, hi=2500.0, rssi_dbm=rssi)
    return (ds.chunk(chunks) if chunks else ds), step_db


@pytest.mark.parametrize("step_db", [3.0, 6.0, -4.0])
def test_agc_gain_step_is_flagged_and_constant_gain_is_not(step_db: float) -> None:
    ds, _ = agc_session(step_db)
    m = M.metrics(ds).compute()
    steady, stepped = m.isel(station=0), m.isel(station=1)
    assert float(steady["agc_gain_range_db"]) <= 0.3 and float(steady["agc_gain_changed"]) == 0.0
    assert abs(float(stepped["agc_gain_range_db"]) - abs(step_db)) <= 0.3
    assert float(stepped["agc_gain_changed"]) == 1.0
    xr.testing.assert_allclose(M.agc_gain(ds), m[["agc_gain_range_db", "agc_gain_changed"]])
    assert m["agc_gain_changed"].attrs["threshold_db"] == M.AGC_CHANGE_DB


def test_agc_needs_the_s_meter() -> None:
    ds, _ = agc_session(6.0)
    ds["frame_rssi_dbm"][:] = np.nan  # a kiwi-wav file keeps none
    m = M.metrics(ds).compute()
    assert np.isnan(m["agc_gain_range_db"]).all() and np.isnan(m["agc_gain_changed"]).all()
    ds["frame_rssi_dbm"][:] = -127.0  # an S-meter stuck at its floor says nothing either
    assert np.isnan(M.agc_gain(ds)["agc_gain_range_db"]).all()


def test_new_metrics_are_lazy_and_equal_on_dask() -> None:
    """Chunks not aligned to 512 or 8192: the one pass still yields the same per-frame powers."""
    eager_ds, _ = agc_session(6.0)
    eager_ds.attrs.update(passband_low_hz=None, passband_high_hz=None, passband_source="not recorded")
    lazy_ds = eager_ds.chunk({"station": 1, "sample": 30000})
    with T.raise_if_dask_computes():
        lazy = M.metrics(lazy_ds)
    for name in ("agc_gain_range_db", "passband_low_hz", "passband_filled", "cn0_dbhz"):
        assert isinstance(lazy[name].data, da.Array), name
    xr.testing.assert_allclose(lazy.compute(), M.metrics(eager_ds), rtol=1e-5, atol=1e-4)


# ---- real KiwiSDR recordings: DCF77 on 2020-08-13 ---------------------------------------------
def test_dcf77_real_recordings(dcf77_dir: Any) -> None:
    """Three real kiwirecorder files: the passband (+-500 Hz, not recorded) is detected at each
    station, the noise floor is measured inside it (not the -138.9 dBFS/Hz quantisation floor of
    the whole band), the phase modulation fills the passband so the floor is flagged as an upper
    bound, and the SNR is no longer the 87 dB of the whole band's median."""
    from sdrlab.interchange.kiwiwav import import_kiwi_wav

    ds = import_kiwi_wav(sorted(dcf77_dir.glob("*_iq.wav")), positions_dir=dcf77_dir / "gnss_pos")
    assert ds.attrs["passband_source"] == "not recorded" and ds.attrs["passband_low_hz"] is None
    m = M.metrics(ds).compute()
    assert list(m["station"].values) == ["HB9ODP", "JO51xl", "pa0rdt"]
    assert (m["passband_source"] == 2).all()
    np.testing.assert_allclose(m["passband_low_hz"], -500.0, atol=100.0)
    np.testing.assert_allclose(m["passband_high_hz"], 500.0, atol=100.0)
    assert (m["noise_floor_dbfs_hz"] > QUANTISATION_DBFS_HZ + 60.0).all()
    assert (m["passband_filled"] == 1).all()
    assert ((m["snr_db"] > 10.0) & (m["snr_db"] < 30.0)).all()
    assert ((m["cn0_dbhz"] > 40.0) & (m["cn0_dbhz"] < 60.0)).all()
    assert np.isnan(m["agc_gain_range_db"]).all()  # the files keep no S-meter
    # the complex samples (to_complex copies the None passband attrs) are measured alike
    mc = M.metrics(model.to_complex(ds))
    for name in ("passband_low_hz", "passband_high_hz", "noise_floor_dbfs_hz", "snr_db", "passband_filled"):
        np.testing.assert_allclose(mc[name].values, m[name].values, rtol=1e-4, atol=1e-3, err_msg=name)
    # a session imported before the importer said "not recorded" (+-rate/2 claimed) reads the same
    legacy = ds.copy()
    legacy.attrs.update(passband_low_hz=-6000.5, passband_high_hz=6000.5)
    del legacy.attrs["passband_source"]
    xr.testing.assert_allclose(M.metrics(legacy).compute(), m)


# ---- interval metrics: the metric time series of a session ----------------------------------


def test_interval_metrics_of_a_stationary_session_agree_with_the_whole_and_cover_it():
    ds = T.synthetic_dataset(n_stations=3, duration_s=35.0, seed=21)
    m = M.interval_metrics(ds, 10.0).compute()
    whole = M.metrics(ds).compute()
    assert m.sizes == {"station": 3, "interval": 4}
    n = ds["n_samples"].values
    # whole frames, the intervals tile each station's valid samples exactly
    assert (m["interval_samples"].values[:, :-1] % 512 == 0).all()
    assert (m["interval_samples"].sum("interval").values == n).all()
    for v in ("snr_db", "total_power_dbfs", "noise_floor_dbfs_hz", "rssi_mean_dbm"):
        iv = m[v].values
        got = iv[~np.isnan(iv)]
        assert got.size >= 9
        ref = np.repeat(whole[v].values[:, None], 4, axis=1)[~np.isnan(iv)]
        assert np.abs(got - ref).max() < 0.3, v
    # interval k starts k * 10 s (to a frame) after the station's first sample, on its own rate
    fs = ds["sample_rate"].values
    dt = (m["interval_start"].values - ds["start_time"].values[:, None]) / np.timedelta64(1, "ns") / 1e9
    expect = np.round(np.arange(4)[None, :] * 10.0 * fs[:, None] / 512) * 512 / fs[:, None]
    np.testing.assert_allclose(dt, expect, atol=1e-8)
    assert m.attrs["interval_s"] == 10.0


def test_interval_metrics_follow_a_level_step_between_intervals():
    """Station 0 is 6.02 dB louder in its second 10 s (signal and noise): only that interval says so."""
    ds = T.synthetic_dataset(n_stations=2, duration_s=30.0, seed=22).load()
    fs = float(ds["sample_rate"].values[0])
    a, b = int(round(10 * fs / 512) * 512), int(round(20 * fs / 512) * 512)
    iq = ds["iq"].values.copy()
    iq[0, a:b] = np.clip(iq[0, a:b].astype(np.int32) * 2, -32768, 32767).astype(np.int16)
    ds["iq"] = (ds["iq"].dims, iq)
    m = M.interval_metrics(ds, 10.0).compute()
    p = m["total_power_dbfs"].values
    assert p[0, 1] - p[0, 0] == pytest.approx(6.02, abs=0.1)
    assert p[0, 2] - p[0, 0] == pytest.approx(0.0, abs=0.1)
    other = p[1][~np.isnan(p[1])]  # the other station (shorter: its last interval is empty) unchanged
    assert other.size >= 2 and np.abs(other - other[0]).max() < 0.1
    assert m["snr_db"].values[0, 1] == pytest.approx(m["snr_db"].values[0, 0], abs=0.3)  # both scaled


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan")])
def test_interval_metrics_need_a_positive_interval(bad):
    with pytest.raises(ValueError, match="interval_s"):
        M.interval_metrics(T.synthetic_dataset(n_stations=1, duration_s=2.0), bad)


def test_interval_metrics_on_the_real_dcf77_recordings(dcf77_dir: Any) -> None:
    """The metric time series on three real KiwiSDR files: every interval finds the detected
    +-500 Hz passband and a floor inside it, and the intervals agree with the whole recording
    (DCF77's carrier is steady; the SNR per 10 s within 1 dB of the whole)."""
    from sdrlab.interchange.kiwiwav import import_kiwi_wav

    ds = import_kiwi_wav(sorted(dcf77_dir.glob("*_iq.wav")), positions_dir=dcf77_dir / "gnss_pos")
    m = M.interval_metrics(ds, 10.0).compute()
    whole = M.metrics(ds).compute()
    full = m["interval_samples"].values >= 10.0 * ds["sample_rate"].values[:, None] - 512
    assert full.sum() >= 3 * 2  # at least two whole intervals per station
    for name, tol in (("snr_db", 1.0), ("noise_floor_dbfs_hz", 1.0), ("passband_low_hz", 50.0),
                      ("passband_high_hz", 50.0)):
        iv = m[name].values
        ref = np.broadcast_to(whole[name].values[:, None], iv.shape)
        assert np.abs(iv[full] - ref[full]).max() < tol, name
    assert (m["noise_floor_dbfs_hz"].values[full] > QUANTISATION_DBFS_HZ + 60.0).all()
