"""What a receiver delivers, whatever its protocol: :class:`Capture`, :class:`Segment`,
:class:`ReceiverInfo`, and the frame record they keep (:data:`HEADER_DTYPE`, the flag bits,
``last_gps_solution`` values), with the functions that assemble a segment from frames.

Protocol clients (:mod:`sdrlab.receivers`), importers (:mod:`sdrlab.interchange`) and the model
(:mod:`sdrlab.model`) all depend on this module; it depends on none of them.

The per-frame record is the KiwiSDR SND IQ frame, kept as it arrived because the stored Dataset
keeps it too (``frame_flags``, ``frame_last_gps``, ``frame_rssi_dbm``, ``frame_gps_ns``): a frame
holds :data:`SAMPLES_PER_FRAME` complex int16 samples (I, Q; 32768 = full scale); RSSI in dBm;
GPS times in ns since the GPS epoch (-1 = no stamp); sample rates in Hz.  The wire format itself
(byte layout, MSG tokens) stays in :mod:`sdrlab.receivers.kiwiwire`, which takes these values
from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Awaitable, Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from . import timing

__all__ = [
    "FLAG_ADC_OVERFLOW", "FLAG_COMPRESSED", "FLAG_LITTLE_ENDIAN", "FLAG_LPF", "FLAG_NEW_FREQ", "FLAG_RESTART",
    "FLAG_SQUELCHED", "FLAG_STEREO", "GPS_LAST_CAP", "GPS_NO_CLOCK", "HEADER_DTYPE", "SAMPLES_PER_FRAME",
    "KINDS", "RSSI_FLOOR_DBM", "TIMINGS", "AudioSegment", "Capture", "Receiver", "ReceiverInfo", "ReceiverStatus",
    "Segment", "SmeterReadings", "SpectrumRows", "build_receipt_segment", "build_segment", "fit_frames", "session_timing",
]

#: complex samples in one frame of the per-frame record (a KiwiSDR SND IQ frame)
SAMPLES_PER_FRAME = 512

# bits of the flags byte kept per frame in ``frame_flags`` (KiwiSDR protocol reference section 5)
FLAG_LPF = 0x01
FLAG_ADC_OVERFLOW = 0x02
FLAG_NEW_FREQ = 0x04
FLAG_STEREO = 0x08  # IQ / stereo modes
FLAG_COMPRESSED = 0x10  # ADPCM: never valid with IQ
FLAG_RESTART = 0x20
FLAG_SQUELCHED = 0x40
FLAG_LITTLE_ENDIAN = 0x80

#: ``last_gps_solution`` (``frame_last_gps``, seconds since the last GPS fix) values with a meaning
#: of their own: up to GPS_LAST_CAP a stamp is valid; GPS_NO_CLOCK: the receiver has no GPS time
GPS_LAST_CAP = 252
GPS_NO_CLOCK = 255

#: the per-frame RSSI (dBm) of an S-meter at its floor: a frame that says nothing about the level
RSSI_FLOOR_DBM = -127.0

#: what a capture's times rest on: ``gps`` (GPS-stamped frames, KiwiSDR), ``receipt`` (the host's
#: receipt times only: OpenWebRX, KiwiSDR emulations without the GPS block), ``none`` (no data)
TIMINGS = ("gps", "receipt", "none")

#: what a capture holds: ``iq`` (complex baseband samples in :class:`Segment`, KiwiSDR) or
#: ``audio`` (demodulated audio in :class:`AudioSegment`, spectrum rows and S-meter readings, all
#: with receipt times only: OpenWebRX)
KINDS = ("iq", "audio")

#: the 20-byte SND IQ frame header as a numpy record, for vectorised parsing of a whole segment
HEADER_DTYPE = np.dtype(
    [
        ("tag", "S3"),
        ("flags", "u1"),
        ("seq", "<u4"),
        ("smeter", ">u2"),
        ("last_gps", "u1"),
        ("dummy", "u1"),
        ("gpssec", "<u4"),
        ("gpsnsec", "<u4"),
    ]
)
assert HEADER_DTYPE.itemsize == 20


@dataclass
class ReceiverInfo:
    """What the receiver said about itself."""

    host: str
    port: int
    version: str = ""
    rx_chans: int = 0
    audio_rate: int = 0
    sample_rate: float = 0.0
    freq_offset_khz: float = 0.0
    name: str = ""
    antenna: str = ""
    position: tuple[float, float] | None = None
    altitude: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ReceiverInfo | None:
        """From its ``dataclasses.asdict`` as stored in JSON (a list for the position; fields
        an older sdrlab did not have take their defaults, unknown ones are ignored); None for none."""
        if not d:
            return None
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("position") is not None:
            d["position"] = tuple(d["position"])
        return cls(**d)


@dataclass
class Segment:
    """One uninterrupted stretch of samples (a connection, or part of one after a long gap).

    Frames missing from the ``seq`` sequence are zero-filled so that sample index stays linear in
    time; ``frame_received`` tells which frames really arrived.
    """

    samples: npt.NDArray[np.int16]  # (n, 2) I, Q
    frame_seq: npt.NDArray[np.uint32]
    frame_flags: npt.NDArray[np.uint8]
    frame_rssi_dbm: npt.NDArray[np.float32]
    frame_last_gps: npt.NDArray[np.uint8]
    frame_gps_ns: npt.NDArray[np.int64]  # GPS ns of each frame's first sample; -1 = no stamp
    frame_received: npt.NDArray[np.bool_]
    fit: timing.TimeFit
    end_reason: str
    seq_gaps: int
    missing_frames: int
    #: how much later than real-rate streaming the last frame arrived, relative to the most
    #: punctual frame of the segment (wall clock; diagnostics only, never used for time).  A
    #: client or link that cannot keep up shows a lag that grows with the capture length.
    lag_s: float = float("nan")
    #: ``gps``: frames with the GPS block (``fit`` says whether a time fit was possible);
    #: ``receipt``: frames without it (a server posing as a KiwiSDR, e.g. UberSDR's emulation):
    #: times are only the host clock's receipt times, ``receipt_t0_gps_ns`` at the nominal rate
    timing: str = "gps"
    #: first sample of each frame within the segment when frames are not all 512 samples long
    frame_start: npt.NDArray[np.int64] | None = None
    #: receipt-time estimate of sample 0 (GPS ns from the host clock; -1 = none)
    receipt_t0_gps_ns: int = -1
    #: samples of the segment stored elsewhere and not held in ``samples`` (streaming capture:
    #: they went to the store as they arrived; see :mod:`sdrlab.recording`)
    streamed: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0]) + self.streamed


I16 = npt.NDArray[np.int16]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass
class AudioSegment:
    """One uninterrupted stretch of demodulated audio (a connection, or the part of one between two
    profile changes), as an audio-only receiver (OpenWebRX) delivers it: mono int16 PCM at the
    rate the client asked for, with the host's receipt time of every message that carried some.

    Nothing here is signal time: ``message_receipt_ns`` are host clock times (ns since the unix
    epoch) at which the samples up to ``message_end`` (exclusive sample index within the segment)
    had arrived; ``rate_hz`` is measured from sample counts over the whole segment where it is long
    enough (else ``nominal_rate_hz``).  A squelch or a stall is a gap in receipt times, not samples.
    """

    samples: I16  # (n,) mono PCM, 32767 ~ full scale of the demodulated audio
    nominal_rate_hz: float
    message_end: I64  # (m,) end sample (exclusive) of each message's samples
    message_receipt_ns: I64  # (m,) host receipt time of each message, unix ns
    end_reason: str = "complete"
    #: what the receiver was tuned to for this segment (absolute Hz), its demodulator and passband
    frequency_hz: float = float("nan")
    mode: str = ""
    low_cut: float = float("nan")
    high_cut: float = float("nan")
    #: the receiver's profile in force (its SDR centre and sample rate, Hz; ``sdr|profile`` id)
    center_freq_hz: float = float("nan")
    samp_rate_hz: float = float("nan")
    profile: str = ""
    #: samples of the segment stored elsewhere and not held here (streaming capture: they went to
    #: the store as they arrived, see :mod:`sdrlab.recording_audio`)
    streamed: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0]) + self.streamed

    @property
    def rate_hz(self) -> float:
        """Audio rate measured from sample counts against receipt times (needs >= 2 s): every
        message arrives some time after its last sample was made, never before, so the rate is
        the slope between the most punctual message of the first and of the last fifth of the
        segment (a least-squares line through every message would follow the server's and the
        network's bursts; 1.5 % scatter over 4 s is seen); else the nominal rate."""
        n, t = self.message_end, self.message_receipt_ns
        if n.size < 3 or (t[-1] - t[0]) < 2 * 10**9:
            return float(self.nominal_rate_hz)
        tt = (t - t[0]).astype(np.float64) / 1e9
        late = tt - n.astype(np.float64) / self.nominal_rate_hz
        edge = tt[-1] / 5
        first, last = np.flatnonzero(tt <= edge), np.flatnonzero(tt >= tt[-1] - edge)
        a, b = first[np.argmin(late[first])], last[np.argmin(late[last])]
        if tt[b] <= tt[a]:
            return float(self.nominal_rate_hz)
        rate = float((n[b] - n[a]) / (tt[b] - tt[a]))
        # a receiver whose audio stalled in the middle cannot be measured this way: keep the nominal
        return rate if abs(rate / self.nominal_rate_hz - 1.0) < 0.01 else float(self.nominal_rate_hz)

    @property
    def receipt_t0_ns(self) -> int:
        """Earliest-arrival estimate of sample 0 (unix ns): every sample was produced before the
        message holding it arrived (server and network latency are not removed)."""
        if self.message_end.size == 0:
            return -1
        back = np.rint(self.message_end / self.rate_hz * 1e9).astype(np.int64)
        return int(np.min(self.message_receipt_ns - back))


@dataclass
class SpectrumRows:
    """Waterfall rows as received (dB as the server computed them, uncalibrated), each tagged with
    the profile in force at receipt: its centre, sample rate and FFT size (bins = fft_size; rows
    of a smaller size are NaN-padded).  Bin k of a row is at
    ``center - samp_rate/2 + k * samp_rate / fft_size`` (DC at bin fft_size/2)."""

    db: F32  # (rows, bins)
    receipt_ns: I64  # (rows,) unix ns
    center_freq_hz: F64  # (rows,)
    samp_rate_hz: F64  # (rows,)
    fft_size: I64  # (rows,)

    @property
    def n_rows(self) -> int:
        return int(self.db.shape[0])


@dataclass
class SmeterReadings:
    """S-meter readings as received: the linear mean power of the channel (full scale 1.0,
    uncalibrated), with receipt times (unix ns)."""

    power: F64  # (k,)
    receipt_ns: I64  # (k,)

    @property
    def n(self) -> int:
        return int(self.power.shape[0])


@dataclass
class Capture:
    """Everything one receiver delivered for one request.

    ``kind`` ``iq``: ``segments`` hold the samples (KiwiSDR).  ``kind`` ``audio``: ``audio``,
    ``spectrum`` and ``smeter`` hold them (OpenWebRX) and ``segments`` stays empty.  ``protocol``
    and ``hw`` say which receiver family and what it said it was."""

    station: str
    frequency_hz: float
    low_cut: float
    high_cut: float
    requested_s: float
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S
    info: ReceiverInfo | None = None
    segments: list[Segment] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    bad_frames: int = 0
    kind: str = "iq"
    protocol: str = "kiwisdr"
    #: the receiver's own description (software, version, hardware), for ``core:hw``
    hw: str = ""
    audio: list[AudioSegment] = field(default_factory=list)
    spectrum: SpectrumRows | None = None
    smeter: SmeterReadings | None = None

    @property
    def n_samples(self) -> int:
        """Samples of the capture's main stream: IQ samples, or audio samples for ``audio``."""
        if self.kind == "audio":
            return sum(a.n_samples for a in self.audio)
        return sum(s.n_samples for s in self.segments)

    @property
    def has_data(self) -> bool:
        """Anything at all arrived (samples, spectrum rows or S-meter readings)."""
        return (self.n_samples > 0 or (self.spectrum is not None and self.spectrum.n_rows > 0)
                or (self.smeter is not None and self.smeter.n > 0))

    @property
    def sample_rate(self) -> float:
        """The measured rate of the first segment with a GPS fit, else the announced rate (audio:
        the first audio segment's rate, measured from sample counts)."""
        if self.kind == "audio":
            return self.audio[0].rate_hz if self.audio else float("nan")
        for s in self.segments:
            if s.fit.ok:
                return s.fit.fs
        return self.info.sample_rate if self.info else float("nan")

    def utc(self, gps_ns: int) -> np.datetime64:
        return timing.gps_ns_to_utc(gps_ns, self.gps_utc_offset_s)

    @property
    def timing(self) -> str:
        """``gps`` when a segment has a GPS time fit, ``receipt`` when the receiver sent frames
        without GPS stamps (times from the host clock only), else ``none``."""
        if any(s.fit.ok for s in self.segments):
            return "gps"
        if any(s.timing == "receipt" for s in self.segments) or (self.kind == "audio" and self.has_data):
            return "receipt"
        return "none"


def session_timing(timings: Iterable[str]) -> str:
    """One word for a session's stations' timings: the common one (``gps``, ``receipt``,
    ``none``), ``mixed`` when GPS-timed and receipt-timed stations share it (stations with no
    data do not count when others have some)."""
    kinds = set(timings)
    if len(kinds) > 1:
        kinds.discard("none")
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass(frozen=True)
class ReceiverStatus:
    """What a receiver's own status page said (KiwiSDR ``/status``, OpenWebRX ``/status.json``),
    in the terms the stations table keeps.  ``None``: the page did not say.  ``gps``: ``ok``
    (its frames carry GPS time), ``no fixes`` (it claims a GPS but has no fixes: no GPS time),
    ``none`` (the protocol has no GPS time at all), ``unknown``."""

    protocol: str
    name: str | None = None
    antenna: str | None = None
    channels: int | None = None
    bands_hz: tuple[float, float] | None = None
    gps: str = "unknown"
    hw: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    #: where the receiver says it is (WGS84 degrees; metres above sea level), None: not said
    position: tuple[float, float] | None = None
    altitude: float | None = None


@runtime_checkable
class Receiver(Protocol):
    """What acquisition needs of a receiver client, whatever its protocol (one per station).

    The acquisition sets the hooks before :meth:`capture`; a client calls them from its event
    loop's thread and never lets an exception in one cost the capture."""

    #: the protocol name it is registered under (``kiwisdr``, ...)
    protocol: str
    station: str
    #: the session's common window (:class:`sdrlab.receivers.window.Window`) or None:
    #: ``duration_s`` from the first data
    window: Any
    #: streaming sink or None: IQ receivers ``piece(capture, segment, first)``, ``end_segment(reason)``
    #: (:class:`sdrlab.recording.StationRecorder`); audio receivers ``piece(capture, audio part or
    #: None, first, spectrum rows, S-meter readings)`` every ``sink.piece_s`` seconds
    #: (:class:`sdrlab.recording_audio.AudioRecorder`)
    sink: Any
    #: polled about twice a second; True ends the capture at once, keeping what arrived
    should_stop: Callable[[], bool] | None
    #: called about twice a second with (samples so far, sample rate): progress displays only
    on_progress: Callable[[int, float], None] | None
    #: True once a stop request ended the capture
    stopped: bool

    def capture(self, frequency_hz: float, duration_s: float) -> Awaitable[Capture]:
        """Connect, receive ``duration_s`` s at ``frequency_hz``, close, and return everything
        that arrived; raises a :class:`sdrlab.errors.ReceiverError` carrying the partial
        capture when it gives up."""
        ...


# ---- segment assembly: frames in, one Segment out (vectorised, once per segment) -------------
def _spread(values: npt.NDArray[Any], slot: npt.NDArray[np.int64], total: int, fill: object,
            dtype: npt.DTypeLike) -> npt.NDArray[np.generic]:
    """Per-frame values at their slots of a gap-filled sequence of ``total`` frames, ``fill`` elsewhere."""
    out = np.full(total, fill, dtype=dtype)
    out[slot] = values
    return out


def _rssi_dbm(smeter: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """RSSI in dBm from S-meter fields: 0.1 v - 127, clamped to -127 ... +3.4 (section 4)."""
    out: npt.NDArray[np.float32] = np.clip(0.1 * np.asarray(smeter).astype(np.float32) + RSSI_FLOOR_DBM,
                                           RSSI_FLOOR_DBM, 3.4).astype(np.float32)
    return out


def fit_frames(sample_index: npt.ArrayLike, gps_ns: npt.ArrayLike, last_gps: npt.ArrayLike, *,
               nominal_fs: float) -> timing.TimeFit:
    """The GPS time fit of one segment from the frames that arrived, in order: each frame's first
    sample (index within the segment), GPS stamp (ns, -1 = none) and ``last_gps_solution``.

    Fresh stamps are used: the frame where last_gps_solution drops (a new fix arrived; the TDoA
    tools' proc_kiwi_iq_wav.m uses diff(gpslast) < 0); stamps later in a fix interval may drift.
    With fewer than two fixes in the segment: frames at 0 s since a fix, then every valid stamp."""
    n = np.asarray(sample_index, dtype=np.int64)
    t = np.asarray(gps_ns, dtype=np.int64)
    lg = np.asarray(last_gps).astype(np.int16)
    has = t >= 0
    if not has.any():
        status = "no GPS clock (last_gps_solution 255)" if (lg == GPS_NO_CLOCK).any() else "no GPS timestamps"
        return timing.TimeFit(-1, float(nominal_fs), float("nan"), 0, 0, status)
    drop = has & np.r_[False, np.diff(lg) < 0]
    zero = has & (lg == 0)
    use = drop if drop.sum() >= 2 else zero if zero.sum() >= 2 else has
    return timing.fit_time(n[use], t[use], nominal_fs=nominal_fs)


def build_segment(
    headers: bytes,
    data: bytes,
    *,
    nominal_fs: float,
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S,
    end_reason: str = "complete",
    host_gps_ns: int | None = None,
    fit: bool = True,
) -> Segment:
    """Turn raw frame headers and sample bytes (as received, in order, seq strictly increasing)
    into a :class:`Segment`: byte order per frame, zero-filled gaps, GPS stamps and time fit
    (``fit=False``: none, for a piece of a segment whose fit is made over all of it later)."""
    h = np.frombuffer(headers, dtype=HEADER_DTYPE)
    nf = h.shape[0]
    raw = np.frombuffer(data, dtype=np.uint8).reshape(nf, SAMPLES_PER_FRAME * 4)
    le = (h["flags"] & FLAG_LITTLE_ENDIAN).astype(bool)
    rows = np.empty((nf, SAMPLES_PER_FRAME * 2), dtype=np.int16)
    if le.any():
        rows[le] = raw[le].view("<i2")
    if (~le).any():
        rows[~le] = raw[~le].view(">i2")
    seq = h["seq"].astype(np.int64)
    slot = seq - seq[0]
    total = int(slot[-1]) + 1
    full = np.zeros((total, SAMPLES_PER_FRAME * 2), dtype=np.int16)
    full[slot] = rows
    received = np.zeros(total, dtype=bool)
    received[slot] = True
    frame_seq = (seq[0] + np.arange(total)).astype(np.uint32)
    flags = _spread(h["flags"], slot, total, 0, np.uint8)
    rssi = _spread(_rssi_dbm(h["smeter"]), slot, total, np.nan, np.float32)
    last = _spread(h["last_gps"], slot, total, GPS_NO_CLOCK, np.uint8)

    # GPS stamps -> ns since the GPS epoch (week from the host clock, section 7)
    host = timing.gps_now_ns(gps_utc_offset_s) if host_gps_ns is None else host_gps_ns
    gsec = h["gpssec"].astype(np.int64)
    gnsec = h["gpsnsec"].astype(np.int64)
    has = ((gsec != 0) | (gnsec != 0)) & (gsec < timing.WEEK_S) & (gnsec < timing.NS) & (h["last_gps"] <= GPS_LAST_CAP)
    gps_ns = np.full(nf, -1, dtype=np.int64)
    if has.any():
        first = int(np.argmax(has))
        week = timing.gps_week_for(float(gsec[first]), host)
        wk = np.full(nf, week, dtype=np.int64)
        wk[gsec < gsec[first] - timing.WEEK_S // 2] += 1  # rollover inside the segment
        gps_ns[has] = (wk[has] * timing.WEEK_S + gsec[has]) * timing.NS + gnsec[has]
    frame_gps = _spread(gps_ns, slot, total, -1, np.int64)

    tfit = (fit_frames(slot * SAMPLES_PER_FRAME, gps_ns, h["last_gps"], nominal_fs=nominal_fs) if fit else
            timing.TimeFit(-1, float(nominal_fs), float("nan"), 0, 0, "not fitted (a piece of a segment)"))
    missing = total - nf
    gaps = int(np.count_nonzero(np.diff(slot) > 1)) if nf > 1 else 0
    return Segment(
        samples=full.reshape(total * SAMPLES_PER_FRAME, 2),
        frame_seq=frame_seq,
        frame_flags=flags,  # type: ignore[arg-type]
        frame_rssi_dbm=rssi,  # type: ignore[arg-type]
        frame_last_gps=last,  # type: ignore[arg-type]
        frame_gps_ns=frame_gps,  # type: ignore[arg-type]
        frame_received=received,
        fit=tfit,
        end_reason=end_reason,
        seq_gaps=gaps,
        missing_frames=missing,
    )


def build_receipt_segment(
    frames: list[tuple[int, int, int, int, int]],
    data: bytes,
    *,
    nominal_fs: float,
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S,
    end_reason: str = "complete",
) -> Segment:
    """A :class:`Segment` from SND IQ frames without the GPS block (``frames``: seq, flags,
    S-meter, samples, host receipt time in unix ns; ``data``: their sample bytes in order).

    Frames may hold any number of samples; a missing seq is zero-filled with the median frame
    length.  No GPS fit is claimed: ``timing`` is ``receipt`` and ``receipt_t0_gps_ns`` the
    earliest-arrival estimate of sample 0 at the nominal rate (every sample was taken before the
    frame that holds it arrived; network and server latency are not removed)."""
    meta = np.array(frames, dtype=np.int64).reshape(-1, 5)
    seq, flags, smeter, counts, arrival = (meta[:, i] for i in range(5))
    le = (flags & FLAG_LITTLE_ENDIAN).astype(bool)
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.cumsum(counts) * 4
    chunks = []
    for i, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
        chunks.append(raw[a:b].view("<i2" if le[i] else ">i2").astype(np.int16))
    slot = seq - seq[0]
    total = int(slot[-1]) + 1
    fill = int(np.median(counts))
    lengths = np.full(total, fill, dtype=np.int64)
    lengths[slot] = counts
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    samples = np.zeros((int(lengths.sum()), 2), dtype=np.int16)
    for i, k in enumerate(slot):
        samples[starts[k] : starts[k] + counts[i]] = chunks[i].reshape(-1, 2)
    received = np.zeros(total, dtype=bool)
    received[slot] = True
    host_gps = arrival - timing.GPS_EPOCH_UNIX_S * timing.NS + gps_utc_offset_s * timing.NS
    sample_end = starts[slot] + counts
    t0 = int(np.min(host_gps - np.rint(sample_end / nominal_fs * timing.NS).astype(np.int64)))
    fit = timing.TimeFit(-1, float(nominal_fs), float("nan"), 0, 0,
                         "no GPS timestamps (frames without the GPS block: receipt times only)")
    return Segment(
        samples=samples,
        frame_seq=(seq[0] + np.arange(total)).astype(np.uint32),
        frame_flags=_spread(flags.astype(np.uint8), slot, total, 0, np.uint8),  # type: ignore[arg-type]
        frame_rssi_dbm=_spread(_rssi_dbm(smeter), slot, total, np.nan, np.float32),  # type: ignore[arg-type]
        frame_last_gps=np.full(total, GPS_NO_CLOCK, dtype=np.uint8),
        frame_gps_ns=np.full(total, -1, dtype=np.int64),
        frame_received=received,
        fit=fit,
        end_reason=end_reason,
        seq_gaps=int(np.count_nonzero(np.diff(slot) > 1)) if slot.size > 1 else 0,
        missing_frames=total - slot.size,
        timing="receipt",
        frame_start=starts,
        receipt_t0_gps_ns=t0,
    )

