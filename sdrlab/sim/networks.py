"""Built-in simulated networks.  ``demo7``: seven receivers over western Europe (the demo7 stations
of the built-in catalogue, spread over about 900 km) and one AM broadcast transmitter (music
programme) inside their hull.

The receivers differ as real KiwiSDRs do: each its own real sample rate, noise level and GPS fix
cadence, an uncompensated processing delay of 8-45 us (one 39 us late, like a public receiver in a
real DCF77 set) and GPS stamp errors of 0.1-1 us RMS, one per GPS fix (the real DCF77
recordings' stamps fit a line to 70-80 ns RMS)."""

from __future__ import annotations

from ..errors import ConfigError
from ..stations import load_catalog
from .scene import Scene, SimReceiver, Transmitter

# per-receiver real sample rates (each Kiwi's ADC clock differs a little) and noise levels
_DEMO7_RATES = (12001.135, 12001.150, 12001.188, 12001.162, 12001.121, 12001.174, 12001.143)
_DEMO7_NOISE = (-76.0, -74.0, -78.0, -73.0, -75.0, -77.0, -72.0)
_DEMO7_ANNOUNCE_PPM = (1.5, -2.0, 0.8, -1.2, 2.5, -0.6, 1.1)
#: uncompensated processing delays and GPS stamp jitter, microseconds (truth, invisible to clients)
_DEMO7_DELAY_US = (18.0, 8.0, 39.0, 12.0, 27.0, 45.0, 22.0)
_DEMO7_JITTER_US = (0.1, 0.3, 0.2, 1.0, 0.1, 0.2, 0.5)

DEMO7_TX = Transmitter(
    id="tx-hesse",
    latitude=50.42,
    longitude=8.93,
    frequency_hz=9_750_000.0,
    power_dbm=40.0,
    modulation="am-broadcast",
    params=(("program", "music"),),
)
#: the frequency the demo tunes to: the carrier sits 1 kHz above the centre
DEMO7_TUNE_HZ = 9_749_000.0


def demo7(seed: int = 0) -> Scene:
    stations = load_catalog().network("demo7")
    receivers = tuple(
        SimReceiver(
            id=s.id,
            name=s.name,
            latitude=s.latitude,
            longitude=s.longitude,
            altitude_m=s.altitude,
            rx_chans=s.channels,
            sample_rate=_DEMO7_RATES[i % len(_DEMO7_RATES)],
            noise_dbfs=_DEMO7_NOISE[i % len(_DEMO7_NOISE)],
            announced_rate_error_ppm=_DEMO7_ANNOUNCE_PPM[i % len(_DEMO7_ANNOUNCE_PPM)],
            gps_fix_interval_s=2.0 + (i % 3),
            processing_delay_s=_DEMO7_DELAY_US[i % len(_DEMO7_DELAY_US)] * 1e-6,
            gps_jitter_s=_DEMO7_JITTER_US[i % len(_DEMO7_JITTER_US)] * 1e-6,
        )
        for i, s in enumerate(stations)
    )
    return Scene(transmitters=(DEMO7_TX,), receivers=receivers, seed=seed, name="demo7")


NETWORKS = {"demo7": demo7}


def network(name: str, seed: int = 0) -> Scene:
    try:
        factory = NETWORKS[name]
    except KeyError:
        raise ConfigError(f"unknown simulated network {name!r} (known: {', '.join(NETWORKS)})") from None
    return factory(seed)
