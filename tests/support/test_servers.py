"""tests.support.servers.Postgres: a real PostgreSQL 15 on loopback, started, killed and removed."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support import servers
from tests.support.servers import Postgres

psycopg = pytest.importorskip("psycopg")


def _dsn(srv: Postgres, dbname: str = "postgres") -> str:
    return f"host=127.0.0.1 port={srv.port} user=postgres dbname={dbname} connect_timeout=3"


@pytest.fixture
def pg() -> Iterator[Postgres]:
    srv = Postgres().start()
    try:
        yield srv
    finally:
        srv.cleanup()


def test_start_connect_create_database_query_kill_cleanup(pg: Postgres) -> None:
    assert pg.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres"
    assert pg.running
    d = pg.dir
    assert d is not None and d.is_dir()
    assert d.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert d.owner() == "postgres"  # initdb refuses root

    with psycopg.connect(_dsn(pg)) as conn:
        assert conn.execute("select current_setting('fsync'), current_setting('listen_addresses')").fetchone() \
            == ("off", "127.0.0.1")

    url = pg.create_database("sdrlab_t1")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/sdrlab_t1"
    with psycopg.connect(_dsn(pg, "sdrlab_t1")) as conn:
        conn.execute("create table m (station text, snr_db double precision)")
        conn.execute("insert into m values ('kiwi-1', 12.5), ('kiwi-2', 3.0)")
        conn.commit()
        assert conn.execute("select count(*), max(snr_db) from m").fetchone() == (2, 12.5)

    # a copy from a template, as the per-test fixture does
    pg.create_database("sdrlab_t2", template="sdrlab_t1")
    with psycopg.connect(_dsn(pg, "sdrlab_t2")) as conn:
        assert conn.execute("select count(*) from m").fetchone() == (2,)
    pg.drop_database("sdrlab_t2")
    with psycopg.connect(_dsn(pg)) as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
    assert {"sdrlab_t1", "postgres"} <= names and "sdrlab_t2" not in names

    # the URL is a working SQLAlchemy URL
    sqlalchemy = pytest.importorskip("sqlalchemy")
    eng = sqlalchemy.create_engine(url)
    with eng.connect() as c:
        assert c.execute(sqlalchemy.text("select sum(snr_db) from m")).scalar() == 15.5
    eng.dispose()

    held = psycopg.connect(_dsn(pg))
    pg.kill()
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_dsn(pg))
    with pytest.raises(psycopg.OperationalError):  # open connections break too
        held.execute("select 1")
    held.close()

    pg.cleanup()
    assert not d.exists()
    pg.cleanup()  # idempotent


def test_restart_after_kill_keeps_port_and_data(pg: Postgres) -> None:
    pg.create_database("keep")
    with psycopg.connect(_dsn(pg, "keep")) as conn:
        # the server runs synchronous_commit=off: without this a commit younger than ~200 ms
        # (wal_writer_delay) is lost by kill(), as in a real crash
        conn.execute("set synchronous_commit = on")
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")
        conn.commit()
    port = pg.port
    pg.kill()
    pg.start()  # crash recovery
    assert pg.port == port
    with psycopg.connect(_dsn(pg, "keep")) as conn:
        assert conn.execute("select x from t").fetchone() == (42,)
    pg.stop()
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_dsn(pg))
    pg.stop()  # idempotent


def test_start_failure_reports_the_log_tail() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    srv = Postgres(port=port)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)did not start.*could not bind"):
            srv.start()
        assert srv.dir is None  # the temp dir it made is gone again
        assert not srv.running
    finally:
        srv.cleanup()
        blocker.close()


def test_missing_binaries_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SDRLAB_PG_BINDIR", raising=False)
    monkeypatch.setattr(servers, "PG_DEFAULT_BINDIR", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="apt-get install postgresql-15"):
        Postgres().start()
    monkeypatch.setenv("SDRLAB_PG_BINDIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="SDRLAB_PG_BINDIR=.* has no initdb"):
        Postgres().start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the directory to the postgres user")
def test_directory_postgres_cannot_enter_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)  # pytest's basetemp is mode 700 anyway
    with pytest.raises(RuntimeError, match="cannot enter"):
        Postgres(str(tmp_path / "pg")).start()


def test_not_started_has_no_port() -> None:
    srv: Any = Postgres()
    with pytest.raises(RuntimeError, match="not started"):
        srv.url
    srv.stop()
    srv.kill()
    srv.cleanup()
