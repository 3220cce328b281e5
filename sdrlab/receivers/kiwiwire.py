"""KiwiSDR wire format (protocol reference sections 1, 3, 4, 5): frames, flags and MSG tokens.

Pure functions shared by the client and the simulator.  The byte layout is defined here once; the
tests check it against hand-assembled bytes from the reference, not against this module.
"""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import numpy.typing as npt

# The frame size, the flag bits of the flags byte (reference section 5) and the last_gps_solution
# values with a meaning of their own are kept per frame in the stored Dataset, so they are defined
# once in sdrlab.capture (the stored format) and re-exported here (the ``as`` form) for the client,
# the simulator and the DSP code that read them as wire facts.
from ..capture import (
    FLAG_ADC_OVERFLOW as FLAG_ADC_OVERFLOW,
    FLAG_COMPRESSED as FLAG_COMPRESSED,
    FLAG_LITTLE_ENDIAN as FLAG_LITTLE_ENDIAN,
    FLAG_LPF as FLAG_LPF,
    FLAG_NEW_FREQ as FLAG_NEW_FREQ,
    FLAG_RESTART as FLAG_RESTART,
    FLAG_SQUELCHED as FLAG_SQUELCHED,
    FLAG_STEREO as FLAG_STEREO,
    GPS_LAST_CAP as GPS_LAST_CAP,
    GPS_NO_CLOCK as GPS_NO_CLOCK,
    HEADER_DTYPE,
    SAMPLES_PER_FRAME as SAMPLES_PER_FRAME,
)

#: an SND frame in IQ mode: 20-byte header + 512 complex int16 samples
HEADER_SIZE = 20
#: header of SND frames without the GPS block (mono audio modes; KiwiSDR emulations in every mode)
AUDIO_HEADER_SIZE = 10
IQ_FRAME_SIZE = HEADER_SIZE + SAMPLES_PER_FRAME * 4  # 2068

#: MSG values the server URL-encodes (kiwi_str_encode)
ENCODED_KEYS = frozenset(
    {"load_cfg", "load_dxcfg", "load_dxcomm_cfg", "redirect", "ip_limit", "reason_disabled"}
)

_HEAD = struct.Struct("<3sBI")  # tag, flags, seq (u32 LE)
_SMETER = struct.Struct(">H")  # u16 BE
_GPS = struct.Struct("<BBII")  # last_gps_solution, dummy, gpssec, gpsnsec (LE)
# the header as the client parses a whole segment of them is the header packed here
assert HEADER_DTYPE.itemsize == _HEAD.size + _SMETER.size + _GPS.size == HEADER_SIZE


@dataclass(frozen=True, slots=True)
class SndHeader:
    flags: int
    seq: int
    smeter: int
    last_gps_solution: int
    gpssec: int
    gpsnsec: int

    @property
    def rssi_dbm(self) -> float:
        return smeter_to_dbm(self.smeter)

    @property
    def little_endian(self) -> bool:
        return bool(self.flags & FLAG_LITTLE_ENDIAN)


def parse_snd_header(buf: bytes | bytearray | memoryview) -> SndHeader:
    """Parse the 20-byte header of an IQ SND frame (no length or tag check here)."""
    _tag, flags, seq = _HEAD.unpack_from(buf, 0)
    (smeter,) = _SMETER.unpack_from(buf, 8)
    last, _dummy, gsec, gnsec = _GPS.unpack_from(buf, 10)
    return SndHeader(flags, seq, smeter, last, gsec, gnsec)


def parse_iq_samples(
    buf: bytes | bytearray | memoryview, little_endian: bool
) -> npt.NDArray[np.int16]:
    """The 512 x (I, Q) int16 samples of a frame, in native byte order."""
    dt = np.dtype("<i2") if little_endian else np.dtype(">i2")
    return np.frombuffer(buf, dtype=dt, offset=HEADER_SIZE, count=SAMPLES_PER_FRAME * 2).astype(
        np.int16
    ).reshape(SAMPLES_PER_FRAME, 2)


def pack_snd_frame(
    *,
    flags: int,
    seq: int,
    smeter: int,
    last_gps_solution: int,
    gpssec: int,
    gpsnsec: int,
    samples: bytes,
) -> bytes:
    """Assemble one IQ SND frame; ``samples`` are the 2048 sample bytes already in wire order."""
    if len(samples) != SAMPLES_PER_FRAME * 4:
        raise ValueError(f"an IQ frame carries {SAMPLES_PER_FRAME * 4} sample bytes, not {len(samples)}")
    return b"".join(
        (
            _HEAD.pack(b"SND", flags & 0xFF, seq & 0xFFFFFFFF),
            _SMETER.pack(smeter & 0xFFFF),
            _GPS.pack(last_gps_solution & 0xFF, 0, gpssec & 0xFFFFFFFF, gpsnsec & 0xFFFFFFFF),
            samples,
        )
    )


def samples_to_wire(iq: npt.NDArray[np.int16], little_endian: bool) -> bytes:
    """(512, 2) int16 samples to wire bytes (big-endian unless ``SET little-endian``)."""
    return np.ascontiguousarray(iq, dtype="<i2" if little_endian else ">i2").tobytes()


def smeter_to_dbm(value: int) -> float:
    """RSSI in dBm from the S-meter field: 0.1 * v - 127, clamped to -127...+3.4."""
    return min(max(0.1 * value - 127.0, -127.0), 3.4)


def dbm_to_smeter(dbm: float) -> int:
    """Inverse of :func:`smeter_to_dbm` as the server computes it."""
    dbm = min(max(dbm, -127.0), 3.4)
    return int(round((dbm + 127.0) * 10.0))


def parse_msg(body: bytes | bytearray | memoryview | str) -> list[tuple[str, str | None]]:
    """Tokens of a MSG body (the bytes after the ``MSG`` tag): ``key=value`` or bare ``key``.

    Values of the keys the server URL-encodes are percent-decoded.  Order is kept; unknown keys are
    returned like any other (the caller ignores what it does not know).
    """
    text = body if isinstance(body, str) else bytes(body).decode("utf-8", errors="replace")
    out: list[tuple[str, str | None]] = []
    for token in text.split(" "):
        if not token:
            continue
        key, sep, value = token.partition("=")
        if not sep:
            out.append((key, None))
            continue
        if key in ENCODED_KEYS:
            value = urllib.parse.unquote(value)
        out.append((key, value))
    return out


def encode_msg(pairs: Iterable[tuple[str, object | None]]) -> bytes:
    """A MSG frame as the server sends it: ``b"MSG " + "k=v k2 ..."`` (values of encoded keys quoted)."""
    parts = []
    for key, value in pairs:
        if value is None:
            parts.append(key)
            continue
        text = str(value)
        if key in ENCODED_KEYS:
            text = urllib.parse.quote(text, safe="")
        parts.append(f"{key}={text}")
    return ("MSG " + " ".join(parts)).encode("ascii")


def parse_rx_gps(load_cfg_json: dict[str, object]) -> tuple[float, float] | None:
    """Receiver position from ``load_cfg``'s ``rx_gps`` string ``"(lat, lon)"``, if present and sane."""
    raw = load_cfg_json.get("rx_gps")
    if not isinstance(raw, str):
        return None
    text = urllib.parse.unquote(raw).strip().strip("()")
    try:
        lat_s, lon_s = text.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon
