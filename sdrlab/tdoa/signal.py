"""What the signal carries, and the cross-correlation that follows from it (between steps 3 and 4).

On every station's complex baseband, resampled on the common clock:

1. **carrier**: the strongest spectral line of the stations' summed (each normalised) full-record
   spectra.  It is a carrier at a station where it stands at least ``CARRIER_MIN_SNR_DB`` above
   the spectral density around it in 1 Hz (enough to follow its phase in 0.1 s steps).  Its
   frequency is measured at each such station (full-record peak, refined by the slope of the
   line's phase) and each receiver's offset from the median is removed from its whole baseband:
   a transmitter has one carrier, so what differs is the receivers' tuning.
2. **coherence** of every station pair (Welch: Hann segments of about 1/12 s, half
   overlapping).  Where a pair's baseband is coherent beyond chance (false-alarm
   ``COHERENCE_ALPHA`` per bin) a common signal stands above the noise: in the passband a
   receiver filters to, between the lines of a tone-modulated signal, under a carrier's skirts.
   The session's band profile is the median over the pairs that are coherent at all (a deaf
   station does not hide the band the others share).
3. **method**: ``coherent`` when some band is coherent: generalised cross-correlation of the
   complex baseband, each station whitened by its own spectrum and the band weighted by the
   coherence ``gamma / (1 - gamma^2)`` (the maximum-likelihood, Hannan-Thomson weighting), with
   ``gamma^2`` capped at ``COHERENCE_CAP`` (20 dB per bin: timing jitter, filter mismatch and
   multipath limit how well any bin's phase holds) and the carrier line notched (a line holds a
   phase, not a delay; with its weight it would only add a flat pedestal).  A strong carrier or
   AM keying therefore cannot dominate the lag.  Otherwise ``envelope``: the AM envelope ``|z|``,
   which survives frequency offsets that no carrier allows to measure.

The choice and the reason are recorded in :class:`SignalAnalysis` (and in the result).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft

from .geodesy import FArray

log = logging.getLogger(__name__)

#: a line is a carrier at a station when it stands this far above the density around it, in 1 Hz
CARRIER_MIN_SNR_DB = 20.0
#: how far (Hz) a receiver's carrier may sit from the others' (a Kiwi off its GPS clock correction)
CARRIER_SEARCH_HZ = 10.0
#: the density around a line is the median over 10..50 Hz from it
_AROUND_HZ = (10.0, 50.0)
#: steps (s) in which the carrier's phase is followed to measure its frequency
CARRIER_STEP_S = 0.1
#: a receiver's carrier offset is removed only when the carrier's phase follows a straight line
#: to this rms (rad): a fading sky wave or a drifting oscillator makes it wander, and a line
#: fitted to that is not the receiver's tuning error
CARRIER_PHASE_RMS_MAX = 0.2
#: coherence bins are notched where the carrier line's window leakage holds this share of the power
LEAKAGE_SHARE_MAX = 0.1
#: false-alarm probability of one coherence bin
COHERENCE_ALPHA = 1e-3
#: largest squared coherence a bin's weight may use (a per-bin SNR of 20 dB)
COHERENCE_CAP = 0.99
#: bins that must be coherent beyond chance for the coherent method (one is expected by chance)
MIN_COHERENT_BINS = 4
#: coherence segments per second (resolution ~1/12 s -> ~12 Hz at 12 kHz)
_SEGMENTS_PER_S = 16.0
#: at most this many coherence segments, spread over the record (about two minutes at 12 kHz):
#: the estimate is as good as it needs to be well before, and memory stays bounded
MAX_SEGMENTS = 1500

CArray = npt.NDArray[np.complex64]
BArray = npt.NDArray[np.bool_]


@dataclass
class SignalAnalysis:
    """What the stations' signal carries and how it is correlated (module docstring).

    ``freqs``/``coherence``/``weight`` are on the coherence grid (baseband Hz from the tuned
    frequency, FFT order); ``psd`` (station, freq) each station's spectral density (FS^2/Hz)."""

    method: str
    reason: str
    signal: str
    carrier_hz: float | None = None
    carrier_share: dict[str, float] = field(default_factory=dict)
    carrier_snr_db: dict[str, float] = field(default_factory=dict)
    frequency_offsets_hz: dict[str, float] = field(default_factory=dict)
    band_hz: tuple[float, float] | None = None
    coherent_bandwidth_hz: float = 0.0
    notch_hz: float = 0.0
    segments: int = 0
    coherent_pairs: int = 0
    effective_fraction: float = 1.0
    freqs: FArray = field(default_factory=lambda: np.zeros(0))
    coherence: FArray = field(default_factory=lambda: np.zeros(0))
    weight: FArray = field(default_factory=lambda: np.zeros(0))
    psd: FArray = field(default_factory=lambda: np.zeros((0, 0)))
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float | None, nd: int = 4) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), nd)

        return {
            "method": self.method, "reason": self.reason, "signal": self.signal,
            "carrier_hz": num(self.carrier_hz, 4),
            "carrier_share": {k: num(v, 4) for k, v in self.carrier_share.items()},
            "carrier_snr_db": {k: num(v, 1) for k, v in self.carrier_snr_db.items()},
            "frequency_offsets_hz": {k: num(v, 6) for k, v in self.frequency_offsets_hz.items()},
            "band_hz": None if self.band_hz is None else [num(self.band_hz[0], 1), num(self.band_hz[1], 1)],
            "coherent_bandwidth_hz": num(self.coherent_bandwidth_hz, 1), "notch_hz": num(self.notch_hz, 2),
            "coherence_segments": self.segments, "coherent_pairs": self.coherent_pairs,
            "effective_fraction": num(self.effective_fraction, 5), "notes": list(self.notes),
        }


# ---- 1. carrier ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Line:
    freq_hz: float
    snr_db: float
    share: float


def find_carrier(z: CArray, valid: BArray, fs: float) -> tuple[float, list[_Line]]:
    """The strongest line of the summed normalised spectra and, per station, the line nearest
    it (within ``CARRIER_SEARCH_HZ``): its frequency, SNR in 1 Hz over the density around it
    and share of the station's power."""
    n = z.shape[1]
    nf = sfft.next_fast_len(n)
    df = fs / nf
    f = sfft.fftfreq(nf, 1.0 / fs)
    spectra = []
    total = np.zeros(nf)
    for r in range(z.shape[0]):
        p = np.abs(sfft.fft(np.where(valid[r], z[r], np.complex64(0)), nf)).astype(np.float64) ** 2
        spectra.append(p)
        s = float(p.sum())
        if s > 0:
            total += p / s
    k0 = int(np.argmax(total))
    search = max(1, int(CARRIER_SEARCH_HZ / df))
    lines = []
    for p in spectra:
        idx = (k0 + np.arange(-search, search + 1)) % nf
        kr = int(idx[np.argmax(p[idx])])
        line = float(p[(kr + np.arange(-2, 3)) % nf].sum())
        d = np.abs((f - f[kr] + fs / 2) % fs - fs / 2)
        around = p[(d > _AROUND_HZ[0]) & (d < _AROUND_HZ[1])]
        dens = float(np.median(around)) / df if around.size else 0.0
        snr = 10 * math.log10(line / dens) if dens > 0 and line > 0 else (math.inf if line > 0 else -math.inf)
        tot = float(p.sum())
        lines.append(_Line(float(f[kr]), snr, line / tot if tot > 0 else 0.0))
    return float(f[k0]), lines


def carrier_frequency(z: CArray, valid: BArray, fs: float, f0: float) -> tuple[float, float]:
    """A station's carrier frequency (Hz) and how straight its phase runs (rms rad about the
    line): ``f0`` refined by the weighted slope of the line's phase over ``CARRIER_STEP_S`` steps.
    Only steps where the line holds at least a tenth of its usual power count (a keyed carrier's
    key-up steps, gaps), weighted by that power."""
    step = max(1, round(CARRIER_STEP_S * fs))
    m = z.size // step
    if m < 3:
        return f0, math.inf
    y = np.where(valid[: m * step], z[: m * step], np.complex64(0)).reshape(m, step)
    ramp = np.exp(-2j * np.pi * f0 * np.arange(step) / fs)
    c = (y @ ramp.astype(np.complex64)).astype(np.complex128) * np.exp(-2j * np.pi * f0 * np.arange(m) * step / fs)
    w = np.abs(c) ** 2
    keep = w >= 0.1 * float(np.percentile(w, 95))
    if keep.sum() < 3 or not np.any(w > 0):
        return f0, math.inf
    t = (np.arange(m)[keep] + 0.5) * step / fs
    ph = np.unwrap(np.angle(c[keep]))
    coef = np.polyfit(t, ph, 1, w=np.sqrt(w[keep]))
    rms = math.sqrt(float(np.average((ph - np.polyval(coef, t)) ** 2, weights=w[keep])))
    return f0 + float(coef[0]) / (2 * math.pi), rms


def phasor(freq_hz: float, n: int, fs: float) -> npt.NDArray[np.complex64]:
    """``exp(2j pi freq k / fs)`` for k = 0..n-1 (complex64, phases computed in double
    precision block by block)."""
    block = 4096
    nb = -(-n // block)
    inner = np.exp(2j * np.pi * freq_hz * np.arange(block) / fs)
    outer = np.exp(2j * np.pi * freq_hz * np.arange(nb) * block / fs)
    return np.asarray((outer[:, None] * inner[None, :]).reshape(-1)[:n], dtype=np.complex64)


def _power(z: CArray, valid: BArray) -> float:
    return float(np.mean(np.abs(z[valid]).astype(np.float64) ** 2)) if valid.any() else 0.0


def _leakage(f: FArray, fc: float, p_line: float, fs: float, nseg: int) -> FArray:
    """Spectral density (FS^2/Hz) a line of power ``p_line`` at ``fc`` puts in each bin of a
    Hann-windowed ``nseg``-point spectrum (the window's transfer function sinc(x) / (1 - x^2))."""
    x = ((f - fc + fs / 2) % fs - fs / 2) / (fs / nseg)
    near = np.abs(1.0 - x * x) < 1e-9
    d = np.where(near, 0.5, np.sinc(x) / np.where(near, 1.0, 1.0 - x * x))
    out: FArray = p_line * (2.0 * nseg / 3.0) * d * d / fs
    return out


# ---- 2. coherence ----------------------------------------------------------------------------
def segment_length(fs: float) -> int:
    """Coherence segment (samples): the power of two nearest ``fs / 16`` from above (1024 at
    12 kHz, 2048 at 20.25 kHz)."""
    return 1 << max(4, math.ceil(math.log2(fs / _SEGMENTS_PER_S)))


def _segment_spectra(z: CArray, valid: BArray, nseg: int) -> tuple[npt.NDArray[np.complex64], BArray]:
    """Hann-windowed spectra of half-overlapping segments (station, segment, bin) and which
    segments are fully valid (station, segment)."""
    n = z.shape[1]
    step = nseg // 2
    starts = np.arange(0, max(n - nseg + 1, 0), step)
    if starts.size > MAX_SEGMENTS:
        starts = starts[np.linspace(0, starts.size - 1, MAX_SEGMENTS).round().astype(np.intp)]
    win = np.hanning(nseg + 1)[:-1].astype(np.float32)
    spec = np.zeros((z.shape[0], starts.size, nseg), dtype=np.complex64)
    ok = np.zeros((z.shape[0], starts.size), dtype=bool)
    idx = starts[:, None] + np.arange(nseg)[None, :]
    for r in range(z.shape[0]):
        bad = np.concatenate([[0], np.cumsum(~valid[r])])
        ok[r] = bad[starts + nseg] - bad[starts] == 0
        if ok[r].any():
            spec[r, ok[r]] = sfft.fft(z[r][idx[ok[r]]] * win, axis=1)
    return spec, ok


def _pair_coherence(spec: npt.NDArray[np.complex64], ok: BArray, pairs: Sequence[tuple[int, int]]
                    ) -> tuple[FArray, npt.NDArray[np.int64]]:
    """Squared coherence (pair, bin) and the number of segments each pair shares."""
    out = np.full((len(pairs), spec.shape[2]), np.nan)
    counts = np.zeros(len(pairs), dtype=np.int64)
    power = np.abs(spec) ** 2  # (station, segment, bin), float32
    total = [power[r, ok[r]].sum(axis=0, dtype=np.float64) for r in range(spec.shape[0])]
    for p, (a, b) in enumerate(pairs):
        m = ok[a] & ok[b]
        counts[p] = int(m.sum())
        if counts[p] < 8:
            continue
        xa, xb = spec[a, m], spec[b, m]
        sab = np.einsum("sf,sf->f", np.conj(xa), xb).astype(np.complex128)
        paa = total[a] if m.sum() == ok[a].sum() else power[a, m].sum(axis=0, dtype=np.float64)
        pbb = total[b] if m.sum() == ok[b].sum() else power[b, m].sum(axis=0, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[p] = np.where((paa > 0) & (pbb > 0), np.abs(sab) ** 2 / (paa * pbb), 0.0)
    return out, counts


def coherence_threshold(segments: float, alpha: float = COHERENCE_ALPHA) -> float:
    """Squared coherence that ``segments`` independent segments exceed with probability
    ``alpha`` when the two series are independent: 1 - alpha^(1 / (K - 1))."""
    return float(1.0 - alpha ** (1.0 / max(segments - 1.0, 1.0)))


# ---- 3. analysis and whitening -----------------------------------------------------------------
def analyse(
    ids: Sequence[str], z: CArray, valid: BArray, fs: float, *, method: str = "auto",
    band_hz: tuple[float, float] | None = None,
) -> SignalAnalysis:
    """Characterise the signal, remove the receivers' relative carrier offsets from ``z`` (in
    place) and choose the method (module docstring).  ``method`` is ``auto``, ``coherent`` or
    ``envelope``; ``band_hz`` restricts the coherent band (baseband Hz from the tuned frequency)."""
    n_st = len(ids)
    notes: list[str] = []
    f0, lines = find_carrier(z, valid, fs)
    found = [r for r, ln in enumerate(lines) if ln.snr_db >= CARRIER_MIN_SNR_DB]
    carrier: float | None = None
    offsets: dict[str, float] = {}
    if len(found) >= 2 and len(found) * 2 >= n_st:
        tracks = {r: carrier_frequency(z[r], valid[r], fs, lines[r].freq_hz) for r in found}
        straight = {r: fr for r, (fr, rms) in tracks.items() if rms <= CARRIER_PHASE_RMS_MAX}
        carrier = float(np.median([fr for fr, _ in tracks.values()]))
        if len(straight) >= 2:
            ref = float(np.median(list(straight.values())))
            carrier = ref
            for r, fr in straight.items():
                offsets[ids[r]] = fr - ref
                if fr != ref:
                    z[r] *= phasor(ref - fr, z.shape[1], fs)
        wander = [f"{ids[r]} ({rms:.2f} rad)" for r, (_, rms) in tracks.items() if r not in straight]
        if wander:
            notes.append(f"the carrier's phase wanders at {', '.join(wander)} rms (fading, a sky wave): "
                         "frequency offset not removed there")
        missed = [ids[r] for r in range(n_st) if r not in tracks]
        if missed:
            notes.append(f"no carrier line at {', '.join(missed)} (frequency offset not measured)")
    shares = {ids[r]: lines[r].share for r in range(n_st)} if carrier is not None else {}
    snrs = {ids[r]: lines[r].snr_db for r in range(n_st)} if carrier is not None else {}
    share = float(np.median(list(shares.values()))) if shares else 0.0
    kind = ("no carrier" if carrier is None else "carrier-dominated" if share >= 0.5
            else "carrier and modulation")
    nseg = segment_length(fs)
    spec, ok = _segment_spectra(z, valid, nseg)
    f = sfft.fftfreq(nseg, 1.0 / fs)
    win2 = float(np.sum(np.hanning(nseg + 1)[:-1] ** 2))
    psd = np.array([(np.abs(spec[r, ok[r]]).astype(np.float64) ** 2).mean(axis=0) / (fs * win2) if ok[r].any()
                    else np.zeros(nseg) for r in range(n_st)])
    pairs = [(a, b) for a in range(n_st) for b in range(a + 1, n_st)]
    g2, counts = _pair_coherence(spec, ok, pairs)
    allowed = np.ones(nseg, dtype=bool)
    if band_hz is not None:
        allowed &= (f >= band_hz[0]) & (f <= band_hz[1])
    notch = 0.0
    if carrier is not None:
        off = np.abs((f - carrier + fs / 2) % fs - fs / 2)
        leak = np.median([_leakage(f, carrier, lines[r].share * _power(z[r], valid[r]), fs, nseg) /
                          np.maximum(psd[r], 1e-300) for r in found], axis=0)
        cut = (off <= 2.0 * fs / nseg) | (leak >= LEAKAGE_SHARE_MAX)  # at least the Hann main lobe
        notch = float(off[cut].max())
        allowed &= off > notch
    k_eff = 0.9 * counts.astype(np.float64)  # Hann, half overlap: ~0.9 independent segment each
    thr = np.array([coherence_threshold(k) for k in k_eff])
    sig_pairs = [p for p in range(len(pairs)) if counts[p] >= 8 and
                 int(np.count_nonzero((g2[p] > thr[p]) & allowed)) >= MIN_COHERENT_BINS]
    analysis = SignalAnalysis("envelope", "", kind, carrier, shares, snrs, offsets, notch_hz=notch,
                              segments=int(np.median(counts)) if counts.size else 0, coherent_pairs=len(sig_pairs),
                              freqs=f, psd=psd, notes=notes)
    if sig_pairs:
        prof = np.median(g2[sig_pairs], axis=0)
        k_med = float(np.median(k_eff[sig_pairs]))
        sig = (prof > coherence_threshold(k_med)) & allowed
        gc = np.clip((prof - 1.0 / k_med) / (1.0 - 1.0 / k_med), 0.0, COHERENCE_CAP)
        weight = np.where(sig, np.sqrt(gc) / (1.0 - gc), 0.0)
        analysis.coherence = prof
    else:
        sig = np.zeros(nseg, dtype=bool)
        weight = np.zeros(nseg)
    offs = max((abs(v) for v in offsets.values()), default=0.0)
    car_txt = (f"carrier at {carrier:+.2f} Hz ({share * 100:.0f} % of the power; receivers' relative offsets up "
               f"to {offs * 1e3:.2g} mHz removed, line notched +-{notch:.0f} Hz)" if carrier is not None
               else "no carrier line")
    if method == "envelope":
        analysis.reason = f"envelope requested ({car_txt})"
    elif sig.sum() >= MIN_COHERENT_BINS:
        analysis.method = "coherent"
        lo, hi = _weight_span(f, weight)
        analysis.reason = (f"{kind}: {car_txt}; baseband coherent beyond chance in {int(sig.sum())} bins of "
                           f"{fs / nseg:.1f} Hz (99 % of the weight within {lo:+.0f}..{hi:+.0f} Hz) in "
                           f"{len(sig_pairs)} of {len(pairs)} pairs: complex correlation, each station whitened, "
                           "the band weighted by its coherence")
    elif method == "coherent":
        analysis.method = "coherent"
        sig = allowed.copy()
        weight = sig.astype(np.float64)
        analysis.reason = f"coherent requested, but no band is coherent beyond chance: flat weights ({car_txt})"
    else:
        analysis.reason = (f"{kind}: {car_txt}; no band where the stations' baseband is coherent beyond chance "
                           "(no common signal above the noise, or frequency offsets no carrier allows to measure): "
                           "AM envelope")
    if analysis.method == "coherent" and sig.any():
        analysis.weight = weight
        analysis.band_hz = _weight_span(f, weight)
        analysis.coherent_bandwidth_hz = float(sig.sum()) * fs / nseg
        s1, s2 = float(weight.sum()), float((weight**2).sum())
        analysis.effective_fraction = s1 * s1 / (nseg * s2) if s2 > 0 else 1.0
    log.info("tdoa signal: %s -> %s", analysis.reason, analysis.method)
    return analysis


def _weight_span(f: FArray, weight: FArray) -> tuple[float, float]:
    """The band (Hz) holding the central 99 % of the weight."""
    order = np.argsort(f)
    cw = np.cumsum(weight[order])
    if cw[-1] <= 0:
        return 0.0, 0.0
    lo = int(np.searchsorted(cw, 0.005 * cw[-1]))
    hi = int(np.searchsorted(cw, 0.995 * cw[-1]))
    return float(f[order][lo]), float(f[order][min(hi, f.size - 1)])


def whiten(z: CArray, valid: BArray, analysis: SignalAnalysis) -> tuple[CArray, BArray]:
    """Each station's baseband filtered by ``sqrt(weight / psd)`` (zero-phase FIR as long as a
    coherence segment, Hann-tapered), and what stays valid: samples whose filter support
    reaches an invalid one or the record's ends are not."""
    from scipy.signal import fftconvolve

    nseg = analysis.freqs.size
    half = nseg // 2 - 1
    taper = np.hanning(2 * half + 3)[1:-1]
    n = z.shape[1]
    out = np.zeros_like(z)
    ok = np.zeros_like(valid)
    for r in range(z.shape[0]):
        p = analysis.psd[r]
        w = np.sqrt(np.where(p > 0, analysis.weight / np.where(p > 0, p, 1.0), 0.0))
        hc = sfft.ifft(w)
        h = (np.concatenate([hc[-half:], hc[: half + 1]]) * taper).astype(np.complex64)
        out[r] = fftconvolve(np.where(valid[r], z[r], np.complex64(0)), h, mode="full")[half : half + n]
        # the record's ends count as invalid too: the filter's start-up is not the signal
        bad = np.concatenate([[0], np.cumsum(~valid[r])])
        k = np.arange(n)
        lo = np.clip(k - half, 0, n)
        hi = np.clip(k + half + 1, 0, n)
        ok[r] = (bad[hi] - bad[lo] == 0) & (k >= half) & (k < n - half)
    return out, ok
