"""Parallel acquisition on dask against the demo7 simulator."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pytest
import xarray as xr

from sdrlab import model
from sdrlab.acquire import acquire, validate_request
from sdrlab.config import Settings
from sdrlab.demo import demo7_stations
from sdrlab.errors import CatalogError, ConfigError
from sdrlab.sim.networks import DEMO7_TUNE_HZ
from sdrlab.sim.scene import Faults
from sdrlab.stations import load_catalog
from tests.conftest import exact_clocks

SETTINGS = Settings(progress=False)


def envelope_lag_s(a: np.ndarray, b: np.ndarray, fs: float, center: int, max_lag: int) -> float:
    """Lag k/fs where b[n + k] matches a[n], from the cross-correlation of the AM envelopes,
    searched within center +- max_lag samples, with a parabolic sub-sample peak fit."""
    ea = np.abs(a) - np.abs(a).mean()
    eb = np.abs(b) - np.abs(b).mean()
    n = 1 << int(np.ceil(np.log2(len(ea) + len(eb))))
    xc = np.fft.irfft(np.fft.rfft(eb, n) * np.conj(np.fft.rfft(ea, n)), n)
    lags = np.arange(center - max_lag, center + max_lag + 1)
    k = int(lags[np.argmax(xc[lags % n])])
    y0, y1, y2 = (xc[(k + d) % n] for d in (-1, 0, 1))
    frac = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    return (k + frac) / fs


#: long enough for two GPS fixes everywhere and a noise floor to 1 dB under the music programme
DEMO_S = 8.0


@pytest.fixture(scope="module")
def demo_session():
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=3)
    with SimServer(scene, base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, DEMO_S, settings=SETTINGS, write=False)
        streams = {r.receiver_id: r for r in sim.streams}
    return scene, session, streams


def test_all_seven_captured_with_gps_times(demo_session):
    scene, session, streams = demo_session
    ds = session.dataset
    assert session.ok == [rx.id for rx in scene.receivers]
    assert ds.sizes["station"] == 7
    window_start = np.datetime64(ds.attrs["window_start"].rstrip("Z"))
    assert ds.attrs["start_spread_s"] < 512 / 12000 + 1e-3  # one frame: every station from the start
    for rx in scene.receivers:
        s = ds.sel(station=rx.id)
        assert int(s["n_samples"]) >= DEMO_S * rx.sample_rate
        # The time fit is a least-squares line through the capture's fresh stamps (one per GPS fix,
        # each off by its own draw of the receiver's clock error, sd rx.gps_jitter_s; see
        # capture.fit_frames and the simulator's stamp_ns).  Its errors follow from where those
        # stamps lie: sd of the slope sigma / sqrt(Sxx), of the line at the capture's first sample
        # sigma * sqrt(1/k + mean(x)^2 / Sxx).  Each bound below is 5 of its sds, plus 100 ns for
        # the ns rounding of stamps and times.
        err = _fit_errors(s, rx.gps_jitter_s)
        assert err.fixes >= 2  # 8 s of capture: two to five fixes at demo7's 2-4 s fix intervals
        assert abs(float(s["sample_rate"]) - rx.sample_rate) / rx.sample_rate * DEMO_S < 1e-7 + 5 * err.rate_s
        # the capture starts at the frame of the stream holding the session's window start:
        # stream start + a whole number of frames, at most one frame before the window's start
        t0 = np.datetime64(timing_utc(streams[rx.id].t0_gps_ns))
        after_s = (s["start_time"].values - t0) / np.timedelta64(1, "ns") / 1e9
        frames = after_s * rx.sample_rate / 512
        assert abs(frames - round(frames)) * 512 / rx.sample_rate < 1e-7 + 5 * err.start_s, (rx.id, frames, err)
        # the frame holding the start is found by its raw stamp (window.py: the start is the latest
        # station's first raw stamp, each capture keeps from its frame whose raw stamp reaches it),
        # and that stamp's own fix error is not among the fitted ones: the fitted start can lie
        # after the window's start by that error less the line's
        slack = 1e-7 + 5 * err.raw_less_start_s
        before_window_s = (window_start - s["start_time"].values) / np.timedelta64(1, "ns") / 1e9
        assert -slack <= before_window_s < 512 / rx.sample_rate + slack, (rx.id, before_window_s, err)
        assert s["gps_status"].item() == "ok"
        assert float(s["latitude"]) == pytest.approx(rx.latitude, abs=1e-4)


class FitErrors(NamedTuple):
    fixes: int
    rate_s: float  # sd of the fitted rate's relative error times DEMO_S (seconds over the capture)
    start_s: float  # sd of the fitted time at the capture's first sample
    raw_less_start_s: float  # sd of (a raw stamp of another fix) - (the fitted time there)


def _fit_errors(s: xr.Dataset, sigma: float) -> FitErrors:
    """Standard deviations of the GPS time fit of one station's capture, from where its fresh
    stamps (the frames where last_gps_solution drops: a new fix) lie on the sample axis."""
    fs = float(s["sample_rate"])
    valid = s["frame_sample"].values >= 0
    last = s["frame_last_gps"].values[valid].astype(np.int16)
    stamped = s["frame_gps_ns"].values[valid] >= 0
    fresh = stamped & np.r_[False, np.diff(last) < 0]
    x = s["frame_sample"].values[valid][fresh] / fs
    k = int(x.size)
    if k < 2:
        return FitErrors(k, np.inf, np.inf, np.inf)
    sxx = float(((x - x.mean()) ** 2).sum())
    v0 = 1.0 / k + x.mean() ** 2 / sxx  # variance of the line at x = 0, in units of sigma^2
    return FitErrors(k, sigma * DEMO_S / np.sqrt(sxx), sigma * np.sqrt(v0), sigma * np.sqrt(1.0 + v0))


def timing_utc(gps_ns: int) -> np.datetime64:
    from sdrlab import timing

    return timing.gps_ns_to_utc(gps_ns, 18)


def test_propagation_delay_differences_recovered(demo_session):
    """Align every pair on the GPS time base and cross-correlate: the lag is the scene's delay
    difference, within one sample."""
    scene, session, _ = demo_session
    ds = session.dataset
    z = model.to_complex(ds)
    tx = scene.transmitters[0]
    t0 = {sid: ds["start_time"].sel(station=sid).values for sid in ds["station"].values}
    checked = 0
    for a, b in itertools.combinations(ds["station"].values, 2):
        fs = float(ds["sample_rate"].sel(station=a))
        n = int(min(ds["n_samples"].sel(station=[a, b]))) - 2048
        za = z.sel(station=a).values[:n]
        zb = z.sel(station=b).values[:n]
        dt0 = (t0[b] - t0[a]) / np.timedelta64(1, "s")
        # GPS times say where to look; the baseline (< 900 km = 36 samples) bounds the search
        lag = envelope_lag_s(za, zb, fs, center=int(round(-dt0 * fs)), max_lag=60)
        measured = lag + dt0  # (t_b - d_b = t_a - d_a)  ->  d_b - d_a
        truth = scene.delay_s(scene.receiver(b), tx) - scene.delay_s(scene.receiver(a), tx)
        assert abs(measured - truth) < 1.0 / fs, (a, b, measured, truth)
        checked += 1
    assert checked == 21


def test_two_faulty_stations_give_five_captures_and_two_clear_failures():
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=4).with_faults(demo_paris=Faults(down=True), demo_munich=Faults(badp=1))
    with SimServer(scene, base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, 1.0, settings=SETTINGS, write=False)
    assert sorted(session.failed) == ["demo-munich", "demo-paris"]
    assert len(session.ok) == 5
    ds = session.dataset
    assert set(ds["station"].values) == set(session.ok)
    table = session.status()
    assert table.loc["demo-paris", "error"].startswith("ReceiverDown")
    assert "badp=1" in table.loc["demo-munich", "error"]
    stored = json.loads(ds.attrs["station_status"])
    assert stored["demo-paris"]["status"] == "failed"
    assert stored["demo-munich"]["error_class"] == "ReceiverAuthError"
    assert model.station_status(ds).loc["demo-paris", "status"] == "failed"


def test_partial_station_keeps_its_data():
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=5).with_faults(demo_zurich=Faults(garbage_after_s=0.4))
    with SimServer(scene, base_port=0, speed=5) as sim:
        session = acquire(demo7_stations(sim.ports)[:5], DEMO7_TUNE_HZ, 2.0, settings=SETTINGS, write=False)
    r = session.results["demo-zurich"]
    assert r.status == "partial" and r.error_class == "ReceiverProtocolError"
    ds = session.dataset
    assert ds["status"].sel(station="demo-zurich").item() == "partial"
    assert 0 < int(ds["n_samples"].sel(station="demo-zurich")) < 2.0 * 12001


@contextlib.contextmanager
def _dask_cluster(tmp_path: Path, n_workers: int = 1, nthreads: int | None = 8) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A `dask scheduler` and ``n_workers`` `dask worker` processes on loopback (``nthreads``
    None: dask's default, one thread per core).  The scheduler picks its own port and writes its
    address to a scheduler file the workers read (a port probed free here could be taken by any
    outgoing connection before the scheduler binds it)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    sfile = tmp_path / "scheduler.json"
    sched = subprocess.Popen(
        [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(sfile),
         "--dashboard-address", "127.0.0.1:0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "scheduler.log", "w"), env=env, cwd=tmp_path,
    )
    workers = [subprocess.Popen(
        [str(bindir / "dask"), "worker", "--scheduler-file", str(sfile),
         *(("--nthreads", str(nthreads)) if nthreads else ()), "--no-nanny", "--dashboard-address", "127.0.0.1:0",
         "--host", "127.0.0.1", "--local-directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker{i}.log", "w"), env=env, cwd=tmp_path,
    ) for i in range(n_workers)]
    try:
        from distributed import Client

        deadline = time.time() + 60
        addr = ""
        while True:
            try:
                addr = addr or json.loads(sfile.read_text())["address"]
                with Client(addr, timeout="2s") as c:
                    if len(c.scheduler_info()["workers"]) == n_workers:
                        break
            except (OSError, ValueError, KeyError):
                pass
            if time.time() > deadline or sched.poll() is not None:
                raise RuntimeError("dask scheduler/workers did not come up:\n" + (tmp_path / "scheduler.log").read_text()
                                   + (tmp_path / "worker0.log").read_text())
            time.sleep(0.3)
        yield addr, workers
    finally:
        for p in (*workers, sched):
            if p.poll() is None:
                p.terminate()
        for p in (*workers, sched):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def dask_processes(tmp_path):
    """A `dask scheduler` and a `dask worker`, separate processes on loopback."""
    with _dask_cluster(tmp_path) as (addr, _):
        yield addr


def test_seven_stations_on_one_default_worker_start_together(tmp_path):
    """Issue 13: through a scheduler and one ordinary `dask worker` (default threads: 2 here),
    demo7 was captured in four batches 10 s apart.  Now the seven captures share one event loop
    and one window: all start within one frame of the window's start, at real rate."""
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    with _dask_cluster(tmp_path, n_workers=1, nthreads=None) as (addr, _):
        from distributed import Client

        with Client(addr, timeout="5s") as c:
            assert [w["nthreads"] for w in c.scheduler_info()["workers"].values()] == [os.cpu_count()]
        with SimServer(demo7(seed=14), base_port=0, speed=1.0) as sim:
            session = acquire(demo7_stations(sim.ports), DEMO7_TUNE_HZ, 3.0, settings=SETTINGS, scheduler=addr,
                              write=False)
    ds = session.dataset
    assert len(session.ok) == 7, session.status()
    starts = ds["start_time"].values
    spread_s = (starts.max() - starts.min()) / np.timedelta64(1, "ns") / 1e9
    assert spread_s < 1.0 and spread_s == pytest.approx(ds.attrs["start_spread_s"], abs=1e-6)
    assert spread_s <= 512 / 12000 + 1e-3  # in fact within one frame
    window_start = np.datetime64(ds.attrs["window_start"].rstrip("Z"))
    window_end = np.datetime64(ds.attrs["window_end"].rstrip("Z"))
    assert (window_end - window_start) == np.timedelta64(3_000_000_000, "ns")
    ends = starts + (ds["n_samples"].values / ds["sample_rate"].values * 1e9).astype("timedelta64[ns]")
    # the attributes are ISO 8601 to the microsecond, the window is decided on raw stamps and
    # start_time is the GPS fit over all of them (demo7's stamps jitter by up to 1 us)
    tol = np.timedelta64(5000, "ns")
    assert (starts <= window_start + tol).all() and (ends >= window_end - tol).all()  # all cover the window
    assert abs(np.datetime64(ds.attrs["common_start"].rstrip("Z")) - starts.max()) < np.timedelta64(1000, "ns")


def test_scheduler_address_gives_the_same_dataset(dask_processes):
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    from dataclasses import replace

    base = exact_clocks(demo7(seed=6))
    # a stationary signal (tone AM), so 1 s captures made a moment apart hold the same power
    scene = replace(base, transmitters=(replace(base.transmitters[0], modulation="am", params=()),))
    with SimServer(scene, base_port=0, speed=10) as sim:
        stations = demo7_stations(sim.ports)
        local = acquire(stations, DEMO7_TUNE_HZ, 1.0, settings=SETTINGS, write=False).dataset
        remote = acquire(stations, DEMO7_TUNE_HZ, 1.0, settings=SETTINGS, scheduler=dask_processes, write=False).dataset
    assert local is not None and remote is not None
    assert list(local["station"].values) == list(remote["station"].values)
    # each capture runs from the frame holding the window's start to the one holding its end:
    # whole frames, so a station may hold one frame more in one session than in the other
    sizes_l, sizes_r = dict(local.sizes), dict(remote.sizes)
    assert abs(sizes_l.pop("sample") - sizes_r.pop("sample")) <= 512
    assert abs(sizes_l.pop("frame") - sizes_r.pop("frame")) <= 1
    assert sizes_l == sizes_r
    assert (abs(local["n_samples"].values - remote["n_samples"].values) <= 512).all()
    for ds in (local, remote):  # every station covers the window: 1 s from its start
        assert (ds["n_samples"].values >= ds["sample_rate"].values * 1.0).all()
        assert ds.attrs["start_spread_s"] < 512 / 12000 + 1e-3
    assert {k: v.dtype for k, v in local.variables.items()} == {k: v.dtype for k, v in remote.variables.items()}
    for name in ("seq_gaps", "gps_status", "latitude", "longitude", "rx_chans", "hw", "status"):
        assert (local[name].values == remote[name].values).all(), name
    np.testing.assert_allclose(local["sample_rate"], remote["sample_rate"], atol=1e-4)
    time_keys = {"session_id", "title", "station_status", "window_start", "window_end", "common_start",
                 "common_end", "start_spread_s"}
    assert {k: v for k, v in local.attrs.items() if k not in time_keys} == {
        k: v for k, v in remote.attrs.items() if k not in time_keys
    }
    # the same signal at every station: power within 0.2 dB (noise differs between streams)
    # (over the samples every station holds in both: padding past n_samples is not signal)
    n = int(min(local["n_samples"].min(), remote["n_samples"].min()))
    p = lambda ds: 10 * np.log10((np.abs(model.to_complex(ds).isel(sample=slice(0, n))) ** 2).mean("sample"))  # noqa: E731
    np.testing.assert_allclose(p(local), p(remote), atol=0.2)


@pytest.mark.parametrize(
    ("freq", "dur", "pattern"),
    [
        (0.0, 1.0, "outside 0-30 MHz"),
        (-5.0, 1.0, "outside 0-30 MHz"),
        (31e6, 1.0, "outside 0-30 MHz"),
        (float("nan"), 1.0, "frequency"),
        (10e6, -1.0, "duration must be at least 0.1 s"),
        (10e6, 0.0, "duration must be at least 0.1 s"),
        (10e6, 1e-9, r"duration must be at least 0.1 s \(a few frames of samples\), got 1e-09"),
        (10e6, 0.099, "duration must be at least 0.1 s"),
        (10e6, float("nan"), "duration must be a finite number of seconds, got nan"),
        (10e6, float("inf"), "duration must be a finite number of seconds, got inf"),
        (10e6, 86400.5, "exceeds the maximum of 86400 s"),
    ],
)
def test_bad_parameters_are_named(freq, dur, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_request(freq, dur)
    with pytest.raises(ConfigError, match=pattern):
        acquire(["demo-berlin"], freq, dur, settings=SETTINGS, write=False)


def test_the_shortest_and_longest_durations_are_accepted():
    from sdrlab.acquire import MAX_DURATION_S, MIN_DURATION_S

    validate_request(10e6, MIN_DURATION_S)
    validate_request(10e6, MAX_DURATION_S)


def test_unknown_station_is_named():
    with pytest.raises(CatalogError, match="'demo-atlantis'"):
        acquire(["demo-berlin", "demo-atlantis"], 10e6, 1.0, settings=SETTINGS, write=False)


def test_session_writes_and_reopens_as_zarr(demo_session, tmp_path):
    from sdrlab.store import open_session, write_session

    _, session, _ = demo_session
    path = write_session(session.dataset, tmp_path)
    assert path.parent.name == "sessions" and path.name == session.session_id
    ds = open_session(path)
    assert ds["iq"].dtype == np.int16
    assert ds["iq"].chunks is not None  # lazy, dask-backed
    xr.testing.assert_equal(ds.load(), session.dataset)
    assert load_catalog()  # catalogue untouched


def test_shared_receiver_never_gets_more_connections_than_channels():
    """Three catalogue stations on one single-channel receiver: one connection only (never a
    too_busy); the first captures the session's window, and the other two cannot be simultaneous
    with it, so they fail saying why instead of being captured later."""
    from dataclasses import replace as dc_replace

    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=7).replace_receiver("demo-berlin", rx_chans=1)
    with SimServer(scene, base_port=0, speed=10) as sim:
        base = [s for s in demo7_stations(sim.ports) if s.id == "demo-berlin"][0]
        stations = [dc_replace(base, id=f"berlin-ch{i}", channels=1) for i in range(3)]
        session = acquire(stations, DEMO7_TUNE_HZ, 0.5, settings=SETTINGS, write=False)
        assert sim.max_connections("demo-berlin") == 1
    assert len(session.ok) == 1
    for sid, r in session.results.items():
        if sid not in session.ok:
            assert r.status == "failed" and r.error_class == "NoData", r
            assert "waited for a free channel" in r.message, r.message
        else:
            assert not any("busy" in e for e in r.capture.events)


def test_capture_metrics_travel_with_the_session_and_match_the_scene(demo_session):
    """Every capture's metrics are computed in its task, stored as (station,) variables with
    units, and agree with the scene's truth."""
    scene, session, _ = demo_session
    ds = session.dataset
    for name, units in (("snr_db", "dB"), ("noise_floor_dbfs_hz", "dBFS/Hz"), ("frequency_offset_hz", "Hz"),
                        ("signal_power_dbfs", "dBFS"), ("rssi_mean_dbm", "dBm")):
        assert ds[name].dims == ("station",) and ds[name].attrs["units"] == units
    for rx in scene.receivers:
        truth = scene.truth(rx.id, DEMO7_TUNE_HZ)
        s = ds.sel(station=rx.id)
        assert float(s["frequency_offset_hz"]) == pytest.approx(truth["frequency_offset_hz"], abs=1.0)
        assert float(s["noise_floor_dbfs_hz"]) == pytest.approx(truth["noise_density_dbfs_hz"], abs=1.0)
        assert float(s["signal_power_dbfs"]) == pytest.approx(truth["signal_power_dbfs"], abs=0.5)
        assert float(s["snr_db"]) == pytest.approx(truth["snr_db"], abs=0.5)
    table = session.status()
    assert {"snr_db", "noise_floor_dbfs_hz", "frequency_offset_hz"} <= set(table.columns)


def test_the_session_carries_its_metric_time_series(demo_session):
    """Every metric per station and 10 s interval (issue 13, item 4): the 8 s demo is one
    interval starting at each station's first sample, agreeing with the scene like the whole."""
    scene, session, _ = demo_session
    ds = session.dataset
    assert ds.attrs["interval_s"] == 10.0 and ds.sizes["interval"] == 1
    assert ds["interval_snr_db"].dims == ("station", "interval")
    np.testing.assert_array_equal(ds["interval_start"].values[:, 0], ds["start_time"].values)
    np.testing.assert_array_equal(ds["interval_samples"].values[:, 0], ds["n_samples"].values)
    for rx in scene.receivers:
        truth = scene.truth(rx.id, DEMO7_TUNE_HZ)
        s = ds.sel(station=rx.id, interval=0)
        assert float(s["interval_snr_db"]) == pytest.approx(truth["snr_db"], abs=0.5)
        assert float(s["interval_noise_floor_dbfs_hz"]) == pytest.approx(truth["noise_density_dbfs_hz"], abs=1.0)


def test_acquisition_writes_the_session_through_the_s3_store(s3_server, bucket, tmp_path):
    """As soon as it completes, the session (with a failed station recorded in its attributes)
    is committed to the S3 store and opens back identical."""
    from sdrlab.index import find_captures, make_engine
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer
    from sdrlab.store import Store

    store = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    scene = demo7(seed=8).with_faults(demo_paris=Faults(down=True))
    with SimServer(scene, base_port=0, speed=10) as sim:
        index = make_engine(f"sqlite:///{tmp_path}/index.db")
        session = acquire(demo7_stations(sim.ports)[4:], DEMO7_TUNE_HZ, 1.0, settings=SETTINGS, store=store,
                          index=index)
    assert session.store_error is None and session.path == f"s3://{bucket}/lab/sessions/{session.session_id}"
    # indexed after the commit, with the store key of each capture
    hits = find_captures(index)
    assert sorted(hits["station_id"]) == sorted(s for s in session.ok)
    assert all(k.startswith(session.path) for k in hits["store_key"])
    listed = store.sessions()
    assert list(listed.index) == [session.session_id]
    assert listed.loc[session.session_id, "status"] == "partial"
    back = store.open(session.session_id)
    assert json.loads(back.attrs["station_status"])["demo-paris"]["error_class"] == "ReceiverDown"
    xr.testing.assert_identical(back.load(), session.dataset)
    assert store.captures(session.session_id).loc["demo-paris", "status"] == "failed"


def test_store_failure_keeps_the_acquired_session():
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer
    from sdrlab.store import Store
    from tests.support.servers import _free_ports

    dead = Store("s3://sdrlab-gone/lab", {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{_free_ports(1)[0]}"}, "config_kwargs": {
        "connect_timeout": 1, "retries": {"max_attempts": 1}}})
    with SimServer(demo7(seed=9), base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports)[:2], DEMO7_TUNE_HZ, 0.5, settings=SETTINGS, store=dead,
                          index=False)
    assert session.path is None and "127.0.0.1" in (session.store_error or "")
    assert session.dataset is not None and session.dataset.sizes["station"] == 2


def test_a_down_index_loses_nothing(tmp_path):
    """The store commit succeeds, the index is unreachable: the session is stored, the error is
    reported, and indexing it later from the store gives the rows."""
    from sdrlab.index import find_captures, index_session, init_db, make_engine
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer
    from sdrlab.store import Store
    from tests.support.servers import _free_ports

    store = Store(f"file://{tmp_path}/store")
    down = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_free_ports(1)[0]}/none")
    with SimServer(demo7(seed=10), base_port=0, speed=10) as sim:
        session = acquire(demo7_stations(sim.ports)[:2], DEMO7_TUNE_HZ, 0.5, settings=SETTINGS, store=store,
                          index=down)
    assert session.path is not None and "index" in (session.index_error or "")
    assert list(store.sessions().index) == [session.session_id]
    later = make_engine(f"sqlite:///{tmp_path}/index.db")
    init_db(later)
    index_session(later, store.open(session.session_id), session.path)
    assert len(find_captures(later)) == 2


def test_extra_attrs_travel_with_the_session_but_cannot_replace_sdrlabs(run_sim, scene, tmp_path):
    from conftest import station_for
    from sdrlab.errors import ConfigError
    from sdrlab.model import RESERVED_ATTRS, build_dataset

    with run_sim(scene) as sim:
        st = station_for(sim, scene, scene.receivers[0].id)
        with pytest.raises(ConfigError, match="'title' set by sdrlab"):
            acquire([st], 9_749_000.0, 0.5, write=False, progress=False, attrs={"title": "mine", "note": "x"})
        assert sim.connection_count(st.id) == 0  # refused before anything was acquired
        s = acquire([st], 9_749_000.0, 0.5, write=False, progress=False, attrs={"experiment": "roof antenna"})
    assert s.dataset.attrs["experiment"] == "roof antenna"
    # every attribute sdrlab sets is reserved
    assert set(s.dataset.attrs) - {"experiment"} <= RESERVED_ATTRS
    assert set(build_dataset([s.results[st.id].capture], {st.id: st}).attrs) <= RESERVED_ATTRS


def test_a_receiver_that_keeps_dropping_is_partial_with_its_gaps_named():
    """A receiver that drops the connection every 3 s of stream: the capture completes from its
    reconnects, but the station is partial and the message names each gap and its cause."""
    from sdrlab.receivers.kiwisdr import KiwiOptions
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    scene = demo7(seed=8).with_faults(demo_paris=Faults(close_after_s=3.0, close_times=-1))
    opts = KiwiOptions(reconnect_delay=0.05, connect_delay=0.05, read_timeout=2.0, reconnect_retries=10)
    # speed 2: a reconnect (handshake, 0.05 s back-off) costs little of the 8 s window in
    # simulated time, as at real rate
    with SimServer(scene, base_port=0, speed=2) as sim:
        stations = [s for s in demo7_stations(sim.ports) if s.id in ("demo-paris", "demo-berlin")]
        session = acquire(stations, DEMO7_TUNE_HZ, 8.0, settings=SETTINGS, write=False, options=opts)
    paris, berlin = session.results["demo-paris"], session.results["demo-berlin"]
    assert berlin.status == "ok" and not berlin.message
    assert paris.status == "partial" and paris.capture is not None
    assert len(paris.capture.segments) >= 2
    assert paris.message.startswith(f"{len(paris.capture.segments)} segment(s)")
    # each gap named; every segment but the first lasted the 3 s between drops (the first is cut
    # at the window's start, the latest first frame of the two stations, which can be a few frames
    # after paris's own)
    assert paris.message.count("reconnected after") == len(paris.capture.segments) - 1
    assert paris.message.count("reconnected after 3.0 s") >= len(paris.capture.segments) - 2
    assert "s lost" in paris.message
    table = session.status()
    assert table.loc["demo-paris", "status"] == "partial" and "reconnected" in table.loc["demo-paris", "notes"]
    # the window, 8 s, is covered from its start to its end; the gaps are what is missing
    ds = session.dataset
    start = np.datetime64(ds.attrs["window_start"].rstrip("Z"))
    end = np.datetime64(ds.attrs["window_end"].rstrip("Z"))
    segs = paris.capture.segments
    frame = np.timedelta64(round(512 / 12000 * 1e9), "ns")
    first = np.datetime64(timing_utc(segs[0].fit.t0_gps_ns))
    last = np.datetime64(timing_utc(segs[-1].fit.t0_gps_ns + round(segs[-1].n_samples / segs[-1].fit.fs * 1e9)))
    assert start - frame <= first <= start + frame
    # to the window's end (less a reconnect still under way when it ended, under load)
    assert end - np.timedelta64(1, "s") <= last <= end + frame
    assert 0.5 * 8.0 * 12000 < int(ds.sel(station="demo-paris")["n_samples"]) < 8.0 * 12000


def _worker_of(addr: str, key_prefix: str) -> dict[str, str]:
    """Which worker address is processing each task whose key starts with ``key_prefix``."""
    from distributed import Client

    with Client(addr, timeout="5s") as c:
        info = c.processing()
    return {key: w for w, keys in info.items() for key in keys if str(key).startswith(key_prefix)}


def test_a_worker_killed_mid_capture_is_named_not_silently_recaptured_late(tmp_path):
    """SIGKILL of one of two dask workers mid-acquisition (issue 13: its stations were captured
    again from scratch 10-31 s late and the table said ok): those stations fail naming the dead
    worker, the others are ok, nothing hangs."""
    import signal

    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    with _dask_cluster(tmp_path, n_workers=2, nthreads=4) as (addr, workers):
        with SimServer(demo7(seed=12), base_port=0, speed=2.0) as sim:
            stations = demo7_stations(sim.ports)[:4]
            box: dict[str, object] = {}
            t = threading.Thread(target=lambda: box.update(s=acquire(
                stations, DEMO7_TUNE_HZ, 12.0, settings=SETTINGS, scheduler=addr, write=False)))
            t.start()
            deadline = time.time() + 30
            while sum(sim.connections(s.id) for s in stations) < 4 and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(2.0)
            where = _worker_of(addr, "acquire-g")  # one task per group: acquire-g{group}-{session}
            victim_addr = sorted(set(where.values()))[0]
            from distributed import Client

            from sdrlab.acquire import _groups

            with Client(addr, timeout="5s") as c:
                pids = c.run(os.getpid)
                members = [[st.id for st in g] for _a, g in _groups(c, stations)]
            victims = {sid for k, w in where.items() if w == victim_addr
                       for sid in members[int(k.split("-")[1][1:])]}
            os.kill(pids[victim_addr], signal.SIGKILL)
            t.join(120)
            assert not t.is_alive()
    session = box["s"]
    assert victims
    for sid, res in session.results.items():
        if sid in victims:
            assert res.status == "failed" and res.error_class == "WorkerDied", (sid, res)
        else:
            assert res.status == "ok", (sid, res)


def test_every_worker_dead_ends_the_acquisition_instead_of_waiting_forever(tmp_path, monkeypatch):
    import signal

    import sdrlab.acquire as acq
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer

    monkeypatch.setattr(acq, "NO_WORKER_GRACE_S", 3.0)
    with _dask_cluster(tmp_path, n_workers=1, nthreads=4) as (addr, workers):
        with SimServer(demo7(seed=13), base_port=0, speed=1.0) as sim:
            stations = demo7_stations(sim.ports)[:2]
            box: dict[str, object] = {}
            t = threading.Thread(target=lambda: box.update(s=acquire(
                stations, DEMO7_TUNE_HZ, 30.0, settings=SETTINGS, scheduler=addr, write=False)))
            t.start()
            deadline = time.time() + 30
            while sum(sim.connections(s.id) for s in stations) < 2 and time.time() < deadline:
                time.sleep(0.1)
            t_kill = time.monotonic()
            workers[0].send_signal(signal.SIGKILL)
            t.join(60)
            assert not t.is_alive() and time.monotonic() - t_kill < 30
    session = box["s"]
    assert all(r.status == "failed" and r.error_class == "NoWorkers" for r in session.results.values())
