"""sdrlab.receivers.kiwiwire against the KiwiSDR wire reference (docs/kiwisdr-protocol.md, sections 1, 3-5).

Frames are assembled here by hand from the reference's byte table (bytes literals and struct formats
written out in this file), never with the module's own packers, so the tests check the layout and not
the module against itself.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdrlab.receivers import kiwiwire as kw

N_SAMPLES = 512
FRAME_LEN = 2068  # reference section 4: "always 2068 bytes"


# --------------------------------------------------------------------------------------------------
# hand-built frames (reference section 4 byte table)


def _hand_samples(little_endian: bool = False) -> tuple[np.ndarray, bytes]:
    """512 known (I, Q) pairs and their 2048 wire bytes, packed with an explicit struct format."""
    k = np.arange(N_SAMPLES, dtype=np.int64)
    i = ((k * 97) % 65536 - 32768).astype(np.int16)
    q = (32767 - (k * 131) % 65536).astype(np.int16)
    iq = np.stack([i, q], axis=1)
    inter = [int(v) for v in iq.reshape(-1)]
    fmt = ("<" if little_endian else ">") + "1024h"
    return iq, struct.pack(fmt, *inter)


# A hand-written header: tag, flags 0x08 (IQ), seq 0x01020304 LE, smeter 800 BE (-47.0 dBm),
# last_gps_solution 7, dummy 0, gpssec 345600 LE, gpsnsec 123456789 LE.
HEADER_BE = (
    b"SND"
    + b"\x08"
    + b"\x04\x03\x02\x01"  # seq = 0x01020304, u32 little-endian
    + b"\x03\x20"  # smeter = 0x0320 = 800, u16 big-endian
    + b"\x07"  # last_gps_solution
    + b"\x00"  # dummy
    + b"\x00\x46\x05\x00"  # gpssec = 345600 = 0x00054600, u32 little-endian
    + b"\x15\xcd\x5b\x07"  # gpsnsec = 123456789 = 0x075BCD15, u32 little-endian
)


def test_hand_header_is_20_bytes() -> None:
    # guards the literal above, not the module
    assert len(HEADER_BE) == 20


def test_parse_snd_header_hand_built_frame() -> None:
    _iq, sample_bytes = _hand_samples()
    frame = HEADER_BE + sample_bytes
    assert len(frame) == FRAME_LEN
    h = kw.parse_snd_header(frame)
    assert h.flags == 0x08
    assert h.seq == 0x01020304
    assert h.smeter == 800
    assert h.last_gps_solution == 7
    assert h.gpssec == 345600
    assert h.gpsnsec == 123456789
    assert h.little_endian is False
    assert h.rssi_dbm == pytest.approx(-47.0)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_snd_header_accepts_buffer_types(kind: type) -> None:
    _iq, sample_bytes = _hand_samples()
    h = kw.parse_snd_header(kind(HEADER_BE + sample_bytes))
    assert (h.seq, h.smeter, h.gpssec, h.gpsnsec) == (0x01020304, 800, 345600, 123456789)


def test_parse_snd_header_byte_order_is_mixed() -> None:
    """Each multi-byte field with an asymmetric value, so a wrong byte order shows up."""
    frame = (
        b"SND" + bytes([0x8C])
        + struct.pack("<I", 0xDEADBEEF)
        + struct.pack(">H", 0x1234)
        + struct.pack("<BBII", 252, 0, 604799, 999_999_999)
        + bytes(2048)
    )
    h = kw.parse_snd_header(frame)
    assert h.flags == 0x8C
    assert h.seq == 0xDEADBEEF
    assert h.smeter == 0x1234
    assert h.last_gps_solution == 252
    assert (h.gpssec, h.gpsnsec) == (604799, 999_999_999)
    assert h.little_endian is True


def test_first_frame_zero_gps_block() -> None:
    # reference section 7: the first IQ frame carries zeros; seq of the first frame is 1
    frame = b"SND\x08" + b"\x01\x00\x00\x00" + b"\x00\x00" + b"\x00" * 10 + bytes(2048)
    h = kw.parse_snd_header(frame)
    assert (h.seq, h.smeter, h.last_gps_solution, h.gpssec, h.gpsnsec) == (1, 0, 0, 0, 0)


def test_no_gps_clock_value() -> None:
    frame = b"SND\x08" + b"\x02\x00\x00\x00" + b"\x04\xb0" + b"\xff\x00" + bytes(8) + bytes(2048)
    h = kw.parse_snd_header(frame)
    assert h.last_gps_solution == kw.GPS_NO_CLOCK == 255
    assert h.smeter == 1200


def test_parse_iq_samples_big_endian() -> None:
    iq, sample_bytes = _hand_samples(little_endian=False)
    frame = HEADER_BE + sample_bytes
    out = kw.parse_iq_samples(frame, little_endian=False)
    assert out.shape == (512, 2)
    assert out.dtype == np.dtype(np.int16)  # native order, not '>i2'
    np.testing.assert_array_equal(out, iq)


def test_parse_iq_samples_first_pair_bytes() -> None:
    # I = 0x0102, Q = -2 (0xFFFE) as big-endian bytes at offset 20
    frame = HEADER_BE + b"\x01\x02\xff\xfe" + bytes(2044)
    out = kw.parse_iq_samples(frame, little_endian=False)
    assert (int(out[0, 0]), int(out[0, 1])) == (0x0102, -2)
    assert not out[1:].any()


def test_parse_iq_samples_little_endian_with_flag_0x80() -> None:
    iq, sample_bytes = _hand_samples(little_endian=True)
    frame = b"SND" + bytes([0x08 | 0x80]) + HEADER_BE[4:] + sample_bytes
    h = kw.parse_snd_header(frame)
    assert h.flags & 0x80
    assert h.little_endian is True
    out = kw.parse_iq_samples(frame, h.little_endian)
    assert out.dtype == np.dtype(np.int16)
    np.testing.assert_array_equal(out, iq)
    # and reading it as big-endian would be wrong (the two differ for these samples)
    assert not np.array_equal(kw.parse_iq_samples(frame, False), iq)


def test_parse_iq_samples_first_pair_little_endian_bytes() -> None:
    frame = b"SND\x88" + HEADER_BE[4:] + b"\x02\x01\xfe\xff" + bytes(2044)
    out = kw.parse_iq_samples(frame, little_endian=True)
    assert (int(out[0, 0]), int(out[0, 1])) == (0x0102, -2)


def test_samples_to_wire_matches_struct() -> None:
    iq, be = _hand_samples(False)
    _iq, le = _hand_samples(True)
    assert kw.samples_to_wire(iq, little_endian=False) == be
    assert kw.samples_to_wire(iq, little_endian=True) == le
    assert len(be) == 2048


def test_pack_snd_frame_matches_hand_layout() -> None:
    iq, sample_bytes = _hand_samples()
    frame = kw.pack_snd_frame(
        flags=0x08, seq=0x01020304, smeter=800, last_gps_solution=7,
        gpssec=345600, gpsnsec=123456789, samples=sample_bytes,
    )
    assert len(frame) == FRAME_LEN == kw.IQ_FRAME_SIZE
    assert frame == HEADER_BE + sample_bytes


def test_pack_snd_frame_round_trip() -> None:
    iq, _ = _hand_samples()
    for le in (False, True):
        flags = 0x08 | (0x80 if le else 0)
        frame = kw.pack_snd_frame(
            flags=flags, seq=42, smeter=1304, last_gps_solution=0,
            gpssec=604799, gpsnsec=999_999_999, samples=kw.samples_to_wire(iq, le),
        )
        assert len(frame) == 2068
        assert frame[:3] == b"SND"
        assert frame[11] == 0  # dummy byte
        h = kw.parse_snd_header(frame)
        assert (h.flags, h.seq, h.smeter, h.last_gps_solution, h.gpssec, h.gpsnsec) == (
            flags, 42, 1304, 0, 604799, 999_999_999
        )
        np.testing.assert_array_equal(kw.parse_iq_samples(frame, h.little_endian), iq)


@pytest.mark.parametrize("n", [0, 2047, 2049, 1024])
def test_pack_snd_frame_rejects_wrong_sample_length(n: int) -> None:
    with pytest.raises(ValueError):
        kw.pack_snd_frame(flags=8, seq=1, smeter=0, last_gps_solution=0, gpssec=0, gpsnsec=0,
                          samples=bytes(n))


def test_flag_constants_match_reference() -> None:
    assert (kw.FLAG_LPF, kw.FLAG_ADC_OVERFLOW, kw.FLAG_NEW_FREQ, kw.FLAG_STEREO) == (1, 2, 4, 8)
    assert (kw.FLAG_COMPRESSED, kw.FLAG_RESTART, kw.FLAG_SQUELCHED, kw.FLAG_LITTLE_ENDIAN) == (
        0x10, 0x20, 0x40, 0x80
    )
    assert kw.HEADER_SIZE == 20 and kw.SAMPLES_PER_FRAME == 512


# --------------------------------------------------------------------------------------------------
# property tests: pack / parse round trips

u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(
    flags=st.integers(0, 255), seq=u32, smeter=st.integers(0, 65535),
    last=st.integers(0, 255), gpssec=u32, gpsnsec=u32,
    samples=st.binary(min_size=2048, max_size=2048),
)
def test_property_header_round_trip(flags, seq, smeter, last, gpssec, gpsnsec, samples) -> None:
    frame = kw.pack_snd_frame(flags=flags, seq=seq, smeter=smeter, last_gps_solution=last,
                              gpssec=gpssec, gpsnsec=gpsnsec, samples=samples)
    assert len(frame) == 2068
    # the bytes are where the reference puts them ...
    assert frame[:3] == b"SND" and frame[3] == flags
    assert struct.unpack_from("<I", frame, 4)[0] == seq
    assert struct.unpack_from(">H", frame, 8)[0] == smeter
    assert struct.unpack_from("<BBII", frame, 10) == (last, 0, gpssec, gpsnsec)
    assert frame[20:] == samples
    # ... and the module reads them back
    h = kw.parse_snd_header(frame)
    assert (h.flags, h.seq, h.smeter, h.last_gps_solution, h.gpssec, h.gpsnsec) == (
        flags, seq, smeter, last, gpssec, gpsnsec
    )


@settings(max_examples=60, deadline=None)
@given(iq=hnp.arrays(np.int16, (512, 2)), le=st.booleans())
def test_property_samples_round_trip(iq: np.ndarray, le: bool) -> None:
    wire = kw.samples_to_wire(iq, le)
    assert wire == struct.pack(("<" if le else ">") + "1024h", *[int(v) for v in iq.reshape(-1)])
    frame = kw.pack_snd_frame(flags=0x08 | (0x80 if le else 0), seq=1, smeter=0,
                              last_gps_solution=0, gpssec=0, gpsnsec=0, samples=wire)
    h = kw.parse_snd_header(frame)
    assert h.little_endian is le
    np.testing.assert_array_equal(kw.parse_iq_samples(frame, h.little_endian), iq)


# --------------------------------------------------------------------------------------------------
# S-meter / RSSI: dBm = 0.1 v - 127, clamped to -127 ... +3.4


@pytest.mark.parametrize(
    ("v", "dbm"),
    [(0, -127.0), (1, -126.9), (800, -47.0), (1200, -7.0), (1270, 0.0), (1304, 3.4),
     (1305, 3.4), (2000, 3.4), (65535, 3.4)],
)
def test_smeter_to_dbm(v: int, dbm: float) -> None:
    assert kw.smeter_to_dbm(v) == pytest.approx(dbm, abs=1e-9)


@pytest.mark.parametrize(
    ("dbm", "v"), [(-127.0, 0), (-200.0, 0), (-47.0, 800), (0.0, 1270), (3.4, 1304), (50.0, 1304)]
)
def test_dbm_to_smeter_clamps(dbm: float, v: int) -> None:
    assert kw.dbm_to_smeter(dbm) == v


def test_rssi_from_wrong_byte_order_would_differ() -> None:
    # 800 BE is b"\x03\x20"; read little-endian it would be 0x2003 = 8195 -> clamped +3.4
    frame = b"SND\x08\x01\x00\x00\x00\x03\x20" + bytes(10) + bytes(2048)
    assert kw.parse_snd_header(frame).rssi_dbm == pytest.approx(-47.0)


@given(st.integers(0, 1304))
def test_property_smeter_dbm_round_trip(v: int) -> None:
    assert kw.dbm_to_smeter(kw.smeter_to_dbm(v)) == v


@given(st.integers(0, 65535))
def test_property_smeter_range(v: int) -> None:
    assert -127.0 <= kw.smeter_to_dbm(v) <= 3.4


# --------------------------------------------------------------------------------------------------
# MSG tokens (sections 1 and 3)


def _body(frame: bytes) -> bytes:
    assert frame[:3] == b"MSG"
    return frame[3:]


def test_parse_msg_combined_frame() -> None:
    frame = b"MSG audio_init=0 audio_rate=12000 sample_rate=12001.150"
    assert kw.parse_msg(_body(frame)) == [
        ("audio_init", "0"), ("audio_rate", "12000"), ("sample_rate", "12001.150"),
    ]


def test_parse_msg_version_frame() -> None:
    frame = b"MSG version_maj=1 version_min=711 debian_ver=11"
    assert kw.parse_msg(_body(frame)) == [
        ("version_maj", "1"), ("version_min", "711"), ("debian_ver", "11"),
    ]


@pytest.mark.parametrize(
    "key", ["password_timeout", "exclusive_use", "wb_only", "camp", "audio_camp",
            "camp_disconnect", "monitor", "bandwidth", "down"],
)
def test_parse_msg_bare_key(key: str) -> None:
    assert kw.parse_msg(b" " + key.encode()) == [(key, None)]


def test_parse_msg_mixed_bare_and_valued() -> None:
    assert kw.parse_msg(b" too_busy=4 exclusive_use badp=1") == [
        ("too_busy", "4"), ("exclusive_use", None), ("badp", "1"),
    ]


def test_parse_msg_accepts_str_and_memoryview() -> None:
    assert kw.parse_msg(" badp=0") == [("badp", "0")]
    assert kw.parse_msg(memoryview(b" badp=0")) == [("badp", "0")]
    assert kw.parse_msg(bytearray(b" badp=0")) == [("badp", "0")]


def test_parse_msg_empty_value() -> None:
    assert kw.parse_msg(b" freq_offset=") == [("freq_offset", "")]


def test_parse_msg_percent_decodes_load_cfg() -> None:
    cfg = {"rx_name": "Enschede NL, 0-30 MHz", "rx_gps": "(52.2389, 6.8561)", "rx_asl": 40}
    text = json.dumps(cfg)
    # mongoose mg_url_encode: %xx with lower-case hex, "._-$,;~()" left alone
    enc = "".join(
        c if (c.isalnum() and c.isascii()) or c in "._-$,;~()" else "%%%02x" % ord(c) for c in text
    )
    assert " " not in enc and "%7b" in enc  # it really is encoded, lower-case hex
    (pair,) = kw.parse_msg(b" load_cfg=" + enc.encode())
    assert pair[0] == "load_cfg"
    assert pair[1] == text
    assert json.loads(pair[1]) == cfg


def test_parse_msg_percent_decodes_redirect() -> None:
    assert kw.parse_msg(b" redirect=http%3a%2f%2fkiwi.example.org%3a8074") == [
        ("redirect", "http://kiwi.example.org:8074")
    ]
    assert kw.parse_msg(b" redirect=http%3A%2F%2F10.0.0.2%3A8073") == [
        ("redirect", "http://10.0.0.2:8073")
    ]


def test_parse_msg_percent_decodes_ip_limit() -> None:
    assert kw.parse_msg(b" ip_limit=60%2c192.0.2.7") == [("ip_limit", "60,192.0.2.7")]
    assert kw.parse_msg(b" ip_limit=60,192.0.2.7") == [("ip_limit", "60,192.0.2.7")]


def test_parse_msg_percent_decodes_reason_disabled_with_down() -> None:
    body = b" reason_disabled=Down%20for%20maintenance%2c%20back%20at%2012%3a00%20UTC down=0"
    assert kw.parse_msg(body) == [
        ("reason_disabled", "Down for maintenance, back at 12:00 UTC"), ("down", "0"),
    ]


def test_parse_msg_keeps_unknown_keys_in_order() -> None:
    body = b" sample_rate=12001.150 zz_future_key=abc another_new_flag audio_rate=12000"
    assert kw.parse_msg(body) == [
        ("sample_rate", "12001.150"), ("zz_future_key", "abc"), ("another_new_flag", None),
        ("audio_rate", "12000"),
    ]


def test_parse_msg_does_not_decode_plain_keys() -> None:
    # only the keys the server URL-encodes are decoded
    assert kw.parse_msg(b" audio_adpcm_state=12,-345 zz_unknown=a%20b") == [
        ("audio_adpcm_state", "12,-345"), ("zz_unknown", "a%20b"),
    ]


def test_parse_msg_tolerates_repeated_spaces() -> None:
    assert kw.parse_msg(b"  badp=0   too_busy=2 ") == [("badp", "0"), ("too_busy", "2")]


def test_encode_msg_shape() -> None:
    frame = kw.encode_msg([("audio_init", 0), ("audio_rate", 12000), ("sample_rate", "12001.150")])
    assert frame == b"MSG audio_init=0 audio_rate=12000 sample_rate=12001.150"
    assert kw.encode_msg([("exclusive_use", None)]) == b"MSG exclusive_use"
    enc = kw.encode_msg([("reason_disabled", "a b:c/d"), ("down", 1)])
    assert b" " not in enc[4:].split(b" down=")[0]
    assert enc.endswith(b" down=1")


_plain_key = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="),
                     min_size=1, max_size=12).filter(lambda k: k not in kw.ENCODED_KEYS)
_plain_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(sorted(kw.ENCODED_KEYS)), st.text(max_size=40)),
            st.tuples(_plain_key, _plain_value),
            st.tuples(_plain_key, st.none()),
        ),
        max_size=6,
    )
)
def test_property_msg_round_trip(pairs: list[tuple[str, str | None]]) -> None:
    frame = kw.encode_msg(pairs)
    assert frame.startswith(b"MSG")
    frame.decode("ascii")  # the server sends ASCII
    assert kw.parse_msg(frame[3:]) == pairs


# --------------------------------------------------------------------------------------------------
# rx_gps from load_cfg


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(52.2389, 6.8561)", (52.2389, 6.8561)),
        ("(-33.8688,151.2093)", (-33.8688, 151.2093)),
        (" ( 0.5 , -179.25 ) ", (0.5, -179.25)),
        ("(52.2389%2C%206.8561)", (52.2389, 6.8561)),
        ("(90, 180)", (90.0, 180.0)),
        ("(-90, -180)", (-90.0, -180.0)),
    ],
)
def test_parse_rx_gps(raw: str, expected: tuple[float, float]) -> None:
    assert kw.parse_rx_gps({"rx_gps": raw, "rx_name": "x"}) == pytest.approx(expected)


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"rx_gps": None},
        {"rx_gps": [52.0, 6.0]},
        {"rx_gps": ""},
        {"rx_gps": "()"},
        {"rx_gps": "(52.0)"},
        {"rx_gps": "(1, 2, 3)"},
        {"rx_gps": "(north, east)"},
        {"rx_gps": "(95.0, 6.0)"},
        {"rx_gps": "(52.0, 181.0)"},
        {"rx_gps": "(nan, 6.0)"},
        {"rx_gps": "(inf, 6.0)"},
    ],
)
def test_parse_rx_gps_rejects(cfg: dict) -> None:
    assert kw.parse_rx_gps(cfg) is None


def test_rx_gps_from_encoded_load_cfg_message() -> None:
    cfg = {"rx_name": "Test Kiwi", "rx_gps": "(48.1351, 11.5820)", "rx_asl": 520}
    text = json.dumps(cfg)
    enc = "".join(c if c.isalnum() or c in "._-" else "%%%02X" % ord(c) for c in text)
    ((key, value),) = kw.parse_msg(b" load_cfg=" + enc.encode("ascii"))
    assert key == "load_cfg"
    assert kw.parse_rx_gps(json.loads(value)) == pytest.approx((48.1351, 11.5820))
