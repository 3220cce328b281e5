"""The Dataset model, from segments assembled out of hand-made frames (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sdrlab import model, timing
from sdrlab.capture import Capture, ReceiverInfo, build_segment
from sdrlab.receivers import kiwiwire as kw
from sdrlab.stations import Station

FS = 12001.15
WEEK = 2400


def frames(seqs, t0_ns, *, le=False, last=None, fs=FS, value=None):
    """Headers and sample bytes for frames with the given seq numbers (seq 1 = frame 0)."""
    hdr, data = bytearray(), bytearray()
    for i, s in enumerate(seqs):
        k = s - 1
        stamp = t0_ns + round(512 * k * 1e9 / fs)
        tow_ns = stamp % (timing.WEEK_S * timing.NS)
        gsec, gnsec = divmod(tow_ns, timing.NS)
        if k == 0:
            gsec = gnsec = 0
        samples = np.full((512, 2), s if value is None else value, dtype=np.int16)
        samples[:, 1] = -samples[:, 0]
        f = kw.pack_snd_frame(
            flags=kw.FLAG_STEREO | (kw.FLAG_LITTLE_ENDIAN if le else 0), seq=s, smeter=kw.dbm_to_smeter(-80),
            last_gps_solution=(0 if last is None else last[i]), gpssec=gsec, gpsnsec=gnsec,
            samples=kw.samples_to_wire(samples, le),
        )
        hdr += f[:20]
        data += f[20:]
    return bytes(hdr), bytes(data)


T0 = (WEEK * timing.WEEK_S + 100_000) * timing.NS + 123_456_789
HOST = T0 + 10 * timing.NS


def test_segment_gap_fill_and_endianness():
    h1, d1 = frames([1, 2, 3], T0)
    h2, d2 = frames([6, 7, 8], T0, le=True)  # seq 4, 5 missing; later frames little-endian
    seg = build_segment(h1 + h2, d1 + d2, nominal_fs=12001.0, host_gps_ns=HOST)
    assert seg.frame_seq.tolist() == list(range(1, 9))
    assert seg.frame_received.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert seg.missing_frames == 2 and seg.seq_gaps == 1
    assert seg.n_samples == 8 * 512
    assert (seg.samples[3 * 512 : 5 * 512] == 0).all()
    assert (seg.samples[7 * 512 :, 0] == 8).all() and (seg.samples[7 * 512 :, 1] == -8).all()
    assert seg.fit.ok
    assert abs(seg.fit.t0_gps_ns - T0) < 5
    assert seg.fit.fs == pytest.approx(FS, abs=1e-3)
    assert seg.frame_rssi_dbm[0] == pytest.approx(-80.0)


def test_fit_uses_fresh_stamps_only():
    """Between fixes a receiver's stamps drift (here 40 ppm of the time since the fix); only the
    frames right after a fix (last_gps_solution back to 0) are exact.  Fitting every stamp would be
    off by tens of microseconds; the fit over fresh stamps is exact."""
    per_fix = 47  # frames between GPS fixes (~2 s)
    seqs = list(range(1, 400))
    since = [(k % per_fix) * 512 / FS for k in range(len(seqs))]
    last = [int(x) for x in since]
    h, d = frames(seqs, T0, last=last)
    arr = bytearray(h)
    for i, x in enumerate(since):
        if i == 0 or i % per_fix == 0:
            continue  # frame 0 has no stamp; fresh frames are exact
        off = 20 * i
        ns = int.from_bytes(arr[off + 16 : off + 20], "little") + round(x * 40e-6 * 1e9)
        sec = int.from_bytes(arr[off + 12 : off + 16], "little") + ns // 10**9
        arr[off + 12 : off + 16] = sec.to_bytes(4, "little")
        arr[off + 16 : off + 20] = (ns % 10**9).to_bytes(4, "little")
    seg = build_segment(bytes(arr), d, nominal_fs=12001.0, host_gps_ns=HOST)
    assert seg.fit.ok and seg.fit.n_stamps == (len(seqs) - 1) // per_fix  # the frames right after a fix
    assert abs(seg.fit.t0_gps_ns - T0) < 5
    assert seg.fit.fs == pytest.approx(FS, abs=1e-4)
    # what fitting every stamp would have given: clearly worse
    allfit = timing.fit_time((np.arange(1, len(seqs)) * 512), seg.frame_gps_ns[1:], nominal_fs=12001.0)
    assert abs(allfit.t0_gps_ns - T0) > 5_000


def test_week_rollover_inside_a_segment():
    t0 = (WEEK * timing.WEEK_S + timing.WEEK_S - 1) * timing.NS  # 1 s before the week ends
    h, d = frames(list(range(1, 60)), t0)
    seg = build_segment(h, d, nominal_fs=12001.0, host_gps_ns=t0 + timing.NS)
    assert seg.fit.ok and abs(seg.fit.t0_gps_ns - t0) < 5
    assert (np.diff(seg.frame_gps_ns[1:]) > 0).all()


def _capture(station, segs, pos=(52.5, 13.4)):
    cap = Capture(station, 9.749e6, -5000, 5000, 1.0)
    cap.info = ReceiverInfo("127.0.0.1", 8073, version="1.711", rx_chans=4, audio_rate=12000,
                            sample_rate=12001.0, position=pos)
    cap.segments = segs
    return cap


@pytest.fixture
def ds():
    s1 = build_segment(*frames(range(1, 30), T0), nominal_fs=12001.0, host_gps_ns=HOST)
    t1 = T0 + 20 * timing.NS
    s2 = build_segment(*frames(range(1, 10), t1, value=7), nominal_fs=12001.0, host_gps_ns=HOST)
    a = _capture("sta-a", [s1, s2])
    b = _capture("sta-b", [build_segment(*frames(range(1, 20), T0 + 1000), nominal_fs=12001.0, host_gps_ns=HOST)],
                 pos=None)
    stations = {"sta-b": Station("sta-b", "B", "127.0.0.1", 8074, 48.0, 11.0, 500.0)}
    statuses = [model.StationStatus("sta-a", "ok"), model.StationStatus("sta-b", "ok"),
                model.StationStatus("sta-c", "failed", "ReceiverDown", "receiver is down")]
    return model.build_dataset([a, b], stations, statuses=statuses, session_id="20260101T000000Z-abc123")


def test_dataset_schema(ds):
    assert ds["iq"].dims == ("station", "sample", "component") and ds["iq"].dtype == np.int16
    assert list(ds["station"].values) == ["sta-a", "sta-b"]
    assert ds.sizes["sample"] == (29 + 9) * 512
    assert ds["n_samples"].values.tolist() == [38 * 512, 19 * 512]
    assert (ds["iq"].sel(station="sta-b").values[19 * 512 :] == 0).all()  # padding
    assert ds["start_time"].dtype == np.dtype("datetime64[ns]")
    assert ds["start_time"].sel(station="sta-a").values == timing.gps_ns_to_utc(T0, 18) or abs(
        (ds["start_time"].sel(station="sta-a").values - timing.gps_ns_to_utc(T0, 18)) / np.timedelta64(1, "ns")) < 5
    # position: the receiver's own (rx_gps) when it reported one, else the catalogue's
    assert ds["latitude"].values.tolist() == [52.5, 48.0]
    assert ds["position_source"].values.tolist() == ["receiver", "catalogue"]
    assert ds["latitude"].attrs["units"] == "degrees_north"
    assert ds["sample_rate"].attrs["units"] == "Hz"
    assert ds.attrs["center_frequency_hz"] == 9.749e6
    assert ds.attrs["core:datatype"] == "ci16_le"
    assert ds["hw"].sel(station="sta-a").item() == "KiwiSDR v1.711 rx_chans=4"
    assert ds["segment_start"].sel(station="sta-a").values.tolist() == [0, 29 * 512]
    assert model.station_status(ds).loc["sta-c", "error_class"] == "ReceiverDown"


def test_sample_times_piecewise_per_segment(ds):
    t = model.sample_times(ds, "sta-a").values
    t0 = timing.gps_ns_to_utc(T0, 18)
    assert abs((t[0] - t0) / np.timedelta64(1, "ns")) < 5
    # within segment 1: n / fs
    assert abs((t[12001] - t0) / np.timedelta64(1, "ns") - 12001 / FS * 1e9) < 10
    # segment 2 starts at its own GPS time, not where segment 1 would have continued
    t1 = timing.gps_ns_to_utc(T0 + 20 * timing.NS, 18)
    assert abs((t[29 * 512] - t1) / np.timedelta64(1, "ns")) < 5
    tb = model.sample_times(ds, "sta-b").values
    assert np.isnat(tb[19 * 512 :]).all()  # padding has no time


def test_to_complex_full_scale(ds):
    z = model.to_complex(ds)
    assert z.dtype == np.complex64 and z.dims == ("station", "sample")
    v = z.sel(station="sta-a").values[29 * 512]
    assert v == pytest.approx((7 - 7j) / 32768)


def test_sigmf_attrs(ds):
    a = model.sigmf_attrs(ds, "sta-a")
    assert a["core:sample_rate"] == pytest.approx(FS, abs=1e-3)
    assert a["core:frequency"] == 9.749e6
    assert a["core:geolocation"]["coordinates"][:2] == [13.4, 52.5]  # lon first
    assert a["core:datetime"].endswith("Z") and len(a["core:datetime"].split(".")[1]) == 10  # 9 digits + Z


def test_zarr_round_trip_lossless_int16(ds, tmp_path):
    from sdrlab.store import open_session, write_session

    path = write_session(ds, tmp_path)
    back = open_session(path)
    xr.testing.assert_equal(back.load(), ds)
    import zarr

    arr = zarr.open_group(str(path), mode="r")["iq"]
    assert arr.dtype == np.int16
    assert "blosc" in str(arr.compressors).lower()


@pytest.mark.parametrize("n_samples", [1000, 500_000, 2_097_153, 3_599_872, 8_388_608, 30_000_000])
def test_iq_chunking_shards_divide_and_stay_in_bounds(n_samples):
    for ns in (1, 2, 7, 20):
        shard = model.iq_chunks(ns, n_samples)
        inner = model.iq_inner_chunks(ns, n_samples)
        assert inner[0] == 1 and all(s % i == 0 for s, i in zip(shard, inner))
        assert shard[0] * shard[1] * 4 <= model.CHUNK_BYTES
        assert inner[1] * 4 <= model.CHUNK_BYTES


def test_new_session_id_sorts_by_time_and_is_a_valid_store_name():
    from datetime import datetime, timezone

    from sdrlab.store import check_session_id

    early = model.new_session_id(datetime(2026, 12, 7, 4, 5, 6, tzinfo=timezone.utc))
    late = model.new_session_id(datetime(2026, 12, 7, 4, 5, 7, tzinfo=timezone.utc))
    assert early.startswith("20261207T040506Z-") and len(early) == len("20261207T040506Z-") + 6
    assert early < late and check_session_id(early) == early
