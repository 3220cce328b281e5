"""Streaming capture of audio receivers (OpenWebRX): the audio, waterfall rows and S-meter
readings of a station go to the store as they arrive, one self-contained *piece* every few
seconds (:class:`AudioRecorder`), and come back as one capture (:func:`assemble_audio`).

A piece is the sidecar object of the stream layout (``stream/<station>/<k>.npz``, see
:mod:`sdrlab.recording`) with no chunk object beside it: its ``meta`` says ``kind`` ``audio``,
which audio segment its samples continue or begin, how that segment ended if it did, and the
capture's receiver information and events so far; its arrays hold the piece's audio (int16,
lossless, as decoded), each message's end and receipt time, and the rows and readings that
arrived since the previous piece.  Audio is small (24 kB/s at 12 kHz, the rows about as much
again), so pieces are stored whole rather than as zarr chunks: a crash loses at most the piece
being filled, and memory during a capture is one piece per station whatever its length.

Pure: no store, no network; the recorder gets a ``put(station, k, chunk, sidecar)`` callable.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from . import timing
from .capture import AudioSegment, Capture, ReceiverInfo, SmeterReadings, SpectrumRows

__all__ = ["AUDIO_KIND", "AudioRecorder", "TUNE_FIELDS", "assemble_audio", "is_audio", "lighten", "piece_bytes", "piece_data",
           "piece_sizes"]

#: ``meta["kind"]`` of an audio piece
AUDIO_KIND = "audio"
#: what an audio segment records of its tuning (the fields of AudioSegment after its data)
TUNE_FIELDS = ("frequency_hz", "mode", "low_cut", "high_cut", "center_freq_hz", "samp_rate_hz", "profile")
#: the arrays of a piece, with their dtypes
PIECE_ARRAYS = {
    "audio": np.int16, "message_end": np.int64, "message_receipt_ns": np.int64,
    "row_db": np.float32, "row_receipt_ns": np.int64, "row_center_hz": np.float64, "row_samp_rate_hz": np.float64,
    "row_fft_size": np.int64, "smeter_power": np.float64, "smeter_receipt_ns": np.int64,
}
#: how an open segment ends when its capture's process stopped before a final piece
STOPPED = "the capture stopped with its process (no final piece)"

Put = Callable[[str, int, bytes, Any], None]


def is_audio(meta: dict[str, Any]) -> bool:
    """Whether a stream sidecar's ``meta`` is an audio piece's."""
    return meta.get("kind") == AUDIO_KIND


def _json(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _capture_meta(cap: Capture) -> dict[str, Any]:
    return {
        "frequency_hz": _json(cap.frequency_hz), "low_cut": _json(cap.low_cut), "high_cut": _json(cap.high_cut),
        "requested_s": _json(cap.requested_s), "gps_utc_offset_s": cap.gps_utc_offset_s,
        "info": asdict(cap.info) if cap.info is not None else None, "events": list(cap.events),
        "bad_frames": cap.bad_frames, "protocol": cap.protocol, "hw": cap.hw,
    }


def piece_bytes(meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """A piece as stored: an ``.npz`` with ``meta`` (JSON bytes) and its arrays."""
    bio = io.BytesIO()
    cols = {k: np.asarray(arrays.get(k, np.zeros((0,) * (2 if k == "row_db" else 1), dt)), dt)
            for k, dt in PIECE_ARRAYS.items()}
    np.savez(bio, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **cols)  # type: ignore[arg-type]
    return bio.getvalue()


class AudioRecorder:
    """One audio station's streaming writer.  The client hands over what arrived since its last
    hand-over with :meth:`piece` (at most every :attr:`piece_s` seconds, and when a segment
    ends); each becomes one stored piece at once (``put`` is called in the receiving thread and
    should queue, not wait).

    Memory: nothing is kept but the count of samples stored and the open segment's number."""

    kind = AUDIO_KIND

    def __init__(self, station: str, put: Put, *, piece_s: float = 20.0) -> None:
        self.station = station
        self.put = put
        #: seconds of data a client gathers before handing it over
        self.piece_s = float(piece_s)
        self.k = 0
        self.total = 0  # audio samples stored so far
        self.rows = 0
        self.readings = 0
        self.capture: Capture | None = None
        self.closed = False
        self.resumed_from = 0
        self._resumed: str | None = None
        self._ended: list[str] = []  # segments that ended with no piece after their last one

    def piece(self, cap: Capture, audio: AudioSegment | None, first: bool,
              spectrum: SpectrumRows | None = None, smeter: SmeterReadings | None = None) -> None:
        """Store what arrived since the last piece: ``audio`` a part of a segment (``first``: it
        begins the segment; its ``end_reason`` ``continues`` keeps it open), rows and readings."""
        self.capture = cap
        if audio is None and spectrum is None and smeter is None and not self._ended:
            return
        meta: dict[str, Any] = {"audio": None}
        arrays: dict[str, npt.NDArray[Any]] = {}
        if audio is not None and (audio.n_samples or audio.end_reason != "continues"):
            meta["audio"] = {"first": bool(first), "end": audio.end_reason, "nominal_rate_hz": audio.nominal_rate_hz,
                             **{f: (_json(getattr(audio, f)) if isinstance(getattr(audio, f), float)
                                    else getattr(audio, f)) for f in TUNE_FIELDS}}
            arrays.update(audio=audio.samples, message_end=audio.message_end,
                          message_receipt_ns=audio.message_receipt_ns)
            self.total += audio.n_samples
        if spectrum is not None and spectrum.n_rows:
            arrays.update(row_db=spectrum.db, row_receipt_ns=spectrum.receipt_ns, row_center_hz=spectrum.center_freq_hz,
                          row_samp_rate_hz=spectrum.samp_rate_hz, row_fft_size=spectrum.fft_size)
            self.rows += spectrum.n_rows
        if smeter is not None and smeter.n:
            arrays.update(smeter_power=smeter.power, smeter_receipt_ns=smeter.receipt_ns)
            self.readings += smeter.n
        if not arrays and meta["audio"] is None and not self._ended:
            return
        self._store(meta, arrays, final=False)

    def end_segment(self, reason: str) -> None:
        """The open segment ended with no audio after its last piece."""
        self._ended.append(reason)

    def resume(self, sidecars: list[dict[str, Any]], chunks: int, why: str) -> None:
        """Continue a station whose capture stopped elsewhere (a dask worker that died): after its
        stored pieces, its next audio a new segment; the open one ends with ``why``."""
        if not sidecars:
            return
        self.k = len(sidecars)
        self.total = self.resumed_from = int(sidecars[-1]["meta"].get("stored", 0))
        self._resumed = why

    def close(self, cap: Capture | None = None) -> None:
        """The capture ended: a final piece with the capture's receiver information and events."""
        if self.closed:
            return
        self.closed = True
        if cap is not None:
            self.capture = cap
        if self.k == 0 and not self._ended:
            return  # nothing arrived: nothing to store
        self._store({"audio": None}, {}, final=True)

    def _store(self, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]], *, final: bool) -> None:
        cap = self.capture
        meta.update({"version": 1, "kind": AUDIO_KIND, "station": self.station, "k": self.k, "final": final,
                     "stored": self.total, "ended": self._ended,
                     "capture": None if cap is None else _capture_meta(cap)})
        if self._resumed is not None:
            meta["resumed"] = self._resumed
            self._resumed = None
        self._ended = []
        k = self.k
        self.k += 1
        self.put(self.station, k, b"", piece_bytes(meta, arrays))


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def lighten(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A piece as read, without its audio samples and row values (their sizes kept): what
    :func:`assemble_audio` with ``light`` and :func:`piece_sizes` need."""
    db = sidecar["row_db"]
    sidecar["n_audio"] = int(sidecar["audio"].size)
    sidecar["row_width"] = int(db.shape[1]) if db.ndim == 2 and db.shape[0] else 0
    sidecar["audio"] = np.zeros(0, np.int16)
    sidecar["row_db"] = np.zeros((db.shape[0], 0), np.float32)
    return sidecar


def _n_audio(car: dict[str, Any]) -> int:
    return int(car.get("n_audio", car["audio"].size))


def piece_sizes(sidecars: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """Per piece: its audio samples, waterfall rows and their widest row (bins).  A station's
    audio (and rows) are its pieces' end to end, in order: piece k's lie after those of 0 .. k-1."""
    out = []
    for c in sidecars:
        db = c["row_db"]
        width = int(c.get("row_width", db.shape[1] if db.ndim == 2 and db.shape[0] else 0))
        out.append((_n_audio(c), int(db.shape[0]), width))
    return out


def piece_data(sidecar: dict[str, Any], bins: int) -> dict[str, npt.NDArray[Any]]:
    """A piece's audio (1, n) and rows (1, rows, ``bins``: NaN-padded) as rows of the session's
    ``audio`` and ``spectrum`` variables."""
    db = sidecar["row_db"]
    rows = np.full((1, db.shape[0], bins), np.nan, np.float32)
    if db.shape[0]:
        rows[0, :, : db.shape[1]] = db
    return {"audio": np.asarray(sidecar["audio"], np.int16)[None, :], "spectrum": rows}


def assemble_audio(station: str, sidecars: list[dict[str, Any]], *, recording: bool = False,
                   light: bool = False) -> Capture | None:
    """A station's audio capture from its pieces 0, 1, ... (read with
    :func:`sdrlab.recording.read_sidecar`, in order): its audio segments whole (samples, message
    ends and receipt times joined), rows and readings.  An open last segment is still being
    captured (``recording``) or ended with its process.  None when nothing was stored.
    ``light``: without the audio samples and the rows' values (each segment's ``streamed``
    samples, rows of no bins): what a session needs to read them lazily (:func:`piece_data`)."""
    if not sidecars:
        return None
    c = next((s["meta"]["capture"] for s in reversed(sidecars) if s["meta"].get("capture")), None) or {}
    cap = Capture(station, _nan(c.get("frequency_hz")), _nan(c.get("low_cut")), _nan(c.get("high_cut")),
                  _nan(c.get("requested_s")), int(c.get("gps_utc_offset_s", timing.DEFAULT_GPS_UTC_OFFSET_S)),
                  ReceiverInfo.from_dict(c.get("info")), events=list(c.get("events", [])), bad_frames=int(c.get("bad_frames", 0)),
                  kind="audio", protocol=str(c.get("protocol", "openwebrx")), hw=str(c.get("hw", "")))
    open_seg: dict[str, Any] | None = None

    def close(reason: str) -> None:
        nonlocal open_seg
        if open_seg is None:
            return
        s = open_seg
        parts = s["parts"]
        ends, offset = [], 0
        for p in parts:
            ends.append(p["message_end"] + offset)
            offset += _n_audio(p)
        m = s["meta"]
        n = sum(_n_audio(p) for p in parts)
        cap.audio.append(AudioSegment(
            samples=np.zeros(0, np.int16) if light else np.concatenate([p["audio"] for p in parts]).astype(np.int16),
            streamed=n if light else 0,
            nominal_rate_hz=float(m["nominal_rate_hz"]), message_end=np.concatenate(ends).astype(np.int64),
            message_receipt_ns=np.concatenate([p["message_receipt_ns"] for p in parts]).astype(np.int64),
            end_reason=reason, frequency_hz=_nan(m.get("frequency_hz")), mode=str(m.get("mode", "")),
            low_cut=_nan(m.get("low_cut")), high_cut=_nan(m.get("high_cut")),
            center_freq_hz=_nan(m.get("center_freq_hz")), samp_rate_hz=_nan(m.get("samp_rate_hz")),
            profile=str(m.get("profile", ""))))
        open_seg = None

    rows: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in PIECE_ARRAYS if k.startswith(("row_", "smeter_"))}
    for car in sidecars:
        meta = car["meta"]
        if meta.get("resumed"):
            close(str(meta["resumed"]))
        for reason in meta.get("ended", []):
            close(reason)
        a = meta.get("audio")
        if a is not None:
            if a["first"]:
                close("followed by a segment with no end recorded")
            if open_seg is None:
                open_seg = {"meta": a, "parts": []}
            open_seg["parts"].append(car)
            if a["end"] != "continues":
                close(str(a["end"]))
        for k in rows:
            if car[k].shape[0]:
                rows[k].append(car[k][:, :0] if light and k == "row_db" else car[k])  # light: sizes only
    close("recording" if recording else STOPPED)
    if rows["row_db"]:
        width = max(r.shape[1] for r in rows["row_db"])  # 0 when light
        db = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=np.nan)
                             for r in rows["row_db"]]).astype(np.float32)
        cap.spectrum = SpectrumRows(db=db, receipt_ns=np.concatenate(rows["row_receipt_ns"]),
                                    center_freq_hz=np.concatenate(rows["row_center_hz"]),
                                    samp_rate_hz=np.concatenate(rows["row_samp_rate_hz"]),
                                    fft_size=np.concatenate(rows["row_fft_size"]))
    if rows["smeter_power"]:
        cap.smeter = SmeterReadings(power=np.concatenate(rows["smeter_power"]),
                                    receipt_ns=np.concatenate(rows["smeter_receipt_ns"]))
    return cap if cap.has_data else None
