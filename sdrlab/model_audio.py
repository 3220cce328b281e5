"""The Dataset model of audio captures (``kind`` ``audio``: OpenWebRX and other receivers that give
demodulated audio, a waterfall and an S-meter, with receipt times only), beside the IQ model of
:mod:`sdrlab.model`, which builds the session and calls :func:`audio_variables`::

    audio               (station, audio_sample) int16   demodulated audio, lossless as decoded; padding 0
    audio_segment_*     (station, audio_segment)        first sample, length, receipt time of
                                                        sample 0, measured rate, end reason,
                                                        tuning (frequency, mode, passband) and
                                                        the receiver profile in force
    audio_message_*     (station, audio_message)        end sample and receipt time of every
                                                        message: receipt jitter stays measurable
    spectrum            (station, spectrum_row, spectrum_bin) float32   waterfall rows in the
                                                        server's dB (uncalibrated); NaN padding
    spectrum_time       (station, spectrum_row)          receipt time of each row (UTC)
    spectrum_center_hz / spectrum_samp_rate_hz / spectrum_fft_size (station, spectrum_row)
                                                        the profile in force at receipt
    smeter_dbfs         (station, smeter_reading)        S-meter, 10 log10 of the channel's mean
                                                        power re full scale (uncalibrated)
    smeter_time         (station, smeter_reading)        receipt time (UTC)

Every time here is the host's receipt time, not signal time (``timing`` ``receipt``).  Stations of
the other kind have zero-length rows (padding) in these variables, as audio stations have in the
IQ ones; a session without audio stations has none of them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from .capture import AudioSegment, Capture

__all__ = ["AUDIO_DATATYPE", "AUDIO_DIMS", "audio_variables", "unix_ns_to_utc", "audio_hw", "audio_t0", "iq_part"]

#: the dims of the audio-kind variables
AUDIO_DIMS = frozenset({"audio_sample", "audio_segment", "audio_message", "spectrum_row", "spectrum_bin",
                        "smeter_reading"})

#: SigMF datatype of the ``audio`` variable (real int16, little-endian)
AUDIO_DATATYPE = "ri16_le"

NAT = np.datetime64("NaT", "ns")


def iq_part(ds: Any) -> Any:
    """The session's IQ stations with only the IQ kind's variables (the audio kind's dropped);
    None when it has no IQ station."""
    if "kind" in ds.coords:
        iq = [s for s, k in zip(ds["station"].values, ds["kind"].values) if k != "audio"]
        if not iq:
            return None
        ds = ds.sel(station=iq)
    return ds.drop_vars([k for k, v in ds.variables.items() if AUDIO_DIMS & set(v.dims)])


def unix_ns_to_utc(ns: npt.ArrayLike) -> npt.NDArray[np.datetime64]:
    """Host receipt times (unix ns, -1 = none) as datetime64[ns] UTC (NaT for none)."""
    a = np.asarray(ns, dtype=np.int64)
    out = a.astype("datetime64[ns]")
    out[a < 0] = NAT
    return out


def audio_t0(capture: Capture) -> np.datetime64:
    """Receipt-time estimate of the first audio sample (UTC), NaT without audio."""
    for a in capture.audio:
        t = a.receipt_t0_ns
        if t >= 0:
            return np.datetime64(t, "ns")
    return NAT


def audio_hw(capture: Capture) -> str:
    return capture.hw or capture.protocol


def _segments(rows: Sequence[list[AudioSegment]], data: bool = True) -> dict[str, Any]:
    ns = len(rows)
    s_max = max((len(r) for r in rows), default=0)
    n_max = max((sum(a.n_samples for a in r) for r in rows), default=0)
    m_max = max((sum(int(a.message_end.size) for a in r) for r in rows), default=0)
    audio = np.zeros((ns, n_max if data else 0), np.int16)
    seg: dict[str, np.ndarray[Any, Any]] = {
        "audio_segment_start": np.full((ns, s_max), -1, np.int64),
        "audio_segment_length": np.zeros((ns, s_max), np.int64),
        "audio_segment_t0": np.full((ns, s_max), NAT),
        "audio_segment_rate": np.full((ns, s_max), np.nan),
        "audio_segment_nominal_rate": np.full((ns, s_max), np.nan),
        "audio_segment_end": np.full((ns, s_max), "", dtype=object),
        "audio_segment_frequency_hz": np.full((ns, s_max), np.nan),
        "audio_segment_mode": np.full((ns, s_max), "", dtype=object),
        "audio_segment_low_cut": np.full((ns, s_max), np.nan),
        "audio_segment_high_cut": np.full((ns, s_max), np.nan),
        "audio_segment_center_hz": np.full((ns, s_max), np.nan),
        "audio_segment_samp_rate_hz": np.full((ns, s_max), np.nan),
        "audio_segment_profile": np.full((ns, s_max), "", dtype=object),
    }
    msg_end = np.full((ns, m_max), -1, np.int64)
    msg_t = np.full((ns, m_max), NAT)
    for i, segs in enumerate(rows):
        pos = m = 0
        for j, a in enumerate(segs):
            n = a.n_samples
            if data:
                audio[i, pos: pos + n] = a.samples
            t0 = a.receipt_t0_ns
            seg["audio_segment_start"][i, j] = pos
            seg["audio_segment_length"][i, j] = n
            seg["audio_segment_t0"][i, j] = np.datetime64(t0, "ns") if t0 >= 0 else NAT
            seg["audio_segment_rate"][i, j] = a.rate_hz
            seg["audio_segment_nominal_rate"][i, j] = a.nominal_rate_hz
            seg["audio_segment_end"][i, j] = a.end_reason
            seg["audio_segment_frequency_hz"][i, j] = a.frequency_hz
            seg["audio_segment_mode"][i, j] = a.mode
            seg["audio_segment_low_cut"][i, j] = a.low_cut
            seg["audio_segment_high_cut"][i, j] = a.high_cut
            seg["audio_segment_center_hz"][i, j] = a.center_freq_hz
            seg["audio_segment_samp_rate_hz"][i, j] = a.samp_rate_hz
            seg["audio_segment_profile"][i, j] = a.profile
            k = int(a.message_end.size)
            msg_end[i, m: m + k] = pos + a.message_end
            msg_t[i, m: m + k] = unix_ns_to_utc(a.message_receipt_ns)
            pos += n
            m += k
    out: dict[str, Any] = {
        "audio_message_end": (("station", "audio_message"), msg_end,
                              {"long_name": "audio sample index (exclusive) up to which the message had arrived"}),
        "audio_message_time": (("station", "audio_message"), msg_t,
                               {"long_name": "host receipt time of the message (UTC)",
                                "comment": "receipt time, not signal time"}),
    }
    attrs = {"audio_segment_t0": {"long_name": "receipt-time estimate of the segment's first sample (UTC)",
                                  "comment": "earliest arrival: server and network latency not removed"},
             "audio_segment_rate": {"units": "Hz", "long_name": "audio rate measured from sample counts"},
             "audio_segment_nominal_rate": {"units": "Hz", "long_name": "audio rate the client asked for",
                                            "comment": "the rate in the SDR's own clock (audio clock = SDR "
                                                       "clock): the scale its tuning is in"},
             "audio_segment_frequency_hz": {"units": "Hz"}, "audio_segment_low_cut": {"units": "Hz"},
             "audio_segment_high_cut": {"units": "Hz"}, "audio_segment_center_hz": {"units": "Hz"},
             "audio_segment_samp_rate_hz": {"units": "Hz"}}
    for name, values in seg.items():
        out[name] = (("station", "audio_segment"), values, attrs.get(name, {}))
    if data:
        out["audio"] = (("station", "audio_sample"), audio, AUDIO_ATTRS)
    return out


#: the attributes of the ``audio`` variable
AUDIO_ATTRS = {"long_name": "demodulated audio", "units": "1", "full_scale": 32768,
               "comment": "int16 as decoded (lossless after the receiver's lossy codec); "
                          "samples past each station's audio_segment end are padding"}
#: the attributes of the ``spectrum`` variable
SPECTRUM_ATTRS = {"long_name": "waterfall rows as the receiver computed them", "units": "dB",
                  "comment": "uncalibrated; bin k at spectrum_center_hz - spectrum_samp_rate_hz/2 "
                             "+ k * spectrum_samp_rate_hz / spectrum_fft_size; NaN = padding"}


def _spectrum(caps: Sequence[Capture], data: bool = True) -> dict[str, Any]:
    ns = len(caps)
    rows = [c.spectrum for c in caps]
    r_max = max((s.n_rows for s in rows if s is not None), default=0)
    b_max = max((int(s.db.shape[1]) for s in rows if s is not None and s.n_rows), default=0)
    db = np.full((ns, r_max, b_max) if data else (0, 0, 0), np.nan, np.float32)
    t = np.full((ns, r_max), NAT)
    centre = np.full((ns, r_max), np.nan)
    rate = np.full((ns, r_max), np.nan)
    size = np.zeros((ns, r_max), np.int64)
    for i, s in enumerate(rows):
        if s is None or not s.n_rows:
            continue
        k, b = s.db.shape
        if data:
            db[i, :k, :b] = s.db
        t[i, :k] = unix_ns_to_utc(s.receipt_ns)
        centre[i, :k] = s.center_freq_hz
        rate[i, :k] = s.samp_rate_hz
        size[i, :k] = s.fft_size
    out: dict[str, Any] = {
        "spectrum_time": (("station", "spectrum_row"), t,
                          {"long_name": "host receipt time of the row (UTC)", "comment": "receipt time, not signal time"}),
        "spectrum_center_hz": (("station", "spectrum_row"), centre, {"units": "Hz"}),
        "spectrum_samp_rate_hz": (("station", "spectrum_row"), rate, {"units": "Hz"}),
        "spectrum_fft_size": (("station", "spectrum_row"), size, {"long_name": "bins in the row (0 = padding)"}),
    }
    if data:
        out["spectrum"] = (("station", "spectrum_row", "spectrum_bin"), db, SPECTRUM_ATTRS)
    return out


def _smeter(caps: Sequence[Capture]) -> dict[str, Any]:
    ns = len(caps)
    k_max = max((c.smeter.n for c in caps if c.smeter is not None), default=0)
    v = np.full((ns, k_max), np.nan)
    t = np.full((ns, k_max), NAT)
    for i, c in enumerate(caps):
        if c.smeter is None or not c.smeter.n:
            continue
        p = np.asarray(c.smeter.power, dtype=np.float64)
        with np.errstate(divide="ignore"):
            v[i, :p.size] = 10.0 * np.log10(p)
        t[i, :p.size] = unix_ns_to_utc(c.smeter.receipt_ns)
    return {
        "smeter_dbfs": (("station", "smeter_reading"), v,
                        {"units": "dB", "long_name": "S-meter: mean channel power re full scale",
                         "comment": "uncalibrated (ADC full scale x unknown gain); snapshots, not a continuous average"}),
        "smeter_time": (("station", "smeter_reading"), t,
                        {"long_name": "host receipt time of the reading (UTC)", "comment": "receipt time, not signal time"}),
    }


def audio_variables(caps: Sequence[Capture], data: bool = True) -> dict[str, Any]:
    """The audio-kind data variables for the session's stations (one row per capture, in order;
    captures of kind ``iq`` get padding rows).  ``data=False``: without ``audio`` and ``spectrum``
    (a streamed session's, read lazily from its pieces: the captures hold only their sizes)."""
    rows = [c.audio if c.kind == "audio" else [] for c in caps]
    out = _segments(rows, data)
    out.update(_spectrum(caps, data))
    out.update(_smeter(caps))
    return out
