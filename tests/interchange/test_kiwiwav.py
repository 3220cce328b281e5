"""kiwirecorder --kiwi-wav import, against files written as kiwirecorder writes them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdrlab import model, timing
from sdrlab.errors import ConfigError, StorageError
from sdrlab.interchange import import_kiwi_wav, parse_gnss_pos, read_kiwi_wav
from sdrlab.interchange.kiwiwav import FRAME_BYTES, parse_kiwi_wav_name

from .kiwirecorder_files import Truth, record, write_gnss_pos

#: sample 0 of the first file: GPS week 2370 (June 2025), Wednesday, .123456789 s; not "now", so a
#: week taken from the importing machine's clock would be wrong
T0 = (2370 * timing.WEEK_S + 345_600) * timing.NS + 123_456_789
HEADER = 36  # RIFF + WAVE + fmt chunk of 16


def _three(tmp_path: Path) -> list[Truth]:
    return [
        record(tmp_path, "kiwi-a", fs=12001.15, t0_gps_ns=T0, seed=1),
        record(tmp_path, "DL0ABC", fs=12000.95, t0_gps_ns=T0 + 250_000_000, seed=2, n_frames=180),
        record(tmp_path, "st_3", fs=12001.3, t0_gps_ns=T0 - 1_700_000_123, seed=3, fix_phase_s=1.1),
    ]


def _assert_station(ds, t: Truth) -> None:
    s = ds.sel(station=t.station)
    n = t.n_frames * 512
    assert int(s["n_samples"]) == n
    assert float(s["sample_rate"]) == pytest.approx(t.fs, abs=1e-4)
    err_ns = int((s["start_time"].values - t.start_utc) / np.timedelta64(1, "ns"))
    assert abs(err_ns) < 1000, f"{t.station}: start time off by {err_ns} ns"
    np.testing.assert_array_equal(s["iq"].values[:n], t.samples)
    assert not s["iq"].values[n:].any()  # padding
    assert s["gps_status"].values == "ok"
    k = t.n_frames
    np.testing.assert_array_equal(s["frame_gps_ns"].values[:k], t.frame_gps_ns)
    np.testing.assert_array_equal(s["frame_last_gps"].values[:k], t.last_gps)
    np.testing.assert_array_equal(s["frame_seq"].values[:k], np.arange(1, k + 1))
    assert (s["frame_flags"].values[:k] == 0x88).all()
    assert np.isnan(s["frame_rssi_dbm"].values[:k]).all() and np.isnan(float(s["rssi_dbm"]))


def test_writer_follows_kiwirecorder_layout(tmp_path: Path) -> None:
    t = record(tmp_path, "kiwi-a", fs=12001.15, t0_gps_ns=T0, n_frames=3)
    raw = t.path.read_bytes()
    assert t.path.name == "20250611T235942Z_7000000_kiwi-a_iq.wav"
    assert len(raw) == HEADER + 3 * 2074
    assert raw[:4] == b"RIFF" and struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8 and raw[8:12] == b"WAVE"
    assert struct.unpack_from("<4sIHHIIHH", raw, 12) == (b"fmt ", 16, 1, 2, 12001, 12001 * 4, 4, 16)
    frame1 = raw[HEADER + 2074 : HEADER + 2 * 2074]
    tow = (int(t.frame_gps_ns[1]) % (timing.WEEK_S * timing.NS))
    assert frame1[:18] == struct.pack("<4sIBBII", b"kiwi", 10, int(t.last_gps[1]), 0, tow // 10**9, tow % 10**9)
    assert frame1[18:26] == b"data\x00\x08\x00\x00"
    assert frame1[26:] == t.samples[512:1024].astype("<i2").tobytes()
    assert raw[HEADER + 8 : HEADER + 18] == bytes(10)  # the first frame carries a zero GPS block


def test_three_stations_import_with_gps_model(tmp_path: Path) -> None:
    truths = _three(tmp_path)
    write_gnss_pos(tmp_path / "gnss_pos", "kiwi-a", 48.123456, -8.5, host="kiwi-a.example.org", port=8074)
    write_gnss_pos(tmp_path / "gnss_pos", "DL0ABC", -33.865143, 151.2099)
    ds = import_kiwi_wav([t.path for t in truths])
    assert list(ds["station"].values) == ["kiwi-a", "DL0ABC", "st_3"]
    for t in truths:
        _assert_station(ds, t)
    assert ds.attrs["center_frequency_hz"] == 7_000_000.0
    assert ds.attrs[model.K_FREQUENCY] == 7_000_000.0
    assert ds.sizes["sample"] == 200 * 512
    assert int(ds["n_samples"].sel(station="DL0ABC")) == 180 * 512
    assert ds["latitude"].sel(station="kiwi-a") == 48.123456
    assert ds["longitude"].sel(station="kiwi-a") == -8.5
    assert ds["latitude"].sel(station="DL0ABC") == -33.865143
    assert list(ds["position_source"].values) == ["receiver", "receiver", "unknown"]
    assert np.isnan(ds["latitude"].sel(station="st_3")) and np.isnan(ds["longitude"].sel(station="st_3"))
    # the session id sorts by the earliest capture start (st_3, 1.7 s before T0)
    first = min(t.start_utc for t in truths)
    assert ds.attrs["session_id"].startswith(
        np.datetime_as_string(np.datetime64(first, "s")).replace("-", "").replace(":", "") + "Z-")
    # sample times follow the fit: the last frame of kiwi-a lands on its true stamp
    times = model.sample_times(ds, "kiwi-a").values
    k = 199
    truth_last = timing.gps_ns_to_utc(T0 + round(k * 512 * 1e9 / 12001.15))
    assert abs(int((times[k * 512] - truth_last) / np.timedelta64(1, "ns"))) < 1000


def test_positions_dir_and_session_id(tmp_path: Path) -> None:
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    t = record(wavs, "kiwi-b", t0_gps_ns=T0, n_frames=120)
    write_gnss_pos(wavs / "gnss_pos", "kiwi-b", 1.0, 2.0)  # ignored: an explicit directory wins
    write_gnss_pos(tmp_path / "elsewhere", "kiwi-b", 52.5, 13.25)
    ds = import_kiwi_wav([str(t.path)], positions_dir=tmp_path / "elsewhere", session_id="my-session")
    assert ds.attrs["session_id"] == "my-session"
    assert (float(ds["latitude"][0]), float(ds["longitude"][0])) == (52.5, 13.25)
    with pytest.raises(ConfigError, match="nowhere"):
        import_kiwi_wav([t.path], positions_dir=tmp_path / "nowhere")


def test_position_beside_files_as_kiwirecorder_dir_writes_it(tmp_path: Path) -> None:
    t = record(tmp_path, "kiwi-c", t0_gps_ns=T0, n_frames=120)
    write_gnss_pos(tmp_path, "kiwi-c", -12.5, 130.75)
    ds = import_kiwi_wav([t.path])
    assert (float(ds["latitude"][0]), float(ds["longitude"][0])) == (-12.5, 130.75)


def test_files_of_one_station_become_segments(tmp_path: Path) -> None:
    a = record(tmp_path, "kiwi-a", t0_gps_ns=T0, n_frames=150, seed=1)
    gap = 30 * timing.NS + 17  # reconnected 30 s later
    b = record(tmp_path, "kiwi-a", t0_gps_ns=T0 + gap, n_frames=130, seed=2, fix_phase_s=0.9)
    ds = import_kiwi_wav([b.path, a.path])  # order of the arguments does not matter
    s = ds.sel(station="kiwi-a")
    assert int(s["n_samples"]) == (150 + 130) * 512
    assert s["segment_start"].values.tolist() == [0, 150 * 512]
    assert s["segment_length"].values.tolist() == [150 * 512, 130 * 512]
    for j, t in enumerate((a, b)):
        err = int((s["segment_t0"].values[j] - t.start_utc) / np.timedelta64(1, "ns"))
        assert abs(err) < 1000
        assert s["segment_fs"].values[j] == pytest.approx(t.fs, abs=1e-4)
    np.testing.assert_array_equal(s["iq"].values[: 150 * 512], a.samples)
    np.testing.assert_array_equal(s["iq"].values[150 * 512 :], b.samples)
    assert s["frame_segment"].values.tolist() == [0] * 150 + [1] * 130


def test_gps_week_rollover_inside_a_file(tmp_path: Path) -> None:
    t0 = (2370 * timing.WEEK_S + timing.WEEK_S - 3) * timing.NS + 5_000  # 3 s before the week ends
    t = record(tmp_path, "roll", t0_gps_ns=t0, n_frames=200)
    ds = import_kiwi_wav([t.path])
    _assert_station(ds, t)


def test_file_without_gps_clock(tmp_path: Path) -> None:
    t = record(tmp_path, "nogps", t0_gps_ns=T0, n_frames=60, no_gps=True)
    ds = import_kiwi_wav([t.path])
    s = ds.isel(station=0)
    assert np.isnat(s["start_time"].values)
    assert "255" in str(s["gps_status"].values)
    assert float(s["sample_rate"]) == 12001.0  # the file's nominal rate, no fit
    np.testing.assert_array_equal(s["iq"].values, t.samples)


def test_station_name_parsing() -> None:
    n = parse_kiwi_wav_name("20250611T235942Z_7000000_st_3_iq.wav")
    assert (n.station, n.frequency_hz, n.mode) == ("st_3", 7_000_000.0, "iq")
    assert n.start == np.datetime64("2025-06-11T23:59:42", "ns")
    assert parse_kiwi_wav_name("20250611T235942Z_14070000_iq.wav").station == "kiwi_noname"
    with pytest.raises(ConfigError, match="recorder.wav: not a kiwirecorder file name"):
        parse_kiwi_wav_name("recorder.wav")
    with pytest.raises(ConfigError, match="mode 'usb'"):
        parse_kiwi_wav_name("20250611T235942Z_7000000_x_usb.wav")


# ---- gnss_pos ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    lat=st.floats(-90, 90, allow_nan=False),
    lon=st.floats(-180, 180, allow_nan=False),
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True),
    port=st.integers(1, 65535),
)
def test_gnss_pos_line_round_trip(lat: float, lon: float, name: str, port: int) -> None:
    line = "d.%s = struct('coord', [%f,%f], 'host', '%s', 'port', %d);\n" % (
        name.replace("-", "_"), lat, lon, "rx.example.org", port)
    pos = parse_gnss_pos(line)
    assert pos.latitude == float("%f" % lat) and pos.longitude == float("%f" % lon)
    assert (pos.variable, pos.host, pos.port) == (name.replace("-", "_"), "rx.example.org", port)


def test_malformed_gnss_pos_is_an_error(tmp_path: Path) -> None:
    t = record(tmp_path, "kiwi-a", t0_gps_ns=T0, n_frames=60)
    (tmp_path / "gnss_pos").mkdir()
    (tmp_path / "gnss_pos" / "kiwi-a.txt").write_text("lat=48 lon=8\n")
    with pytest.raises(ConfigError, match=r"kiwi-a\.txt: not a kiwirecorder position line"):
        import_kiwi_wav([t.path])
    with pytest.raises(ConfigError, match="not a latitude"):
        parse_gnss_pos("d.x = struct('coord', [95.000000,8.000000], 'host', 'h', 'port', 8073);")


# ---- malformed files ---------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path: Path) -> Truth:
    return record(tmp_path, "kiwi-a", t0_gps_ns=T0, n_frames=5)


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_reader_accepts_the_good_file(good: Truth) -> None:
    f = read_kiwi_wav(good.path)
    assert (f.n_frames, f.wav_rate, f.name.station) == (5, 12001, "kiwi-a")
    np.testing.assert_array_equal(f.samples, good.samples)


def test_not_riff(good: Truth) -> None:
    _patch(good.path, 0, b"RIFX")
    with pytest.raises(StorageError, match=rf"{good.path.name}: not a RIFF/WAVE file"):
        read_kiwi_wav(good.path)


def test_truncated(good: Truth) -> None:
    good.path.write_bytes(good.path.read_bytes()[:-1000])
    with pytest.raises(StorageError, match=rf"{good.path.name}: truncated: .*1074 bytes into frame 4.*says 5 frames"):
        read_kiwi_wav(good.path)


def test_kiwi_chunk_of_wrong_size(good: Truth) -> None:
    _patch(good.path, HEADER + 2 * FRAME_BYTES + 4, struct.pack("<I", 12))
    with pytest.raises(StorageError, match=rf"{good.path.name}: frame 2: 'kiwi' chunk of size 12"):
        read_kiwi_wav(good.path)


def test_data_chunk_of_wrong_size(good: Truth) -> None:
    _patch(good.path, HEADER + 3 * FRAME_BYTES + 22, struct.pack("<I", 1024))
    with pytest.raises(StorageError, match=rf"{good.path.name}: frame 3: 'data' chunk of size 1024"):
        read_kiwi_wav(good.path)


def test_foreign_chunk_in_the_frames(good: Truth) -> None:
    _patch(good.path, HEADER + FRAME_BYTES, b"LIST")
    with pytest.raises(StorageError, match=r"frame 1: expected a 'kiwi' chunk .* found b'LIST'"):
        read_kiwi_wav(good.path)


def test_frame_count_mismatch(good: Truth) -> None:
    _patch(good.path, 4, struct.pack("<I", 100 - 8))  # header never rewritten after the first write
    with pytest.raises(StorageError, match=rf"{good.path.name}: frame count mismatch: .*holds 5"):
        read_kiwi_wav(good.path)


def test_plain_wav_without_kiwi_chunks(tmp_path: Path) -> None:
    p = tmp_path / "20250611T235942Z_7000000_plain_iq.wav"
    body = np.zeros(1024, "<i2").tobytes()
    p.write_bytes(struct.pack("<4sI4s", b"RIFF", 36 + len(body), b"WAVE")
                  + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 2, 12000, 48000, 4, 16)
                  + struct.pack("<4sI", b"data", len(body)) + body)
    with pytest.raises(StorageError, match="plain WAV without GPS stamps"):
        read_kiwi_wav(p)


def test_mono_fmt(good: Truth) -> None:
    _patch(good.path, 22, struct.pack("<H", 1))
    with pytest.raises(StorageError, match="1 channel"):
        read_kiwi_wav(good.path)


def test_header_only(tmp_path: Path) -> None:
    t = record(tmp_path, "kiwi-a", t0_gps_ns=T0, n_frames=1)
    t.path.write_bytes(t.path.read_bytes()[:HEADER])
    with pytest.raises(StorageError, match="no frames"):
        read_kiwi_wav(t.path)


def test_session_level_errors(tmp_path: Path) -> None:
    a = record(tmp_path, "kiwi-a", t0_gps_ns=T0, n_frames=60)
    b = record(tmp_path, "kiwi-b", t0_gps_ns=T0, n_frames=60, freq_khz=7100.0)
    with pytest.raises(ConfigError, match="different frequencies"):
        import_kiwi_wav([a.path, b.path])
    with pytest.raises(ConfigError, match="given twice"):
        import_kiwi_wav([a.path, a.path])
    with pytest.raises(ConfigError, match="no kiwi-wav files"):
        import_kiwi_wav([])
