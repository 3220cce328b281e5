"""Protocol-faithful KiwiSDR receiver simulator serving a known scene on loopback."""

from .scene import Faults, Scene, SimReceiver, Transmitter

__all__ = ["Faults", "Scene", "SimReceiver", "Transmitter"]
