"""Carrier frequency offset from SSB/CW audio, against a reference signal (protocol page section
11.3, issue 15 item 4).

A receiver that gives only demodulated audio (OpenWebRX) still shows where a carrier is: in USB
(or CW) a carrier at RF ``f`` becomes an audio tone at ``f - dial``; in LSB ``dial - f``.  The
tone's frequency can be measured to far better than a hertz from a long capture.  But the
receiver's frequency scale is off: its SDR's crystal (an RTL-SDR without TCXO: tens of ppm) clocks
the local oscillator, so every frequency it shows is the true one divided by ``1 + e`` (e = the
error, ~1e-5: kilohertz at 145 MHz).  An offset therefore means something only against a
reference signal of known frequency (a beacon) heard by the same receiver at the same time:

* ``tuning_error_hz`` = reference measured - reference expected: the receiver's apparent tuning
  error (its frequency scale's error at the reference, ``-e f_ref``);
* ``ppm`` = ``(f_ref / f_ref_measured - 1) 1e6``: that error as the crystal's, in ppm;
* ``target_hz`` = the target measured, scaled by ``f_ref / f_ref_measured``: the target's true
  carrier frequency, the receiver's error cancelled; ``target_offset_hz`` = target_hz - the
  target's expected frequency.

**The audio clock is the SDR clock.**  The audio samples are made by the SDR's clock, so a tone's
frequency in cycles per sample times the *nominal* audio rate (the rate the client asked for:
``audio_segment_nominal_rate``) is the tone in the SDR's own frequency scale, the scale its dial
is in: the LO error and the sample clock's error are then one factor ``1 + e``, which the
reference measures and the scaling removes exactly.  The rate measured from receipt times
(``audio_segment_rate``) is not used: it is good to ~1e-3 at best (network jitter; 1.5 % over
4 s is seen), and an error of 1e-3 on the rate moves a 1 kHz tone by 1 Hz, while the true clock
error (tens of ppm) moves it by only tens of millihertz.

**What cannot give an offset.**  NFM audio (the de-emphasis is a band-pass, -27 dB at DC), AM
audio (a DC blocker) and WFM carry no trace of the carrier's frequency: such stations are refused
(:class:`~sdrlab.errors.AnalysisRefused`), as are IQ stations (KiwiSDR: measure the carrier in
their IQ, ``ds.sdr.psd()``, at the sample rate their GPS fits give) and stations on which no
tone stands ``threshold_db`` above the noise near where the signal is expected.

The estimator (:func:`tone_frequency`): the segment's mean removed, a Hann window, a zero-padded
FFT to find the strongest bin in the search band, then the maximum of the windowed signal's
DTFT magnitude within one padded bin of it (a bounded scalar search): unbiased for a lone tone,
resolution far below the FFT's bin.  Segments of one station (split by a profile change or a
reconnection) are measured separately and averaged with weights ``n^3`` (the variance of a
frequency estimate falls as the cube of its length).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import xarray as xr
from scipy import optimize

from .errors import AnalysisRefused, ConfigError

__all__ = ["OFFSET_MODES", "Tone", "carrier_offset", "tone_frequency"]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

#: demodulators whose audio keeps the carrier's frequency, and the sign of tone = sign (f - dial)
OFFSET_MODES = {"usb": 1, "cw": 1, "lsb": -1}
#: the audio rates clients ask for (a stored session without its nominal rate: the measured one
#: is snapped to the nearest of these within 1 %)
STANDARD_RATES = (8000.0, 11025.0, 12000.0, 16000.0, 22050.0, 24000.0, 44100.0, 48000.0)
#: segments shorter than this are not measured, s
MIN_SEGMENT_S = 1.0


@dataclass(frozen=True)
class Tone:
    """A tone found in audio: its frequency (Hz, at the rate given) and how far its peak stands
    above the median of the search band in the long FFT (dB)."""

    freq_hz: float
    snr_db: float
    n_samples: int


def _dtft_power(xw: F64, nu: float) -> float:
    """|sum xw[n] exp(-2 pi i nu n)|^2 at normalised frequency ``nu`` (cycles/sample)."""
    ph = np.exp(-2j * np.pi * nu * np.arange(xw.size))
    return float(np.abs(np.dot(xw, ph)) ** 2)


def tone_frequency(x: npt.ArrayLike, rate: float, lo_hz: float, hi_hz: float, *,
                   exclude: tuple[float, float] | None = None) -> Tone:
    """The strongest tone of real audio ``x`` (sampled at ``rate``) between ``lo_hz`` and
    ``hi_hz`` (``exclude``: a band left out of the search), see the module docstring.  The
    frequency is in the units of ``rate``; ``snr_db`` is NaN when the band is empty."""
    a = np.asarray(x, dtype=np.float64)
    a = a - a.mean()
    n = a.size
    lo, hi = max(lo_hz, 0.0), min(hi_hz, rate / 2)
    if n < 16 or hi <= lo:
        return Tone(float("nan"), float("nan"), n)
    xw = a * np.hanning(n)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    p = np.abs(np.fft.rfft(xw, nfft)) ** 2
    f = np.arange(p.size) * (rate / nfft)
    band = (f >= lo) & (f <= hi)
    if exclude is not None:
        band &= ~((f >= exclude[0]) & (f <= exclude[1]))
    idx = np.flatnonzero(band)
    if idx.size < 3:
        return Tone(float("nan"), float("nan"), n)
    k = int(idx[np.argmax(p[idx])])
    noise = float(np.median(p[idx]))
    snr = float(10 * np.log10(p[k] / noise)) if noise > 0 else float("inf")
    step = 1.0 / nfft  # one padded bin, cycles/sample
    nu0 = k / nfft
    res = optimize.minimize_scalar(lambda nu: -_dtft_power(xw, nu), bounds=(nu0 - step, nu0 + step),
                                   method="bounded", options={"xatol": 1e-6 / max(rate, 1.0)})
    nu = float(res.x) if res.success else nu0
    return Tone(nu * rate, snr, n)


@dataclass(frozen=True)
class _Segment:
    samples: npt.NDArray[np.int16]
    rate: float
    dial: float
    mode: str
    low_cut: float
    high_cut: float

    def audio_band(self, sign: int) -> tuple[float, float]:
        """The passband as audio frequencies (0 .. rate/2 when not recorded)."""
        if not (np.isfinite(self.low_cut) and np.isfinite(self.high_cut)):
            return 0.0, self.rate / 2
        a, b = sorted((sign * self.low_cut, sign * self.high_cut))
        return max(a, 0.0), min(b, self.rate / 2)


def _nominal_rate(s: xr.Dataset, j: int) -> float:
    if "audio_segment_nominal_rate" in s:
        r = float(s["audio_segment_nominal_rate"].values[j])
        if np.isfinite(r) and r > 0:
            return r
    measured = float(s["audio_segment_rate"].values[j])
    best = min(STANDARD_RATES, key=lambda r: abs(measured / r - 1))
    if abs(measured / best - 1) < 0.01:
        return best
    logger.warning("no nominal audio rate and %.1f Hz is near no usual rate: using the measured rate", measured)
    return measured


def _segments(s: xr.Dataset) -> list[_Segment]:
    """The station's audio segments (samples, nominal rate, dial = the frequency the receiver
    was tuned to, mode)."""
    out = []
    audio = s["audio"]
    for j, (start, length) in enumerate(zip(s["audio_segment_start"].values, s["audio_segment_length"].values)):
        if start < 0 or length <= 0:
            continue
        cut = [float(s[k].values[j]) if k in s else float("nan")
               for k in ("audio_segment_low_cut", "audio_segment_high_cut")]
        out.append(_Segment(np.asarray(audio.isel(audio_sample=slice(int(start), int(start + length))).values),
                            _nominal_rate(s, j), float(s["audio_segment_frequency_hz"].values[j]),
                            str(s["audio_segment_mode"].values[j]).lower(), cut[0], cut[1]))
    return out


def _weighted(tones: list[Tone], values: list[float]) -> float:
    w = np.array([float(t.n_samples) ** 3 for t in tones])
    return float(np.sum(w * np.array(values)) / np.sum(w))


def _measure(segs: list[_Segment], expected_hz: float, search_hz: float | None, sign: int,
             exclude_rf: tuple[float, float] | None = None) -> tuple[float, float]:
    """(apparent RF frequency in the receiver's scale, worst SNR dB) of the strongest tone within
    ``expected_hz`` +- ``search_hz`` (None: anywhere) inside each segment's passband, over the
    segments; NaN without one."""
    rf, tones = [], []
    for g in segs:
        lo, hi = g.audio_band(sign)
        if search_hz is not None:
            centre = sign * (expected_hz - g.dial)  # where the tone should be, audio Hz
            lo, hi = max(lo, centre - search_hz), min(hi, centre + search_hz)
        excl = None
        if exclude_rf is not None:
            a, b = sorted(sign * (e - g.dial) for e in exclude_rf)
            excl = (a, b)
        t = tone_frequency(g.samples, g.rate, lo, hi, exclude=excl)
        if np.isfinite(t.freq_hz):
            tones.append(t)
            rf.append(g.dial + sign * t.freq_hz)
    if not tones:
        return float("nan"), float("nan")
    return _weighted(tones, rf), float(min(t.snr_db for t in tones))


def _refuse_kinds(ds: xr.Dataset, ids: Sequence[str]) -> dict[str, list[_Segment]]:
    """Each station's usable segments; AnalysisRefused naming the stations that cannot give an
    offset (IQ stations, audio in a mode without the carrier's frequency)."""
    kinds = ds["kind"].values if "kind" in ds.coords else np.array(["iq"] * ds.sizes["station"])
    kind = {str(s): str(k) for s, k in zip(ds["station"].values, kinds)}
    iq = [sid for sid in ids if kind.get(sid) != "audio"]
    if iq:
        raise AnalysisRefused(
            f"carrier_offset works on SSB/CW audio; {iq} are IQ stations: measure the carrier in their IQ "
            "(ds.sdr.psd(), ds.sdr.spectrogram(), at the sample rate of their GPS fit) instead, or leave them "
            "out with stations=[...]", stations=iq, reason="iq station")
    usable: dict[str, list[_Segment]] = {}
    wrong: dict[str, list[str]] = {}
    for sid in ids:
        segs = [g for g in _segments(ds.sel(station=sid)) if g.samples.size >= MIN_SEGMENT_S * g.rate]
        bad = sorted({g.mode or "?" for g in segs if g.mode not in OFFSET_MODES})
        if bad or not segs:
            wrong[sid] = bad or ["no audio of 1 s or more"]
        usable[sid] = segs
    if wrong:
        raise AnalysisRefused(
            "audio cannot give a carrier offset in these stations' modes (NFM: the de-emphasis is a band-pass, "
            "-27 dB at DC; AM: a DC blocker; WFM likewise): "
            + ", ".join(f"{sid} ({'/'.join(m)})" for sid, m in wrong.items())
            + "; listen in USB, LSB or CW (OwrxOptions(mode='usb')) with the carriers inside the passband",
            stations=list(wrong), reason="mode")
    return usable


def carrier_offset(ds: xr.Dataset, reference_hz: float, target_hz: float, *, search_hz: float | None = None,
                   target_search_hz: float = 500.0, threshold_db: float = 20.0,
                   stations: Sequence[str] | None = None,
                   missing: Literal["raise", "nan"] = "raise") -> xr.Dataset:
    """The receiver's tuning error at a reference signal and a target carrier's frequency
    measured against it, per audio station (SSB/CW), see the module docstring.

    ``reference_hz``: the reference's known RF frequency (a beacon); its tone is the strongest in
    each station's passband (``search_hz`` given: within +- ``search_hz`` of where an exact
    receiver would put it: the receiver's error is unknown beforehand, kilohertz at 145 MHz, so
    give it only when the reference is not the strongest tone in the passband).
    ``target_hz``: the target's expected (nominal) RF frequency; its tone is the strongest within
    +- ``target_search_hz`` of where the reference's error says it should be, the reference's own
    tone (+- 5 Hz) left out; both in the passband.  A tone must stand ``threshold_db`` above the median of its
    search band in the long FFT; stations where it does not are refused (``missing="raise"``)
    or get NaN (``missing="nan"``).  Returns a Dataset (station) with ``reference_measured_hz``,
    ``tuning_error_hz``, ``ppm``, ``target_measured_hz`` (in the receiver's scale),
    ``target_hz`` (corrected), ``target_offset_hz`` and the tones' ``*_snr_db``."""
    if (search_hz is not None and search_hz <= 0) or target_search_hz <= 0:
        raise ConfigError("search_hz and target_search_hz must be positive")
    if "audio" not in ds.data_vars and "kind" not in ds.coords:
        raise AnalysisRefused("carrier_offset works on SSB/CW audio; this session has IQ stations only: measure "
                              "the carrier in their IQ (ds.sdr.psd())",
                              stations=[str(s) for s in ds["station"].values], reason="iq station")
    ids = [str(s) for s in (stations if stations is not None else ds["station"].values)]
    usable = _refuse_kinds(ds, ids)
    tsearch = target_search_hz
    rows: dict[str, list[float]] = {k: [] for k in (
        "reference_measured_hz", "tuning_error_hz", "ppm", "target_measured_hz", "target_hz", "target_offset_hz",
        "reference_snr_db", "target_snr_db", "dial_hz")}
    quiet: list[str] = []
    for sid in ids:
        segs = usable[sid]
        sign = OFFSET_MODES[segs[0].mode]
        if any(OFFSET_MODES[g.mode] != sign for g in segs):
            segs = [g for g in segs if OFFSET_MODES[g.mode] == sign]
        ref, ref_snr = _measure(segs, reference_hz, search_hz, sign)
        scale = reference_hz / ref if np.isfinite(ref) and ref_snr >= threshold_db else float("nan")
        tgt, tgt_snr = float("nan"), float("nan")
        if np.isfinite(scale):
            guard = (ref - 5.0, ref + 5.0)
            tgt, tgt_snr = _measure(segs, target_hz / scale, tsearch, sign, exclude_rf=guard)
        ok = np.isfinite(scale) and np.isfinite(tgt) and tgt_snr >= threshold_db
        if not ok:
            quiet.append(f"{sid} (reference {ref_snr:.1f} dB" + (f", target {tgt_snr:.1f} dB)" if np.isfinite(scale)
                                                                else ")"))
        rows["reference_measured_hz"].append(ref if np.isfinite(scale) else float("nan"))
        rows["tuning_error_hz"].append(ref - reference_hz if np.isfinite(scale) else float("nan"))
        rows["ppm"].append((scale - 1.0) * 1e6)
        rows["target_measured_hz"].append(tgt if ok else float("nan"))
        rows["target_hz"].append(tgt * scale if ok else float("nan"))
        rows["target_offset_hz"].append(tgt * scale - target_hz if ok else float("nan"))
        rows["reference_snr_db"].append(ref_snr)
        rows["target_snr_db"].append(tgt_snr)
        rows["dial_hz"].append(segs[0].dial)
    if quiet and missing == "raise":
        raise AnalysisRefused(
            f"no tone {threshold_db:g} dB above the noise near the expected frequency (the reference: "
            + ("anywhere in the passband" if search_hz is None else f"+-{search_hz:g} Hz")
            + f", the target: +-{tsearch:g} Hz) on: " + ", ".join(quiet)
            + "; check that both carriers are inside each station's passband, widen search_hz, or pass "
              "missing='nan'", stations=[q.split(" ")[0] for q in quiet], reason="no tone")
    attrs = {
        "tuning_error_hz": ("Hz", "apparent tuning error: reference measured - reference expected"),
        "ppm": ("ppm", "receiver frequency error from the reference (f_ref / f_ref_measured - 1)"),
        "reference_measured_hz": ("Hz", "reference carrier as the receiver shows it"),
        "target_measured_hz": ("Hz", "target carrier as the receiver shows it"),
        "target_hz": ("Hz", "target carrier frequency, measured against the reference"),
        "target_offset_hz": ("Hz", "target carrier minus its expected frequency, against the reference"),
        "reference_snr_db": ("dB", "reference tone peak over the median of its search band (long FFT)"),
        "target_snr_db": ("dB", "target tone peak over the median of its search band (long FFT)"),
        "dial_hz": ("Hz", "frequency the receiver was tuned to (first segment)"),
    }
    data = {k: ("station", np.array(v, np.float64), {"units": attrs[k][0], "long_name": attrs[k][1]})
            for k, v in rows.items()}
    out = xr.Dataset(data, coords={"station": ("station", np.array(ids, dtype=object))})
    out.attrs = {"title": "sdrlab carrier frequency offset against a reference (SSB/CW audio tones)",
                 "reference_hz": float(reference_hz), "target_expected_hz": float(target_hz),
                 "search_hz": float("nan") if search_hz is None else float(search_hz),
                 "target_search_hz": float(tsearch), "threshold_db": threshold_db,
                 "comment": "tones measured at the nominal audio rate (the SDR's own clock); the receiver's "
                            "LO and clock error cancel against the reference"}
    return out
