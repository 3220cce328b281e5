"""One simulator per test module: an upstream, an OpenWebRX+, an uncompressed and an FM broadcast receiver on loopback."""

from __future__ import annotations

from typing import Iterator

import pytest

from sdrlab.sim.owrx import OwrxSimServer

from .helpers import fm_receiver, receiver


@pytest.fixture(scope="module")
def sim() -> Iterator[OwrxSimServer]:
    receivers = [receiver("sim-up"), receiver("sim-plus", fork="plus", version="v1.2.121"),
                 receiver("sim-raw", audio_compression="none", fft_compression="none"), fm_receiver()]
    with OwrxSimServer(receivers) as server:
        yield server
