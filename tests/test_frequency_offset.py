"""Carrier frequency offset against a reference (sdrlab.frequency_offset): the tone estimator on
synthetic audio, then end to end: the real OpenWebRX client over real sockets against simulated
receivers whose SDRs are +20, -35 and 0 ppm off, hearing a beacon and a target carrier; the
receivers' apparent tuning errors and the target's frequency against the simulator's truth, and
the refusals (NFM, AM, IQ stations, no tone)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sdrlab import model
from sdrlab.capture import AudioSegment, Capture
from sdrlab.errors import AnalysisRefused, ConfigError
from sdrlab.frequency_offset import carrier_offset, tone_frequency
from sdrlab.receivers import OwrxOptions, OwrxReceiver
from sdrlab.sim.owrx import Band, Emitter, OwrxConfig, OwrxSimServer, Profile

#: the beacon (known frequency) and the target carrier, 1137.4 Hz above its nominal 145.0125 MHz + 1 kHz
REFERENCE_HZ = 145_012_500.0
TARGET_NOMINAL_HZ = 145_013_500.0
TARGET_TRUE_HZ = 145_013_637.4
CENTRE = 145_000_000
DURATION_S = 6.0
#: receiver id -> its SDR's frequency error, ppm
PPM = {"rx-fast": 20.0, "rx-slow": -35.0, "rx-exact": 0.0}


@pytest.mark.parametrize("freq", [700.0, 1234.567, 2999.9])
def test_tone_frequency_far_below_a_bin(freq: float) -> None:
    """20 s of 12 kHz audio (FFT bin 0.05 Hz): a tone beside a stronger one and noise, as int16,
    within 1 mHz; noise alone stays under the 20 dB the offset asks for."""
    rng = np.random.default_rng(1)
    t = np.arange(12000 * 20) / 12000
    x = 0.2 * np.cos(2 * np.pi * freq * t + 0.3) + 0.4 * np.cos(2 * np.pi * (freq + 400) * t) \
        + 0.05 * rng.standard_normal(t.size)
    tone = tone_frequency((x * 32767).astype(np.int16), 12000, freq - 300, freq + 300, exclude=(freq + 395, freq + 405))
    assert tone.freq_hz == pytest.approx(freq, abs=1e-3)
    assert tone.snr_db > 40
    assert tone_frequency(0.05 * rng.standard_normal(t.size), 12000, 500, 1500).snr_db < 15


def _receiver(rid: str, i: int) -> OwrxConfig:
    band = Band(-124.0 + i, (Emitter(REFERENCE_HZ, -75.0, name="beacon"),
                             Emitter(TARGET_TRUE_HZ, -80.0, name="target")), seed=20 + i)
    return OwrxConfig(id=rid, ppm=PPM[rid], lat=45.0, lon=7.0 + i, profiles=(
        Profile("rtlsdr", "2m", "RTL-SDR", "2m", CENTRE, 2_400_000, 145_500_000, band=band),))


def _dial(ppm: float, mode: str) -> float:
    """Where an operator tunes after finding the beacon on the waterfall (to the nearest 500 Hz
    of its shift): the beacon 1 kHz inside the passband, the target beside it."""
    shift = round(-ppm * 1e-6 * REFERENCE_HZ / 500) * 500
    return REFERENCE_HZ + shift + (-1000 if mode == "usb" else 2500)


@pytest.fixture(scope="module")
def offsets():
    """USB on every receiver, LSB on the fast one, NFM on the slow one, AM on the exact one: all
    at once, the real client against the simulator on loopback."""
    receivers = [_receiver(rid, i) for i, rid in enumerate(PPM)]
    plan = [(rid, "usb") for rid in PPM] + [("rx-fast", "lsb"), ("rx-slow", "nfm"), ("rx-exact", "am")]
    with OwrxSimServer(receivers) as sim:
        async def run():
            return await asyncio.gather(*(
                OwrxReceiver(f"{rid}-{mode}", "127.0.0.1", sim.ports[rid],
                             options=OwrxOptions(mode=mode, connect_spacing=0.0)).capture(_dial(PPM[rid], mode),
                                                                                        DURATION_S)
                for rid, mode in plan))

        caps = asyncio.run(run())
        truth = {rid: sim.truth(rid) for rid in PPM}
    return {f"{rid}-{mode}": c for (rid, mode), c in zip(plan, caps)}, truth


def _session(caps: dict[str, Capture], *ids: str):
    return model.build_dataset([caps[i] for i in ids], {})


def test_tuning_error_and_target_frequency_against_the_truth(offsets) -> None:
    caps, truth = offsets
    ids = [f"{rid}-usb" for rid in PPM] + ["rx-fast-lsb"]
    ds = _session(caps, *ids)
    res = ds.sdr.carrier_offset(REFERENCE_HZ, TARGET_NOMINAL_HZ)
    assert res["station"].values.tolist() == ids
    for sid in ids:
        rid = sid.rsplit("-", 1)[0]
        t = truth[rid]
        assert t.ppm == PPM[rid]  # the side channel reports the receiver's error
        r = res.sel(station=sid)
        # the receiver shows the beacon at f / (1 + ppm 1e-6): -2900 Hz, +5076 Hz, 0 Hz
        want = t.apparent_hz(REFERENCE_HZ) - REFERENCE_HZ
        assert float(r["tuning_error_hz"]) == pytest.approx(want, abs=0.5), sid
        assert float(r["ppm"]) == pytest.approx(PPM[rid], abs=0.01), sid
        # the target against the beacon: its true frequency whatever the receiver's error
        assert float(r["target_hz"]) == pytest.approx(TARGET_TRUE_HZ, abs=0.5), sid
        assert float(r["target_offset_hz"]) == pytest.approx(137.4, abs=0.5), sid
        assert float(r["target_measured_hz"]) == pytest.approx(t.apparent_hz(TARGET_TRUE_HZ), abs=0.5), sid
        assert float(r["reference_snr_db"]) > 30 and float(r["target_snr_db"]) > 30
    # the errors really differ by kilohertz between receivers: the reference is what cancels them
    err = res["tuning_error_hz"].values
    assert err.max() - err.min() > 7000


def test_nfm_am_and_iq_stations_are_refused(offsets) -> None:
    caps, _ = offsets
    with pytest.raises(AnalysisRefused, match="rx-slow-nfm.*nfm") as nfm:
        carrier_offset(_session(caps, "rx-fast-usb", "rx-slow-nfm"), REFERENCE_HZ, TARGET_NOMINAL_HZ)
    assert nfm.value.stations == ["rx-slow-nfm"] and nfm.value.reason == "mode"
    with pytest.raises(AnalysisRefused, match="de-emphasis") as am:
        _session(caps, "rx-exact-am").sdr.carrier_offset(REFERENCE_HZ, TARGET_NOMINAL_HZ)
    assert am.value.stations == ["rx-exact-am"]
    from tests.test_model_audio import kiwi_capture

    mixed = model.build_dataset([kiwi_capture(), caps["rx-fast-usb"]], {})
    with pytest.raises(AnalysisRefused, match="IQ") as iq:
        carrier_offset(mixed, REFERENCE_HZ, TARGET_NOMINAL_HZ)
    assert iq.value.stations == ["kiwi"] and iq.value.reason == "iq station"
    # leaving the IQ station out, the audio one is measured
    res = carrier_offset(mixed, REFERENCE_HZ, TARGET_NOMINAL_HZ, stations=["rx-fast-usb"])
    assert float(res["target_hz"].sel(station="rx-fast-usb")) == pytest.approx(TARGET_TRUE_HZ, abs=0.5)
    with pytest.raises(ConfigError):
        carrier_offset(mixed, REFERENCE_HZ, TARGET_NOMINAL_HZ, stations=["rx-fast-usb"], target_search_hz=0)


def _noise_capture(station: str) -> Capture:
    rng = np.random.default_rng(5)
    n = 12000 * 4
    seg = AudioSegment(samples=(3000 * rng.standard_normal(n)).astype(np.int16), nominal_rate_hz=12000.0,
                       message_end=np.array([n]), message_receipt_ns=np.array([1_796_000_000 * 10**9]),
                       frequency_hz=REFERENCE_HZ - 1000, mode="usb", low_cut=300, high_cut=3000,
                       center_freq_hz=CENTRE, samp_rate_hz=2.4e6)
    return Capture(station=station, frequency_hz=REFERENCE_HZ - 1000, low_cut=300, high_cut=3000, requested_s=4.0,
                   kind="audio", protocol="openwebrx", audio=[seg])


def test_a_station_without_the_tones_is_named(offsets) -> None:
    caps, _ = offsets
    ds = model.build_dataset([caps["rx-exact-usb"], _noise_capture("deaf")], {})
    with pytest.raises(AnalysisRefused, match="deaf") as quiet:
        carrier_offset(ds, REFERENCE_HZ, TARGET_NOMINAL_HZ)
    assert quiet.value.stations == ["deaf"] and quiet.value.reason == "no tone"
    res = carrier_offset(ds, REFERENCE_HZ, TARGET_NOMINAL_HZ, missing="nan")
    assert np.isnan(float(res["target_hz"].sel(station="deaf")))
    assert float(res["target_hz"].sel(station="rx-exact-usb")) == pytest.approx(TARGET_TRUE_HZ, abs=0.5)


def test_the_estimator_on_real_dcf77_recordings() -> None:
    """Real data (IQ, not OpenWebRX audio: no real OpenWebRX recording is at hand): three
    GPS-disciplined KiwiSDRs' 30 s of DCF77 (77.5 kHz, an atomic-clock carrier with AM keying and
    phase modulation, tuned exactly), made USB-like audio (shifted up 1 kHz, real part, int16):
    the tone is the carrier 1 kHz up, within 10 mHz on each (measured: within 1 mHz)."""
    import glob

    from sdrlab.interchange.kiwiwav import import_kiwi_wav
    from tests.support.realdata import realdata

    folder = realdata("dcf77-20200813")
    ds = import_kiwi_wav(sorted(glob.glob(str(folder / "*_iq.wav"))))
    assert float(ds.attrs["center_frequency_hz"]) == 77_500.0
    z = ds.sdr.iq()
    for sid in ds["station"].values:
        n, fs = int(ds["n_samples"].sel(station=sid)), float(ds["sample_rate"].sel(station=sid))
        x = z.sel(station=sid).values[:n].astype(np.complex128)
        usb = np.real(x * np.exp(2j * np.pi * 1000.0 * np.arange(n) / fs))
        tone = tone_frequency((usb / np.max(np.abs(usb)) * 16000).astype(np.int16), fs, 700, 1300)
        assert tone.freq_hz - 1000.0 == pytest.approx(0.0, abs=0.01), sid
        assert tone.snr_db > 40, sid


def test_a_mixed_session_psd_shows_the_simulators_noise_density(offsets) -> None:
    """(ds.sdr.psd on a mixed session, with the simulator's truth) a KiwiSDR IQ station beside a
    simulated OpenWebRX one: the audio station's waterfall density away from the carriers is
    the simulator's noise density within 1 dB; the IQ station is on its own Welch bins."""
    from tests.test_model_audio import kiwi_capture

    caps, truth = offsets
    ds = model.build_dataset([kiwi_capture(), caps["rx-exact-usb"]], {})
    p = ds.sdr.psd()
    assert p["psd_source"].values.tolist() == ["welch", "waterfall"]
    ow = p.sel(station="rx-exact-usb").dropna("frequency")
    f = ow["frequency_abs"].values
    quiet = (np.abs(f - REFERENCE_HZ) > 20_000) & (np.abs(f - CENTRE) > 20_000)
    n0 = 10 * np.log10(float(np.median(ow.values[quiet])))
    assert n0 == pytest.approx(truth["rx-exact"].noise_dbfs_hz["rtlsdr"], abs=1.0)
    assert p.sel(station="kiwi").dropna("frequency").sizes["frequency"] == 8192
