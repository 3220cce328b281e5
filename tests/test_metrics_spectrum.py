"""Metrics of audio captures (S-meter + waterfall rows) against a synthetic band of known truth:
complex white noise of known density and a wide signal (band-limited noise) keyed on in half
of the rows, through a Hamming FFT averaged as OpenWebRX's server does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from sdrlab import model
from sdrlab.capture import AudioSegment, Capture, SmeterReadings, SpectrumRows
from sdrlab.metrics import metrics, metrics_table
from sdrlab.metrics_spectrum import window_sum_sq

FS = 240_000.0
N = 1024
AVG = 8
CENTRE = 145.4e6
TUNE = 145.5e6  # +100 kHz from the centre
N0_DB = -100.0  # dBFS/Hz
SIG_BW = 12_000.0
SIG_DB = -40.0  # total power of the wide signal, dBFS
LOW, HIGH = -6000.0, 6000.0
ROWS = 40


def band(rng, n, on):
    n0 = 10 ** (N0_DB / 10)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(n0 * FS / 2)
    if on:
        s = rng.standard_normal(n) + 1j * rng.standard_normal(n)
        taps = sps.firwin(801, SIG_BW / 2, fs=FS)
        s = np.convolve(s, taps, mode="same")
        s *= np.sqrt(10 ** (SIG_DB / 10) / np.mean(np.abs(s) ** 2))
        x = x + s * np.exp(2j * np.pi * (TUNE - CENTRE) * np.arange(n) / FS)
    return x


def rows_and_smeter(seed=3):
    rng = np.random.default_rng(seed)
    w = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(N) / (N - 1))
    db = np.empty((ROWS, N), np.float32)
    power = np.empty(ROWS)
    taps = sps.firwin(1201, (HIGH - LOW) / 2 + 160, fs=FS) * np.exp(
        2j * np.pi * (TUNE - CENTRE) * (np.arange(1201) - 600) / FS)
    for r in range(ROWS):
        x = band(rng, AVG * N, on=r % 2 == 1)
        spec = np.fft.fft(x.reshape(AVG, N) * w, axis=1)
        db[r] = np.fft.fftshift(10 * np.log10(np.mean(np.abs(spec) ** 2, axis=0)) - 70.0)
        y = np.convolve(x, taps, mode="valid")
        power[r] = np.mean(np.abs(y[::5]) ** 2)
    return db, power


def capture():
    db, power = rows_and_smeter()
    t = 1_796_000_000 * 10**9 + np.arange(ROWS, dtype=np.int64) * 111_000_000
    spec = SpectrumRows(db=db, receipt_ns=t, center_freq_hz=np.full(ROWS, CENTRE), samp_rate_hz=np.full(ROWS, FS),
                        fft_size=np.full(ROWS, N, np.int64))
    seg = AudioSegment(samples=np.zeros(12000, np.int16), nominal_rate_hz=12000.0,
                       message_end=np.array([12000]), message_receipt_ns=t[:1], frequency_hz=TUNE, mode="nfm",
                       low_cut=LOW, high_cut=HIGH, center_freq_hz=CENTRE, samp_rate_hz=FS)
    return Capture(station="owrx", frequency_hz=TUNE, low_cut=LOW, high_cut=HIGH, requested_s=5.0, kind="audio",
                   protocol="openwebrx", audio=[seg], spectrum=spec, smeter=SmeterReadings(power=power, receipt_ns=t))


def test_window_sum_sq_matches_the_protocol_table():
    # protocol page 4.5: 10 log10(sum w^2) - 70 = -37.89 dB at N = 4096
    assert 10 * np.log10(window_sum_sq(4096)) - 70 == pytest.approx(-37.89, abs=0.01)


def test_audio_metrics_against_the_known_band():
    ds = model.build_dataset([capture()], {})
    m = metrics(ds).sel(station="owrx")
    n0 = 10 ** (N0_DB / 10)
    b = HIGH - LOW + 320.0
    # noise floor: the median bin of the inner span is noise (the signal covers 5 % of the span)
    assert float(m["noise_floor_dbfs_hz"]) == pytest.approx(N0_DB, abs=0.3)
    # S-meter: half the readings noise only, half signal + noise
    total = 0.5 * (n0 * (HIGH - LOW + 320)) + 0.5 * (n0 * (HIGH - LOW + 320) + 10 ** (SIG_DB / 10))
    assert float(m["total_power_dbfs"]) == pytest.approx(10 * np.log10(total), abs=0.5)
    s_true = total - n0 * b
    assert float(m["signal_power_dbfs"]) == pytest.approx(10 * np.log10(s_true), abs=0.5)
    assert float(m["snr_db"]) == pytest.approx(10 * np.log10(s_true / (n0 * b)), abs=0.5)
    # occupancy of the wide signal: on in every other row
    assert float(m["occupancy_fraction"]) == pytest.approx(0.5, abs=0.01)
    band_true = 0.5 * n0 * (HIGH - LOW) + 0.5 * (n0 * (HIGH - LOW) + 10 ** (SIG_DB / 10))
    assert float(m["channel_power_fft_dbfs"]) == pytest.approx(10 * np.log10(band_true), abs=1.0)
    table = metrics_table(ds)
    assert table.loc["owrx", "snr_db"] == pytest.approx(float(m["snr_db"]))


def test_a_mixed_session_gets_both_kinds_of_metrics():
    from tests.test_model_audio import kiwi_capture

    ds = model.build_dataset([kiwi_capture(), capture()], {})
    m = metrics(ds).compute()
    assert m["station"].values.tolist() == ["kiwi", "owrx"]
    assert np.isfinite(float(m["noise_floor_dbfs_hz"].sel(station="kiwi")))
    assert np.isnan(float(m["occupancy_fraction"].sel(station="kiwi")))
    assert float(m["noise_floor_dbfs_hz"].sel(station="owrx")) == pytest.approx(N0_DB, abs=0.3)


def test_waterfall_psd_and_spectrogram_of_an_audio_session():
    ds = model.build_dataset([capture()], {})
    p = ds.sdr.psd()
    assert p.dims == ("station", "frequency") and p.sizes["frequency"] == N
    # the density away from the signal is the known N0; at the tuned frequency the wide signal
    f = p["frequency"].values
    quiet = (np.abs(f) > 20_000) & (np.abs(f - (CENTRE - TUNE)) > 2_000)
    assert 10 * np.log10(float(np.median(p.sel(station="owrx").values[quiet]))) == pytest.approx(N0_DB, abs=0.3)
    on = 10 * np.log10(float(p.sel(station="owrx").sel(frequency=0.0, method="nearest")))
    sig_density = 0.5 * 10 ** (SIG_DB / 10) / SIG_BW + 10 ** (N0_DB / 10)
    assert on == pytest.approx(10 * np.log10(sig_density), abs=1.0)
    sg = ds.sdr.spectrogram()
    assert sg.sizes["time"] == ROWS and sg.attrs["row_period_s"] == pytest.approx(0.111)
    rows_on = 10 * np.log10(sg.sel(station="owrx").sel(frequency=0.0, method="nearest").values)
    assert (rows_on[1::2] > rows_on[0::2] + 10).all()  # keyed on in every other row
    assert ds.sdr.plot_psd() is not None and ds.sdr.plot_spectrogram() is not None


def test_a_wide_signal_over_the_real_client_channel_power_and_occupancy_within_1_db():
    """End to end: a simulated OpenWebRX receiver (real server, real client, loopback) hearing a
    WFM broadcast 200 kHz wide, keyed on for the whole capture, tuned in WFM with its +-75 kHz
    passband: the waterfall's channel power (about 256 bins: a wide signal, where ADPCM's slope
    overload does not bite, section 11.3) and the S-meter's within 1 dB of the truth, the noise
    floor within 1 dB, occupancy 1; a quiet channel beside it: occupancy 0."""
    import asyncio

    from sdrlab.receivers.openwebrx import OwrxOptions, OwrxReceiver
    from sdrlab.sim.owrx import Band, Emitter, OwrxConfig, OwrxSimServer, Profile

    centre, rate, wfm_hz, quiet_hz = 98_000_000, 2_400_000, 98_500_000, 97_400_000
    band = Band(-110.0, (Emitter(wfm_hz, -50.0, "wfm", "tone"),))  # a tone: on all the time
    cfg = OwrxConfig(id="fm-site", name="FM site", lat=45.0, lon=7.6, asl=300, profiles=(
        Profile("rtlsdr", "fm", "RTL-SDR", "FM", centre, rate, wfm_hz, start_mod="wfm", band=band),))
    opts = OwrxOptions(mode="wfm", connect_spacing=0.0)
    with OwrxSimServer([cfg]) as sim:
        caps = [asyncio.run(OwrxReceiver("fm-site", "127.0.0.1", sim.ports["fm-site"], options=opts).capture(f, 4.0))
                for f in (wfm_hz, quiet_hz)]
        truth = sim.truth("fm-site")
    listened = [s for s in truth.sessions if s.started]
    ds = model.build_dataset([replace_station(caps[0], "on"), replace_station(caps[1], "off")], {})
    m = metrics(ds)
    on, off = m.sel(station="on"), m.sel(station="off")
    low, high = float(on["passband_low_hz"]), float(on["passband_high_hz"])
    assert (low, high) == (-75_000.0, 75_000.0)  # the WFM mode's own passband
    n0 = 10 ** (-110.0 / 10)
    band_truth = 10 * np.log10(10 ** (-50.0 / 10) * _fraction_inside(low, high) + n0 * (high - low))
    assert float(on["total_power_dbfs"]) == pytest.approx(10 * np.log10(listened[0].truth_power), abs=1.0)
    assert float(on["channel_power_fft_dbfs"]) == pytest.approx(band_truth, abs=1.0)
    assert float(on["noise_floor_dbfs_hz"]) == pytest.approx(-110.0, abs=1.0)
    assert float(on["occupancy_fraction"]) == 1.0 and float(off["occupancy_fraction"]) == 0.0


def _fraction_inside(low: float, high: float) -> float:
    """The share of a WFM broadcast's power within low..high of its carrier: all of it for
    +-75 kHz (Carson's 2 (75 + 15) kHz = 180 kHz holds 98 %; the passband's share is near 1)."""
    return 1.0 if (low, high) == (-75_000.0, 75_000.0) else float("nan")


def replace_station(cap, name):
    from dataclasses import replace

    return replace(cap, station=name)


def test_a_mixed_session_psd_and_spectrogram_give_every_station():
    """A KiwiSDR (IQ) and an OpenWebRX (waterfall) station in one session: ``ds.sdr.psd()`` gives
    both on the union of their bins, the IQ station exactly its Welch PSD, the audio station the
    known band's noise density; the spectrogram puts both on one time grid, the keyed signal
    still on in every other waterfall row; the plots draw each station on its own bins."""
    from sdrlab.metrics import psd
    from sdrlab.model_audio import iq_part
    from sdrlab.spectrogram import spectrogram
    from tests.test_model_audio import kiwi_capture

    ds = model.build_dataset([kiwi_capture(), capture()], {})
    p = ds.sdr.psd()
    assert p["station"].values.tolist() == ["kiwi", "owrx"]
    assert p["psd_source"].values.tolist() == ["welch", "waterfall"]
    assert p.attrs["uncalibrated_stations"] == ["owrx"] and p.attrs["units"] == "FS^2/Hz"
    kiwi = p.sel(station="kiwi").dropna("frequency")
    own = psd(iq_part(ds)).sel(station="kiwi")
    np.testing.assert_allclose(kiwi.values, own.values, rtol=1e-12)
    np.testing.assert_allclose(kiwi["frequency"].values, own["frequency"].values)
    owrx = p.sel(station="owrx").dropna("frequency")
    assert owrx.sizes["frequency"] == N and float(p["resolution_hz"].sel(station="owrx")) == FS / N
    f = owrx["frequency"].values
    quiet = (np.abs(f) > 20_000) & (np.abs(f - (CENTRE - TUNE)) > 2_000)
    assert 10 * np.log10(float(np.median(owrx.values[quiet]))) == pytest.approx(N0_DB, abs=0.3)
    np.testing.assert_allclose(p["frequency_abs"].values, TUNE + p["frequency"].values)

    sg = ds.sdr.spectrogram()
    assert sg["station"].values.tolist() == ["kiwi", "owrx"] and sg.attrs["row_period_s"] == pytest.approx(0.111)
    rows_on = 10 * np.log10(sg.sel(station="owrx").dropna("frequency", how="all").sel(frequency=0.0,
                                                                                       method="nearest").values)
    assert rows_on.size == ROWS and (rows_on[1::2] > rows_on[0::2] + 10).all()
    k_sg = sg.sel(station="kiwi").dropna("frequency", how="all").dropna("time", how="all")
    k_own = spectrogram(iq_part(ds)).sel(station="kiwi")
    assert k_sg.sizes["frequency"] == k_own.sizes["frequency"]
    # the IQ rows averaged into the coarser time bins keep their level
    assert 10 * np.log10(float(k_sg.mean())) == pytest.approx(10 * np.log10(float(k_own.mean())), abs=0.2)

    fig = ds.sdr.plot_psd()
    lines = fig.axes[0].get_lines()
    assert [len(ln.get_xdata()) for ln in lines] == [2048, N]  # plot_psd's nperseg 2048; the waterfall's bins
    assert np.isfinite(lines[1].get_ydata()).all() and "uncalibrated" in lines[1].get_label()
    assert ds.sdr.plot_spectrogram() is not None
