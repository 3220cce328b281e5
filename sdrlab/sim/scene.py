"""The simulator's known scene: transmitters, receivers, propagation and noise.

The scene is the ground truth tests measure against.  Everything a receiver outputs is a pure
function of the scene, the stream's GPS start time and a seed:

* received baseband at receiver r tuned to ``f_tune``, for sample n at GPS time t_n = t0 + n/fs_r:
  ``g_r * (1 + m * msg(t_n - d_r)) * exp(j*(2*pi*(f_tx - f_tune)*t_n - 2*pi*f_tx*d_r + phi))``
  with ``d_r`` = WGS84 geodesic distance / c (the propagation delay) and ``g_r`` from free-space path
  loss.  ``msg`` is a seeded sum of tones (AM) or zero (CW), with unit RMS, evaluated exactly at
  any time, so fractional delays are exact and TDoA analysis can recover them;
* plus seeded complex Gaussian noise of a known power per sample (dBFS);
* quantised to int16 with full scale 32767 <=> amplitude 1.0 (0 dBFS).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from geographiclib.geodesic import Geodesic

from ..receivers.kiwiwire import SAMPLES_PER_FRAME

C_M_S = 299_792_458.0
FULL_SCALE = 32768.0  # amplitude 1.0 (0 dBFS); samples clip at 32767
NS = 1_000_000_000


def geodesic_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance on the WGS84 ellipsoid (Karney's algorithm)."""
    return float(Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"])


def fspl_db(distance_m: float, frequency_hz: float) -> float:
    """Free-space path loss in dB."""
    d = max(distance_m, 1.0)
    return 20.0 * math.log10(4.0 * math.pi * d * frequency_hz / C_M_S)


@dataclass(frozen=True)
class Transmitter:
    id: str
    latitude: float
    longitude: float
    frequency_hz: float
    power_dbm: float = 40.0
    modulation: Literal["cw", "am"] = "am"
    #: RMS modulation depth of the AM message (msg has unit RMS)
    mod_index: float = 0.3
    n_tones: int = 24
    tone_band_hz: tuple[float, float] = (150.0, 2800.0)
    phase_rad: float = 0.0


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
    #: total noise power per complex sample, dBFS, over the full sample bandwidth
    noise_dbfs: float = -75.0
    password: str = ""
    #: the admin's time-limit exemption password (``tlimit_exempt_pwd``): a client whose
    #: ``SET auth ... ipl=`` matches it (case-insensitively) is exempt from the inactivity and
    #: per-IP time limits; empty means no exemption password is configured
    tlimit_password: str = ""
    #: seconds between GPS fixes (last_gps_solution resets to 0)
    gps_fix_interval_s: float = 4.0
    version: tuple[int, int] = (1, 711)
    antenna: str = "simulated active loop"
    faults: Faults = field(default_factory=Faults)

    @property
    def announced_sample_rate(self) -> float:
        return self.sample_rate * (1.0 + self.announced_rate_error_ppm * 1e-6)

    @property
    def wide(self) -> bool:
        return self.audio_rate == 20250


@dataclass(frozen=True)
class Scene:
    transmitters: tuple[Transmitter, ...]
    receivers: tuple[SimReceiver, ...]
    seed: int = 0
    #: power in dBm that maps to 0 dBFS (the receiver's calibration)
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

    # ---- propagation truth -------------------------------------------------------------------
    def distance_m(self, rx: SimReceiver, tx: Transmitter) -> float:
        return geodesic_distance_m(rx.latitude, rx.longitude, tx.latitude, tx.longitude)

    def delay_s(self, rx: SimReceiver, tx: Transmitter) -> float:
        return self.distance_m(rx, tx) / C_M_S

    def carrier_amplitude(self, rx: SimReceiver, tx: Transmitter) -> float:
        """Carrier amplitude (full scale = 1) at the receiver from free-space path loss."""
        p_dbm = tx.power_dbm - fspl_db(self.distance_m(rx, tx), tx.frequency_hz)
        # the power budget is the total AM power, so scale the carrier down by (1 + m^2)
        total_dbfs = p_dbm - self.full_scale_dbm
        mod = tx.mod_index if tx.modulation == "am" else 0.0
        return math.sqrt(10.0 ** (total_dbfs / 10.0) / (1.0 + mod * mod))

    def in_passband(self, tx: Transmitter, tuned_hz: float, rx: SimReceiver, low: float, high: float) -> bool:
        off = tx.frequency_hz - tuned_hz
        half = rx.sample_rate / 2.0
        return max(low, -half) <= off <= min(high, half)

    def truth(self, receiver_id: str, tuned_hz: float) -> dict[str, float]:
        """What a perfect measurement at this receiver, tuned to ``tuned_hz``, would find
        (the first transmitter)."""
        rx = self.receiver(receiver_id)
        tx = self.transmitters[0]
        amp = self.carrier_amplitude(rx, tx)
        mod = tx.mod_index if tx.modulation == "am" else 0.0
        sig = amp * amp * (1.0 + mod * mod)
        noise = 10.0 ** (rx.noise_dbfs / 10.0)
        return {
            "distance_m": self.distance_m(rx, tx),
            "delay_s": self.delay_s(rx, tx),
            "frequency_offset_hz": tx.frequency_hz - tuned_hz,
            "carrier_power_dbfs": 10.0 * math.log10(amp * amp),
            "signal_power_dbfs": 10.0 * math.log10(sig),
            "noise_power_dbfs": rx.noise_dbfs,
            "noise_density_dbfs_hz": rx.noise_dbfs - 10.0 * math.log10(rx.sample_rate),
            "snr_db": 10.0 * math.log10(sig / noise),
            "sample_rate": rx.sample_rate,
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
    ) -> FrameSource:
        """The frames a receiver produces for a stream whose sample 0 is at GPS time ``t0_gps_ns``.

        ``t_ref_gps_ns`` is the scene's common time origin: every stream of one simulator shares
        it, so the transmitted signal is the same function of absolute time at every receiver.
        """
        rx = self.receiver(receiver_id)
        idx = self.index_of(receiver_id)
        txs = [tx for tx in self.transmitters if self.in_passband(tx, tuned_hz, rx, low_cut, high_cut)]
        return FrameSource(self, rx, idx, txs, tuned_hz, t0_gps_ns, t_ref_gps_ns, stream_seed, loop_frames)


class FrameSource:
    """Consecutive 512-sample int16 frames of one receiver's stream (frame k covers samples
    512k ... 512k+511)."""

    def __init__(
        self,
        scene: Scene,
        rx: SimReceiver,
        rx_index: int,
        txs: list[Transmitter],
        tuned_hz: float,
        t0_gps_ns: int,
        t_ref_gps_ns: int,
        stream_seed: int,
        loop_frames: int | None,
    ) -> None:
        self.rx = rx
        self.fs = rx.sample_rate
        self.t0_gps_ns = t0_gps_ns
        self._t0_rel = (t0_gps_ns - t_ref_gps_ns) / NS
        self._dt = np.arange(SAMPLES_PER_FRAME, dtype=np.float64) / self.fs
        self._rng = np.random.default_rng([scene.seed, rx_index, stream_seed])
        self._noise_sigma = math.sqrt(10.0 ** (rx.noise_dbfs / 10.0) / 2.0)
        self._parts = []
        for tx in txs:
            amp = scene.carrier_amplitude(rx, tx)
            d = scene.delay_s(rx, tx)
            df = tx.frequency_hz - tuned_hz
            tone_f = np.zeros(0)
            tone_a = np.zeros(0)
            tone_p = np.zeros(0)
            if tx.modulation == "am" and tx.n_tones > 0:
                # message tones depend on the transmitter only (the same signal everywhere)
                trng = np.random.default_rng([scene.seed, 7919, zlib.crc32(tx.id.encode())])
                lo, hi = tx.tone_band_hz
                tone_f = trng.uniform(lo, hi, tx.n_tones)
                tone_p = trng.uniform(0.0, 2.0 * math.pi, tx.n_tones)
                tone_a = np.full(tx.n_tones, math.sqrt(2.0 / tx.n_tones))  # unit RMS
            self._parts.append(
                (
                    amp,
                    d,
                    df,
                    tx.frequency_hz,
                    tx.phase_rad,
                    tx.mod_index if tx.modulation == "am" else 0.0,
                    2.0 * math.pi * tone_f,
                    tone_a * np.exp(1j * tone_p),
                    np.exp(1j * 2.0 * math.pi * np.outer(tone_f, self._dt)),
                    np.exp(1j * 2.0 * math.pi * df * self._dt),
                )
            )
        self.overflow = False
        self._loop: list[npt.NDArray[np.int16]] | None = None
        if loop_frames:
            self._loop = [self._make(k) for k in range(loop_frames)]

    def frame(self, k: int) -> npt.NDArray[np.int16]:
        """Frame k as a (512, 2) int16 array (I, Q); sets ``overflow`` if it clipped."""
        if self._loop is not None:
            return self._loop[k % len(self._loop)]
        return self._make(k)

    def _make(self, k: int) -> npt.NDArray[np.int16]:
        tk = self._t0_rel + SAMPLES_PER_FRAME * k / self.fs
        y = self._noise_sigma * self._rng.standard_normal((SAMPLES_PER_FRAME, 2))
        z = np.zeros(SAMPLES_PER_FRAME, dtype=np.complex128)
        for amp, d, df, ftx, phi, mod, w, tone_c, tone_e, car_e in self._parts:
            env = np.ones(SAMPLES_PER_FRAME)
            if mod:
                v = tone_c * np.exp(1j * w * (tk - d))
                env = env + mod * (v @ tone_e).real
            ph = 2.0 * math.pi * (df * tk - ftx * d) + phi
            z += amp * env * car_e * complex(math.cos(ph), math.sin(ph))
        y[:, 0] += z.real
        y[:, 1] += z.imag
        y *= FULL_SCALE
        np.rint(y, out=y)
        self.overflow = bool(np.any(y > 32767) or np.any(y < -32768))
        np.clip(y, -32768, 32767, out=y)
        return y.astype(np.int16)
