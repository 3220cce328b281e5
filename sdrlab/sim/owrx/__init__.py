"""Loopback OpenWebRX / OpenWebRX+ simulator (``openwebrx-protocol.md`` section 11.2).

One HTTP + WebSocket server per simulated receiver, speaking the protocol as the real server does
(upgrade reply, frames, handshake, build-up, incremental ``config``, ``dspcontrol`` validation,
FFT rows, S-meter, ADPCM audio with SYNC frames through NFM/AM/SSB/WFM demodulators), with faults
on demand and the ground truth on a side channel only::

    from sdrlab.sim.owrx import ITALY7_TUNE_HZ, OwrxFaults, OwrxSimServer, italy7

    with OwrxSimServer(italy7(seed=0)) as sim:          # or .start_in_thread() / .stop_thread()
        sim.ports["it-torino"], sim.url("it-torino"), sim.ws_url("it-torino")
        ...                                             # a client talks to ws://127.0.0.1:<port>/ws/
        sim.truth("it-torino")                           # OwrxTruth: bands, sessions' channel power...
        sim.set_faults("it-torino", OwrxFaults(full=True))
        sim.change_profile("it-torino", "rtlsdr|70cm"); sim.fail_sdr("it-torino")

``run_forever(receivers, host=..., base_port=...)`` serves in the foreground until SIGINT/SIGTERM.
"""

from .config import OwrxConfig, OwrxFaults, Profile
from .dsp import Band
from .networks import ITALY7_TUNE_HZ, italy7
from .receiver import OwrxTruth, ProfileChange
from .server import OwrxSimServer, run_forever
from .session import SessionTruth
from .signals import Emitter

__all__ = ["ITALY7_TUNE_HZ", "Band", "Emitter", "OwrxConfig", "OwrxFaults", "OwrxSimServer", "OwrxTruth", "Profile",
           "ProfileChange", "SessionTruth", "italy7", "run_forever"]
