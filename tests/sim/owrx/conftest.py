"""One simulator for the module's tests: an upstream and an OpenWebRX+ receiver on loopback."""

from __future__ import annotations

from typing import Iterator

import pytest

from sdrlab.sim.owrx import OwrxSimServer

from .helpers import receiver


@pytest.fixture(scope="module")
def sim() -> Iterator[OwrxSimServer]:
    with OwrxSimServer([receiver("sim-up"), receiver("sim-plus", fork="plus", version="v1.2.121")]) as server:
        yield server
