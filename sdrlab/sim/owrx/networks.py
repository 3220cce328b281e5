"""Built-in simulated OpenWebRX networks.  ``italy7``: the seven Italian receivers of the network
this project started from (issue 15's table: names, positions, heights), each an RTL-SDR with a
2 m profile (2.4 MHz wide, 145.5 MHz inside with room for a 12.5 kHz channel) and a 70 cm one,
upstream and OpenWebRX+ builds of several versions, each its own noise level.

What they hear on 2 m (levels by free-space loss from each transmitter's position, so the nearer
receivers hear more; Giaveno and Coazze, 1.9 km apart, hear nearly the same):

* 145.500 MHz: NFM voice (2.5 kHz deviation) from a station above Torino, the tuning target
  :data:`ITALY7_TUNE_HZ`;
* 145.2875 MHz: NFM voice from near Milano (another programme);
* 144.800 MHz: NFM 1200 Hz tone (an APRS-like carrier of audio) from near Genova;
* 145.0125 MHz: an unmodulated carrier (a beacon) in the Alps.

On 70 cm: a 433.500 MHz NFM tone and a carrier.  Emitter powers are in dBFS at each receiver
(uncalibrated, as OpenWebRX itself is).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scene import fspl_db, geodesic_distance_m
from .config import OwrxConfig, Profile
from .dsp import Band
from .signals import Emitter

__all__ = ["ITALY7_TUNE_HZ", "NETWORKS", "italy7"]

#: the frequency the italy7 demo tunes to (NFM voice, inside every receiver's 2 m profile)
ITALY7_TUNE_HZ = 145_500_000
#: channel width the target needs, Hz
ITALY7_CHANNEL_HZ = 12_500


@dataclass(frozen=True)
class _Site:
    id: str
    name: str
    location: str
    lat: float
    lon: float
    asl: int
    fork: str
    version: str
    center_2m: int
    noise_dbfs_hz: float


_SITES = (
    _Site("it-giaveno", "Aquila di Giaveno", "Giaveno (TO), Piedmont", 45.02, 7.29, 600, "upstream", "v1.2.2",
          145_000_000, -126.0),
    _Site("it-montanaro", "Montanaro", "Montanaro, Piedmont", 45.234, 7.857, 300, "plus", "v1.2.121",
          145_200_000, -124.5),
    _Site("it-torino", "Torino", "Torino", 45.044, 7.672, 250, "upstream", "v1.3.0-dev", 144_900_000, -122.0),
    _Site("it-coazze", "Coazze", "Coazze (TO)", 45.03, 7.27, 700, "plus", "v1.2.99", 145_000_000, -127.0),
    _Site("it-giovi", "Passo del Giovi", "Passo del Giovi, Liguria", 44.561, 8.956, 480, "upstream", "v1.2.1",
          145_300_000, -125.0),
    _Site("it-genova", "Genova", "Genova, Liguria", 44.395, 8.956, 100, "plus", "v1.2.110", 145_600_000, -121.5),
    _Site("it-milano-baggio", "Milano - Baggio", "Milano (Baggio), Lombardy", 45.478, 9.123, 120, "plus",
          "v1.2.121", 145_100_000, -123.0),
)


@dataclass(frozen=True)
class _Tx:
    lat: float
    lon: float
    #: level (dBFS) a receiver 1 km away would see
    dbfs_at_1km: float
    emitter: Emitter


_TX_2M = (
    _Tx(45.06, 7.72, -32.0, Emitter(ITALY7_TUNE_HZ, 0.0, "nfm", "voice", deviation_hz=2500.0, seed=1,
                                     name="145.500 NFM voice (Torino hills)")),
    _Tx(45.46, 9.05, -38.0, Emitter(145_287_500, 0.0, "nfm", "voice", deviation_hz=2500.0, seed=2,
                                     name="145.2875 NFM voice (Milano)")),
    _Tx(44.42, 8.90, -40.0, Emitter(144_800_000, 0.0, "nfm", "tone", tone_hz=1200.0, deviation_hz=3000.0,
                                     name="144.800 NFM 1200 Hz tone (Genova)")),
    _Tx(45.30, 7.40, -48.0, Emitter(145_012_500, 0.0, name="145.0125 carrier (beacon)")),
)
_TX_70CM = (
    _Tx(45.07, 7.68, -45.0, Emitter(433_500_000, 0.0, "nfm", "tone", tone_hz=800.0, name="433.500 NFM tone")),
    _Tx(45.20, 8.30, -50.0, Emitter(432_800_000, 0.0, name="432.800 carrier")),
)


def _heard(site: _Site, txs: tuple[_Tx, ...]) -> tuple[Emitter, ...]:
    out = []
    for tx in txs:
        d = max(geodesic_distance_m(site.lat, site.lon, tx.lat, tx.lon), 500.0)
        loss = fspl_db(d, tx.emitter.freq_hz) - fspl_db(1000.0, tx.emitter.freq_hz)
        level = round(tx.dbfs_at_1km - loss, 1)
        out.append(Emitter(tx.emitter.freq_hz, level, tx.emitter.kind, tx.emitter.content, tx.emitter.tone_hz,
                           tx.emitter.deviation_hz, tx.emitter.depth, tx.emitter.seed, tx.emitter.name))
    return tuple(out)


def italy7(seed: int = 0) -> tuple[OwrxConfig, ...]:
    """The seven simulated Italian OpenWebRX receivers (see the module docstring)."""
    out = []
    for i, s in enumerate(_SITES):
        profiles = (
            Profile("rtlsdr", "2m", "RTL-SDR", "2m", s.center_2m, 2_400_000, ITALY7_TUNE_HZ,
                    band=Band(s.noise_dbfs_hz, _heard(s, _TX_2M), seed=1000 * seed + 2 * i)),
            Profile("rtlsdr", "70cm", "RTL-SDR", "70cm", 433_000_000, 2_400_000, 433_500_000,
                    band=Band(s.noise_dbfs_hz + 2.0, _heard(s, _TX_70CM), seed=1000 * seed + 2 * i + 1)),
        )
        out.append(OwrxConfig(id=s.id, fork="plus" if s.fork == "plus" else "upstream", version=s.version,
                              name=s.name, location=s.location, lat=s.lat, lon=s.lon, asl=s.asl,
                              admin=f"{s.id}@example.invalid", profiles=profiles, seed=seed))
    return tuple(out)


NETWORKS = {"italy7": italy7}
