"""SigMF export and import: one recording per station (protocol reference section 15).

A station's recording is ``<session_id>_<station>.sigmf-meta`` + ``.sigmf-data`` (or one
``<session_id>_<station>.sigmf`` archive) holding only its valid samples (``n_samples``, no
padding) as ``ci16_le``, I then Q, exactly the int16 of the session.

``global``: ``core:datatype``, ``core:sample_rate`` (the measured rate), ``core:hw``,
``core:recorder``, ``core:description``, ``core:geolocation`` (GeoJSON, lon first; omitted when the
position is unknown), ``core:sha512``, ``core:extensions`` declaring the ``sdrlab`` namespace, and
the station's ``sdrlab:`` fields (station id, name, status with error class and message,
position source, receiver version, channels, GPS status, mean RSSI, passband, GPS-UTC offset,
session id).

``captures``: one per reconnect segment, at ``core:sample_start`` = the segment's first sample,
with ``core:frequency``, ``core:geolocation``, ``core:datetime`` (UTC of the segment's first sample
from its GPS fit, RFC 3339 with nanoseconds; omitted without a fit) and the exact integer
``sdrlab:datetime_ns`` (ns since 1970-01-01T00:00:00Z, UTC), since sigmf-python parses datetimes
to microseconds only.  Each capture also carries the segment's fit (``sdrlab:sample_rate``,
``sdrlab:fit_rms_s``, ``sdrlab:end_reason``) and its raw per-frame record as arrays, one entry per
512-sample frame from ``core:sample_start`` on: ``sdrlab:frame_gps_ns`` (GPS stamp, ns since the
GPS epoch, -1 none), ``sdrlab:frame_last_gps_solution``, ``sdrlab:frame_rssi_dbm`` (null =
unknown), ``sdrlab:frame_flags``, ``sdrlab:frame_seq_start`` and ``sdrlab:frames_missing``
(frame indices zero-filled for missing seq numbers).

:func:`import_sigmf` reads recordings (sdrlab's or anyone's ``ci16`` ones) back into a session
through :func:`sdrlab.model.build_dataset`; an export-import round trip is bit-exact for ``iq`` and
keeps the sample rate, start time (ns), positions, frequency and frame records.

The ``sigmf`` package (1.14) ships no type information; it is loaded through :mod:`importlib`
and used as ``Any``.  Keys are plain strings (``"core:sample_rate"``), never its constants, which
moved between versions.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import xarray as xr

from .. import model, timing
from .._version import __version__
from ..errors import ConfigError, StorageError
from ..capture import GPS_NO_CLOCK, SAMPLES_PER_FRAME, Capture, ReceiverInfo, Segment
from ..model import StationStatus
from ..welch import PASSBAND_NOT_RECORDED, recorded_passband
from .kiwiwav import session_id_for

log = logging.getLogger(__name__)

__all__ = ["EXTENSION", "export_sigmf", "import_sigmf", "recording_metadata"]

#: the sdrlab namespace, declared in core:extensions of every recording
NAMESPACE = "sdrlab"
EXTENSION: dict[str, Any] = {"name": NAMESPACE, "version": "1.0.0", "optional": True}
DATATYPE = "ci16_le"
SPF = SAMPLES_PER_FRAME

# core keys (plain strings: sigmf's constants moved between releases)
K_DATATYPE = "core:datatype"
K_SAMPLE_RATE = "core:sample_rate"
K_HW = "core:hw"
K_RECORDER = "core:recorder"
K_DESCRIPTION = "core:description"
K_NUM_CHANNELS = "core:num_channels"
K_GEOLOCATION = "core:geolocation"
K_EXTENSIONS = "core:extensions"
K_SAMPLE_START = "core:sample_start"
K_FREQUENCY = "core:frequency"
K_DATETIME = "core:datetime"
# sdrlab keys, global scope
S_SESSION_ID = "sdrlab:session_id"
S_STATION = "sdrlab:station"
S_NAME = "sdrlab:name"
S_STATUS = "sdrlab:status"
S_ERROR_CLASS = "sdrlab:error_class"
S_MESSAGE = "sdrlab:message"
S_POSITION_SOURCE = "sdrlab:position_source"
S_RECEIVER_VERSION = "sdrlab:receiver_version"
S_RX_CHANS = "sdrlab:rx_chans"
S_GPS_STATUS = "sdrlab:gps_status"
S_RSSI = "sdrlab:rssi_dbm"
S_PASSBAND_LOW = "sdrlab:passband_low_hz"
S_PASSBAND_HIGH = "sdrlab:passband_high_hz"
S_REQUESTED = "sdrlab:requested_duration_s"
S_GPS_UTC_OFFSET = "sdrlab:gps_utc_offset_s"
S_PROTOCOL = "sdrlab:protocol"
S_VERSION = "sdrlab:version"
# sdrlab keys, capture scope
S_DATETIME_NS = "sdrlab:datetime_ns"
S_SEG_FS = "sdrlab:sample_rate"
S_FIT_RMS = "sdrlab:fit_rms_s"
S_END_REASON = "sdrlab:end_reason"
S_SEQ_START = "sdrlab:frame_seq_start"
S_SEQ = "sdrlab:frame_seq"
S_FLAGS = "sdrlab:frame_flags"
S_LAST_GPS = "sdrlab:frame_last_gps_solution"
S_GPS_NS = "sdrlab:frame_gps_ns"
S_FRAME_RSSI = "sdrlab:frame_rssi_dbm"
S_MISSING = "sdrlab:frames_missing"
#: ``receipt``: the capture's frames had no GPS stamps; its datetime is the host's receipt estimate
S_TIMING = "sdrlab:timing"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DATETIME = re.compile(r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?Z$")


def _sigmf() -> Any:
    """The sigmf package (untyped), or an install hint."""
    try:
        return importlib.import_module("sigmf")
    except ImportError:
        raise ConfigError(
            "SigMF interchange needs the sigmf package: pip install 'sigmf>=1.14,<1.15'"
        ) from None


def _sigmf_errors(sg: Any) -> tuple[type[BaseException], ...]:
    jsonschema: Any = importlib.import_module("jsonschema")
    return (sg.error.SigMFError, jsonschema.exceptions.ValidationError, OSError, ValueError, KeyError)


# ---- small conversions -----------------------------------------------------------------------
def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; an attr that is None stays None)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _unix_ns(t: np.datetime64) -> int:
    return int(np.asarray(t, dtype="datetime64[ns]").astype(np.int64))


def _rfc3339(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.asarray(t, dtype="datetime64[ns]"), unit="ns")) + "Z"


def _parse_datetime(text: str, where: str) -> np.datetime64:
    """RFC 3339 UTC (``Z``) with any number of fractional digits, to datetime64[ns] (sub-ns cut)."""
    m = _DATETIME.match(text)
    if m is None:
        raise StorageError(f"{where}: core:datetime {text!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)")
    frac = (m["frac"] or "")[:9].ljust(9, "0")
    return np.datetime64(m["base"], "ns") + np.timedelta64(int(frac), "ns")


def _geolocation(lat: float, lon: float, alt: float) -> dict[str, Any] | None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    coords = [float(lon), float(lat)] + ([float(alt)] if math.isfinite(alt) else [])
    return {"type": "Point", "coordinates": coords}


def _base_name(session_id: str, station: str) -> str:
    return f"{_UNSAFE.sub('_', session_id) or 'session'}_{_UNSAFE.sub('_', station)}"


# ---- export ----------------------------------------------------------------------------------
def recording_metadata(ds: xr.Dataset, station: str) -> dict[str, Any]:
    """The SigMF metadata (``global``, ``captures``, ``annotations``) of one station, without
    ``core:sha512`` and ``core:version`` (the sigmf package sets both)."""
    s = ds.sel(station=station)
    base = model.sigmf_attrs(ds, station)
    sid = str(ds.attrs.get("session_id", ""))
    freq = float(ds.attrs[model.K_FREQUENCY])
    name = str(s["name"].values) if "name" in s.coords else station
    geo = _geolocation(float(s["latitude"]), float(s["longitude"]), float(s["altitude"]))
    passband = recorded_passband(ds.attrs)
    glob: dict[str, Any] = {
        K_DATATYPE: DATATYPE,
        K_SAMPLE_RATE: float(base[K_SAMPLE_RATE]),
        K_HW: str(base[K_HW]),
        K_RECORDER: str(ds.attrs.get("core:recorder", f"sdrlab {__version__}")),
        K_DESCRIPTION: f"sdrlab session {sid}: station {station} ({name}), {freq:.0f} Hz",
        K_NUM_CHANNELS: 1,
        K_EXTENSIONS: [dict(EXTENSION)],
        S_SESSION_ID: sid,
        S_STATION: station,
        S_NAME: name,
        S_STATUS: str(s["status"].values),
        S_POSITION_SOURCE: str(s["position_source"].values),
        S_RECEIVER_VERSION: str(s["receiver_version"].values),
        S_RX_CHANS: int(s["rx_chans"]),
        S_GPS_STATUS: str(s["gps_status"].values),
        S_RSSI: _num(s["rssi_dbm"]),
        S_PASSBAND_LOW: _num(passband[0]) if passband else None,  # null: the passband is not recorded
        S_PASSBAND_HIGH: _num(passband[1]) if passband else None,
        S_REQUESTED: _num(ds.attrs.get("requested_duration_s", math.nan)),
        S_GPS_UTC_OFFSET: int(ds.attrs.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S)),
        S_PROTOCOL: str(ds.attrs.get("protocol", "kiwisdr")),
        S_VERSION: __version__,
    }
    if geo is not None:
        glob[K_GEOLOCATION] = geo
    row = json.loads(ds.attrs.get("station_status", "{}")).get(station, {})
    for key, field in ((S_ERROR_CLASS, "error_class"), (S_MESSAGE, "message")):
        if row.get(field):
            glob[key] = str(row[field])

    fseg = np.asarray(s["frame_segment"].values)
    frame = {k: np.asarray(s[k].values) for k in (
        "frame_seq", "frame_flags", "frame_last_gps", "frame_gps_ns", "frame_rssi_dbm", "frame_received")}
    captures: list[dict[str, Any]] = []
    for j, (start, length, t0, fs, rms, end) in enumerate(zip(
        s["segment_start"].values, s["segment_length"].values, s["segment_t0"].values,
        s["segment_fs"].values, s["segment_fit_rms"].values, s["segment_end"].values,
    )):
        if int(start) < 0:
            continue
        cap: dict[str, Any] = {K_SAMPLE_START: int(start), K_FREQUENCY: freq}
        if geo is not None:
            cap[K_GEOLOCATION] = geo
        if not np.isnat(t0):
            cap[K_DATETIME] = _rfc3339(t0)
            cap[S_DATETIME_NS] = _unix_ns(t0)
        cap[S_SEG_FS] = _num(fs)
        cap[S_FIT_RMS] = _num(rms)
        cap[S_END_REASON] = str(end)
        timed = str(s["segment_timing"].values[j]) if "segment_timing" in s else "gps"
        if timed == "receipt":
            # frames of any length (a KiwiSDR emulation's packets): no per-frame record of 512-sample
            # frames to write; the datetime is the receipt-time estimate, said so
            cap[S_TIMING] = "receipt"
            captures.append(cap)
            continue
        sel = fseg == j
        seq = frame["frame_seq"][sel].astype(np.int64)
        if seq.size and np.array_equal(seq, seq[0] + np.arange(seq.size)):
            cap[S_SEQ_START] = int(seq[0])
        else:
            cap[S_SEQ] = seq.tolist()
        cap[S_FLAGS] = frame["frame_flags"][sel].astype(int).tolist()
        cap[S_LAST_GPS] = frame["frame_last_gps"][sel].astype(int).tolist()
        cap[S_GPS_NS] = frame["frame_gps_ns"][sel].astype(np.int64).tolist()
        cap[S_FRAME_RSSI] = [_num(v) for v in frame["frame_rssi_dbm"][sel].tolist()]
        cap[S_MISSING] = np.flatnonzero(~frame["frame_received"][sel].astype(bool)).tolist()
        captures.append(cap)
    return {"global": glob, "captures": captures, "annotations": []}


def _station_bytes(ds: xr.Dataset, station: str) -> bytes:
    s = ds.sel(station=station)
    n = int(s["n_samples"])
    iq = np.asarray(s["iq"].isel(sample=slice(0, n)).values)
    return np.ascontiguousarray(iq, dtype="<i2").tobytes()


def export_sigmf(
    ds: xr.Dataset, directory: str | Path, *, archive: bool = False, overwrite: bool = False
) -> list[Path]:
    """Write one SigMF recording per station of ``ds`` into ``directory`` (created if needed).

    Returns the recordings written, one per station in station order: the ``.sigmf-meta`` files
    (each with its ``.sigmf-data`` beside it) or, with ``archive``, the ``.sigmf`` archives; the
    list can be handed to :func:`import_sigmf` as it is.  Each recording is validated by the sigmf
    package before it is written; the data goes first and the metadata last, so a recording whose
    metadata exists is complete.  An existing recording is a :class:`~sdrlab.errors.StorageError`
    unless ``overwrite``.
    """
    sg = _sigmf()
    errors = _sigmf_errors(sg)
    out_dir = Path(directory)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    sid = str(ds.attrs.get("session_id", ""))
    written: list[Path] = []
    for station in [str(v) for v in ds["station"].values]:
        base = _base_name(sid, station)
        targets = [out_dir / f"{base}.sigmf"] if archive else [
            out_dir / f"{base}.sigmf-meta", out_dir / f"{base}.sigmf-data"]
        if not overwrite:
            for t in targets:
                if t.exists():
                    raise StorageError(f"{t} exists (pass overwrite=True to replace it)")
        meta = recording_metadata(ds, station)
        data = _station_bytes(ds, station)
        try:
            rec = sg.SigMFFile(metadata=meta)
            rec.validate()
            if archive:
                rec.set_data_file(data_buffer=io.BytesIO(data))
                rec.tofile(targets[0], toarchive=True, overwrite=True)
            else:
                tmp = targets[1].with_name(targets[1].name + ".partial")
                tmp.write_bytes(data)
                os.replace(tmp, targets[1])
                rec.set_data_file(targets[1])
                rec.tofile(out_dir / base, overwrite=True)
        except errors as exc:
            raise StorageError(f"SigMF export of station {station} to {targets[0]} failed: {exc}") from exc
        log.info("exported %s (%d samples) to %s", station, len(data) // 4, targets[0])
        written.append(targets[0])
    return written


# ---- import ----------------------------------------------------------------------------------
def _recording_key(p: Path) -> Path:
    """The recording a path names: ``x.sigmf-meta``, ``x.sigmf-data`` and ``x`` are one recording."""
    name = p.name
    for ext in (".sigmf-meta", ".sigmf-data"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)])
    return p


def _int_list(cap: dict[str, Any], key: str, k: int, where: str) -> list[int] | None:
    v = cap.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != k:
        raise StorageError(f"{where}: {key} must be a list of {k} values (one per 512-sample frame)")
    return [int(x) for x in v]


def _segment(
    samples: npt.NDArray[np.int16], cap: dict[str, Any], fs_default: float, gps_utc_offset_s: int,
    no_fit_status: str, where: str,
) -> Segment:
    n = int(samples.shape[0])
    k = -(-n // SPF)
    if S_DATETIME_NS in cap:
        t0: np.datetime64 | None = np.datetime64(int(cap[S_DATETIME_NS]), "ns")
    elif K_DATETIME in cap:
        t0 = _parse_datetime(str(cap[K_DATETIME]), where)
    else:
        t0 = None
    fs = cap.get(S_SEG_FS)
    fs = float(fs) if fs is not None else fs_default
    rms = cap.get(S_FIT_RMS)
    if cap.get(S_TIMING) == "receipt":
        return Segment(
            samples=samples, frame_seq=np.zeros(0, np.uint32), frame_flags=np.zeros(0, np.uint8),
            frame_rssi_dbm=np.zeros(0, np.float32), frame_last_gps=np.zeros(0, np.uint8),
            frame_gps_ns=np.zeros(0, np.int64), frame_received=np.zeros(0, bool),
            fit=timing.TimeFit(-1, fs, math.nan, 0, 0, "no GPS timestamps (receipt times only)"),
            end_reason=str(cap.get(S_END_REASON, "complete")), seq_gaps=0, missing_frames=0, timing="receipt",
            frame_start=np.zeros(0, np.int64),
            receipt_t0_gps_ns=timing.utc_to_gps_ns(t0, gps_utc_offset_s) if t0 is not None else -1,
        )
    if t0 is not None:
        fit = timing.TimeFit(timing.utc_to_gps_ns(t0, gps_utc_offset_s), fs,
                             float(rms) if rms is not None else math.nan, 0, 0, "ok")
    else:
        fit = timing.TimeFit(-1, fs, math.nan, 0, 0, no_fit_status)

    seq_list = _int_list(cap, S_SEQ, k, where)
    if seq_list is not None:
        seq = np.array(seq_list, dtype=np.uint32)
    else:
        seq = (int(cap.get(S_SEQ_START, 1)) + np.arange(k)).astype(np.uint32)
    flags = _int_list(cap, S_FLAGS, k, where)
    last = _int_list(cap, S_LAST_GPS, k, where)
    gps = _int_list(cap, S_GPS_NS, k, where)
    rssi_raw = cap.get(S_FRAME_RSSI)
    if rssi_raw is not None and (not isinstance(rssi_raw, list) or len(rssi_raw) != k):
        raise StorageError(f"{where}: {S_FRAME_RSSI} must be a list of {k} values (one per 512-sample frame)")
    received = np.ones(k, dtype=bool)
    for i in cap.get(S_MISSING, []) or []:
        if not 0 <= int(i) < k:
            raise StorageError(f"{where}: {S_MISSING} names frame {i} of {k}")
        received[int(i)] = False
    rssi = (np.array([math.nan if v is None else float(v) for v in rssi_raw], dtype=np.float32)
            if rssi_raw is not None else np.full(k, np.nan, dtype=np.float32))
    missing = int(np.count_nonzero(~received))
    return Segment(
        samples=samples,
        frame_seq=seq,
        frame_flags=np.array(flags if flags is not None else [0] * k, dtype=np.uint8),
        frame_rssi_dbm=rssi,
        frame_last_gps=np.array(last if last is not None else [GPS_NO_CLOCK] * k, dtype=np.uint8),
        frame_gps_ns=np.array(gps if gps is not None else [-1] * k, dtype=np.int64),
        frame_received=received,
        fit=fit,
        end_reason=str(cap.get(S_END_REASON, "complete")),
        seq_gaps=int(np.count_nonzero(np.diff(received.astype(np.int8)) < 0)),
        missing_frames=missing,
    )


@dataclass(frozen=True)
class _Recording:
    capture: Capture
    status: StationStatus
    hw: str
    position_source: str
    gps_status: str


def _read_recording(sg: Any, path: Path, errors: tuple[type[BaseException], ...]) -> tuple[_Recording, dict[str, Any]]:
    where = path.name
    try:
        rec = sg.fromfile(str(path), autoscale=False)
        if not isinstance(rec, sg.SigMFFile):
            raise ConfigError(f"{where}: a SigMF collection; pass its recordings instead")
        rec.validate()
        glob: dict[str, Any] = dict(rec.get_global_info())
        caps: list[dict[str, Any]] = [dict(c) for c in rec.get_captures()] or [{K_SAMPLE_START: 0}]
        datatype = str(glob.get(K_DATATYPE, ""))
        if not datatype.startswith("ci16"):
            raise ConfigError(
                f"{where}: datatype {datatype!r}; sdrlab sessions hold int16 IQ and import only ci16_le / "
                "ci16_be recordings (no lossy conversion)")
        if int(glob.get(K_NUM_CHANNELS, 1)) != 1:
            raise ConfigError(f"{where}: {glob[K_NUM_CHANNELS]} channels; one channel per recording expected")
        n_total = int(rec.sample_count)
        z = rec.read_samples(0, n_total) if n_total else np.zeros(0, np.complex64)
    except errors as exc:
        raise StorageError(f"{where}: cannot read as SigMF: {exc}") from exc
    iq = np.empty((n_total, 2), dtype=np.int16)
    iq[:, 0] = np.asarray(z.real, dtype=np.float32)
    iq[:, 1] = np.asarray(z.imag, dtype=np.float32)

    if K_SAMPLE_RATE not in glob:
        raise ConfigError(f"{where}: no core:sample_rate")
    fs = float(glob[K_SAMPLE_RATE])
    freq = caps[0].get(K_FREQUENCY)
    if freq is None:
        raise ConfigError(f"{where}: no core:frequency in the first capture (a session needs its centre frequency)")
    offset = int(glob.get(S_GPS_UTC_OFFSET, timing.DEFAULT_GPS_UTC_OFFSET_S))
    station = str(glob.get(S_STATION) or _recording_key(path).name.removesuffix(".sigmf"))
    # another tool's recording has a start time at best, not a GPS fit: say so
    foreign = "core:datetime (no GPS fit)" if any(K_DATETIME in c for c in caps) else "no core:datetime"
    gps_status = str(glob.get(S_GPS_STATUS, foreign))
    no_fit = gps_status if gps_status != "ok" else "no GPS fit"
    starts = [int(c[K_SAMPLE_START]) for c in caps] + [n_total]
    if starts[0] != 0 and n_total:
        raise StorageError(f"{where}: the first capture starts at sample {starts[0]}, not 0")
    segments = []
    for j, cap in enumerate(caps):
        a, b = starts[j], starts[j + 1]
        if b <= a:
            continue
        segments.append(_segment(iq[a:b], cap, fs, offset, no_fit, f"{where} capture {j}"))
    if not segments:
        raise StorageError(f"{where}: no samples")

    geo = caps[0].get(K_GEOLOCATION) or glob.get(K_GEOLOCATION)
    position: tuple[float, float] | None = None
    altitude: float | None = None
    if geo:
        c = geo.get("coordinates", [])
        position = (float(c[1]), float(c[0]))
        altitude = float(c[2]) if len(c) > 2 else None
    version = str(glob.get(S_RECEIVER_VERSION, ""))
    rx_chans = int(glob.get(S_RX_CHANS, 0))
    info = ReceiverInfo(
        host="", port=0, version=version, rx_chans=rx_chans, sample_rate=fs,
        name=str(glob.get(S_NAME, station)), position=position, altitude=altitude,
    )
    low = glob.get(S_PASSBAND_LOW)
    high = glob.get(S_PASSBAND_HIGH)
    requested = glob.get(S_REQUESTED)
    capture = Capture(
        station=station, frequency_hz=float(freq),
        low_cut=float(low) if low is not None else -fs / 2.0,
        high_cut=float(high) if high is not None else fs / 2.0,
        requested_s=float(requested) if requested is not None else n_total / fs,
        gps_utc_offset_s=offset, info=info, segments=segments,
        events=[f"imported from {path.name}"],
    )
    hw = str(glob.get(K_HW, f"KiwiSDR v{version} rx_chans={rx_chans}"))
    source = str(glob.get(S_POSITION_SOURCE, "receiver" if position else "unknown"))
    err, msg = glob.get(S_ERROR_CLASS), glob.get(S_MESSAGE)
    status = StationStatus(station, str(glob.get(S_STATUS, "ok")), str(err) if err else None,
                           str(msg) if msg else None)
    return _Recording(capture, status, hw, source, gps_status), glob


def import_sigmf(paths: Sequence[str | Path], *, session_id: str | None = None) -> xr.Dataset:
    """SigMF recordings (``.sigmf-meta``, ``.sigmf-data``, ``.sigmf`` archives), one station
    each, into one session in the :mod:`sdrlab.model` schema.

    sdrlab's own recordings come back bit-exact with their measured rates, GPS-derived start times
    (ns), positions, segments and frame records.  Other ``ci16`` recordings import too: one
    segment per capture, start time from ``core:datetime``, position from ``core:geolocation``,
    station id from the file name, frame records unknown.  All recordings must share one
    ``core:frequency`` and have distinct stations.  ``session_id`` defaults to a new id made from
    the earliest start time.
    """
    sg = _sigmf()
    errors = _sigmf_errors(sg)
    items = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not items:
        raise ConfigError("no SigMF recordings given")
    keys: dict[Path, Path] = {}
    for p in items:
        keys.setdefault(_recording_key(p).resolve(), p)
    recs: list[_Recording] = []
    globs: list[dict[str, Any]] = []
    for p in keys.values():
        r, g = _read_recording(sg, p, errors)
        recs.append(r)
        globs.append(g)
    stations = [r.capture.station for r in recs]
    dupes = sorted({s for s in stations if stations.count(s) > 1})
    if dupes:
        raise ConfigError(f"station(s) {', '.join(dupes)} appear in more than one recording")
    freqs = sorted({r.capture.frequency_hz for r in recs})
    if len(freqs) > 1:
        raise ConfigError(f"the recordings are tuned to different frequencies {freqs}; a session has one "
                          "centre frequency: import them as separate sessions")
    if session_id is None:
        session_id = session_id_for([
            r.capture.utc(s.fit.t0_gps_ns) for r in recs for s in r.capture.segments if s.fit.ok])
    sources = sorted({str(g.get(S_SESSION_ID)) for g in globs if g.get(S_SESSION_ID)})
    attrs: dict[str, Any] = {
        "import_format": "sigmf",
        "import_files": json.dumps([p.name for p in keys.values()]),
    }
    if sources:
        attrs["source_session_id"] = ",".join(sources)
    ds = model.build_dataset(
        [r.capture for r in recs], {}, statuses=[r.status for r in recs], session_id=session_id, attrs=attrs)
    if globs[0].get(S_PASSBAND_LOW) is None or globs[0].get(S_PASSBAND_HIGH) is None:
        # the session's passband is its first recording's: unknown there, unknown here (not +-fs/2)
        ds.attrs.update(passband_low_hz=None, passband_high_hz=None, passband_source=PASSBAND_NOT_RECORDED)
    order = {s: i for i, s in enumerate(ds["station"].values)}
    by = sorted(recs, key=lambda r: order[r.capture.station])
    return ds.assign_coords(
        hw=("station", np.array([r.hw for r in by], dtype=object), ds["hw"].attrs),
        position_source=("station", np.array([r.position_source for r in by], dtype=object),
                         ds["position_source"].attrs),
        gps_status=("station", np.array([r.gps_status for r in by], dtype=object), ds["gps_status"].attrs),
    )

