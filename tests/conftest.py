"""Shared fixtures: the simulator on ephemeral loopback ports, fast client options."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

import pytest

from sdrlab.receivers.kiwisdr import KiwiOptions, KiwiReceiver
from sdrlab.sim.networks import demo7
from sdrlab.sim.scene import Scene
from sdrlab.stations import Station


#: The longest test modules, longest first (module totals of a `make test` run under xdist,
#: 2026-12-07). ``make test`` hands whole modules to its workers (``--dist loadscope``) in collection
#: order, so these go first and the many short ones fill in after: no long module starts last and
#: leaves one worker idle at the end. Only the order changes, never what runs.
LONGEST_FIRST = (
    "tests/test_lab.py", "tests/test_runs.py", "tests/test_monitor.py", "tests/tdoa/test_matrix.py",
    "tests/notebooks/test_notebooks.py", "tests/test_store.py", "tests/test_recording.py",
    "tests/test_cli.py", "tests/test_acquire.py", "tests/tdoa/test_tdoa.py", "tests/test_italy7.py",
    "tests/receivers/test_openwebrx.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def key(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(root).as_posix(), len(rank))
        except ValueError:  # outside the checkout
            return len(rank)

    items.sort(key=key)  # stable: within a module, and among the rest, collection order


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes into the working tree: the default store is a per-test temp directory."""
    monkeypatch.setenv("SDRLAB_STORE", f"file://{tmp_path}/default-store")
    # beside the store, not in it: an SQLite index needs its directory (only the store's own is made)
    monkeypatch.setenv("SDRLAB_DB", f"sqlite:///{tmp_path}/index.db")
    monkeypatch.setenv("SDRLAB_PROGRESS", "0")
    monkeypatch.setenv("SDRLAB_RESCUE", f"file://{tmp_path}/rescue")


@pytest.fixture
def scene() -> Scene:
    return demo7(seed=1)


@pytest.fixture
def fast_options() -> KiwiOptions:
    """Retry delays and watchdogs scaled down so fault tests take a fraction of a second."""
    return KiwiOptions(
        connect_delay=0.05, busy_delay=0.05, reconnect_delay=0.05, read_timeout=0.6,
        handshake_timeout=5.0, connect_timeout=5.0, busy_retries=3, connect_retries=2,
    )


@pytest.fixture
def run_sim() -> Iterator[Any]:
    """``with run_sim(scene, speed=..., **kw) as sim``: a simulator in a thread, stopped after."""
    from sdrlab.sim.server import SimServer

    started: list[Any] = []

    @contextmanager
    def _run(scene: Scene, **kw: Any) -> Iterator[Any]:
        kw.setdefault("base_port", 0)
        kw.setdefault("speed", 10.0)
        sim = SimServer(scene, **kw).start_in_thread()
        started.append(sim)
        try:
            yield sim
        finally:
            sim.stop_thread()
            started.remove(sim)

    yield _run
    for sim in started:
        sim.stop_thread()


def exact_clocks(scene: Scene) -> Scene:
    """The scene with every receiver's GPS stamp jitter removed (tests of the time-fit arithmetic)."""
    return replace(scene, receivers=tuple(replace(rx, gps_jitter_s=0.0) for rx in scene.receivers))


def station_for(sim: Any, scene: Scene, rx_id: str) -> Station:
    rx = scene.receiver(rx_id)
    return Station(
        id=rx.id, name=rx.name, host="127.0.0.1", port=sim.ports[rx.id], latitude=rx.latitude,
        longitude=rx.longitude, altitude=rx.altitude_m, channels=rx.rx_chans, network="test",
    )


def receiver_for(sim: Any, scene: Scene, rx_id: str, options: KiwiOptions, **changes: Any) -> KiwiReceiver:
    st = station_for(sim, scene, rx_id)
    return KiwiReceiver(st.id, st.host, st.port, channels=st.channels, options=replace(options, **changes))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A real S3 server (SeaweedFS) on loopback for the whole test run."""
    from tests.support.servers import SeaweedS3

    srv = SeaweedS3().start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL 15 on loopback for the whole test run (tests.support.servers.Postgres)."""
    from tests.support.servers import Postgres

    srv = Postgres().start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def bucket(s3_server: Any) -> Iterator[str]:
    """A fresh bucket (valid S3 name), removed afterwards."""
    import uuid

    import s3fs

    name = f"sdrlab-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**s3_server.storage_options, use_listings_cache=False, skip_instance_cache=True)
    for attempt in range(20):  # the first bucket after start-up can take a moment
        try:
            fs.mkdir(name)
            break
        except Exception:
            if attempt == 19:
                raise
            import time

            time.sleep(0.2)
    yield name
    try:
        fs.rm(name, recursive=True)
    except Exception:
        pass


@pytest.fixture
def dcf77_dir() -> Any:
    """``../shared/data/real/dcf77-20200813`` (or under ``SDRLAB_REALDATA``); skips when absent."""
    from tests.support.realdata import realdata

    return realdata("dcf77-20200813")
