"""``sdrlab demo``: a simulated network in-process (demo7: KiwiSDRs on HF; italy7: OpenWebRX on
2 m), all its stations acquired, the session stored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .acquire import Session, acquire, save
from .config import Settings
from .errors import ConfigError
from .sim.networks import DEMO7_TUNE_HZ, demo7
from .sim.scene import Scene
from .sim.server import SimServer
from .stations import Station, load_catalog
from .store import Store


def network_stations(network: str, ports: dict[str, int], host: str = "127.0.0.1") -> list[Station]:
    """The catalogue's stations of a simulated network, pointed at a running simulator's ports."""
    return [replace(s, host=host, port=ports[s.id]) for s in load_catalog().network(network)]


def demo7_stations(ports: dict[str, int], host: str = "127.0.0.1") -> list[Station]:
    """The catalogue's demo7 stations, pointed at a running simulator's ports."""
    return network_stations("demo7", ports, host)


#: the built-in simulated OpenWebRX networks (the others are KiwiSDR scenes: sim.networks)
OWRX_NETWORKS = ("italy7",)


def scene_attrs(scene: Scene) -> dict[str, Any]:
    """A simulated scene's truth, for a session's attrs (maps then show the transmitter)."""
    tx = scene.transmitters[0]
    return {"simulated_scene": scene.name, "transmitter_latitude": tx.latitude,
            "transmitter_longitude": tx.longitude, "transmitter_frequency_hz": tx.frequency_hz}


def run_demo(
    *,
    duration_s: float = 5.0,
    out: Path | str | None = None,
    speed: float = 1.0,
    progress: bool = True,
    seed: int = 0,
    settings: Settings | None = None,
    network: str = "demo7",
) -> Session:
    """Simulate ``network`` on ephemeral loopback ports (so a running ``sdrlab sim serve`` does
    not clash), acquire every station at the network's demo frequency, write the session under
    ``out``.  ``italy7``: the seven OpenWebRX receivers at 145.5 MHz (real rate only)."""
    if not speed > 0:
        raise ConfigError(f"speed must be positive, got {speed}")
    settings = settings or Settings.from_env()
    store = Store(f"file://{Path(out).resolve()}") if out is not None else settings.store_obj()
    if network in OWRX_NETWORKS:
        from .sim.owrx.networks import ITALY7_TUNE_HZ, italy7
        from .sim.owrx.server import OwrxSimServer

        with OwrxSimServer(italy7(seed), base_port=0) as owrx:
            session = acquire(network_stations(network, owrx.ports), ITALY7_TUNE_HZ, duration_s, settings=settings,
                              progress=progress, write=False, attrs={"simulated_scene": network})
        return save(session, store, index=settings.engine(), rescue=settings.rescue_obj())
    if network != "demo7":
        raise ConfigError(f"unknown simulated network {network!r} (known: demo7, {', '.join(OWRX_NETWORKS)})")
    scene = demo7(seed)
    with SimServer(scene, base_port=0, speed=speed) as sim:
        # the simulated scene's truth travels with the session (maps show the transmitter)
        session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, duration_s, settings=settings,
                          progress=progress, write=False, attrs=scene_attrs(scene))
    return save(session, store, index=settings.engine(), rescue=settings.rescue_obj())
