"""The Italian OpenWebRX network end to end: ``sdrlab acquire --network italy7`` against the seven
simulated OpenWebRX receivers at 145.5 MHz over real sockets, the session stored and indexed,
its metrics against the simulator's truth, and the report rendered from it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from sdrlab.cli import main
from sdrlab.index import find_captures, make_engine
from sdrlab.index.models import MetricRow
from sdrlab.runs import run_notebook
from sdrlab.sim.owrx.networks import ITALY7_TUNE_HZ, italy7
from sdrlab.sim.owrx.server import OwrxSimServer
from sdrlab.stations import load_catalog
from sdrlab.store import Store

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "notebooks" / "report.ipynb"


def _catalog(tmp_path: Path, ports: dict[str, int]) -> Path:
    lines = []
    for s in load_catalog().network("italy7"):
        lines += ["[[station]]", f'id = "{s.id}"', f'name = "{s.name}"', 'host = "127.0.0.1"',
                  f"port = {ports[s.id]}", f"latitude = {s.latitude}", f"longitude = {s.longitude}",
                  f"altitude = {s.altitude}", "channels = 1", 'protocol = "openwebrx"', 'network = "italy7"', ""]
    p = tmp_path / "stations.toml"
    p.write_text("\n".join(lines))
    return p


@pytest.fixture(scope="module")
def italy7_session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("italy7")
    mp = pytest.MonkeyPatch()
    mp.setenv("SDRLAB_PROGRESS", "0")
    mp.setenv("SDRLAB_DB", f"sqlite:///{tmp}/index.db")
    mp.setenv("SDRLAB_STORE", f"file://{tmp}/store")
    try:
        receivers = italy7()
        with OwrxSimServer(receivers, base_port=0) as sim:
            cat = _catalog(tmp, sim.ports)
            rc = main(["acquire", "--network", "italy7", "--frequency", str(ITALY7_TUNE_HZ), "--duration", "6",
                       "--catalog", str(cat)])
            truth = {r.id: sim.truth(r.id) for r in receivers}
    finally:
        mp.undo()
    store = Store(f"file://{tmp}/store")
    [sid] = store.sessions().index
    return {"rc": rc, "tmp": tmp, "store": store, "sid": sid, "ds": store.open(sid), "truth": truth}


def test_seven_openwebrx_receivers_acquired_in_parallel_stored_and_indexed(italy7_session):
    s = italy7_session
    assert s["rc"] == 0
    ds = s["ds"]
    assert sorted(ds["station"].values) == sorted(x.id for x in load_catalog().network("italy7"))
    assert set(ds["kind"].values) == {"audio"} and set(ds["timing"].values) == {"receipt"}
    assert ds.attrs["protocol"] == "openwebrx" and ds.attrs["timing"] == "receipt"
    assert set(ds["status"].values) == {"ok"}
    # each delivered about 6 s of 12 kHz audio, the rate measured from sample counts within 1 %
    rates = ds["sample_rate"].values
    assert np.all(np.abs(rates / 12000.0 - 1) < 0.01), rates
    assert (ds["n_samples"].values >= 0.8 * 6 * 12000).all()
    # the receivers' own positions (receiver_details) are in the session
    assert set(ds["position_source"].values) == {"receiver"}
    # simultaneous: every station's first audio within 1 s of the others' (receipt times)
    t0 = ds["start_time"].values
    assert (t0.max() - t0.min()) / np.timedelta64(1, "s") < 1.0
    engine = make_engine(f"sqlite:///{s['tmp']}/index.db")
    hits = find_captures(engine)
    assert len(hits) == 7 and np.isfinite(hits["snr_db"].astype(float)).all()
    # the waterfall's occupancy and channel power are indexed (schema 5) as the session measured them
    with engine.connect() as c:
        rows = pd.read_sql(select(MetricRow.station_id, MetricRow.occupancy_fraction, MetricRow.channel_power_fft_dbfs),
                           c).set_index("station_id")
    for m in ("occupancy_fraction", "channel_power_fft_dbfs"):
        want = ds[m].to_series().astype(float)
        assert np.isfinite(want).all(), m
        np.testing.assert_allclose(rows.loc[want.index, m].astype(float).to_numpy(), want.to_numpy(), rtol=1e-12,
                                   err_msg=m)


def test_channel_power_and_noise_floor_match_the_simulators_truth(italy7_session):
    ds, truth = italy7_session["ds"], italy7_session["truth"]
    for sid in ds["station"].values:
        t = truth[str(sid)]
        [listened] = [x for x in t.sessions if x.started]
        # S-meter: the channel's power (signal + noise through the passband) within 1 dB
        got = float(ds["total_power_dbfs"].sel(station=sid))
        assert got == pytest.approx(10 * np.log10(listened.truth_power), abs=1.0), sid
        # waterfall: the noise density within 1 dB (the median bin; signals cover a few % of the span)
        n0 = float(ds["noise_floor_dbfs_hz"].sel(station=sid))
        assert n0 == pytest.approx(t.noise_dbfs_hz[listened.sdr_id], abs=1.0), sid


def test_the_report_shows_the_session(italy7_session, tmp_path):
    s = italy7_session
    r = run_notebook(REPORT, {"session": s["sid"], "store": f"file://{s['tmp']}/store",
                              "db": f"sqlite:///{s['tmp']}/index.db"},
                     output=tmp_path / "r.ipynb", html=tmp_path / "r.html")
    html = Path(r.html).read_text()
    for sid in s["ds"]["station"].values:
        assert str(sid) in html
    assert "receipt times" in html
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) >= 4


def test_protocol_options_choose_the_openwebrx_demodulator_in_a_session(tmp_path):
    """``acquire(protocol_options={"openwebrx": OwrxOptions(mode="am")})``: the OpenWebRX stations
    of the session listen in AM with AM's passband (the receiver's own modes), recorded per segment."""
    from sdrlab.acquire import acquire
    from sdrlab.config import Settings
    from dataclasses import replace

    from sdrlab.receivers.openwebrx import OwrxOptions

    receivers = italy7()[:2]
    with OwrxSimServer(receivers, base_port=0) as sim:
        stations = [replace(s, port=sim.ports[s.id]) for s in load_catalog().network("italy7") if s.id in sim.ports]
        session = acquire(stations, ITALY7_TUNE_HZ, 3.0, settings=Settings(progress=False), write=False,
                          protocol_options={"openwebrx": OwrxOptions(mode="am")})
        modes = {r.id: [s.mod for s in sim.truth(r.id).sessions if s.started] for r in receivers}
    ds = session.dataset
    assert set(ds["audio_segment_mode"].values[:, 0]) == {"am"}
    assert all(m == ["am"] for m in modes.values()), modes
    assert (ds["audio_segment_low_cut"].values[:, 0] == -4000).all()
    assert (ds["audio_segment_high_cut"].values[:, 0] == 4000).all()
