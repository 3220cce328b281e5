"""W/F streams (``rx/rx_waterfall.cpp``), kept small: a spectrum of the scene's noise floor plus
the transmitters' carriers, 1024 u8 bins per frame.

Frame: ``W/F``, one unused byte, ``<III`` x_bin_server, flags_x_zoom_server, seq, then the bins.
A bin value is ``255 + dBm`` of the power in that bin, clamped to 0...255.  ``SET wf_comp=1`` is
accepted but the bins are always sent uncompressed (the compression flag 0x10000 is never set).
Frame rates for ``SET wf_speed=1..4`` are 1, 5, 13 and 23 frames/s (times the server's speed);
``wf_speed=0`` pauses the waterfall.
"""

from __future__ import annotations

import logging
import math
import struct
from typing import TYPE_CHECKING

import numpy as np

from ..receivers.kiwiwire import encode_msg
from . import status
from .session import ReceiverHub, Session, SimCore, scanf

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

logger = logging.getLogger(__name__)

WF_BINS = 1024
MAX_ZOOM = 14
WF_FPS = {0: 0.0, 1: 1.0, 2: 5.0, 3: 13.0, 4: 23.0}
DEFAULT_WF_SPEED = 4
_HEAD = struct.Struct("<3sBIII")
_WF_NOOPS = ("SET maxdb=", "SET wf_comp=", "SET interp=", "SET window_func=", "SET send_dB=", "SET wf_",
             "SET aper=", "SET nb ", "SET ext_")


def zoom_span_hz(zoom: int) -> float:
    return status.BANDWIDTH_HZ / float(1 << zoom)


class WfSession(Session):
    stream_name = "W/F"

    def __init__(self, core: SimCore, hub: ReceiverHub, ws: ServerConnection, path: str, ts: int) -> None:
        super().__init__(core, hub, ws, path, ts)
        self.zoom: int | None = None
        self.cf_khz = 0.0
        self.wf_speed = DEFAULT_WF_SPEED
        self.seq = 0
        self.wall0 = 0.0
        self.k = 0
        self.x_bin = 0
        self.start_hz = 0.0
        self.bin_hz = 0.0
        self._noise_mw = 0.0
        self._carrier_mw = np.zeros(WF_BINS)
        self._rng = np.random.default_rng([core.scene.seed, hub.index, 4242, ts & 0xFFFFFFFF])

    @property
    def complete(self) -> bool:
        return self.auth and self.zoom is not None

    def on_authenticated(self) -> None:
        rx = self.rx
        self.send(encode_msg([("center_freq", status.CENTER_FREQ_HZ), ("bandwidth", status.BANDWIDTH_HZ),
                              ("adc_clk_nom", status.ADC_CLK_NOM)]))
        self.send(encode_msg([
            ("wf_fft_size", WF_BINS), ("wf_fps", int(WF_FPS[4])), ("wf_fps_max", int(WF_FPS[4])),
            ("zoom_max", MAX_ZOOM), ("rx_chans", rx.rx_chans), ("wf_chans", rx.rx_chans),
            ("wf_chans_real", rx.rx_chans), ("wf_cal", -13),
        ]))
        self.send_msg(("wf_setup", None))

    def on_command(self, cmd: str) -> bool:
        if cmd.startswith("SET zoom="):
            vals = scanf("SET zoom=%d cf=%f", cmd)
            if len(vals) == 2:
                self._set_view(int(vals[0]), float(vals[1]))
                return True
            vals = scanf("SET zoom=%d start=%f", cmd)
            if len(vals) == 2:  # deprecated form: start counter in the 1024 << 14 bin space
                zoom = max(0, min(MAX_ZOOM, int(vals[0])))
                start_hz = float(vals[1]) * status.BANDWIDTH_HZ / (WF_BINS << MAX_ZOOM)
                self._set_view(zoom, (start_hz + zoom_span_hz(zoom) / 2.0) / 1e3)
                return True
            return False
        if cmd.startswith("SET wf_speed="):
            vals = scanf("SET wf_speed=%d", cmd)
            if vals and int(vals[0]) in WF_FPS:
                self.wf_speed = int(vals[0])
                self._anchor()
                return True
            return False
        return cmd.startswith(_WF_NOOPS)

    def _anchor(self) -> None:
        self.wall0 = self.next_due = self.loop.time()
        self.k = 0

    def _set_view(self, zoom: int, cf_khz: float) -> None:
        zoom = max(0, min(MAX_ZOOM, zoom))
        span = zoom_span_hz(zoom)
        start = min(max(cf_khz * 1e3 - span / 2.0, 0.0), status.BANDWIDTH_HZ - span)
        self.zoom, self.cf_khz = zoom, cf_khz
        self.start_hz = start
        self.bin_hz = span / WF_BINS
        self.x_bin = int(round(start / status.BANDWIDTH_HZ * (WF_BINS << MAX_ZOOM)))
        scene, rx = self.core.scene, self.rx
        density_dbm_hz = rx.noise_dbfs - 10.0 * math.log10(rx.sample_rate) + scene.full_scale_dbm
        self._noise_mw = 10.0 ** ((density_dbm_hz + 10.0 * math.log10(self.bin_hz)) / 10.0)
        carrier = np.zeros(WF_BINS)
        for tx in scene.transmitters:
            i = int((tx.frequency_hz - start) // self.bin_hz)
            if 0 <= i < WF_BINS:
                amp = scene.carrier_amplitude(rx, tx)
                carrier[i] += 10.0 ** ((10.0 * math.log10(amp * amp) + scene.full_scale_dbm) / 10.0)
        self._carrier_mw = carrier
        if not self.pumping:
            self._anchor()
            self.pumping = True

    def pump(self, now: float, until: float = math.inf) -> None:
        fps = WF_FPS[self.wf_speed] * self.core.speed
        if fps <= 0.0 or self.closing is not None or self.zoom is None:
            return
        due = int((now - self.wall0) * fps) + 1
        for _ in range(min(due - self.k, 64)):
            if self.congested():
                return
            self.k += 1
            self.seq += 1
            p = self._noise_mw * self._rng.exponential(size=WF_BINS) + self._carrier_mw
            bins = np.clip(np.rint(255.0 + 10.0 * np.log10(p)), 0, 255).astype(np.uint8)
            head = _HEAD.pack(b"W/F", 0, self.x_bin, self.zoom & 0xFFFF, self.seq)
            if not self.send(head + bins.tobytes()):
                return
        self.next_due = self.wall0 + self.k / fps
