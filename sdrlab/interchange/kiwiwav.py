"""kiwirecorder ``--kiwi-wav`` IQ files and ``gnss_pos`` position files (protocol reference section 10).

``kiwirecorder.py -m iq --kiwi-wav --station=NAME`` writes, per connection, a file named
``YYYYmmddTHHMMSSZ_<freqHz>_<station>_iq.wav``::

    RIFF <size> WAVE
    fmt  16  PCM, 2 channels, rate int(fs), byte_rate, block_align 4, 16 bit
    then per SND frame (2074 bytes each, no top-level data chunk):
      kiwi 10    <BBII  last_gps_solution, 0, gpssec, gpsnsec
      data 2048  512 x (I, Q) int16 little-endian

and, when ``gnss_pos/`` exists (or into ``--dir``), ``<station>.txt`` with one Octave line
``d.<station> = struct('coord', [lat,lon], 'host', 'h', 'port', p);`` ('-' in the variable name
replaced by '_').

:func:`import_kiwi_wav` turns the frames into SND-like headers (seq consecutive from 1, flags
IQ | little-endian, S-meter unknown) and assembles them with
:func:`sdrlab.capture.build_segment`, the path a live capture takes, so the sample rate
and the UTC start come from the GPS fit over the fresh stamps.  The GPS week is taken from the
recording host's clock as the file name records it (the time of the first frame), not from the
importing machine's clock.  One file is one segment (kiwirecorder starts a new file at each
reconnect); several files of one station become that station's segments in time order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import numpy.typing as npt
import xarray as xr

from .. import model, timing
from ..errors import ConfigError, StorageError
from ..capture import (
    FLAG_LITTLE_ENDIAN, FLAG_STEREO, HEADER_DTYPE, SAMPLES_PER_FRAME, Capture, ReceiverInfo, Segment, build_segment,
)
from ..welch import PASSBAND_NOT_RECORDED

log = logging.getLogger(__name__)

__all__ = [
    "FRAME_BYTES",
    "GnssPos",
    "KiwiWav",
    "KiwiWavName",
    "import_kiwi_wav",
    "parse_gnss_pos",
    "parse_kiwi_wav_name",
    "read_gnss_pos",
    "read_kiwi_wav",
]

KIWI_CHUNK_SIZE = 10
DATA_CHUNK_SIZE = SAMPLES_PER_FRAME * 4  # 2048
#: bytes per frame on disk: 8 + 10 (kiwi chunk) + 8 + 2048 (data chunk)
FRAME_BYTES = 8 + KIWI_CHUNK_SIZE + 8 + DATA_CHUNK_SIZE
#: one frame on disk as a numpy record (packed, little-endian)
FRAME_DTYPE = np.dtype(
    [
        ("kiwi_id", "S4"),
        ("kiwi_size", "<u4"),
        ("last_gps", "u1"),
        ("dummy", "u1"),
        ("gpssec", "<u4"),
        ("gpsnsec", "<u4"),
        ("data_id", "S4"),
        ("data_size", "<u4"),
        ("iq", "<i2", (SAMPLES_PER_FRAME * 2,)),
    ]
)
assert FRAME_DTYPE.itemsize == FRAME_BYTES == 2074
#: flags of the synthesised SND headers: IQ mode, samples little-endian (as in the file)
SND_FLAGS = FLAG_STEREO | FLAG_LITTLE_ENDIAN
#: station name kiwirecorder uses for gnss_pos when no --station was given
NONAME = "kiwi_noname"

_RIFF = struct.Struct("<4sI4s")
_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")  # format tag, channels, rate, byte rate, block align, bits
_NAME = re.compile(
    r"^(?P<ts>\d{8}T\d{6}Z)_(?P<freq>\d+)(?:_(?P<station>.+?))?_(?P<mode>[a-z]+)\.wav$"
)
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GNSS_POS = re.compile(
    r"^\s*d\.(?P<var>\w+)\s*=\s*struct\(\s*'coord'\s*,\s*\[\s*(?P<lat>" + _NUM + r")\s*,\s*(?P<lon>"
    + _NUM + r")\s*\]\s*,\s*'host'\s*,\s*'(?P<host>[^']*)'\s*,\s*'port'\s*,\s*(?P<port>\d+)\s*\)\s*;?\s*$"
)


# ---- file names ------------------------------------------------------------------------------
@dataclass(frozen=True)
class KiwiWavName:
    """What a kiwirecorder file name says: start (host clock, whole seconds, UTC), frequency, station."""

    start: np.datetime64
    frequency_hz: float
    station: str
    mode: str


def parse_kiwi_wav_name(path: str | Path) -> KiwiWavName:
    """Parse ``YYYYmmddTHHMMSSZ_<freqHz>_<station>_<mode>.wav``; ConfigError when it does not fit."""
    name = Path(path).name
    m = _NAME.match(name)
    if m is None:
        raise ConfigError(
            f"{name}: not a kiwirecorder file name (expected YYYYmmddTHHMMSSZ_<freqHz>_<station>_iq.wav; "
            "the frequency and the station are taken from it)"
        )
    if m["mode"] != "iq":
        raise ConfigError(f"{name}: recorded in mode {m['mode']!r}; only IQ files (-m iq --kiwi-wav) carry IQ")
    try:
        start = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ConfigError(f"{name}: {m['ts']!r} is not a valid UTC time") from None
    t = np.datetime64(int(start.timestamp()), "s").astype("datetime64[ns]")
    return KiwiWavName(t, float(m["freq"]), m["station"] or NONAME, m["mode"])


# ---- the file --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KiwiWav:
    """One kiwi-wav file: its name, the nominal rate of its ``fmt`` chunk and its frames."""

    path: Path
    name: KiwiWavName
    #: ``fmt`` sample rate: kiwirecorder writes the receiver's rate as an integer (12001, 20250...)
    wav_rate: int
    #: the frames as on disk (FRAME_DTYPE): last_gps, gpssec, gpsnsec, iq
    frames: npt.NDArray[np.void]

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def n_samples(self) -> int:
        return self.n_frames * SAMPLES_PER_FRAME

    @property
    def samples(self) -> npt.NDArray[np.int16]:
        """(n_samples, 2) int16 I, Q."""
        return self.frames["iq"].astype(np.int16).reshape(-1, 2)

    def snd_headers(self) -> bytes:
        """20-byte SND IQ headers, one per frame: seq 1, 2, ..., flags IQ | little-endian, the
        file's GPS block, S-meter 0 (the file has none; the importer sets RSSI to NaN)."""
        h = np.zeros(self.n_frames, dtype=HEADER_DTYPE)
        h["tag"] = b"SND"
        h["flags"] = SND_FLAGS
        h["seq"] = np.arange(1, self.n_frames + 1, dtype=np.uint32)
        h["last_gps"] = self.frames["last_gps"]
        h["gpssec"] = self.frames["gpssec"]
        h["gpsnsec"] = self.frames["gpsnsec"]
        return h.tobytes()

    def sample_bytes(self) -> bytes:
        """The frames' sample bytes, little-endian, as the SND payloads they came from."""
        return np.ascontiguousarray(self.frames["iq"]).astype("<i2").tobytes()


def _fail(path: Path, problem: str) -> StorageError:
    return StorageError(f"{path.name}: {problem}")


def read_kiwi_wav(path: str | Path) -> KiwiWav:
    """Read and check a ``kiwirecorder.py -m iq --kiwi-wav`` file.

    Raises :class:`~sdrlab.errors.ConfigError` for a file name that is not kiwirecorder's and
    :class:`~sdrlab.errors.StorageError` naming the file and the problem for: a file that is not
    RIFF/WAVE, a ``fmt`` that is not 2-channel 16-bit PCM, a plain WAV without ``kiwi`` chunks, a
    ``kiwi`` or ``data`` chunk of another size than 10 / 2048 (or another chunk in the frame
    sequence), a file that ends mid-frame (truncated), and a RIFF size that disagrees with the
    number of frames in the file.
    """
    p = Path(path)
    name = parse_kiwi_wav_name(p)
    try:
        buf = p.read_bytes()
    except OSError as exc:
        raise StorageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(buf) < _RIFF.size:
        raise _fail(p, f"not a RIFF/WAVE file ({len(buf)} bytes)")
    riff, riff_size, wave = _RIFF.unpack_from(buf, 0)
    if riff != b"RIFF" or wave != b"WAVE":
        raise _fail(p, f"not a RIFF/WAVE file (starts with {buf[:12]!r})")
    off = _RIFF.size
    fmt: tuple[int, ...] | None = None
    while True:
        if off + _CHUNK.size > len(buf):
            if off < len(buf):
                raise _fail(p, f"truncated: {len(buf) - off} stray bytes after the header at byte {off}")
            if fmt is None:
                raise _fail(p, "no 'fmt ' chunk")
            raise _fail(p, "holds no frames (no 'kiwi' chunk after the header)")
        cid, size = _CHUNK.unpack_from(buf, off)
        if cid == b"kiwi":
            break
        if cid == b"fmt ":
            if size < _FMT.size or off + 8 + _FMT.size > len(buf):
                raise _fail(p, f"'fmt ' chunk of {size} bytes is too short")
            fmt = _FMT.unpack_from(buf, off + 8)
        elif cid == b"data":
            raise _fail(
                p, "has a top-level 'data' chunk and no 'kiwi' chunks: a plain WAV without GPS stamps, "
                "not written with --kiwi-wav",
            )
        off += 8 + size + (size & 1)
    if fmt is None:
        raise _fail(p, "no 'fmt ' chunk before the first frame")
    tag, channels, rate, _byte_rate, block_align, bits = fmt
    if tag != 1 or channels != 2 or bits != 16 or block_align != 4:
        raise _fail(
            p, f"'fmt ' is format {tag}, {channels} channel(s), {bits} bit, block_align {block_align}; "
            "a kiwi-wav IQ file is PCM (1), 2 channels (I, Q), 16 bit, block_align 4",
        )
    if rate <= 0:
        raise _fail(p, f"'fmt ' sample rate {rate} Hz")

    region = len(buf) - off
    n_full, rest = divmod(region, FRAME_BYTES)
    frames = np.frombuffer(buf, dtype=FRAME_DTYPE, count=n_full, offset=off)
    bad = (
        (frames["kiwi_id"] != b"kiwi") | (frames["kiwi_size"] != KIWI_CHUNK_SIZE)
        | (frames["data_id"] != b"data") | (frames["data_size"] != DATA_CHUNK_SIZE)
    )
    if bad.any():
        i = int(np.argmax(bad))
        f = frames[i]
        at = off + i * FRAME_BYTES
        if f["kiwi_id"] != b"kiwi":
            what = f"expected a 'kiwi' chunk at byte {at}, found {bytes(f['kiwi_id'])!r}"
        elif f["kiwi_size"] != KIWI_CHUNK_SIZE:
            what = f"'kiwi' chunk of size {int(f['kiwi_size'])} at byte {at} (kiwirecorder writes 10)"
        elif f["data_id"] != b"data":
            what = f"expected a 'data' chunk at byte {at + 18}, found {bytes(f['data_id'])!r}"
        else:
            what = (f"'data' chunk of size {int(f['data_size'])} at byte {at + 18} (kiwirecorder writes "
                    "2048: one frame of 512 I/Q samples)")
        raise _fail(p, f"frame {i}: {what}")
    riff_frames = (riff_size + 8 - off) / FRAME_BYTES
    if rest:
        raise _fail(
            p, f"truncated: the file ends {rest} bytes into frame {n_full} (a frame takes {FRAME_BYTES} "
            f"bytes); the RIFF header says {_frames_text(riff_frames)} frames",
        )
    if riff_size + 8 != len(buf):
        raise _fail(
            p, f"frame count mismatch: the RIFF header (size {riff_size}) says {_frames_text(riff_frames)} "
            f"frames, the file holds {n_full}",
        )
    if n_full == 0:
        raise _fail(p, "holds no frames")
    return KiwiWav(p, name, int(rate), frames)


def _frames_text(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.2f}"


# ---- gnss_pos --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GnssPos:
    """One ``gnss_pos/<station>.txt``: the receiver's position as it announced it (rx_gps)."""

    variable: str
    latitude: float
    longitude: float
    host: str
    port: int


def parse_gnss_pos(text: str, source: str = "gnss_pos") -> GnssPos:
    """Parse kiwirecorder's Octave line ``d.<name> = struct('coord', [lat,lon], 'host', 'h', 'port', p);``."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    m = _GNSS_POS.match(line)
    if m is None:
        raise ConfigError(
            f"{source}: not a kiwirecorder position line (expected "
            f"d.<name> = struct('coord', [lat,lon], 'host', '<host>', 'port', <port>);), got {line[:120]!r}"
        )
    lat, lon = float(m["lat"]), float(m["lon"])
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ConfigError(f"{source}: position [{lat}, {lon}] is not a latitude, longitude pair")
    return GnssPos(m["var"], lat, lon, m["host"], int(m["port"]))


def read_gnss_pos(path: str | Path) -> GnssPos:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StorageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_gnss_pos(text, source=str(p))


def _position_file(station: str, wav_dir: Path, positions_dir: Path | None) -> Path | None:
    """``positions_dir/<station>.txt`` when a directory is given, else ``gnss_pos/<station>.txt``
    beside the WAV files, else ``<station>.txt`` beside them (kiwirecorder ``--dir`` writes it there)."""
    if positions_dir is not None:
        candidates = [positions_dir / f"{station}.txt"]
    else:
        candidates = [wav_dir / "gnss_pos" / f"{station}.txt", wav_dir / f"{station}.txt"]
    return next((c for c in candidates if c.is_file()), None)


# ---- import ----------------------------------------------------------------------------------
def _segment(f: KiwiWav, gps_utc_offset_s: int) -> Segment:
    host = timing.utc_to_gps_ns(f.name.start, gps_utc_offset_s)
    seg = build_segment(
        f.snd_headers(), f.sample_bytes(), nominal_fs=float(f.wav_rate), gps_utc_offset_s=gps_utc_offset_s,
        end_reason=f"end of file {f.path.name}", host_gps_ns=host,
    )
    # the file keeps no S-meter: RSSI unknown, not the -127 dBm a zero S-meter would mean
    seg = replace(seg, frame_rssi_dbm=np.full(seg.frame_seq.size, np.nan, dtype=np.float32))
    if not seg.fit.ok:
        log.warning("%s: no GPS time fit (%s): start time unknown, nominal rate %d Hz used",
                    f.path.name, seg.fit.status, f.wav_rate)
    return seg


def session_id_for(starts: Sequence[np.datetime64]) -> str:
    """A new id that sorts by the capture time (earliest start), or by now when none is known."""
    known = [t for t in starts if not np.isnat(t)]
    if not known:
        return model.new_session_id()
    unix_s = int(np.asarray(min(known), dtype="datetime64[s]").astype(np.int64))
    return model.new_session_id(datetime.fromtimestamp(unix_s, tz=timezone.utc))


def import_kiwi_wav(
    paths: Sequence[str | Path],
    *,
    positions_dir: str | Path | None = None,
    session_id: str | None = None,
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S,
) -> xr.Dataset:
    """Several kiwirecorder ``--kiwi-wav`` IQ files into one session in the :mod:`sdrlab.model` schema.

    One station per station name in the file names (kiwirecorder's ``--station``; ``kiwi_noname``
    without one); several files of one station (reconnects, ``--dt-sec``) become its segments in
    time order.  Every file must be tuned to the same frequency (a session has one centre
    frequency).  Positions come from ``<positions_dir>/<station>.txt`` when ``positions_dir`` is
    given, else from ``gnss_pos/<station>.txt`` (or ``<station>.txt``) beside the WAV files, else
    they are NaN with ``position_source`` "unknown"; a position file that exists but does not
    parse is an error.  ``session_id`` defaults to a new id made from the earliest start time, so
    imported sessions sort among live ones by capture time.

    The file keeps neither the passband nor the receiver's version or S-meter: ``hw`` is "KiwiSDR",
    RSSI is NaN, and the passband is recorded as unknown (``passband_low_hz`` / ``passband_high_hz``
    None, ``passband_source`` "not recorded"), never as the sampled band: the receiver filtered the
    IQ to whatever its client asked for, which the metrics detect from the spectrum's skirts
    (:func:`sdrlab.metrics.passband`).
    """
    items = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not items:
        raise ConfigError("no kiwi-wav files given")
    seen: set[Path] = set()
    for p in items:
        rp = p.resolve()
        if rp in seen:
            raise ConfigError(f"{p.name}: given twice")
        seen.add(rp)
    pos_dir = Path(positions_dir) if positions_dir is not None else None
    if pos_dir is not None and not pos_dir.is_dir():
        raise ConfigError(f"positions directory {pos_dir} does not exist")
    files = [read_kiwi_wav(p) for p in items]
    freqs = sorted({f.name.frequency_hz for f in files})
    if len(freqs) > 1:
        listing = ", ".join(f"{f.path.name}: {f.name.frequency_hz:.0f} Hz" for f in files)
        raise ConfigError(f"the files are tuned to different frequencies ({listing}); a session has one "
                          "centre frequency: import them as separate sessions")
    by_station: dict[str, list[KiwiWav]] = {}
    for f in files:
        by_station.setdefault(f.name.station, []).append(f)

    captures: list[Capture] = []
    for station, group in by_station.items():
        group.sort(key=lambda f: (f.name.start, f.path.name))
        rates = {f.wav_rate for f in group}
        if len(rates) > 1:
            raise ConfigError(f"station {station}: files at different sample rates {sorted(rates)}")
        rate = group[0].wav_rate
        pos_file = _position_file(station, group[0].path.parent, pos_dir)
        pos = read_gnss_pos(pos_file) if pos_file is not None else None
        if pos is None:
            log.info("%s: no position file (gnss_pos/%s.txt): position unknown", station, station)
        info = ReceiverInfo(
            host=pos.host if pos else "", port=pos.port if pos else 0, audio_rate=rate,
            sample_rate=float(rate), name=station,
            position=(pos.latitude, pos.longitude) if pos else None,
        )
        segments = [_segment(f, gps_utc_offset_s) for f in group]
        n = sum(s.n_samples for s in segments)
        captures.append(Capture(
            station=station, frequency_hz=freqs[0], low_cut=-rate / 2.0, high_cut=rate / 2.0,
            requested_s=n / float(rate), gps_utc_offset_s=gps_utc_offset_s, info=info, segments=segments,
            events=[f"imported from {f.path.name}" for f in group],
        ))
    if session_id is None:
        starts = [c.utc(s.fit.t0_gps_ns) for c in captures for s in c.segments if s.fit.ok]
        session_id = session_id_for(starts)
    attrs = {
        "import_format": "kiwi-wav",
        "import_files": json.dumps([f.path.name for f in files]),
        "comment": "imported from kiwirecorder --kiwi-wav files; passband and S-meter not recorded",
    }
    ds = model.build_dataset(captures, {}, session_id=session_id, attrs=attrs)
    ds.attrs.update(passband_low_hz=None, passband_high_hz=None, passband_source=PASSBAND_NOT_RECORDED)
    hw = ds["hw"]
    return ds.assign_coords(hw=("station", np.full(ds.sizes["station"], "KiwiSDR", dtype=object), hw.attrs))
