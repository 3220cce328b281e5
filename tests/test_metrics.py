"""Signal metrics against synthetic signals with known truth (sdrlab.testing), the known traps,
scaling invariances (hypothesis) and laziness on dask."""

from __future__ import annotations

import math

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
    for sid, t in truth.items():
        r = m.sel(station=sid)
        tol = 1.0 if t["snr_db"] == 0.0 else 0.5
        assert abs(float(r["snr_db"]) - t["snr_db"]) <= tol, sid
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
