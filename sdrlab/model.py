"""The Dataset model: dims, coordinates, attributes and encoding of an sdrlab session, in one place.

A session is one :class:`xarray.Dataset`::

    iq                (station, sample, component) int16   raw I/Q as on the wire, lossless; 32768 = 0 dBFS
    frame_*           (station, frame)                the per-frame record: seq, flags, RSSI,
                                                      last_gps_solution, raw GPS stamp (ns), received
    segment_*         (station, segment)              each reconnect segment: first sample, length,
                                                      UTC start and sample rate from its GPS fit
    coords per station: station (id), latitude, longitude, altitude, sample_rate (measured),
                        start_time (UTC of sample 0, from GPS), timing (gps | receipt | none),
                        n_samples, rssi_dbm, seq_gaps, time_fit_rms, gps_status,
                        receiver_version, rx_chans, hw, status

Samples of a station past ``n_samples`` are padding (zeros).  Times are never stored per sample:
:func:`sample_times` derives them from each segment's fit (t = t0 + n / fs), and
:func:`to_complex` gives complex64 in full-scale units.  Global attributes carry the centre
frequency, passband, protocol, ``timing`` (the stations' time base in one word: gps, receipt, mixed or
none), versions, the per-station status, and SigMF-mirroring ``core:`` keys.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ._version import __version__
from .capture import SAMPLES_PER_FRAME, Capture, session_timing
from .model_audio import AUDIO_DATATYPE, audio_hw, audio_t0, audio_variables
from .stations import Station
from .constants import FULL_SCALE as FULL_SCALE

SIGMF_VERSION = "1.2.0"
DATATYPE = "ci16_le"
#: zarr format written and read everywhere (decided here only)
ZARR_FORMAT: Literal[3] = 3
#: consolidated metadata in the group's zarr.json: a session opens with one GET (zarr 3 supports it
#: although the v3 spec does not standardise it yet)
CONSOLIDATED = True
#: target raw bytes per IQ chunk: objects of 10-100 MB on S3 (fewer requests, near the server's
#: streaming rate); short sessions put several stations in one chunk to get there
CHUNK_BYTES = 32 * 1024 * 1024

# attribute keys
K_FREQUENCY = "core:frequency"
K_SAMPLE_RATE = "core:sample_rate"
K_DATETIME = "core:datetime"
K_GEOLOCATION = "core:geolocation"
K_HW = "core:hw"


@dataclass(frozen=True)
class StationStatus:
    """How one station of a session went: ``ok``, ``partial`` (data, then an error) or ``failed``."""

    station: str
    status: str
    error_class: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"status": self.status, "error_class": self.error_class, "message": self.message}


def new_session_id(now: datetime | None = None) -> str:
    """A new session id, sortable by time: ``YYYYmmddTHHMMSSZ-xxxxxx`` (UTC of ``now``, default
    the present, and six random hex digits)."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _gps_status(capture: Capture) -> str:
    if capture.kind == "audio":
        return "none (receipt times only)"
    fits = [s.fit for s in capture.segments]
    if any(f.ok for f in fits):
        return "ok"
    return fits[0].status if fits else "no data"


#: the per-frame record (dims station, frame): dtype, padding value and attributes of each variable
FRAME_DTYPES: dict[str, Any] = {
    "frame_seq": np.uint32, "frame_flags": np.uint8, "frame_rssi_dbm": np.float32, "frame_last_gps": np.uint8,
    "frame_gps_ns": np.int64, "frame_received": np.bool_, "frame_sample": np.int64, "frame_segment": np.int16,
}
FRAME_FILL: dict[str, Any] = {
    "frame_seq": 0, "frame_flags": 0, "frame_rssi_dbm": np.nan, "frame_last_gps": 255, "frame_gps_ns": -1,
    "frame_received": False, "frame_sample": -1, "frame_segment": -1,
}
FRAME_ATTRS: dict[str, dict[str, Any]] = {
    "frame_gps_ns": {
        "units": "ns",
        "long_name": "raw GPS stamp of the frame's first sample",
        "comment": "ns since the GPS epoch 1980-01-06T00:00:00 on the GPS time scale (no leap "
                   "seconds); -1 = no stamp",
    },
    "frame_rssi_dbm": {"units": "dBm"},
    "frame_sample": {"long_name": "index of the frame's first sample on the sample axis; -1 = padding"},
}


def n_frames(capture: Capture) -> int:
    """Frames in a capture's record (its length on the ``frame`` axis)."""
    return sum(s.frame_seq.size for s in capture.segments)


def frame_columns(capture: Capture) -> dict[str, np.ndarray[Any, Any]]:
    """A capture's per-frame record as its row of the ``frame_*`` variables (unpadded):
    segments end to end, ``frame_sample`` on the station's sample axis, ``frame_segment`` the
    segment's index."""
    parts: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in FRAME_DTYPES}
    pos = 0
    for j, seg in enumerate(capture.segments):
        k = seg.frame_seq.size
        for name in ("frame_seq", "frame_flags", "frame_rssi_dbm", "frame_last_gps", "frame_gps_ns",
                     "frame_received"):
            parts[name].append(np.asarray(getattr(seg, name), dtype=FRAME_DTYPES[name]))
        starts = seg.frame_start if seg.frame_start is not None else np.arange(k) * SAMPLES_PER_FRAME
        parts["frame_sample"].append((pos + np.asarray(starts)).astype(np.int64))
        parts["frame_segment"].append(np.full(k, j, np.int16))
        pos += seg.n_samples
    return {name: (np.concatenate(p) if p else np.zeros(0, FRAME_DTYPES[name])).astype(FRAME_DTYPES[name], copy=False)
            for name, p in parts.items()}


def mean_rssi_dbm(capture: Capture) -> float:
    """Mean S-meter RSSI (dBm, averaged in linear power) over the frames that arrived."""
    rssi = np.concatenate([s.frame_rssi_dbm[s.frame_received] for s in capture.segments]) if capture.segments \
        else np.zeros(0, np.float32)
    return float(10 * np.log10(np.mean(10 ** (rssi / 10.0)))) if rssi.size else np.nan


#: the attributes of the ``iq`` variable
IQ_ATTRS = {"long_name": "raw IQ samples", "units": "1", "full_scale": FULL_SCALE,
            "comment": "int16 as on the wire; 32768 is 0 dBFS; samples past n_samples are padding"}


def build_dataset(
    captures: Sequence[Capture],
    stations: Mapping[str, Station],
    *,
    statuses: Sequence[StationStatus] = (),
    session_id: str = "",
    attrs: Mapping[str, Any] | None = None,
    with_iq: bool = True,
    frames: bool = True,
) -> xr.Dataset:
    """One Dataset from the captures that hold data (station order as given).  ``with_iq=False``:
    everything but the sample arrays ``iq``, ``audio`` and ``spectrum`` (a streamed session's
    samples stay where they are stored).
    ``frames=False``: without the ``frame_*`` variables (:func:`frame_columns` gives them a station
    at a time; a streamed session reads them lazily, see :meth:`sdrlab.store.Store.open`); the
    captures' frames are still used for ``rssi_dbm``."""
    caps = [c for c in captures if c.has_data]
    if not caps:
        raise ValueError("no capture with data")
    ns = len(caps)
    has_iq = any(c.kind == "iq" for c in caps)
    has_audio = any(c.kind == "audio" for c in caps)
    n_max = max(sum(s.n_samples for s in c.segments) for c in caps)
    f_max = max(n_frames(c) for c in caps)
    s_max = max(len(c.segments) for c in caps)

    iq = np.zeros((ns, n_max if with_iq else 0, 2), dtype=np.int16)
    fr: dict[str, np.ndarray[Any, Any]] = {
        name: np.full((ns, f_max if frames else 0), FRAME_FILL[name], dtype) for name, dtype in FRAME_DTYPES.items()}
    sg: dict[str, np.ndarray[Any, Any]] = {
        "segment_start": np.full((ns, s_max), -1, np.int64),
        "segment_length": np.zeros((ns, s_max), np.int64),
        "segment_t0": np.full((ns, s_max), np.datetime64("NaT", "ns")),
        "segment_fs": np.full((ns, s_max), np.nan),
        "segment_fit_rms": np.full((ns, s_max), np.nan),
        "segment_end": np.full((ns, s_max), "", dtype=object),
        "segment_timing": np.full((ns, s_max), "", dtype=object),
    }
    per: dict[str, list[Any]] = {k: [] for k in (
        "latitude", "longitude", "altitude", "sample_rate", "start_time", "n_samples", "rssi_dbm",
        "seq_gaps", "time_fit_rms", "gps_status", "receiver_version", "rx_chans", "hw", "name",
        "status", "position_source", "timing", "kind", "protocol",
    )}
    status_by = {s.station: s for s in statuses}
    for i, c in enumerate(caps):
        st = stations.get(c.station)
        pos = 0
        for j, seg in enumerate(c.segments):
            n = seg.n_samples
            if with_iq:
                if seg.streamed:
                    raise ValueError(f"station {c.station}: a streamed segment has no samples here (with_iq=False)")
                iq[i, pos : pos + n] = seg.samples
            sg["segment_start"][i, j] = pos
            sg["segment_length"][i, j] = n
            if seg.fit.ok:
                sg["segment_t0"][i, j] = c.utc(seg.fit.t0_gps_ns)
                sg["segment_fs"][i, j] = seg.fit.fs
                sg["segment_fit_rms"][i, j] = seg.fit.residual_rms_s
            elif seg.timing == "receipt" and seg.receipt_t0_gps_ns >= 0:
                sg["segment_t0"][i, j] = c.utc(seg.receipt_t0_gps_ns)
                sg["segment_fs"][i, j] = seg.fit.fs
            sg["segment_timing"][i, j] = "gps" if seg.fit.ok else seg.timing if seg.timing == "receipt" else "none"
            sg["segment_end"][i, j] = seg.end_reason
            pos += n
        if frames:
            for name, values in frame_columns(c).items():
                fr[name][i, :values.size] = values
        info = c.info
        if info is not None and info.position is not None:
            lat, lon = info.position
            src = "receiver"
        elif st is not None:
            lat, lon = st.latitude, st.longitude
            src = "catalogue"
        else:
            lat, lon, src = np.nan, np.nan, "unknown"
        alt = info.altitude if info is not None and info.altitude is not None else (st.altitude if st else np.nan)
        per["latitude"].append(lat)
        per["longitude"].append(lon)
        per["altitude"].append(alt)
        per["position_source"].append(src)
        per["sample_rate"].append(c.sample_rate)
        first_fit = next((s for s in c.segments if s.fit.ok), None)
        seg0 = c.segments[0] if c.segments else None
        if c.kind == "audio":
            per["start_time"].append(audio_t0(c))
        elif seg0 is not None and seg0.fit.ok:
            per["start_time"].append(c.utc(seg0.fit.t0_gps_ns))
        elif seg0 is not None and seg0.timing == "receipt" and seg0.receipt_t0_gps_ns >= 0:
            per["start_time"].append(c.utc(seg0.receipt_t0_gps_ns))
        else:
            per["start_time"].append(np.datetime64("NaT", "ns"))
        per["timing"].append(c.timing)
        per["n_samples"].append(c.n_samples)
        per["kind"].append(c.kind)
        per["protocol"].append(c.protocol)
        per["rssi_dbm"].append(mean_rssi_dbm(c))
        per["seq_gaps"].append(sum(s.missing_frames for s in c.segments))
        per["time_fit_rms"].append(first_fit.fit.residual_rms_s if first_fit else np.nan)
        per["gps_status"].append(_gps_status(c))
        per["receiver_version"].append(info.version if info else "")
        per["rx_chans"].append(info.rx_chans if info else 0)
        if c.kind == "audio":
            per["hw"].append(audio_hw(c))
        else:
            kind = "KiwiSDR" if c.timing != "receipt" else "KiwiSDR-compatible server without GPS timestamps"
            per["hw"].append(f"{kind} v{info.version} rx_chans={info.rx_chans}" if info else kind)
        per["name"].append((info.name if info and info.name else (st.name if st else c.station)))
        per["status"].append(status_by[c.station].status if c.station in status_by else "ok")

    station_ids = [c.station for c in caps]
    coords: dict[str, Any] = {
        "station": ("station", np.array(station_ids, dtype=object)),
        "latitude": ("station", np.array(per["latitude"], float),
                     {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("station", np.array(per["longitude"], float),
                      {"units": "degrees_east", "standard_name": "longitude"}),
        "altitude": ("station", np.array(per["altitude"], float),
                     {"units": "m", "standard_name": "altitude", "positive": "up"}),
        "position_source": ("station", np.array(per["position_source"], dtype=object)),
        "sample_rate": ("station", np.array(per["sample_rate"], float),
                        {"units": "Hz", "long_name": "measured sample rate (GPS fit; audio: from sample "
                                                     "counts against receipt times)"}),
        "kind": ("station", np.array(per["kind"], dtype=object),
                 {"long_name": "what the station's capture holds: iq (complex baseband, variables iq, "
                               "frame_*, segment_*) or audio (audio, spectrum, smeter_*)"}),
        "protocol": ("station", np.array(per["protocol"], dtype=object)),
        "start_time": ("station", np.array(per["start_time"], dtype="datetime64[ns]"),
                       {"long_name": "UTC of sample 0 (GPS fit; receipt time where timing is 'receipt')"}),
        "timing": ("station", np.array(per["timing"], dtype=object),
                   {"long_name": "time base: gps (GPS-stamped frames), receipt (host receipt times only), none",
                    "comment": "only gps-timed stations support time-difference analyses such as TDoA"}),
        "n_samples": ("station", np.array(per["n_samples"], np.int64),
                      {"long_name": "valid samples of the main stream, iq or audio (the rest is padding)"}),
        "rssi_dbm": ("station", np.array(per["rssi_dbm"], float),
                     {"units": "dBm", "long_name": "mean S-meter RSSI (receiver calibration)"}),
        "seq_gaps": ("station", np.array(per["seq_gaps"], np.int64),
                     {"long_name": "frames missing from the seq sequence (zero-filled)"}),
        "time_fit_rms": ("station", np.array(per["time_fit_rms"], float),
                         {"units": "s", "long_name": "RMS residual of the GPS time fit"}),
        "gps_status": ("station", np.array(per["gps_status"], dtype=object)),
        "receiver_version": ("station", np.array(per["receiver_version"], dtype=object)),
        "rx_chans": ("station", np.array(per["rx_chans"], np.int64)),
        "hw": ("station", np.array(per["hw"], dtype=object)),
        "name": ("station", np.array(per["name"], dtype=object)),
        "status": ("station", np.array(per["status"], dtype=object)),
    }
    data_vars: dict[str, Any] = {}
    if has_iq:
        coords["component"] = ("component", np.array(["I", "Q"], dtype=object))
        if with_iq:
            data_vars["iq"] = (("station", "sample", "component"), iq, IQ_ATTRS)
        for name, values in fr.items():
            if frames:
                data_vars[name] = (("station", "frame"), values, dict(FRAME_ATTRS.get(name, {})))
        for name, values in sg.items():
            data_vars[name] = (("station", "segment"), values)
        data_vars["segment_fs"] = (("station", "segment"), sg["segment_fs"], {"units": "Hz"})
        data_vars["segment_timing"] = (("station", "segment"), sg["segment_timing"],
                                       {"long_name": "time base of segment_t0 / segment_fs: gps, receipt or none"})
        data_vars["segment_fit_rms"] = (("station", "segment"), sg["segment_fit_rms"], {"units": "s"})
    if has_audio:
        data_vars.update(audio_variables(caps, data=with_iq))  # with_iq=False: no sample arrays of either kind
    protocols = sorted(set(per["protocol"]))

    c0 = caps[0]
    all_status = {s.station: s.as_dict() for s in statuses} or {c.station: {"status": "ok"} for c in caps}
    gattrs: dict[str, Any] = {
        "title": f"sdrlab session {session_id}".strip(),
        "Conventions": "CF-1.10",
        "session_id": session_id,
        "sdrlab_version": __version__,
        # the stations' protocol, or several joined by "+" in a session that mixes families
        "protocol": "+".join(protocols),
        # what the stations' times rest on: gps, receipt, mixed or none (per station: ``timing``)
        "timing": session_timing(per["timing"]),
        "center_frequency_hz": float(c0.frequency_hz),
        "passband_low_hz": float(c0.low_cut),
        "passband_high_hz": float(c0.high_cut),
        "requested_duration_s": float(c0.requested_s),
        "gps_utc_offset_s": int(c0.gps_utc_offset_s),
        "station_status": json.dumps(all_status, sort_keys=True),
        "core:version": SIGMF_VERSION,
        "core:datatype": DATATYPE if has_iq else AUDIO_DATATYPE,
        "core:recorder": f"sdrlab {__version__}",
        K_FREQUENCY: float(c0.frequency_hz),
    }
    gattrs.update(attrs or {})
    return xr.Dataset(data_vars, coords=coords, attrs=gattrs)


#: global attributes sdrlab itself sets on a session (build_dataset, the metrics, batch runs):
#: extra attrs given to acquire() may not replace them
RESERVED_ATTRS = frozenset({
    "title", "Conventions", "session_id", "sdrlab_version", "protocol", "timing", "center_frequency_hz", "passband_low_hz",
    "passband_high_hz", "requested_duration_s", "gps_utc_offset_s", "station_status", "core:version",
    "core:datatype", "core:recorder", K_FREQUENCY, "metrics_definition", "papermill_run_id",
    "window_start", "window_end", "common_start", "common_end", "start_spread_s", "interval_s",
})


def station_status(ds: xr.Dataset) -> pd.DataFrame:
    """The per-station status table stored with the session (includes failed stations)."""
    table = json.loads(ds.attrs.get("station_status", "{}"))
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("station")


def to_complex(ds: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """IQ as complex64 in full-scale units (|z| = 1 is 0 dBFS), dims (station, sample)."""
    da = ds["iq"] if isinstance(ds, xr.Dataset) else ds
    i = da.sel(component="I", drop=True).astype(np.float32)
    q = da.sel(component="Q", drop=True).astype(np.float32)
    z = (i + 1j * q) / np.float32(FULL_SCALE)
    out = z.astype(np.complex64)
    out.attrs = {"long_name": "complex baseband", "units": "1", "comment": "|z| = 1 is 0 dBFS"}
    if isinstance(ds, xr.Dataset):  # what the metrics need to know about the tuning
        for key in ("center_frequency_hz", "passband_low_hz", "passband_high_hz"):
            if key in ds.attrs:
                out.attrs[key] = ds.attrs[key]
    return out


def sample_times(ds: xr.Dataset, station: str | None = None) -> xr.DataArray:
    """UTC time of every sample from each segment's GPS fit (NaT where no fit or padding).  Audio
    stations (kind ``audio``): of every audio sample, from each audio segment's receipt-time
    estimate and measured rate (dims station, audio_sample); a selection must not mix kinds."""
    ids = [station] if station is not None else list(ds["station"].values)
    if "kind" in ds.coords:
        kinds = {str(k) for k in ds["kind"].sel(station=ids).values}
        if kinds == {"audio"}:
            return _audio_times(ds, ids, station)
        if "audio" in kinds:
            raise ValueError("sample_times: IQ and audio stations have different sample axes; ask for one "
                             "station, or select the stations of one kind")
    n = ds.sizes["sample"]
    out = np.full((len(ids), n), np.datetime64("NaT", "ns"))
    for i, sid in enumerate(ids):
        s = ds.sel(station=sid)
        for start, length, t0, fs in zip(
            s["segment_start"].values, s["segment_length"].values,
            s["segment_t0"].values, s["segment_fs"].values,
        ):
            if start < 0 or np.isnat(t0) or not np.isfinite(fs):
                continue
            k = np.arange(int(length), dtype=np.float64)
            out[i, start : start + length] = t0 + np.rint(k * (1e9 / fs)).astype("timedelta64[ns]")
    da = xr.DataArray(out, dims=("station", "sample"), coords={"station": ids}, name="time")
    return da.isel(station=0, drop=True) if station is not None else da


def _audio_times(ds: xr.Dataset, ids: list[Any], station: str | None) -> xr.DataArray:
    """Receipt-time UTC of every audio sample: t0 + n / rate per audio segment (NaT for padding)."""
    n = ds.sizes["audio_sample"]
    out = np.full((len(ids), n), np.datetime64("NaT", "ns"))
    for i, sid in enumerate(ids):
        s = ds.sel(station=sid)
        for start, length, t0, fs in zip(s["audio_segment_start"].values, s["audio_segment_length"].values,
                                         s["audio_segment_t0"].values, s["audio_segment_rate"].values):
            if start < 0 or np.isnat(t0) or not np.isfinite(fs):
                continue
            k = np.arange(int(length), dtype=np.float64)
            out[i, start : start + length] = t0 + np.rint(k * (1e9 / fs)).astype("timedelta64[ns]")
    da = xr.DataArray(out, dims=("station", "audio_sample"), coords={"station": ids}, name="time",
                      attrs={"comment": "host receipt time estimate, not signal time"})
    return da.isel(station=0, drop=True) if station is not None else da


def sigmf_attrs(ds: xr.Dataset, station: str) -> dict[str, Any]:
    """The SigMF keys of one station's capture (section 15 of the protocol reference)."""
    s = ds.sel(station=station)
    t0 = s["start_time"].values
    dt = "" if np.isnat(t0) else str(np.datetime_as_string(t0, unit="ns")) + "Z"
    out: dict[str, Any] = {
        "core:datatype": AUDIO_DATATYPE if "kind" in s.coords and str(s["kind"].values) == "audio" else DATATYPE,
        K_SAMPLE_RATE: float(s["sample_rate"]),
        K_FREQUENCY: float(ds.attrs[K_FREQUENCY]),
        K_HW: str(s["hw"].values),
        K_GEOLOCATION: {
            "type": "Point",
            "coordinates": [float(s["longitude"]), float(s["latitude"]), float(s["altitude"])],
        },
    }
    if dt:
        out[K_DATETIME] = dt
    return out


def iq_chunks(n_stations: int, n_samples: int) -> tuple[int, int, int]:
    """IQ chunk shape (station, sample, component) of about :data:`CHUNK_BYTES` raw bytes: long
    stations are cut along samples; short ones are grouped, several stations to a chunk."""
    per_station = max(1, n_samples) * 4  # int16 I + Q
    if per_station >= CHUNK_BYTES:
        return (1, CHUNK_BYTES // 4, 2)
    return (max(1, min(n_stations, CHUNK_BYTES // per_station)), max(1, n_samples), 2)


#: inner IQ chunk (what one dask task reads): at most this many raw bytes of one station
INNER_CHUNK_BYTES = 8 * 1024 * 1024


def iq_inner_chunks(n_stations: int, n_samples: int) -> tuple[int, int, int]:
    """One station per inner chunk, dividing the shard: a long station's shard (CHUNK_BYTES of one
    station) is cut into :data:`INNER_CHUNK_BYTES` pieces; otherwise a whole station."""
    shard = iq_chunks(n_stations, n_samples)
    if shard[1] == CHUNK_BYTES // 4:
        return (1, INNER_CHUNK_BYTES // 4, 2)  # divides CHUNK_BYTES // 4
    return (1, shard[1], 2)


def encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """zarr encoding of IQ: shards of ~32 MiB (:func:`iq_chunks`: 10-100 MB objects on S3) made of
    one-station inner chunks (:func:`iq_inner_chunks`: dask reads a station at a time), Blosc lz4
    + byte shuffle (lossless, fast on int16); every other variable with zarr's defaults."""
    from zarr.codecs import BloscCodec

    if "iq" not in ds:
        return {}
    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)
    ns, n = ds.sizes["station"], ds.sizes["sample"]
    enc: dict[str, dict[str, Any]] = {"iq": {
        "chunks": iq_inner_chunks(ns, n), "shards": iq_chunks(ns, n), "compressors": (blosc,)}}
    return enc


def stream_encoding(chunk_samples: int) -> dict[str, dict[str, Any]]:
    """zarr encoding of a streamed session's IQ: one chunk per station and ``chunk_samples``
    samples, no shards (each chunk is an object written as the samples arrive: see
    :mod:`sdrlab.recording`), the same Blosc lz4 + shuffle as :func:`encoding`."""
    from zarr.codecs import BloscCodec

    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)
    return {"iq": {"chunks": (1, int(chunk_samples), 2), "compressors": (blosc,)}}


def for_writing(ds: xr.Dataset) -> xr.Dataset:
    """The dataset with dask-backed IQ rechunked onto the zarr chunk grid (an opened or imported
    session can be written again); numpy-backed data is returned as is."""
    if "iq" not in ds or ds["iq"].chunks is None:
        return ds
    st, sa, _ = iq_chunks(ds.sizes["station"], ds.sizes["sample"])
    return ds.assign(iq=ds["iq"].chunk({"station": st, "sample": sa, "component": 2}))
