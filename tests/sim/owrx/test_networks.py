"""The italy7 network: the seven receivers of issue 15's table, served on loopback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sdrlab.receivers.owrxmsg import reachable
from sdrlab.receivers.owrxstatus import PLUS_TITLE, UPSTREAM_TITLE, fork_of
from sdrlab.sim.owrx import OwrxSimServer
from sdrlab.sim.owrx.networks import ITALY7_TUNE_HZ, italy7

from .helpers import START, dsp, http_get, run_record

TABLE = {  # issue 15: id -> (name, lat, lon, asl)
    "it-giaveno": ("Aquila di Giaveno", 45.02, 7.29, 600), "it-montanaro": ("Montanaro", 45.234, 7.857, 300),
    "it-torino": ("Torino", 45.044, 7.672, 250), "it-coazze": ("Coazze", 45.03, 7.27, 700),
    "it-giovi": ("Passo del Giovi", 44.561, 8.956, 480), "it-genova": ("Genova", 44.395, 8.956, 100),
    "it-milano-baggio": ("Milano - Baggio", 45.478, 9.123, 120),
}


def test_italy7_receivers() -> None:
    net = italy7()
    assert {r.id: (r.name, r.lat, r.lon, r.asl) for r in net} == TABLE
    assert {r.fork for r in net} == {"upstream", "plus"}
    for r in net:
        title = PLUS_TITLE if r.plus else UPSTREAM_TITLE
        assert fork_of(r.version, title) == ("openwebrx+" if r.plus else "openwebrx")
        two, seventy = r.profiles
        assert reachable(two.center_freq, two.samp_rate, ITALY7_TUNE_HZ, 12_500) and two.samp_rate == 2_400_000
        assert 430e6 < seventy.center_freq < 440e6
        assert two.band.emitters[0].freq_hz == ITALY7_TUNE_HZ and two.band.emitters[0].kind == "nfm"
    levels = {r.id: r.profiles[0].band.emitters[0].power_dbfs for r in net}
    assert levels["it-torino"] > levels["it-giaveno"] > levels["it-genova"]  # by distance
    assert abs(levels["it-giaveno"] - levels["it-coazze"]) < 1.0  # 1.9 km apart
    assert len({r.profiles[0].band.noise_dbfs_hz for r in net}) == 7
    assert italy7(1)[0].profiles[0].band.seed != italy7(0)[0].profiles[0].band.seed


def test_italy7_served() -> None:
    with OwrxSimServer(italy7()) as sim:
        for rid, (name, lat, lon, _) in TABLE.items():
            doc = json.loads(http_get(sim.url(rid) + "status.json")[1])
            assert doc["receiver"]["name"] == name and doc["receiver"]["gps"] == {"lat": lat, "lon": lon}
        rid = "it-genova"  # the weakest: 7 dB SNR in 12.5 kHz
        cfg = next(r for r in italy7() if r.id == rid)
        offset = ITALY7_TUNE_HZ - cfg.profiles[0].center_freq
        rec = run_record(sim.ws_url(rid), 2.5, [dsp(offset, "nfm", -6250, 6250), START])
        truth = [s for s in sim.truth(rid).sessions if s.started][-1]
        assert truth.truth_power is not None and truth.dial_hz == ITALY7_TUNE_HZ
        values = rec.values("smeter")
        assert 10 * math.log10(np.mean(values)) == pytest.approx(10 * math.log10(truth.truth_power), abs=1.0)
        assert rec.audio()[0].size > 12000
