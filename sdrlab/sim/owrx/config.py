"""What a simulated OpenWebRX receiver is (its operator's settings) and the faults it can be given.

Units: frequencies and rates in Hz, positions in degrees, ``asl`` in metres, times in seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .dsp import Band

__all__ = ["OwrxConfig", "OwrxFaults", "Profile"]

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Profile:
    """One SDR profile; ``sdr_id|profile_id`` is its id in the ``profiles`` message.  ``band`` is
    what the antenna hears while this profile is active (noise and emitters, the truth)."""

    sdr_id: str
    profile_id: str
    sdr_name: str
    name: str
    center_freq: int
    samp_rate: int
    start_freq: int
    start_mod: str = "nfm"
    band: Band = field(default_factory=Band)
    sdr_type: str = "RtlSdrSource"

    @property
    def id(self) -> str:
        return f"{self.sdr_id}|{self.profile_id}"


@dataclass(frozen=True)
class OwrxConfig:
    """A simulated receiver: ``id`` (a slug: ports and truth are keyed by it), fork
    (``upstream`` = jketterl OpenWebRX, ``plus`` = OpenWebRX+), version string as the handshake
    sends it, identity, FFT settings, compression, ``max_clients`` (Plus also
    ``max_clients_per_ip``) and the profiles (the first of each SDR is active at start).

    ``ppm``: the frequency error of the receiver's SDRs, parts per million (an RTL-SDR without a
    TCXO: tens of ppm).  Its crystal runs ``1 + ppm 1e-6`` fast and clocks both the tuner's local
    oscillator and the ADC, so every frequency the receiver reports is the true one divided by
    that factor (a carrier at f shows at ``f / (1 + ppm 1e-6)``: -2.9 kHz at 145 MHz for +20 ppm)
    and its audio and FFT rows come that much faster in wall time.  0: an exact clock."""

    id: str = "owrx-sim"
    fork: Literal["upstream", "plus"] = "upstream"
    version: str = "v1.2.2"
    name: str = "sdrlab simulated OpenWebRX"
    location: str = "Loopback"
    lat: float = 47.4979
    lon: float = 19.0402
    asl: int = 120
    admin: str = "sim@example.invalid"
    max_clients: int = 20
    max_clients_per_ip: int = 20
    fft_size: int = 4096
    fft_fps: int = 9
    fft_voverlap: float = 0.3
    audio_compression: Literal["adpcm", "none"] = "adpcm"
    fft_compression: Literal["adpcm", "none"] = "adpcm"
    profiles: tuple[Profile, ...] = ()
    seed: int = 0
    ppm: float = 0.0

    def __post_init__(self) -> None:
        if not _SLUG.match(self.id):
            raise ValueError(f"receiver id must be a slug (a-z, 0-9, '-'), got {self.id!r}")
        if not self.profiles:
            raise ValueError(f"receiver {self.id}: at least one profile")
        if len({p.id for p in self.profiles}) != len(self.profiles):
            raise ValueError(f"receiver {self.id}: duplicate profile ids")
        if not abs(self.ppm) < 1000.0:
            raise ValueError(f"receiver {self.id}: ppm must be within +-1000, got {self.ppm}")

    @property
    def clock(self) -> float:
        """The SDR clock's rate re an exact one: ``1 + ppm 1e-6``."""
        return 1.0 + self.ppm * 1e-6

    @property
    def plus(self) -> bool:
        return self.fork == "plus"

    @property
    def sdr_ids(self) -> tuple[str, ...]:
        """SDR ids in configuration order."""
        return tuple(dict.fromkeys(p.sdr_id for p in self.profiles))

    def profile(self, profile_id: str) -> Profile:
        """A profile by ``sdr|profile`` id."""
        for p in self.profiles:
            if p.id == profile_id:
                return p
        raise KeyError(f"receiver {self.id}: no profile {profile_id!r} (have {[p.id for p in self.profiles]})")


@dataclass(frozen=True)
class OwrxFaults:
    """Behaviour on demand for new connections (and, for the limits, running ones).

    * ``full``: every new connection is told it is full (handshake, ``receiver_details``,
      ``backoff`` "Too many clients", empty close frame) as when ``max_clients`` is reached.
    * ``banned``: (Plus) ``backoff`` "Client address banned" and close.
    * ``zombie``: after the handshake reply and ``receiver_details``, nothing more (the socket stays
      open, like Plus >= 1.2.91 on a 4th quick connection from one address).
    * ``double_fft``: FFT rows go out two per message (a lagging server).
    * ``send_timeout_s``: a send blocked longer than this closes the connection (real: 10 s);
      ``queue_size``: the FFT/``clients``/``cpuusage`` queue; overflowing it disconnects (real: 100).
    * ``ping_after_s``: the server PINGs a client silent this long (real: 30 s; tests shorten it).
    * ``sndbuf_bytes``: the kernel send buffer of new connections (None: the system's, which on
      loopback grows to megabytes, so a reader that stops is cut only after minutes).
    """

    full: bool = False
    banned: bool = False
    zombie: bool = False
    double_fft: bool = False
    send_timeout_s: float = 10.0
    queue_size: int = 100
    sndbuf_bytes: int | None = None
    ping_after_s: float = 30.0
