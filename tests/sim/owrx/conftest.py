"""One simulator per test module: an upstream, an OpenWebRX+ and an uncompressed receiver on loopback."""

from __future__ import annotations

from typing import Iterator

import pytest

from sdrlab.sim.owrx import OwrxSimServer

from .helpers import receiver


@pytest.fixture(scope="module")
def sim() -> Iterator[OwrxSimServer]:
    receivers = [receiver("sim-up"), receiver("sim-plus", fork="plus", version="v1.2.121"),
                 receiver("sim-raw", audio_compression="none", fft_compression="none")]
    with OwrxSimServer(receivers) as server:
        yield server
