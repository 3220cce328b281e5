"""Loopback OpenWebRX / OpenWebRX+ simulator (protocol page section 11.2): server (HTTP,
WebSocket), session protocol, band and channel DSP, demodulators, faults and ground truth."""

from .config import OwrxConfig, OwrxFaults, Profile
from .dsp import Band
from .networks import ITALY7_TUNE_HZ, italy7
from .receiver import OwrxTruth, ProfileChange
from .server import OwrxSimServer, run_forever
from .session import SessionTruth
from .signals import Emitter

__all__ = ["ITALY7_TUNE_HZ", "Band", "Emitter", "OwrxConfig", "OwrxFaults", "OwrxSimServer", "OwrxTruth", "Profile", "ProfileChange",
           "SessionTruth", "italy7", "run_forever"]
