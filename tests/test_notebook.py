"""The helpers the workbench notebooks call (sdrlab.notebook)."""

from __future__ import annotations

import numpy as np
import pytest

import sdrlab.notebook as nb
from sdrlab import testing
from sdrlab.errors import AcquisitionError, CatalogError, ConfigError
from sdrlab.sim.networks import DEMO7_TX, demo7
from sdrlab.store import Store


@pytest.mark.parametrize("call, message", [
    (lambda: nb.check_acquisition(-5.0, 1.0), "frequency -5 Hz is outside 0-6000 MHz"),
    (lambda: nb.check_acquisition(7e9, 1.0), "frequency 7e+09 Hz is outside 0-6000 MHz"),
    (lambda: nb.check_acquisition(9e6, 0), "duration"),
    (lambda: nb.check_acquisition("9e6", 1.0), "parameter frequency_hz must be int or float, got '9e6'"),
    (lambda: nb.check_acquisition(9e6, True), "parameter duration_s must be int or float, got True"),
    (lambda: nb.check_type("simulate", "yes", bool), "parameter simulate must be bool, got 'yes'"),
    (lambda: nb.check_positive("days", 0), "parameter days must be a finite positive number, got 0"),
    (lambda: nb.check_positive("days", float("inf")), "parameter days must be a finite positive number, got inf"),
    (lambda: nb.check_choice("metric", "snr", ["snr_db", "power"]), "parameter metric must be one of 'snr_db', 'power'"),
    (lambda: nb.parse_station_spec(""), "parameter stations is empty"),
    (lambda: nb.parse_station_spec("demo7, Köln"), "'Köln' is not a station id or network name"),
    (lambda: nb.check_session_param("../etc"), "parameter session:"),
])
def test_parameter_checks_name_the_parameter(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert message in str(err.value)


def test_good_parameters_pass():
    assert nb.check_acquisition(9_749_000, 2) == (9_749_000.0, 2.0)
    assert nb.parse_station_spec("demo-berlin, demo-paris demo7") == ["demo-berlin", "demo-paris", "demo7"]
    assert nb.check_session_param("") == "" and nb.check_session_param("latest") == "latest"


def test_workbench_settings_inside_a_checkout_use_its_data_dir(tmp_path, monkeypatch):
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    (root / "sdrlab").mkdir()
    (root / "pyproject.toml").write_text("")
    monkeypatch.chdir(root / "notebooks")  # where Jupyter starts a notebook's kernel
    monkeypatch.delenv("SDRLAB_STORE")
    monkeypatch.delenv("SDRLAB_DB")
    s = nb.workbench_settings()
    assert s.store == f"file://{root / 'sdrlab-data'}"
    assert s.db == f"sqlite:///{root / 'sdrlab-data' / 'index.db'}"
    assert nb.workbench_settings("file:///elsewhere").store == "file:///elsewhere"  # a parameter wins
    monkeypatch.setenv("SDRLAB_STORE", "file:///from-env")
    assert nb.workbench_settings().store == "file:///from-env"  # so does the environment


def test_simulated_stations_are_served_and_a_subset_can_be_named():
    stations, scene = nb.choose_stations("demo-berlin,demo-paris", simulated=True)
    assert [s.id for s in stations] == ["demo-berlin", "demo-paris"]
    assert scene.name == "demo7" and all(s.host == "127.0.0.1" and s.port > 0 for s in stations)
    assert nb.scene_attrs(scene)["transmitter_latitude"] == DEMO7_TX.latitude
    with pytest.raises(ConfigError, match="demo-nowhere not in the simulated network demo7"):
        nb.choose_stations("demo-nowhere", simulated=True)


def test_catalogue_stations_by_network_all_or_ids():
    assert len(nb.choose_stations("demo7", simulated=False)[0]) == 7
    assert [s.id for s in nb.choose_stations("demo-paris", simulated=False)[0]] == ["demo-paris"]
    with pytest.raises(CatalogError):
        nb.choose_stations("no-such-station", simulated=False)


def test_acquire_session_with_every_station_down_says_why(monkeypatch):
    from sdrlab.sim.scene import Faults

    monkeypatch.setattr(nb, "simulate", _down_simulator(Faults(down=1)))
    settings = nb.workbench_settings()
    with pytest.raises(AcquisitionError, match="no station delivered data .*demo-berlin: ReceiverDown"):
        nb.acquire_session("demo-berlin", 9_749_000.0, 1.0, simulated=True, settings=settings)


def _down_simulator(faults):
    real = nb.simulate

    def simulate(network="demo7", *, seed=0, speed=1.0):
        server, scene = real(network, seed=seed, speed=speed)
        for rx in scene.receivers:
            server.set_faults(rx.id, faults)
        return server, scene

    return simulate


def test_pick_session_station_table_heading_and_methods(tmp_path):
    store = Store(f"file://{tmp_path}/s")
    with pytest.raises(ConfigError, match="no sessions in the store .* yet"):
        nb.pick_session(store)
    ds = testing.synthetic_dataset(n_stations=3, duration_s=1.0)
    from sdrlab.acquire import add_metrics

    ds = add_metrics(ds)
    store.write(ds)
    sid = ds.attrs["session_id"]
    assert nb.pick_session(store) == sid == nb.pick_session(store, "latest") == nb.pick_session(store, sid)
    with pytest.raises(ConfigError, match="is not in the store"):
        nb.pick_session(store, "20200101T000000Z-000000")
    opened = store.open(sid)
    table = nb.station_table(opened)
    assert list(table.index) == [str(s) for s in ds.station.values]
    assert (table["status"] == "ok").all()
    np.testing.assert_array_equal(table["SNR (dB)"].to_numpy(), np.round(ds["snr_db"].values.astype(float), 1))
    head = nb.heading(opened)
    assert head.startswith(f"## Session `{sid}`") and "3 stations (3 ok)" in head
    assert "**SNR (dB)**" in nb.methods_note(opened)


@pytest.fixture(autouse=True)
def _no_simulator_left():
    yield
    nb.stop_simulators()


def test_bad_station_names_start_no_simulator_and_good_ones_reuse_it():
    with pytest.raises(ConfigError):
        nb.choose_stations("demo-atlantis", simulated=True)
    assert nb._SERVERS == {}
    first, _ = nb.choose_stations("demo7", simulated=True)
    again, _ = nb.choose_stations("demo-paris", simulated=True)
    assert len(nb._SERVERS) == 1 and again[0].port == {s.id: s.port for s in first}["demo-paris"]
