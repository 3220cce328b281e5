"""The stations table from the catalogue and the receivers' status pages, read by each protocol's
reader through the registry (the simulator serves KiwiSDR's /status), on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from sdrlab.demo import demo7_stations
from sdrlab.index.models import AvailabilityRow, StationRow
from sdrlab.index.stations import availability_per_day, sync_stations
from sdrlab.receivers import probe_status
from sdrlab.sim.networks import demo7
from sdrlab.sim.server import SimServer
from tests.support.servers import _free_ports


def test_sync_fills_from_status_and_records_availability(engine):
    scene = demo7().replace_receiver("demo-paris", antenna="T2FD 20 m")
    with SimServer(scene, base_port=0) as sim:
        stations = demo7_stations(sim.ports)
        dead = replace(stations[0], id="demo-gone", port=_free_ports(1)[0])
        reports = sync_stations(engine, [*stations, dead], probe=probe_status)
    by = {r["station"]: r for r in reports}
    assert all(by[s.id]["up"] for s in stations) and by["demo-gone"]["up"] is False
    assert "demo-gone" in by and by["demo-gone"]["error"]
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(select(StationRow.__table__)).all()}
        avail = c.execute(select(AvailabilityRow.__table__)).all()
    assert rows["demo-paris"].antenna == "T2FD 20 m"  # from the receiver's own /status page
    assert rows["demo-berlin"].channels == 4 and rows["demo-berlin"].freq_max_hz == 30e6
    assert len(avail) == 8 and sum(a.up for a in avail) == 7
    day = availability_per_day(engine)
    assert day.set_index("station_id").loc["demo-gone", "up_fraction"] == 0.0
    # a station dropped from the catalogue becomes inactive, its row stays
    sync_stations(engine, stations)  # no probe
    with engine.connect() as c:
        gone = c.execute(select(StationRow.__table__).where(StationRow.id == "demo-gone")).one()
    assert gone.active is False


def test_sync_tells_a_server_without_gps_fixes(engine):
    """UberSDR's KiwiSDR emulation says gps_good=1 with fixes=0, fixes_hour=0: not GPS-timed."""
    scene = demo7().replace_receiver("demo-berlin", kind="ubersdr", sample_rate=12000.02)
    with SimServer(scene, base_port=0) as sim:
        reports = {r["station"]: r for r in sync_stations(engine, demo7_stations(sim.ports), probe=probe_status)}
    assert reports["demo-berlin"]["gps"] == "no fixes" and str(reports["demo-berlin"]["hw"]).startswith("UberSDR")
    assert reports["demo-paris"]["gps"] == "ok" and str(reports["demo-paris"]["hw"]).startswith("KiwiSDR")


def test_sync_of_openwebrx_receivers_reads_their_status_json(engine):
    """The simulated italy7 network: each receiver's /status.json (OpenWebRX's reader, through the
    registry) gives its name, clients, the span of its profiles and its own position, which wins
    over a catalogue entry that puts it elsewhere."""
    from sdrlab.demo import network_stations
    from sdrlab.sim.owrx.networks import italy7
    from sdrlab.sim.owrx.server import OwrxSimServer

    configs = italy7()
    with OwrxSimServer(configs, base_port=0) as sim:
        stations = network_stations("italy7", sim.ports)
        stations[0] = replace(stations[0], latitude=0.0, longitude=0.0)  # a wrong catalogue position
        reports = sync_stations(engine, stations, probe=probe_status)
    assert all(r["up"] and r["gps"] == "none" and r["hw"].startswith("OpenWebRX") for r in reports)
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(select(StationRow.__table__)).all()}
    for cfg in configs:
        row = rows[cfg.id]
        assert row.protocol == "openwebrx" and row.channels == cfg.max_clients
        assert (row.latitude, row.longitude, row.altitude) == (cfg.lat, cfg.lon, cfg.asl)
        spans = [(p.center_freq - p.samp_rate / 2, p.center_freq + p.samp_rate / 2) for p in cfg.profiles]
        assert row.freq_min_hz == min(a for a, _ in spans) and row.freq_max_hz == max(b for _, b in spans)
        assert row.freq_min_hz <= 145.5e6 <= row.freq_max_hz
