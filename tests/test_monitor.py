"""Monitoring campaigns (sdrlab.monitor): schedules, a simulated day, resuming, the CLI."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from sdrlab.config import Settings
from sdrlab.demo import demo7_stations
from sdrlab.errors import ConfigError
from sdrlab.index import make_engine, metric_over_time
from sdrlab.index.models import IntervalMetricRow, MetricRow
from sdrlab.monitor import Campaign, done_slots, load_campaign, monitor
from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
from sdrlab.sim.scene import Faults
from sdrlab.sim.server import SimServer
from sdrlab.store import Store

THREE = ("demo-berlin", "demo-paris", "demo-munich")


def _stations(sim: SimServer) -> list[Any]:
    return [s for s in demo7_stations(sim.ports) if s.id in THREE]


def _sim_clock(sim: SimServer) -> Any:
    return lambda: sim.clock_ns() / 1e9


def test_a_simulated_day_gives_every_session_and_a_metric_time_series(tmp_path):
    """A day of 2 s sessions of three stations every two hours against the simulator, its clock
    advanced between slots (a day in well under a minute): 12 sessions two hours apart in GPS time,
    35 capture and 35 interval metric rows (36 less the slot one station was down); the hourly and daily aggregates equal the raw rows; one station down
    for an hour is a failed station of that slot, and the campaign goes on."""
    store = Store(f"file://{tmp_path}/store")
    engine = make_engine(f"sqlite:///{tmp_path}/index.db")
    campaign = Campaign("day-1", THREE, (DEMO7_TUNE_HZ,), duration_s=2.0, every_s=7200.0, total_s=86400.0)
    with SimServer(demo7(seed=31), base_port=0, speed=10) as sim:
        def outage(session: Any) -> None:  # demo-paris is down for slot 5 only (two hours)
            slot = session.dataset.attrs["campaign_slot"]
            if slot == 4:
                sim.set_faults("demo-paris", Faults(down=True))
            elif slot == 5:
                sim.set_faults("demo-paris", Faults())

        report = monitor(campaign, settings=Settings(progress=False), stations=_stations(sim), store=store,
                         index=engine, clock=_sim_clock(sim), sleep=sim.advance, on_session=outage)
    assert len(report.sessions) == 12 and not report.missed and not report.skipped and not report.stopped
    slots = [s.dataset.attrs["campaign_slot"] for s in report.sessions]
    assert slots == list(range(12))
    for s in report.sessions:
        want_failed = ["demo-paris"] if s.dataset.attrs["campaign_slot"] == 5 else []
        assert s.failed == want_failed and len(s.ok) == 3 - len(want_failed), s.status()
        assert s.path is not None and s.index_error is None
    # an hour apart on the receivers' GPS clock
    starts = np.array([s.dataset["start_time"].values.min() for s in report.sessions])
    gaps_s = np.diff(starts) / np.timedelta64(1, "s")
    assert np.all(np.abs(gaps_s - 7200.0) < 30.0), gaps_s
    assert set(done_slots(store, "day-1")[0]) == {(k, DEMO7_TUNE_HZ) for k in range(12)}
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(MetricRow)).scalar() == 35
        assert c.execute(select(func.count()).select_from(IntervalMetricRow)).scalar() == 35
        raw = pd.read_sql_query(select(IntervalMetricRow.time, IntervalMetricRow.station_id,
                                       IntervalMetricRow.snr_db), c)
    raw["time"] = pd.to_datetime(raw["time"], utc=True).dt.tz_convert(None)
    # hourly buckets of the time series: each hour holds one interval per station, its own value
    hourly = metric_over_time(engine, "snr_db", bucket_s=3600, source="intervals")
    assert len(hourly) == 35 and (hourly["n"] == 1).all()
    merged = hourly.merge(raw.assign(bucket=raw["time"].dt.floor("h")), on=["bucket", "station_id"])
    np.testing.assert_allclose(merged["value"], merged["snr_db"], atol=1e-9)
    # daily: the linear-power mean of the raw rows of each station and day
    daily = metric_over_time(engine, "snr_db", bucket_s=86400, source="intervals")
    raw["day"] = raw["time"].dt.floor("D")
    want = raw.groupby(["day", "station_id"])["snr_db"].agg(lambda v: 10 * np.log10(np.mean(10 ** (v / 10))))
    got = daily.set_index(["bucket", "station_id"])["value"]
    assert got.index.tolist() == want.index.tolist()
    np.testing.assert_allclose(got.values, want.values, atol=1e-9)
    # the per-capture rows' hourly rollup agrees with their raw rows too
    roll = metric_over_time(engine, "snr_db", bucket_s=3600)
    rawc = metric_over_time(engine, "snr_db", bucket_s=3600, _raw=True)
    pd.testing.assert_frame_equal(roll.reset_index(drop=True), rawc.reset_index(drop=True), check_dtype=False,
                                  atol=1e-9)


def test_a_restarted_campaign_resumes_without_repeating_or_losing_a_slot(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    engine = make_engine(f"sqlite:///{tmp_path}/index.db")
    campaign = Campaign("resume-1", THREE[:2], (DEMO7_TUNE_HZ,), duration_s=1.0, every_s=60.0, total_s=240.0)
    with SimServer(demo7(seed=32), base_port=0, speed=10) as sim:
        stop = threading.Event()

        def stop_after_slot_1(session: Any) -> None:  # the command is killed after its second session
            if session.dataset.attrs["campaign_slot"] == 1:
                stop.set()

        kw: dict[str, Any] = dict(settings=Settings(progress=False), stations=_stations(sim)[:2], store=store,
                                  index=engine, clock=_sim_clock(sim), sleep=sim.advance)
        first = monitor(campaign, stop=stop, on_session=stop_after_slot_1, **kw)
        assert first.stopped and len(first.sessions) == 2
        second = monitor(campaign, **kw)  # the restart
    assert not second.stopped and not second.missed
    assert sorted(second.skipped) == [(0, DEMO7_TUNE_HZ), (1, DEMO7_TUNE_HZ)]
    assert [s.dataset.attrs["campaign_slot"] for s in second.sessions] == [2, 3]
    assert second.sessions[0].dataset.attrs["campaign_start"] == first.sessions[0].dataset.attrs["campaign_start"]
    done, _ = done_slots(store, "resume-1")
    assert done == {(k, DEMO7_TUNE_HZ) for k in range(4)} and len(store.sessions()) == 4


def test_campaign_files_and_their_mistakes(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text("id: beacon-watch\nstations: [demo-berlin, demo-paris]\nfrequencies_hz: [9749000, 10000000]\n"
                    "duration_s: 10\nevery_s: 600\ntotal_s: 86400\nstart: 2026-12-07T06:00:00Z\n")
    c = load_campaign(spec)
    assert (c.id, c.stations, c.frequencies_hz, c.every_s, c.n_slots()) == (
        "beacon-watch", ("demo-berlin", "demo-paris"), (9749000.0, 10000000.0), 600.0, 144)
    assert c.start is not None and c.start.isoformat() == "2026-12-07T06:00:00+00:00"
    for text, message in (
        ("id: x\nstations: [a]\nfrequencies_hz: [9e6]\nduration_s: 10\nevery_s: 15\nfrequencies: 1\n", "unknown key"),
        ("id: x\nstations: [a]\nfrequencies_hz: [9e6, 10e6]\nduration_s: 10\nevery_s: 15\n", r"every_s must be at least .*\(20 s\)"),
        ("id: x\nstations: [a]\nduration_s: 10\n", "missing frequencies_hz"),
        ("id: 'no spaces'\nstations: [a]\nfrequencies_hz: 9e6\nduration_s: 10\n", "campaign id"),
        ("id: x\nstations: [a]\nfrequencies_hz: 9e6\nduration_s: 0.01\n", "at least 0.1 s"),
        ("- just\n- a list\n", "expected a mapping"),
    ):
        spec.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_campaign(spec)


def test_sdrlab_monitor_runs_a_campaign_from_its_file(tmp_path, capsys):
    """The CLI on real time: two 1 s sessions 3 s apart, printed as they are stored."""
    from sdrlab.cli import main

    from tests.test_cli import _catalog

    with SimServer(demo7(seed=33), base_port=0, speed=1) as sim:
        cat = _catalog(tmp_path, sim.ports)
        spec = tmp_path / "c.yaml"
        spec.write_text(f"id: cli-1\nstations: [demo-berlin, demo-zurich]\nfrequencies_hz: [{DEMO7_TUNE_HZ}]\n"
                        "duration_s: 1\nevery_s: 3\ntotal_s: 6\n")
        assert main(["monitor", str(spec), "--catalog", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "campaign cli-1: 2 station(s), 1 frequency(ies), 1 s every 3 s, 2 slot(s)" in out
    assert "slot 0 9749000 Hz" in out and "slot 1 9749000 Hz" in out and "2 ok, 0 failed" in out
    assert "2 session(s) acquired, 0 already stored (resumed), 0 slot(s) missed" in out
    done, _ = done_slots(Settings.from_env().store_obj(), "cli-1")
    assert done == {(0, DEMO7_TUNE_HZ), (1, DEMO7_TUNE_HZ)}
    assert main(["monitor", str(Path(tmp_path) / "missing.yaml")]) == 2
