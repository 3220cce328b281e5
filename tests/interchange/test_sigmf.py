"""SigMF export (validated by the sigmf package) and import, round trips against known sessions."""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from sdrlab import model, timing
from sdrlab.errors import ConfigError, StorageError
from sdrlab.capture import HEADER_DTYPE, Capture, ReceiverInfo, build_segment
from sdrlab.interchange import export_sigmf, import_kiwi_wav, import_sigmf
from sdrlab.receivers import kiwiwire as kw
from sdrlab.testing import synthetic_dataset

from .kiwirecorder_files import record, write_gnss_pos

sigmf = pytest.importorskip("sigmf", reason="SigMF interchange needs the sigmf package (pip install sigmf)")
sigmf_validate = pytest.importorskip("sigmf.validate")

FS = 12001.15
#: a GPS time with every nanosecond digit set, so that microsecond truncation would show
T0 = (2370 * timing.WEEK_S + 100_000) * timing.NS + 123_456_789
HOST = T0 + 10 * timing.NS


def _frames(seqs: list[int], t0: int, fs: float, seed: int) -> tuple[bytes, bytes, np.ndarray]:
    """SND headers + sample bytes for frames with these seq numbers (seq s starts at t0 + (s-1)*512/fs)."""
    rng = np.random.default_rng(seed)
    hdr, data, rows = bytearray(), bytearray(), []
    for s in seqs:
        k = s - seqs[0]
        stamp = t0 + round(512 * (s - 1) * 1e9 / fs)
        tow = stamp % (timing.WEEK_S * timing.NS)
        gsec, gnsec = divmod(tow, timing.NS)
        if k == 0:
            gsec = gnsec = 0
        iq = rng.integers(-32768, 32768, size=(512, 2), dtype=np.int16)
        rows.append(iq)
        f = kw.pack_snd_frame(
            flags=kw.FLAG_STEREO, seq=s, smeter=kw.dbm_to_smeter(-80.0 - k % 7), last_gps_solution=k % 3,
            gpssec=gsec, gpsnsec=gnsec, samples=kw.samples_to_wire(iq, False))
        hdr += f[:20]
        data += f[20:]
    return bytes(hdr), bytes(data), np.concatenate(rows)


def _multi_segment_session() -> xr.Dataset:
    """Station ``rx-a``: two segments (a reconnect 60 s later); ``rx-b``: one segment with two
    frames missing from the seq sequence; ``rx-c``: no GPS fit, position unknown."""
    caps = []
    h1, d1, _ = _frames(list(range(1, 61)), T0, FS, 1)
    t1 = T0 + 60 * timing.NS + 987
    h2, d2, _ = _frames(list(range(1, 41)), t1, FS, 2)
    segs_a = [build_segment(h1, d1, nominal_fs=12001.0, host_gps_ns=HOST),
              build_segment(h2, d2, nominal_fs=12001.0, host_gps_ns=HOST, end_reason="complete")]
    segs_a[0].end_reason = "closed by the receiver (code 1000)"
    info_a = ReceiverInfo("a.example", 8073, version="1.711", rx_chans=8, sample_rate=12001.1,
                          name="Receiver A", position=(48.5, 9.25), altitude=412.0)
    caps.append(Capture("rx-a", 7_100_000.0, -5000.0, 5000.0, 8.0, info=info_a, segments=segs_a))
    h3, d3, _ = _frames([1, 2, 3] + list(range(6, 61)), T0 + 12345, 12000.95, 3)
    info_b = ReceiverInfo("b.example", 8073, version="1.702", rx_chans=4, sample_rate=12000.9,
                          name="Receiver B", position=(-33.5, 151.0))
    caps.append(Capture("rx-b", 7_100_000.0, -5000.0, 5000.0, 8.0, info=info_b,
                        segments=[build_segment(h3, d3, nominal_fs=12001.0, host_gps_ns=HOST)]))
    h4, d4, _ = _frames(list(range(1, 31)), T0, FS, 4)
    hh = np.frombuffer(h4, dtype=HEADER_DTYPE).copy()
    hh["last_gps"], hh["gpssec"], hh["gpsnsec"] = 255, 0, 0
    info_c = ReceiverInfo("c.example", 8073, version="1.711", rx_chans=4, sample_rate=12001.0, name="C")
    caps.append(Capture("rx-c", 7_100_000.0, -5000.0, 5000.0, 8.0, info=info_c,
                        segments=[build_segment(hh.tobytes(), d4, nominal_fs=12001.0, host_gps_ns=HOST)]))
    statuses = [model.StationStatus("rx-a", "ok"), model.StationStatus("rx-b", "ok"),
                model.StationStatus("rx-c", "partial", "ReceiverStalled", "stalled: no frame for 10 s")]
    return model.build_dataset(caps, {}, statuses=statuses, session_id="20250611T120000Z-abc123")


def _meta(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _validate_strict(meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undeclared extension namespaces warn: make that fail
        sigmf_validate.validate(meta)


def _assert_same_session(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every variable and per-station coordinate equal (bit-exact iq, ns start times)."""
    assert list(a["station"].values) == list(b["station"].values)
    assert a.sizes == b.sizes
    for name in list(a.data_vars) + [c for c in a.coords if a[c].dims == ("station",)]:
        x, y = a[name].values, b[name].values
        if x.dtype.kind in "fcmM":
            np.testing.assert_array_equal(x, y, err_msg=name)  # NaN/NaT equal to NaN/NaT
        else:
            assert x.dtype == y.dtype or x.dtype.kind == "O", name
            assert (x == y).all(), name
    assert a["iq"].dtype == b["iq"].dtype == np.int16
    for key in ("center_frequency_hz", model.K_FREQUENCY, "passband_low_hz", "passband_high_hz",
                "gps_utc_offset_s", "protocol"):
        assert a.attrs[key] == b.attrs[key], key
    assert _statuses(a) == _statuses(b)


def _statuses(ds: xr.Dataset) -> dict[str, dict[str, str]]:
    table = json.loads(ds.attrs["station_status"])
    return {k: {f: v for f, v in row.items() if v is not None} for k, row in table.items()}


# ---- export ------------------------------------------------------------------------------------
def test_export_synthetic_session_validates_with_the_right_fields(tmp_path: Path) -> None:
    ds = synthetic_dataset(n_stations=3, duration_s=2)
    paths = export_sigmf(ds, tmp_path / "out")
    assert [p.name for p in paths] == [f"synthetic-0_syn{i}.sigmf-meta" for i in range(3)]
    for i, p in enumerate(paths):
        s = ds.isel(station=i)
        meta = _meta(p)
        _validate_strict(meta)
        rec = sigmf.fromfile(str(p))  # checks core:sha512 against the data file
        rec.validate()
        g = meta["global"]
        assert g["core:datatype"] == "ci16_le"
        assert g["core:sample_rate"] == float(s["sample_rate"])
        assert g["core:sample_rate"] == pytest.approx(12000.0 * (1 + [0.0, 4.0, -6.0][i] * 1e-6), abs=1e-9)
        assert g["core:geolocation"] == {"type": "Point", "coordinates": [8.0 + i, 48.0 + i, 100.0]}
        assert g["core:hw"] == "KiwiSDR vsynthetic rx_chans=4"
        assert g["core:recorder"].startswith("sdrlab ")
        assert g["sdrlab:station"] == f"syn{i}" and g["sdrlab:session_id"] == "synthetic-0"
        used = {k.split(":")[0] for sec in (g, *meta["captures"]) for k in sec if ":" in k} - {"core"}
        assert used == {"sdrlab"}
        assert {e["name"] for e in g["core:extensions"]} == used
        (cap,) = meta["captures"]
        assert cap["core:sample_start"] == 0
        assert cap["core:frequency"] == 10_000_000.0
        assert cap["core:datetime"] == "2025-06-01T12:00:00.000000000Z"
        assert cap["sdrlab:datetime_ns"] == int(s["start_time"].values.astype(np.int64))
        assert len(cap["sdrlab:frame_gps_ns"]) == int(s["n_samples"]) // 512
        # only the valid samples, little-endian I, Q
        data = p.with_name(p.name.replace("-meta", "-data")).read_bytes()
        n = int(s["n_samples"])
        assert len(data) == n * 4
        assert data == s["iq"].values[:n].astype("<i2").tobytes()
    assert int(ds["n_samples"][2]) < ds.sizes["sample"]  # the last station is padded: padding not written


def test_one_capture_per_segment_with_ns_datetime(tmp_path: Path) -> None:
    ds = _multi_segment_session()
    paths = export_sigmf(ds, tmp_path)
    metas = {_meta(p)["global"]["sdrlab:station"]: _meta(p) for p in paths}
    for meta in metas.values():
        _validate_strict(meta)
    caps = metas["rx-a"]["captures"]
    assert [c["core:sample_start"] for c in caps] == [0, 60 * 512]
    t0 = ds["segment_t0"].sel(station="rx-a").values
    assert caps[0]["sdrlab:datetime_ns"] == int(t0[0].astype(np.int64))
    assert caps[1]["sdrlab:datetime_ns"] == int(t0[1].astype(np.int64))
    assert caps[0]["core:datetime"] == np.datetime_as_string(t0[0], unit="ns") + "Z"
    # the fit recovered T0 to the ns digit; UTC = GPS - 18 s
    assert abs(caps[0]["sdrlab:datetime_ns"] - int(timing.gps_ns_to_utc(T0).astype(np.int64))) < 100
    assert caps[0]["sdrlab:end_reason"] == "closed by the receiver (code 1000)"
    assert metas["rx-a"]["global"]["core:geolocation"]["coordinates"] == [9.25, 48.5, 412.0]
    assert metas["rx-a"]["global"]["core:hw"] == "KiwiSDR v1.711 rx_chans=8"
    # rx-b: frames 3 and 4 (seq 4, 5) zero-filled
    (cap_b,) = metas["rx-b"]["captures"]
    assert cap_b["sdrlab:frames_missing"] == [3, 4]
    assert cap_b["sdrlab:frame_seq_start"] == 1
    assert cap_b["sdrlab:frame_rssi_dbm"][3] is None and cap_b["sdrlab:frame_rssi_dbm"][0] == -80.0
    assert metas["rx-b"]["global"]["core:geolocation"]["coordinates"] == [151.0, -33.5]  # no altitude
    # rx-c: no GPS fit: no datetime; no position: no geolocation
    (cap_c,) = metas["rx-c"]["captures"]
    assert "core:datetime" not in cap_c and "sdrlab:datetime_ns" not in cap_c
    assert "core:geolocation" not in metas["rx-c"]["global"]
    assert metas["rx-c"]["global"]["sdrlab:status"] == "partial"
    assert metas["rx-c"]["global"]["sdrlab:error_class"] == "ReceiverStalled"


def test_existing_recordings_are_not_overwritten_silently(tmp_path: Path) -> None:
    ds = synthetic_dataset(n_stations=1, duration_s=0.5)
    export_sigmf(ds, tmp_path)
    with pytest.raises(StorageError, match=r"synthetic-0_syn0\.sigmf-meta exists"):
        export_sigmf(ds, tmp_path)
    assert len(export_sigmf(ds, tmp_path, overwrite=True)) == 1


def test_dask_backed_session_exports_the_same_bytes(tmp_path: Path) -> None:
    eager = synthetic_dataset(n_stations=2, duration_s=1)
    lazy = synthetic_dataset(n_stations=2, duration_s=1, chunks={"station": 1, "sample": 4096})
    a = export_sigmf(eager, tmp_path / "a")
    b = export_sigmf(lazy, tmp_path / "b")
    for pa, pb in zip(a, b):
        da, db = (p.with_name(p.name.replace("-meta", "-data")).read_bytes() for p in (pa, pb))
        assert da == db
        assert _meta(pa) == _meta(pb)


# ---- import ------------------------------------------------------------------------------------
def test_round_trip_synthetic_is_bit_exact(tmp_path: Path) -> None:
    ds = synthetic_dataset(n_stations=3, duration_s=2)
    back = import_sigmf(export_sigmf(ds, tmp_path))
    _assert_same_session(ds, back)
    assert back.attrs["source_session_id"] == "synthetic-0"
    assert back.attrs["session_id"].startswith("20250601T120000Z-")  # sorts by the capture time


def test_round_trip_multi_segment_is_bit_exact(tmp_path: Path) -> None:
    ds = _multi_segment_session()
    back = import_sigmf(export_sigmf(ds, tmp_path), session_id="copy")
    _assert_same_session(ds, back)
    assert back.attrs["session_id"] == "copy"
    assert int(back["seq_gaps"].sel(station="rx-b")) == 2
    assert np.isnat(back["start_time"].sel(station="rx-c").values)
    assert back["gps_status"].sel(station="rx-c").values == ds["gps_status"].sel(station="rx-c").values


def test_archive_round_trip(tmp_path: Path) -> None:
    ds = _multi_segment_session()
    paths = export_sigmf(ds, tmp_path, archive=True)
    assert [p.name for p in paths] == [f"20250611T120000Z-abc123_{s}.sigmf" for s in ("rx-a", "rx-b", "rx-c")]
    with tarfile.open(paths[0]) as tar:
        names = sorted(tar.getnames())
        meta = json.load(tar.extractfile("20250611T120000Z-abc123_rx-a/20250611T120000Z-abc123_rx-a.sigmf-meta"))
    assert "20250611T120000Z-abc123_rx-a/20250611T120000Z-abc123_rx-a.sigmf-data" in names
    _validate_strict(meta)
    assert not list(tmp_path.glob("*.sigmf-meta"))
    _assert_same_session(ds, import_sigmf(paths))


def test_imported_kiwi_wav_session_exports_and_returns(tmp_path: Path) -> None:
    t0 = (2370 * timing.WEEK_S + 345_600) * timing.NS + 123_456_789
    a = record(tmp_path, "kiwi-a", t0_gps_ns=t0, n_frames=150, seed=1)
    b = record(tmp_path, "kiwi-b", t0_gps_ns=t0 + 777, n_frames=120, fs=12000.95, seed=2)
    write_gnss_pos(tmp_path / "gnss_pos", "kiwi-a", 48.123456, -8.5)
    ds = import_kiwi_wav([a.path, b.path])
    paths = export_sigmf(ds, tmp_path / "sigmf")
    for p in paths:
        _validate_strict(_meta(p))
    g_b = _meta(paths[1])["global"]
    assert "core:geolocation" not in g_b and g_b["sdrlab:position_source"] == "unknown"
    assert g_b["sdrlab:rssi_dbm"] is None
    back = import_sigmf(paths)
    _assert_same_session(ds, back)
    assert float(back["sample_rate"].sel(station="kiwi-b")) == pytest.approx(12000.95, abs=1e-4)


def test_import_foreign_recording(tmp_path: Path) -> None:
    """A ci16 recording from another tool: one capture, microsecond datetime, global position."""
    rng = np.random.default_rng(5)
    iq = rng.integers(-2000, 2000, size=(1000, 2), dtype=np.int16)
    data = tmp_path / "other.sigmf-data"
    data.write_bytes(iq.astype("<i2").tobytes())
    rec = sigmf.SigMFFile(metadata={
        "global": {"core:datatype": "ci16_le", "core:sample_rate": 48000.0, "core:hw": "RTL-SDR",
                   "core:geolocation": {"type": "Point", "coordinates": [13.4, 52.5]}},
        "captures": [{"core:sample_start": 0, "core:frequency": 14_070_000.0,
                      "core:datetime": "2024-03-01T10:20:30.123456Z"}],
        "annotations": [],
    })
    rec.set_data_file(data)
    rec.tofile(tmp_path / "other")
    ds = import_sigmf([tmp_path / "other.sigmf-meta"])
    s = ds.isel(station=0)
    assert s["station"].values == "other"
    assert int(s["n_samples"]) == 1000
    np.testing.assert_array_equal(s["iq"].values[:1000], iq)
    assert s["start_time"].values == np.datetime64("2024-03-01T10:20:30.123456", "ns")
    assert float(s["sample_rate"]) == 48000.0
    assert (float(s["latitude"]), float(s["longitude"])) == (52.5, 13.4)
    assert s["hw"].values == "RTL-SDR"
    assert s["gps_status"].values == "core:datetime (no GPS fit)"
    assert ds.attrs["center_frequency_hz"] == 14_070_000.0
    assert ds.sizes["frame"] == 2  # ceil(1000 / 512) frame records, unknown stamps
    assert (s["frame_gps_ns"].values == -1).all()


def test_import_errors(tmp_path: Path) -> None:
    ds = synthetic_dataset(n_stations=2, duration_s=0.5)
    paths = export_sigmf(ds, tmp_path / "a")
    # the same recording named twice (meta and data) counts once
    assert import_sigmf([paths[0], paths[0].with_name(paths[0].name.replace("-meta", "-data"))]).sizes["station"] == 1
    # a station in two recordings
    again = export_sigmf(ds.assign_attrs(session_id="other"), tmp_path / "b")
    with pytest.raises(ConfigError, match="syn0 appear"):
        import_sigmf([paths[0], again[0]])
    # another frequency
    other = export_sigmf(synthetic_dataset(n_stations=3, duration_s=0.5, center_hz=5e6).isel(station=[2]),
                         tmp_path / "c")
    with pytest.raises(ConfigError, match="different frequencies"):
        import_sigmf([paths[0], other[0]])
    # corrupted data: the checksum no longer matches
    data = paths[1].with_name(paths[1].name.replace("-meta", "-data"))
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match=r"synthetic-0_syn1\.sigmf-meta: cannot read as SigMF.*hash"):
        import_sigmf([paths[1]])
    # a float recording is refused, not silently quantised
    z = np.zeros(64, np.complex64)
    f = sigmf.fromarray(z)
    f.set_global_field("core:sample_rate", 1e6)
    f.add_capture(0, metadata={"core:frequency": 1e6})
    f.tofile(tmp_path / "float")
    with pytest.raises(ConfigError, match="datatype 'cf32_le'"):
        import_sigmf([tmp_path / "float.sigmf-meta"])
    with pytest.raises(StorageError, match="missing.sigmf-meta"):
        import_sigmf([tmp_path / "missing.sigmf-meta"])
