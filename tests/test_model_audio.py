"""The Dataset model of audio captures (kind ``audio``), alone and mixed with IQ captures."""

from __future__ import annotations

import numpy as np
import pytest

from sdrlab import model
from sdrlab.capture import AudioSegment, Capture, ReceiverInfo, SmeterReadings, SpectrumRows, build_segment
from sdrlab.stations import Station

from tests.test_model import HOST, T0, frames

RATE = 12000.0
T_UNIX = 1_796_000_000 * 10**9  # receipt times, unix ns


def audio_segment(n_msgs: int, per_msg: int, *, t0: int, rate: float, latency_ns: int, end: str = "complete",
                  centre: float = 145.0e6) -> AudioSegment:
    """``n_msgs`` messages of ``per_msg`` samples produced at ``rate`` from ``t0`` and received
    ``latency_ns`` (plus up to 20 ms of jitter) after their last sample."""
    rng = np.random.default_rng(n_msgs)
    ends = per_msg * np.arange(1, n_msgs + 1, dtype=np.int64)
    receipt = t0 + np.rint(ends / rate * 1e9).astype(np.int64) + latency_ns + rng.integers(0, 20_000_000, n_msgs)
    samples = (1000 * np.sin(2 * np.pi * 1000 * np.arange(ends[-1]) / rate)).astype(np.int16)
    return AudioSegment(samples=samples, nominal_rate_hz=12000.0, message_end=ends, message_receipt_ns=receipt,
                        end_reason=end, frequency_hz=145.5e6, mode="nfm", low_cut=-4000, high_cut=4000,
                        center_freq_hz=centre, samp_rate_hz=2.4e6, profile="rtl|2m")


def audio_capture(station: str = "it-torino") -> Capture:
    a1 = audio_segment(100, 2002, t0=T_UNIX, rate=12000.3, latency_ns=150_000_000, end="profile changed")
    a2 = audio_segment(40, 2002, t0=T_UNIX + 20 * 10**9, rate=12000.3, latency_ns=150_000_000, centre=145.2e6)
    db = np.full((30, 4096), -95.0, np.float32)
    db[20:, 2048:2100] = -60.0
    spec = SpectrumRows(db=db, receipt_ns=T_UNIX + np.arange(30, dtype=np.int64) * 111_000_000,
                        center_freq_hz=np.full(30, 145.0e6), samp_rate_hz=np.full(30, 2.4e6),
                        fft_size=np.full(30, 4096, np.int64))
    sm = SmeterReadings(power=np.array([1e-9, 1e-6, 1e-7]), receipt_ns=T_UNIX + np.array([1, 2, 3]) * 250_000_000)
    info = ReceiverInfo(host="127.0.0.1", port=1, version="v1.2.2", name="Torino", position=(45.044, 7.672),
                        altitude=250.0, sample_rate=12000.0)
    return Capture(station=station, frequency_hz=145.5e6, low_cut=-4000, high_cut=4000, requested_s=30.0,
                   info=info, kind="audio", protocol="openwebrx", hw="OpenWebRX v1.2.2", audio=[a1, a2],
                   spectrum=spec, smeter=sm)


def kiwi_capture(station: str = "kiwi") -> Capture:
    h, d = frames(list(range(1, 41)), T0)
    seg = build_segment(h, d, nominal_fs=12001.0, host_gps_ns=HOST)
    return Capture(station=station, frequency_hz=145.5e6, low_cut=-5000, high_cut=5000, requested_s=30.0,
                   info=ReceiverInfo(host="127.0.0.1", port=2, version="1.711", rx_chans=4), segments=[seg])


def test_audio_segment_rate_and_t0_from_receipt_times():
    a = audio_segment(100, 2002, t0=T_UNIX, rate=12000.3, latency_ns=150_000_000)
    # 16.7 s of messages: the measured rate is within 0.01 % of the true 12000.3 despite 20 ms of jitter
    assert a.rate_hz == pytest.approx(12000.3, rel=1e-4)
    # earliest arrival: t0 plus the latency (the minimum of the jitter is ~0)
    assert (a.receipt_t0_ns - T_UNIX) / 1e6 == pytest.approx(150.0, abs=2.0)
    short = audio_segment(3, 2002, t0=T_UNIX, rate=12000.3, latency_ns=0)
    assert short.rate_hz == 12000.0  # too short to measure: the nominal rate


def test_audio_only_session():
    st = {"it-torino": Station(id="it-torino", name="Torino", host="127.0.0.1", port=1, latitude=45.0, longitude=7.0,
                               protocol="openwebrx")}
    ds = model.build_dataset([audio_capture()], st, session_id="s1")
    assert "iq" not in ds and "frame_seq" not in ds and "component" not in ds.coords
    assert ds.attrs["protocol"] == "openwebrx" and ds.attrs["timing"] == "receipt"
    assert ds.attrs["core:datatype"] == "ri16_le"
    s = ds.sel(station="it-torino")
    assert str(s["kind"].values) == "audio" and str(s["timing"].values) == "receipt"
    assert int(s["n_samples"]) == 140 * 2002 == ds.sizes["audio_sample"]
    assert float(s["latitude"]) == 45.044  # the receiver's own position wins over the catalogue
    assert str(s["hw"].values) == "OpenWebRX v1.2.2"
    assert str(s["gps_status"].values).startswith("none")
    assert s["audio_segment_end"].values.tolist() == ["profile changed", "complete"]
    assert s["audio_segment_start"].values.tolist() == [0, 100 * 2002]
    assert s["audio_segment_center_hz"].values.tolist() == [145.0e6, 145.2e6]
    assert float(s["audio_segment_rate"][0]) == pytest.approx(12000.3, rel=1e-4)
    assert s["audio_segment_nominal_rate"].values.tolist() == [12000.0, 12000.0]  # what the client asked for
    # the second segment's messages continue on the station's audio axis
    assert int(s["audio_message_end"][100]) == 100 * 2002 + 2002
    assert (s["audio"].values[:2002] == audio_capture().audio[0].samples[:2002]).all()
    assert s["smeter_dbfs"].values.tolist() == pytest.approx([-90.0, -60.0, -70.0])
    assert ds.sizes["spectrum_bin"] == 4096 and float(s["spectrum"][25, 2050]) == -60.0
    t0 = s["start_time"].values
    assert (t0 - np.datetime64(T_UNIX, "ns")) / np.timedelta64(1, "ms") == pytest.approx(150.0, abs=2.0)
    assert model.sigmf_attrs(ds, "it-torino")["core:datatype"] == "ri16_le"
    assert model.encoding(ds) == {}


def test_mixed_session_keeps_each_kind():
    st = {}
    ds = model.build_dataset([kiwi_capture(), audio_capture()], st)
    assert ds.attrs["protocol"] == "kiwisdr+openwebrx" and ds.attrs["timing"] == "mixed"
    assert ds["kind"].values.tolist() == ["iq", "audio"]
    assert ds["timing"].values.tolist() == ["gps", "receipt"]
    assert ds["n_samples"].values.tolist() == [40 * 512, 140 * 2002]
    # each kind's variables: the other kind's station is padding
    assert ds.sizes["sample"] == 40 * 512 and (ds["iq"].sel(station="it-torino") == 0).all()
    assert int(ds["segment_start"].sel(station="it-torino")[0]) == -1
    assert (ds["audio_segment_start"].sel(station="kiwi") == -1).all()
    assert np.isnan(ds["smeter_dbfs"].sel(station="kiwi")).all()
    assert model.sigmf_attrs(ds, "kiwi")["core:datatype"] == "ci16_le"


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    from sdrlab.store import Store

    if request.param == "file":
        return Store(f"file://{tmp_path}/store")
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return Store(f"s3://{bucket}/lab", s3.storage_options)


@pytest.mark.parametrize("mixed", [False, True], ids=["audio", "mixed"])
def test_audio_sessions_round_trip_bit_exact(store, mixed):
    import xarray as xr

    caps = [kiwi_capture(), audio_capture()] if mixed else [audio_capture()]
    ds = model.build_dataset(caps, {}, session_id="20261207T150000Z-a0d10%d" % mixed)
    ref = store.write(ds)
    back = store.open(ref.session_id).load()
    back.attrs.pop("data_version")
    xr.testing.assert_identical(back, ds)
    listed = store.sessions()
    assert ref.session_id in (listed.index if "session_id" not in listed else listed["session_id"]).tolist()
    caps_table = store.captures(ref.session_id)
    assert int(caps_table.loc["it-torino", "samples"] if "it-torino" in caps_table.index else
               caps_table.set_index("station").loc["it-torino", "samples"]) == 140 * 2002


def test_interval_metrics_of_a_mixed_session_leave_the_audio_station_out():
    from sdrlab.acquire import attach_interval_metrics

    ds = attach_interval_metrics(model.build_dataset([kiwi_capture(), audio_capture()], {}), 1.0)
    snr = ds["interval_total_power_dbfs"]
    assert np.isfinite(snr.sel(station="kiwi").values[0])
    assert np.isnan(snr.sel(station="it-torino").values).all()


def test_audio_sample_times_follow_each_segments_receipt_time_and_rate():
    ds = model.build_dataset([kiwi_capture(), audio_capture()], {})
    t = ds.sdr.time("it-torino")
    assert t.dims == ("audio_sample",)
    seg = audio_capture().audio
    first = (t.values[0] - np.datetime64(seg[0].receipt_t0_ns, "ns")) / np.timedelta64(1, "ns")
    assert first == 0
    # the second segment starts at its own t0 (a profile change: a new receipt-time estimate)
    k = 100 * 2002
    assert (t.values[k] - np.datetime64(seg[1].receipt_t0_ns, "ns")) / np.timedelta64(1, "ns") == 0
    step = (t.values[k - 1] - t.values[k - 2]) / np.timedelta64(1, "ns")
    assert step == pytest.approx(1e9 / seg[0].rate_hz, abs=1)
    with pytest.raises(ValueError, match="different sample axes"):
        ds.sdr.time()
