"""The simulator's known scene: transmitters, receivers, propagation and noise.

The scene is the ground truth tests measure against.  Everything a receiver outputs is a pure
function of the scene, the stream's GPS start time, the client's settings and a seed.

* Each transmitter sends a signal model of :mod:`sdrlab.sim.signals` (``modulation``: CW, AM by a
  comb of tones, AM broadcast with speech or music, a DCF77-like time signal, Morse, SSB voice, OFDM
  as in DRM), a complex envelope ``s(t)`` exact at any instant, scaled so that its mean power is the
  transmitter's power.
* Propagation: the ground wave arrives after the WGS84 geodesic distance / c, attenuated by
  free-space path loss; optionally (``sky_wave``) a one-hop ionospheric path as well, longer by the
  reflection geometry (about 1 ms at a few hundred km), with its own Doppler shift and Rayleigh
  fading.
* Each receiver (:class:`SimReceiver`) samples the antenna at its real, non-nominal rate, adds seeded
  complex Gaussian noise of a known density and runs the KiwiSDR receive chain of
  :mod:`sdrlab.sim.frontend`: the passband FIR the client asked for, the S-meter, AGC or manual
  gain, int16 output, ADC overflow.  Its samples lag their GPS stamps by its processing delay, and
  the stamps jitter (both truth, invisible to the client).

Received baseband at receiver r tuned to ``f_tune``, for the sample the receiver stamps ``T``
(true sampling time ``tau = T - processing_delay``), before the receive chain, summed over paths p
with delay ``d_p``: ``a_p g_p(tau) s(tau - d_p) exp(j(2 pi (f_tx + f_D,p - f_tune) tau - 2 pi f_tx d_p
+ phi))`` (``g_p`` the fading of a sky path, 1 for the ground wave).  Levels: amplitude 1 is 0 dBFS
at the reference manual gain (``manGain=50``); ``full_scale_dbm`` is the antenna power in dBm that
maps to 0 dBFS.
"""

from __future__ import annotations

import functools
import inspect
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from geographiclib.geodesic import Geodesic
from scipy import fft as sp_fft
from scipy.signal import oaconvolve

from ..receivers.kiwiwire import SAMPLES_PER_FRAME
from . import frontend as fe
from .frontend import AgcSettings
from .signals import SIGNALS, Fading, Signal, make_signal
from ..constants import C_M_S as C_M_S, FULL_SCALE as FULL_SCALE, NS as NS

EARTH_RADIUS_M = 6_371_000.0
#: frames synthesised at once by a FrameSource (one FFT filter pass, one noise draw)
CHUNK_FRAMES = 8
CHUNK = CHUNK_FRAMES * SAMPLES_PER_FRAME
#: modulation names kept from the first scene model
_ALIASES = {"am": "am-tones"}


def geodesic_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance on the WGS84 ellipsoid (Karney's algorithm)."""
    return float(Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"])


def fspl_db(distance_m: float, frequency_hz: float) -> float:
    """Free-space path loss in dB."""
    d = max(distance_m, 1.0)
    return 20.0 * math.log10(4.0 * math.pi * d * frequency_hz / C_M_S)


def sky_path_m(ground_m: float, height_m: float) -> float:
    """Length of a one-hop ionospheric path over a spherical Earth, reflected at ``height_m`` midway."""
    theta = ground_m / EARTH_RADIUS_M
    r, rh = EARTH_RADIUS_M, EARTH_RADIUS_M + height_m
    return 2.0 * math.sqrt(r * r + rh * rh - 2.0 * r * rh * math.cos(theta / 2.0))


@dataclass(frozen=True)
class SkyWave:
    """An HF one-hop sky wave beside the ground wave: ``relative_db`` its mean power against the
    ground wave, reflected at a virtual height ``height_km``, shifted by ``doppler_hz`` and faded
    (Rayleigh, Doppler spread ``fading_spread_hz``)."""

    relative_db: float = -6.0
    height_km: float = 250.0
    doppler_hz: float = 0.1
    fading_spread_hz: float = 0.2


@dataclass(frozen=True)
class Transmitter:
    id: str
    latitude: float
    longitude: float
    frequency_hz: float
    power_dbm: float = 40.0
    #: a model of :mod:`sdrlab.sim.signals` by name: ``cw``, ``am`` (a comb of tones, the first
    #: model), ``am-broadcast``, ``dcf77``, ``morse``, ``ssb``, ``ofdm``
    modulation: str = "am"
    #: RMS modulation depth of AM models (the message has unit RMS)
    mod_index: float = 0.3
    n_tones: int = 24
    tone_band_hz: tuple[float, float] = (150.0, 2800.0)
    phase_rad: float = 0.0
    #: further parameters of the signal model, e.g. ``(("program", "music"),)``
    params: tuple[tuple[str, Any], ...] = ()
    sky_wave: SkyWave | None = None


@functools.lru_cache(maxsize=256)
def waveform(tx: Transmitter, scene_seed: int) -> Signal:
    """The signal model a transmitter sends (one function of time, the same at every receiver)."""
    name = _ALIASES.get(tx.modulation, tx.modulation)
    kw: dict[str, Any] = dict(tx.params)
    if name == "am-tones":
        kw.setdefault("mod_index", tx.mod_index)
        kw.setdefault("n_tones", tx.n_tones)
        kw.setdefault("band_hz", tx.tone_band_hz)
    elif name == "am-broadcast":
        kw.setdefault("mod_index", tx.mod_index)
    if name in SIGNALS and "seed" in inspect.signature(SIGNALS[name]).parameters:
        kw.setdefault("seed", (scene_seed * 1_000_003 + zlib.crc32(tx.id.encode())) & 0x7FFFFFFF)
    return make_signal(name, **kw)


@dataclass(frozen=True)
class Faults:
    """Faults a simulated receiver injects on demand (reference section 16).

    Counters (``busy``, ``close_times``, ``stall_times``) count connections to this receiver: the
    first N connections get the fault, later ones are served normally; -1 means always.

    How the simulator (:mod:`sdrlab.sim.server`) applies them:

    * ``busy``: ``MSG too_busy=<rx_chans>`` then close, for the first ``busy`` SND connections
      (counted among connections that reach channel allocation).
    * ``redirect_to_port``: every SND connection gets ``MSG redirect=<urlenc http://127.0.0.1:PORT>``
      and is closed.  ``http_redirect_to_port``: the WebSocket upgrade of SND and W/F paths is
      answered with HTTP 307 and ``Location: http://127.0.0.1:PORT<same path>``.
    * ``badp`` (1...7, 0 = off): the auth reply carries ``badp=<code>``, then the socket closes.
    * ``down``: ``MSG reason_disabled=<urlenc text> down=0`` then close, on SND and W/F.
    * Durations below are **stream seconds**: time measured by the stream's own sample clock,
      ``512*k/sample_rate`` at frame k, counted from the start of streaming (CMD_ALL).  At server
      speed s they pass s times faster than wall seconds.

      - ``close_after_s``: the first ``close_times`` streams are dropped abruptly (TCP abort, no
        close frame) at that stream time;
      - ``stall_after_s``: the first ``stall_times`` streams stop sending frames at that stream
        time; the socket stays open and commands are still read (watchdogs still apply);
      - ``inactivity_after_s``: that long without a change of frequency or mode ->
        ``MSG inactivity_timeout=<ceil(s/60) mins>`` and close;
      - ``ip_limit_after_s``: 0 -> ``MSG ip_limit=<mins>,<ip>`` at auth (before any other reply)
        and close; > 0 -> the same message and close after that long streaming;
      - ``garbage_after_s``: from then on, instead of frames, malformed output alternates between
        SND frames of the wrong length and random bytes under an unknown tag.

      A time-limit exemption (``SET auth ... ipl=`` matching ``SimReceiver.tlimit_password``)
      exempts from ``inactivity_after_s`` and ``ip_limit_after_s``, as on the real server.
    * ``seq_gap_every=N``: every frame whose seq is a multiple of N is generated but not sent.
    * ``gps``: ``"disabled"`` zeroes last_gps_solution, gpssec and gpsnsec in every frame;
      ``"no_fix"`` sends last_gps_solution 255 (after the first frame, which is all zero).
    * ``legacy_msgs``: no ``sample_rate`` before auth; after auth one combined
      ``MSG audio_init=0 audio_rate=<n> sample_rate=<real, %.3f>``.
    """

    busy: int = 0
    redirect_to_port: int | None = None
    http_redirect_to_port: int | None = None
    badp: int = 0
    down: bool = False
    inactivity_after_s: float | None = None
    ip_limit_after_s: float | None = None
    close_after_s: float | None = None
    close_times: int = 1
    stall_after_s: float | None = None
    stall_times: int = 1
    seq_gap_every: int | None = None
    gps: Literal["ok", "disabled", "no_fix"] = "ok"
    legacy_msgs: bool = False
    #: send ``sample_rate`` only after the client's ``SET AR OK`` (the order of kiwiclient's test
    #: server and of some older firmware) instead of right at connect
    sample_rate_after_ar: bool = False
    garbage_after_s: float | None = None


@dataclass(frozen=True)
class SimReceiver:
    id: str
    name: str
    latitude: float
    longitude: float
    altitude_m: float = 0.0
    #: the real (GPS-corrected) sample rate; the nominal rate is ``audio_rate``
    sample_rate: float = 12001.188
    audio_rate: int = 12000
    #: the rate the receiver *announces* (``MSG sample_rate``) differs from the true one by this
    #: much, as a real Kiwi's running clock estimate does; only the GPS fit finds the true rate
    announced_rate_error_ppm: float = 0.0
    rx_chans: int = 4
    #: total noise power per complex sample, dBFS, over the full sample bandwidth before the
    #: passband filter (density ``noise_dbfs - 10 log10(sample_rate)`` dBFS/Hz)
    noise_dbfs: float = -75.0
    password: str = ""
    #: the admin's time-limit exemption password (``tlimit_exempt_pwd``): a client whose
    #: ``SET auth ... ipl=`` matches it (case-insensitively) is exempt from the inactivity and
    #: per-IP time limits; empty means no exemption password is configured
    tlimit_password: str = ""
    #: seconds between GPS fixes (last_gps_solution resets to 0)
    gps_fix_interval_s: float = 4.0
    #: how much later than their GPS stamps the receiver's samples hold the antenna signal: the
    #: part of its processing delay the server does not compensate (truth; tens of microseconds
    #: between real Kiwis)
    processing_delay_s: float = 0.0
    #: standard deviation of the GPS stamp error, seconds (truth): one draw per GPS fix interval,
    #: as the receiver's clock model changes at each fix (real Kiwis: ~0.1 us RMS about a line)
    gps_jitter_s: float = 0.0
    #: peak antenna power (dBm) above which the ADC clips and frames carry the overflow flag
    adc_clip_dbm: float = 0.0
    version: tuple[int, int] = (1, 711)
    antenna: str = "simulated active loop"
    faults: Faults = field(default_factory=Faults)
    #: ``kiwisdr``, or ``ubersdr``: a server posing as a KiwiSDR (UberSDR's KiwiSDR emulation,
    #: :mod:`sdrlab.sim.uber`): no GPS clock, IQ frames without the GPS block, sample rate
    #: announced as the nominal integer
    kind: Literal["kiwisdr", "ubersdr"] = "kiwisdr"

    @property
    def announced_sample_rate(self) -> float:
        return self.sample_rate * (1.0 + self.announced_rate_error_ppm * 1e-6)

    @property
    def wide(self) -> bool:
        return self.audio_rate == 20250


@dataclass(frozen=True)
class Path:
    """One way a transmitter's signal reaches a receiver."""

    kind: Literal["ground", "sky"]
    delay_s: float
    amplitude: float
    doppler_hz: float = 0.0
    fading_spread_hz: float = 0.0


@dataclass(frozen=True)
class Scene:
    transmitters: tuple[Transmitter, ...]
    receivers: tuple[SimReceiver, ...]
    seed: int = 0
    #: power in dBm that maps to 0 dBFS (the receivers' calibration at manGain 50)
    full_scale_dbm: float = -10.0
    name: str = "custom"

    # ---- lookups -----------------------------------------------------------------------------
    def receiver(self, receiver_id: str) -> SimReceiver:
        for rx in self.receivers:
            if rx.id == receiver_id:
                return rx
        raise KeyError(receiver_id)

    def index_of(self, receiver_id: str) -> int:
        return [rx.id for rx in self.receivers].index(receiver_id)

    def with_faults(self, **faults_by_receiver: Faults) -> Scene:
        """A copy of the scene with the given receivers' faults replaced (keys are receiver ids
        with ``-`` written as ``_``)."""
        wanted = {k.replace("_", "-"): v for k, v in faults_by_receiver.items()}
        rxs = tuple(replace(rx, faults=wanted.get(rx.id, rx.faults)) for rx in self.receivers)
        return replace(self, receivers=rxs)

    def replace_receiver(self, receiver_id: str, **changes: object) -> Scene:
        rxs = tuple(
            replace(rx, **changes) if rx.id == receiver_id else rx  # type: ignore[arg-type]
            for rx in self.receivers
        )
        return replace(self, receivers=rxs)

    def signal(self, tx: Transmitter) -> Signal:
        """The transmitter's signal model in this scene (seeded by the scene's seed)."""
        return waveform(tx, self.seed)

    # ---- propagation truth -------------------------------------------------------------------
    def distance_m(self, rx: SimReceiver, tx: Transmitter) -> float:
        return geodesic_distance_m(rx.latitude, rx.longitude, tx.latitude, tx.longitude)

    def delay_s(self, rx: SimReceiver, tx: Transmitter) -> float:
        """Propagation delay of the ground wave (the first arrival)."""
        return self.distance_m(rx, tx) / C_M_S

    def arrival_s(self, rx: SimReceiver, tx: Transmitter) -> float:
        """When the ground wave appears to arrive on the receiver's GPS time base: propagation
        delay plus the receiver's processing delay (what TDoA measures)."""
        return self.delay_s(rx, tx) + rx.processing_delay_s

    def carrier_amplitude(self, rx: SimReceiver, tx: Transmitter) -> float:
        """Ground-wave amplitude (full scale = 1) at the receiver from free-space path loss.  The
        transmitter's power is its signal's mean power, so for AM models this is the carrier."""
        p_dbm = tx.power_dbm - fspl_db(self.distance_m(rx, tx), tx.frequency_hz)
        total_dbfs = p_dbm - self.full_scale_dbm
        return math.sqrt(10.0 ** (total_dbfs / 10.0) / self.signal(tx).mean_power)

    def paths(self, rx: SimReceiver, tx: Transmitter) -> list[Path]:
        ground = self.distance_m(rx, tx)
        amp = self.carrier_amplitude(rx, tx)
        out = [Path("ground", ground / C_M_S, amp)]
        sw = tx.sky_wave
        if sw is not None:
            out.append(Path("sky", sky_path_m(ground, sw.height_km * 1e3) / C_M_S,
                            amp * 10.0 ** (sw.relative_db / 20.0), sw.doppler_hz, sw.fading_spread_hz))
        return out

    def in_passband(self, tx: Transmitter, tuned_hz: float, rx: SimReceiver, low: float, high: float) -> bool:
        """Whether any of the transmitter's band reaches the passband (skirt included)."""
        off = tx.frequency_hz - tuned_hz
        b0, b1 = self.signal(tx).band_hz
        half = rx.sample_rate / 2.0
        margin = 4.0 * rx.sample_rate / fe.KIWI_FIR_TAPS
        lo, hi = max(low - margin, -half), min(high + margin, half)
        return off + b1 >= lo and off + b0 <= hi and -half < off < half

    def truth(self, receiver_id: str, tuned_hz: float, low_cut: float = -5000.0,
              high_cut: float = 5000.0) -> dict[str, float]:
        """What a perfect measurement at this receiver, tuned to ``tuned_hz`` with passband
        ``low_cut .. high_cut`` and the reference gain, would find for the first transmitter.

        ``signal_power_dbfs``: the signal as the receiver delivers it (after its passband filter,
        the sky wave's mean power included); ``noise_density_dbfs_hz``: the noise density inside
        the passband; ``snr_db``: S / (N0 B) with B the passband width (``noise_bandwidth_hz``);
        ``cn0_dbhz``: S / N0; ``arrival_s``: the ground wave's propagation delay plus the
        receiver's processing delay."""
        rx = self.receiver(receiver_id)
        tx = self.transmitters[0]
        fs = rx.sample_rate
        lo, hi = max(low_cut, -fs / 2 + 1.0), min(high_cut, fs / 2 - 1.0)
        paths = self.paths(rx, tx)
        off = tx.frequency_hz - tuned_hz
        sigm = self.signal(tx)
        frac = passband_fraction(sigm, off, lo, hi, fs)
        sig = sum(p.amplitude**2 for p in paths) * sigm.mean_power * frac
        carrier = paths[0].amplitude ** 2 * float(fe.passband_response(_taps(lo, hi, fs), fs, [off])[0])
        n0 = 10.0 ** (rx.noise_dbfs / 10.0) / fs
        bw = hi - lo
        return {
            "distance_m": self.distance_m(rx, tx),
            "delay_s": self.delay_s(rx, tx),
            "arrival_s": self.arrival_s(rx, tx),
            "processing_delay_s": rx.processing_delay_s,
            "frequency_offset_hz": off,
            "carrier_power_dbfs": _db(carrier),
            "signal_power_dbfs": _db(sig),
            "noise_power_dbfs": _db(n0 * bw),
            "noise_density_dbfs_hz": _db(n0),
            "noise_bandwidth_hz": bw,
            "passband_low_hz": lo,
            "passband_high_hz": hi,
            "snr_db": _db(sig / (n0 * bw)),
            "cn0_dbhz": _db(sig / n0),
            "sample_rate": fs,
        }

    # ---- signal synthesis --------------------------------------------------------------------
    def stream(
        self,
        receiver_id: str,
        *,
        tuned_hz: float,
        t0_gps_ns: int,
        t_ref_gps_ns: int,
        low_cut: float = -5000.0,
        high_cut: float = 5000.0,
        stream_seed: int = 0,
        loop_frames: int | None = None,
        agc: AgcSettings = AgcSettings(),
    ) -> FrameSource:
        """The frames a receiver produces for a stream whose frame 0 is stamped ``t0_gps_ns``.

        ``t_ref_gps_ns`` is the scene's common time origin: every stream of one simulator shares
        it, so the transmitted signal is the same function of absolute time at every receiver.
        """
        rx = self.receiver(receiver_id)
        idx = self.index_of(receiver_id)
        return FrameSource(self, rx, idx, tuned_hz, t0_gps_ns, t_ref_gps_ns, low_cut, high_cut, stream_seed,
                           loop_frames, agc)


def _db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 else -math.inf


@functools.lru_cache(maxsize=4096)
def _fix_error(seed: int, rx_index: int, fix: int) -> float:
    """The standard-normal draw behind a receiver's stamp error during one GPS fix: one per fix,
    shared by every frame and stream of the receiver, so it is drawn once (a generator per frame
    cost more than the rest of the frame's header)."""
    return float(np.random.default_rng([seed, rx_index, fix, 2]).normal())


@functools.lru_cache(maxsize=256)
def _taps(low: float, high: float, fs: float) -> npt.NDArray[np.complex128]:
    return fe.passband_taps(low, high, fs)


@functools.lru_cache(maxsize=256)
def _taps_fft(low: float, high: float, fs: float) -> npt.NDArray[np.complex128]:
    """FFT of the passband taps at the length the chunked filter uses."""
    h = _taps(low, high, fs)
    n = sp_fft.next_fast_len(CHUNK + 2 * h.size - 2)
    out: npt.NDArray[np.complex128] = sp_fft.fft(h, n)
    return out


@functools.lru_cache(maxsize=256)
def passband_fraction(sig: Signal, offset_hz: float, low: float, high: float, fs: float,
                      seconds: float = 8.0) -> float:
    """Share of a signal's mean power that passes the receiver's passband filter when it sits
    ``offset_hz`` from the tuned frequency (measured on ``seconds`` of the noise-free signal)."""
    n = int(seconds * fs)
    z = sig.sample(0.0, 1.0 / fs, n) * np.exp(2j * math.pi * offset_hz * np.arange(n) / fs)
    h = _taps(low, high, fs)
    y = oaconvolve(z, h, mode="valid")
    half = (h.size - 1) // 2
    zz = z[half : half + y.size]
    return float(np.mean(np.abs(y) ** 2) / max(float(np.mean(np.abs(zz) ** 2)), 1e-300))


class FrameSource:
    """Consecutive 512-sample int16 frames of one receiver's stream (frame k covers samples
    512k ... 512k+511), through the receive chain of :mod:`sdrlab.sim.frontend`.

    :meth:`frame` returns the samples and sets ``overflow`` (ADC flag), ``smeter`` (the S-meter
    field) and ``clipped`` (int16 clips); :meth:`header` gives the GPS block.  Without AGC any frame
    can be produced in any order; with AGC the gain is a recursion over the samples, so frames
    are produced in order (asking for an earlier frame replays the stream from its start).
    """

    def __init__(
        self,
        scene: Scene,
        rx: SimReceiver,
        rx_index: int,
        tuned_hz: float,
        t0_gps_ns: int,
        t_ref_gps_ns: int,
        low_cut: float,
        high_cut: float,
        stream_seed: int,
        loop_frames: int | None,
        agc: AgcSettings = AgcSettings(),
    ) -> None:
        self.scene = scene
        self.rx = rx
        self.rx_index = rx_index
        self.fs = fs = rx.sample_rate
        self.frame_s = SAMPLES_PER_FRAME / fs
        self.t0_gps_ns = t0_gps_ns
        self.t_ref_gps_ns = t_ref_gps_ns
        self.stream_seed = stream_seed
        self.tuned_hz = tuned_hz
        self.low_cut, self.high_cut = max(low_cut, -fs / 2 + 1.0), min(high_cut, fs / 2 - 1.0)
        #: true sampling time of sample 0 relative to the scene origin, seconds
        self._tau0 = (t0_gps_ns - t_ref_gps_ns) / NS - rx.processing_delay_s
        self._taps = _taps(self.low_cut, self.high_cut, fs)
        self._half = (self._taps.size - 1) // 2
        self._noise_sigma = math.sqrt(10.0 ** (rx.noise_dbfs / 10.0) / 2.0)
        self._clip_amp = math.sqrt(10.0 ** ((rx.adc_clip_dbm - scene.full_scale_dbm) / 10.0))
        # (path, transmitter, signal, fading or None, baseband offset Hz, constant phase)
        self._parts: list[tuple[Path, Transmitter, Signal, Fading | None, float, float]] = []
        self._out_of_band_peak = 0.0
        for t, tx in enumerate(scene.transmitters):
            sig = scene.signal(tx)
            inside = scene.in_passband(tx, tuned_hz, rx, self.low_cut, self.high_cut)
            for p in scene.paths(rx, tx):
                if not inside:
                    self._out_of_band_peak += p.amplitude * sig.peak_amplitude
                    continue
                fading = None
                if p.kind == "sky":
                    seed = (scene.seed * 7919 + rx_index * 104_729 + t * 31 + zlib.crc32(tx.id.encode())) & 0x7FFFFFFF
                    fading = Fading(spread_hz=p.fading_spread_hz, seed=seed)
                df = tx.frequency_hz + p.doppler_hz - tuned_hz
                phase = tx.phase_rad - 2.0 * math.pi * tx.frequency_hz * p.delay_s
                self._parts.append((p, tx, sig, fading, df, phase))
        self._h_fft = _taps_fft(self.low_cut, self.high_cut, fs)
        self._raw: dict[int, npt.NDArray[np.complex128]] = {}
        self._raw_peak: dict[int, npt.NDArray[np.float64]] = {}
        self._filt: dict[int, npt.NDArray[np.complex128]] = {}
        self.agc_settings = agc
        self._agc = fe.Agc(agc, fs)
        self._gains: dict[int, npt.NDArray[np.float64]] = {}
        self._agc_next = 0  # next block the AGC has to see
        self.overflow = False
        self.smeter = 0
        self.clipped = 0
        #: looped synthesis: the first ``loop_frames`` frames, made in order as they are first
        #: asked for (a new stream costs the server nothing up front), then repeated
        self._loop_frames = loop_frames or 0
        self._loop: list[tuple[npt.NDArray[np.int16], bool, int, int]] | None = [] if loop_frames else None

    # ---- public ----------------------------------------------------------------------------
    def frame(self, k: int) -> npt.NDArray[np.int16]:
        """Frame k as a (512, 2) int16 array (I, Q); sets ``overflow``, ``smeter``, ``clipped``."""
        loop = self._loop
        if loop is not None:
            j = k % self._loop_frames if k >= self._loop_frames else k
            while len(loop) <= j:
                iq = self._make(len(loop))
                loop.append((iq, self.overflow, self.smeter, self.clipped))
            iq, self.overflow, self.smeter, self.clipped = loop[j]
            return iq
        return self._make(k)

    def stamp_ns(self, k: int) -> int:
        """The GPS time (ns) the receiver stamps on frame k: its clock, plus the error of its clock
        model since the last GPS fix.  A Kiwi derives every stamp from its ADC sample counter and a
        clock model it updates at each fix, so the error is one draw per fix interval (shared by all
        streams of the receiver), not independent per frame."""
        stamp = self.t0_gps_ns + round(SAMPLES_PER_FRAME * k * 1e9 / self.fs)
        rx = self.rx
        if rx.gps_jitter_s > 0.0:
            interval = rx.gps_fix_interval_s if rx.gps_fix_interval_s > 0 else 1.0
            phase = (self.rx_index * 0.37) % interval
            fix = math.floor((stamp / NS - phase) / interval)
            stamp += int(round(_fix_error(self.scene.seed, self.rx_index, fix % (1 << 62)) * rx.gps_jitter_s * NS))
        return stamp

    def header(self, k: int) -> tuple[int, int, int]:
        """(last_gps_solution, gpssec, gpsnsec) of frame k."""
        rx = self.rx
        interval = rx.gps_fix_interval_s
        phase = (self.rx_index * 0.37) % interval if interval > 0 else 0.0
        return fe.gps_header(self.stamp_ns(k), k, mode=rx.faults.gps, fix_interval_s=interval,
                             fix_phase_s=phase, frame_s=self.frame_s)

    def set_agc(self, agc: AgcSettings) -> None:
        """New AGC parameters from the next frame produced on (the averagers keep their state)."""
        self.agc_settings = agc
        self._agc.configure(agc)

    # ---- the chain: computed a chunk of CHUNK_FRAMES frames at a time --------------------------
    def _raw_chunk(self, c: int) -> npt.NDArray[np.complex128]:
        """Antenna signal plus noise of chunk c (samples CHUNK c ... CHUNK (c+1) - 1), before the
        receive chain; the wideband peak of each of its frames in ``_raw_peak``."""
        hit = self._raw.get(c)
        if hit is not None:
            return hit
        n = CHUNK
        tau0 = self._tau0 + n * c / self.fs
        dt = 1.0 / self.fs
        rng = np.random.default_rng([self.scene.seed, self.rx_index, self.stream_seed, c + (1 << 40), 1])
        z = np.empty(n, dtype=np.complex128)
        z.real = rng.standard_normal(n)
        z.imag = rng.standard_normal(n)
        z *= self._noise_sigma
        peak = np.full(CHUNK_FRAMES, self._out_of_band_peak)
        if self._parts:
            k = np.arange(n, dtype=np.float64) * dt
        for p, _tx, sig, fading, df, phase in self._parts:
            sp = sig.sample(tau0 - p.delay_s, dt, n, epoch_gps_ns=self.t_ref_gps_ns)
            if fading is not None:
                sp = sp * fading.gain(tau0 - p.delay_s, dt, n)
            mag = np.abs(sp).reshape(CHUNK_FRAMES, SAMPLES_PER_FRAME).max(axis=1)
            peak += p.amplitude * mag
            z += p.amplitude * sp * np.exp(1j * (2.0 * math.pi * df * (tau0 + k) + phase))
        over = peak > self._clip_amp
        if over.any():
            # the clipped ADC spreads distortion over the band: a crude 1 % of the excess power
            extra = np.sqrt(np.where(over, 0.01 * (peak**2 - self._clip_amp**2) / 2.0, 0.0))
            noise = rng.standard_normal(n) + 1j * rng.standard_normal(n)
            z += np.repeat(extra, SAMPLES_PER_FRAME) * noise
        for old in [x for x in self._raw if x < c - 2 or x > c + 2]:
            del self._raw[old]
            self._raw_peak.pop(old, None)
        self._raw[c] = z
        self._raw_peak[c] = peak
        return z

    def _filtered_chunk(self, c: int) -> npt.NDArray[np.complex128]:
        """Chunk c after the passband FIR (centred: the server compensates its group delay)."""
        hit = self._filt.get(c)
        if hit is not None:
            return hit
        h = self._half
        x = np.concatenate([self._raw_chunk(c - 1)[CHUNK - h:], self._raw_chunk(c), self._raw_chunk(c + 1)[:h]])
        nfft = self._h_fft.size
        y = sp_fft.ifft(sp_fft.fft(x, nfft) * self._h_fft)
        out: npt.NDArray[np.complex128] = np.ascontiguousarray(y[2 * h : 2 * h + CHUNK])
        for old in [x for x in self._filt if x < c - 1 or x > c + 1]:
            del self._filt[old]
        self._filt[c] = out
        return out

    def _filtered(self, b: int) -> npt.NDArray[np.complex128]:
        c, i = divmod(b, CHUNK_FRAMES)
        return self._filtered_chunk(c)[i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME]

    def _gain(self, b: int) -> npt.NDArray[np.float64]:
        """Gain for each sample of block b (the AGC's gain ``delay`` samples later)."""
        if not self.agc_settings.on:
            return self._agc.gains(np.zeros(SAMPLES_PER_FRAME, dtype=np.complex128))
        if b + 1 < self._agc_next - 3:  # an earlier frame: replay the AGC from the stream start
            self._agc = fe.Agc(self.agc_settings, self.fs)
            self._gains.clear()
            self._agc_next = 0
        while self._agc_next <= b + 1:
            blk = self._agc_next
            self._gains[blk] = self._agc.gains(self._filtered(blk) * FULL_SCALE)
            self._agc_next += 1
        for old in [x for x in self._gains if x < b - 2]:
            del self._gains[old]
        d = self._agc.delay
        g = np.concatenate([self._gains[b], self._gains[b + 1]])
        return g[d : d + SAMPLES_PER_FRAME]

    def _make(self, k: int) -> npt.NDArray[np.int16]:
        y = self._filtered(k)
        c, i = divmod(k, CHUNK_FRAMES)
        self.overflow = bool(self._raw_peak[c][i] > self._clip_amp) if c in self._raw_peak else False
        power = float(np.mean(y.real**2 + y.imag**2))
        self.smeter = fe.smeter(power, self.scene.full_scale_dbm)
        iq, self.clipped = fe.quantise(y * self._gain(k))
        return iq
