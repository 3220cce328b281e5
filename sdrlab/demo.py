"""``sdrlab demo``: the demo7 simulator in-process, all seven acquired, the session stored."""

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


def demo7_stations(ports: dict[str, int], host: str = "127.0.0.1") -> list[Station]:
    """The catalogue's demo7 stations, pointed at a running simulator's ports."""
    return [replace(s, host=host, port=ports[s.id]) for s in load_catalog().network("demo7")]


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
) -> Session:
    """Simulate demo7 on ephemeral loopback ports (so a running ``sdrlab sim serve`` does not
    clash), acquire every station at the demo frequency, write the session under ``out``."""
    if not speed > 0:
        raise ConfigError(f"speed must be positive, got {speed}")
    settings = settings or Settings.from_env()
    store = Store(f"file://{Path(out).resolve()}") if out is not None else settings.store_obj()
    scene = demo7(seed)
    with SimServer(scene, base_port=0, speed=speed) as sim:
        # the simulated scene's truth travels with the session (maps show the transmitter)
        session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, duration_s, settings=settings,
                          progress=progress, write=False, attrs=scene_attrs(scene))
    return save(session, store, index=settings.engine(), rescue=settings.rescue_obj())
