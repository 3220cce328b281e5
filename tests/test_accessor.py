"""The ``.sdr`` accessor and the plots, on a synthetic session with known truth (no network)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

import sdrlab  # noqa: F401  (registers .sdr)
from sdrlab import model, testing


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    d = testing.synthetic_dataset(n_stations=3, duration_s=4.0, snr_db=[10.0, 20.0, 30.0],
                                  offset_hz=[500.0, -1200.0, 2000.0], seed=3)
    d.attrs.update(transmitter_latitude=50.0, transmitter_longitude=8.0)
    return d


def test_accessor_forwards_to_the_model_and_metrics(ds):
    z = ds.sdr.iq()
    xr.testing.assert_identical(z, model.to_complex(ds))
    assert ds.sdr.time().dims == ("station", "sample")
    p = ds.sdr.psd()
    assert p.dims == ("station", "frequency")
    assert float((p * float(p["frequency"][1] - p["frequency"][0])).sum("frequency").max()) > 0
    m = ds.sdr.metrics().compute()
    truth = testing.truth(ds)
    width = ds.attrs["passband_high_hz"] - ds.attrs["passband_low_hz"]
    for i, sid in enumerate(m["station"].values):
        t = truth[str(sid)]  # SNR over fs; the metric's is over the passband (noise white over fs)
        assert float(m["snr_db"].sel(station=sid)) == pytest.approx(
            t["snr_db"] + 10 * np.log10(t["sample_rate"] / width), abs=0.5)
        assert float(m["frequency_offset_hz"].sel(station=sid)) == pytest.approx(
            truth[str(sid)]["frequency_offset_hz"], abs=1.0)
    t = ds.sdr.metrics_table()
    assert isinstance(t, pd.DataFrame) and list(t.index) == list(ds["station"].values)
    assert "snr_db" in t.columns
    # on a DataArray too
    xr.testing.assert_allclose(z.sdr.psd(), p)
    assert ds["iq"].sdr.iq().dtype == np.complex64


def test_spectrogram_shape_and_peak(ds):
    s = ds.sdr.spectrogram(nperseg=512)
    assert s.dims == ("station", "time", "frequency")
    assert s["time"].attrs["units"] == "s" and s["frequency"].attrs["units"] == "Hz"
    truth = testing.truth(ds)
    for sid in s["station"].values:
        peak = float(s.sel(station=sid).mean("time").idxmax("frequency"))
        bin_hz = float(s["frequency"][1] - s["frequency"][0])
        assert abs(peak - truth[str(sid)]["frequency_offset_hz"]) <= bin_hz


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()] if fig.axes[0].get_legend() else []


def test_plot_psd_lines_labels_and_peaks(ds):
    fig = ds.sdr.plot_psd()
    ax = fig.axes[0]
    assert len(ax.get_lines()) == ds.sizes["station"]
    assert ax.get_ylabel() == "PSD (dBFS/Hz)"
    assert ax.get_xlabel().startswith("Frequency offset") and "(Hz)" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(ds["station"].values)
    truth = testing.truth(ds)
    for line, sid in zip(ax.get_lines(), ds["station"].values):
        x, y = line.get_data()
        assert abs(x[np.nanargmax(y)] - truth[str(sid)]["frequency_offset_hz"]) < 3.0  # the tone is the peak


def test_plot_spectrogram_one_panel_per_station(ds):
    fig = ds.sdr.plot_spectrogram(nperseg=512)
    panels = [ax for ax in fig.axes if ax.get_title()]
    meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == ds.sizes["station"]
    titles = [ax.get_title() for ax in panels]
    assert titles == list(ds["station"].values)
    cbar = [ax for ax in fig.axes if ax.get_ylabel() == "PSD (dBFS/Hz)"]
    assert cbar, "colour bar with units"
    assert all(ax.get_xlabel() == "Frequency offset (Hz)" for ax in fig.axes if ax.get_title())


def test_plot_map_stations_snr_colour_and_transmitter(ds):
    fig = ds.sdr.plot_map()
    ax = fig.axes[0]
    sc = ax.collections[0]
    offsets = sc.get_offsets()
    np.testing.assert_allclose(offsets[:, 0], ds["longitude"].values)
    np.testing.assert_allclose(offsets[:, 1], ds["latitude"].values)
    snr = ds.sdr.metrics()["snr_db"].values
    np.testing.assert_allclose(sc.get_array(), snr)
    assert any(ax_.get_ylabel().startswith("SNR") and "(dB)" in ax_.get_ylabel() for ax_ in fig.axes)
    tx = [ln for ln in ax.get_lines() if ln.get_label() == "transmitter"]
    assert tx and tuple(np.ravel(tx[0].get_data())) == (8.0, 50.0)
    assert {t.get_text() for t in ax.texts} == set(ds["station"].values)
    assert ax.get_xlabel() == "Longitude (°E)" and ax.get_ylabel() == "Latitude (°N)"


def test_plot_metrics_bars_per_station(ds):
    fig = ds.sdr.plot_metrics()
    m = ds.sdr.metrics().compute()
    assert len(fig.axes) == 4
    snr_ax = next(ax for ax in fig.axes if "(dB)" in ax.get_ylabel() and "SNR" in ax.get_ylabel())
    heights = [p.get_height() for p in snr_ax.patches]
    np.testing.assert_allclose(heights, m["snr_db"].values)
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == list(ds["station"].values)


def test_stored_metrics_say_how_they_were_measured_and_table_recomputes(ds):
    from sdrlab.acquire import add_metrics

    d = add_metrics(ds.copy())
    assert "noise_bandwidth" in " ".join(d["snr_db"].attrs) or d["snr_db"].attrs.get("noise_bandwidth")
    assert "nperseg" in d.attrs["metrics_definition"]
    # the table measures the samples with the parameters given, not the stored values
    t_default = d.sdr.metrics_table()
    t_narrow = d.sdr.metrics_table(bandwidth_hz=2500.0)
    diff = t_narrow["snr_db"] - t_default["snr_db"]
    assert (t_default["noise_bandwidth_hz"] == 10000.0).all()  # the recorded passband's width
    np.testing.assert_allclose(diff, 10 * np.log10(10000.0 / 2500.0), atol=0.05)


def test_dataarray_accessor_time_spectrogram_and_passband(ds):
    z = ds.sdr.iq()
    assert z.attrs["passband_low_hz"] == ds.attrs["passband_low_hz"]
    xr.testing.assert_allclose(z.sdr.metrics()["snr_db"], ds.sdr.metrics()["snr_db"])
    s = z.sdr.spectrogram(nperseg=512)
    assert s.dims == ("station", "time", "frequency")
    t = z.sdr.time()
    assert t.dims == ("station", "sample")
    assert (t.isel(sample=0) == ds["start_time"]).all()


def test_passband_recorded_and_detected_through_the_accessor():
    from tests.test_metrics import N0, received, session_of, tone_sig

    z = [received(tone_sig(N0 + 50.0, 1000.0), 300.0, 2700.0, 12000 * 4, seed=9)]
    recorded = session_of(z, lo=300.0, hi=2700.0)
    pb = recorded.sdr.passband()
    assert (float(pb["passband_low_hz"][0]), float(pb["passband_high_hz"][0]), int(pb["passband_source"][0])) == (
        300.0, 2700.0, 1)
    unknown = session_of(z, lo=300.0, hi=2700.0, recorded=False)
    for got in (unknown.sdr.passband(), unknown.sdr.iq().sdr.passband(), recorded.sdr.passband(passband="detect")):
        assert int(got["passband_source"][0]) == 2
        assert abs(float(got["passband_low_hz"][0]) - 300.0) < 24.0
        assert abs(float(got["passband_high_hz"][0]) - 2700.0) < 24.0
