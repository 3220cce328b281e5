"""One settings object, from ``SDRLAB_*`` environment variables.

``Settings`` alone turns configuration into live objects: the store location, the dask client, and
(in later issues) fsspec storage options and the SQLAlchemy engine.  URLs with credentials are
masked whenever they are shown (:mod:`sdrlab.redact`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from urllib.parse import urlsplit

from . import timing
from .errors import ConfigError
from .redact import mask_url, split_credentials

if TYPE_CHECKING:
    from .stations import Catalog

ENV_PREFIX = "SDRLAB_"
DEFAULT_STORE = "file://./sdrlab-data"
DEFAULT_DB = "sqlite:///./sdrlab-data/index.db"
DEFAULT_RESCUE = "file://./sdrlab-rescue"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    #: where sessions are stored: file://PATH (default ./sdrlab-data) or s3://bucket/prefix
    store: str = DEFAULT_STORE
    #: metrics index: sqlite:///PATH or postgresql+psycopg://...
    db: str = field(default=DEFAULT_DB, repr=False)
    #: dask scheduler address (tcp://host:port); None = a LocalCluster with threads
    scheduler: str | None = None
    #: station catalogue TOML; None = the built-in one
    catalog: str | None = None
    #: progress bars (tqdm.auto); switch off for batch runs
    progress: bool = True
    gps_utc_offset_s: int = timing.DEFAULT_GPS_UTC_OFFSET_S
    s3_endpoint: str | None = None
    #: set by ``sdrlab run`` in the notebook kernel: sessions acquired in the run carry it
    run_id: str | None = None
    s3_key: str | None = field(default=None, repr=False)
    s3_secret: str | None = field(default=None, repr=False)
    #: the longest one store operation may take before it is an error (a frozen server)
    store_timeout_s: float = 300.0
    #: where a session the store could not take is kept (a local directory, best on another disk
    #: than the store's), until ``sdrlab store push`` moves it back: file://PATH
    rescue: str = DEFAULT_RESCUE
    #: streaming capture: sessions longer than this many seconds are stored as they arrive, in
    #: chunks of about ``chunk_s`` seconds of signal (0: every session streams); shorter ones are
    #: held in memory and stored when complete
    stream_above_s: float = 60.0
    chunk_s: float = 20.0

    def __post_init__(self) -> None:
        for name, zero_ok in (("chunk_s", False), ("stream_above_s", True)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
                raise ConfigError(f"SDRLAB_{name.upper()} must be a {'non-negative' if zero_ok else 'positive'} "
                                  f"number of seconds, got {v!r}")
        if not (isinstance(self.store_timeout_s, (int, float)) and math.isfinite(self.store_timeout_s)
                and self.store_timeout_s > 0):
            raise ConfigError(f"SDRLAB_STORE_TIMEOUT_S must be a positive number of seconds, got "
                              f"{self.store_timeout_s!r}")
        scheme = urlsplit(self.store).scheme
        if scheme not in ("file", "s3"):
            raise ConfigError(f"SDRLAB_STORE must be file://PATH or s3://BUCKET/PREFIX, got {mask_url(self.store)!r}")
        if urlsplit(self.rescue).scheme != "file":
            raise ConfigError(f"SDRLAB_RESCUE must be file://PATH (a local directory), got {mask_url(self.rescue)!r}")
        if not (self.db.startswith("sqlite:///") or self.db.startswith("postgresql")):
            raise ConfigError(
                f"SDRLAB_DB must be sqlite:///PATH or postgresql+psycopg://..., got {mask_url(self.db)!r}"
            )
        if self.s3_endpoint and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.s3_endpoint):
            raise ConfigError(f"SDRLAB_S3_ENDPOINT must be an address like http://127.0.0.1:8333, got "
                              f"{mask_url(self.s3_endpoint)!r}")
        if self.scheduler is not None and not re.match(r"^(tcp|tls|inproc|ws|wss)://\S+$", self.scheduler):
            raise ConfigError(f"SDRLAB_SCHEDULER must be an address like tcp://127.0.0.1:8786, got {self.scheduler!r}")

    def __repr__(self) -> str:
        return (
            f"Settings(store={mask_url(self.store)!r}, db={mask_url(self.db)!r}, scheduler={self.scheduler!r}, "
            f"catalog={self.catalog!r}, progress={self.progress})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if f.name == "progress":
                low = raw.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ConfigError(f"SDRLAB_PROGRESS must be 0/1/true/false, got {raw!r}")
                kw[f.name] = low in _TRUE
            elif f.name in ("store_timeout_s", "chunk_s", "stream_above_s"):
                try:
                    kw[f.name] = float(raw)
                except ValueError:
                    raise ConfigError(f"SDRLAB_{f.name.upper()} must be a number of seconds, got {raw!r}") from None
            elif f.name == "gps_utc_offset_s":
                try:
                    kw[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"SDRLAB_GPS_UTC_OFFSET_S must be an integer, got {raw!r}") from None
            else:
                kw[f.name] = (raw or None) if f.name in ("scheduler", "catalog", "run_id") else raw
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    # ---- live objects ----------------------------------------------------------------------
    def storage_options(self, url: str | None = None) -> dict[str, Any]:
        """fsspec options for a store URL (default: SDRLAB_STORE): empty for file://; for s3:// the
        endpoint, credentials and short timeouts/retries so an unreachable endpoint fails in
        seconds, clearly."""
        if urlsplit(url or self.store).scheme != "s3":
            return {}
        opts: dict[str, Any] = {
            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}},
        }
        if self.s3_key is not None:
            opts["key"] = self.s3_key
        if self.s3_secret is not None:
            opts["secret"] = self.s3_secret
        if self.s3_endpoint:
            # credentials written into the endpoint URL are used as such, never kept in the URL
            # that messages show (the store names its endpoint)
            endpoint, user, password = split_credentials(self.s3_endpoint)
            if user and "key" not in opts:
                opts["key"] = user
            if password and "secret" not in opts:
                opts["secret"] = password
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts

    def engine(self) -> Any:
        """The SQLAlchemy engine of the metrics index (SQLite file made on first use).  An SQLite
        index at the default place (``./sdrlab-data/index.db``, or a checkout's for its notebooks)
        or inside the local store's directory gets its directory made, as the store makes its
        own; anywhere else the directory must exist (a typo is an error, not a second index)."""
        from .index import make_engine

        return make_engine(self.db, create_dir=self._db_dir_is_ours())

    def _db_dir_is_ours(self) -> bool:
        if not self.db.startswith("sqlite:///"):
            return False
        parent = Path(self.db[len("sqlite:///"):]).expanduser().resolve().parent
        ours = {Path(DEFAULT_DB[len("sqlite:///"):]).resolve().parent}
        root = project_root()
        if root is not None:
            ours.add(root / "sdrlab-data")
        parts = urlsplit(self.store)
        if parts.scheme == "file":
            ours.add(Path((parts.netloc + parts.path) or ".").expanduser().resolve())
        return parent in ours

    def store_obj(self) -> Any:
        """The session store (:class:`sdrlab.store.Store`) these settings name."""
        from .store import Store

        return Store(self.store, self.storage_options(), timeout_s=self.store_timeout_s)

    def rescue_obj(self) -> Any:
        """The rescue store (a local directory; see ``rescue``)."""
        from .store import Store

        return Store(self.rescue, timeout_s=self.store_timeout_s)

    def catalog_obj(self) -> Catalog:
        from .stations import load_catalog

        return load_catalog(self.catalog)

    @contextmanager
    def dask_client(self, scheduler: str | None = None, *, n_threads: int = 8) -> Iterator[Any]:
        """A distributed Client: to ``scheduler`` (or SDRLAB_SCHEDULER) when given, else a
        LocalCluster of threads (acquisition is I/O bound; no pickling, starts in ~0.1 s)."""
        from distributed import Client, LocalCluster

        address = scheduler or self.scheduler
        if address:
            try:
                remote = Client(address, timeout="10s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from None
            try:
                yield remote
            finally:
                remote.close()
            return
        scratch = tempfile.mkdtemp(prefix="sdrlab-dask-")
        import shutil

        cluster: Any = None
        client: Any = None
        try:
            import dask

            # the worker's statistical profiler (a stack sample every 10 ms, for the dashboard's
            # profile page) keeps a growing tree of dicts for a task that runs for hours: a
            # capture task grew the process by ~15 MB per hour of seven stations
            # (benchmarks/memory.py), and the sampling costs CPU the streams need
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                cluster = LocalCluster(
                    processes=False, n_workers=1, threads_per_worker=max(1, n_threads),
                    # its HTTP endpoint on loopback and a free port: never 0.0.0.0, never a clash on 8787
                    dashboard_address="127.0.0.1:0", local_directory=scratch,
                )
            client = Client(cluster, set_as_default=False)
            yield client
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            shutil.rmtree(scratch, ignore_errors=True)


# ---- the workbench's settings -----------------------------------------------------------------
def project_root(start: Path | None = None) -> Path | None:
    """The sdrlab checkout this notebook lives in (a parent holding ``pyproject.toml`` and
    ``notebooks/``), if any."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "notebooks").is_dir() and (d / "sdrlab").is_dir():
            return d
    return None


def workbench_settings(store: str = "", db: str = "") -> Settings:
    """The settings a notebook uses: ``store``/``db`` parameters when given, else ``SDRLAB_STORE``
    / ``SDRLAB_DB``; when neither is set and the kernel runs inside an sdrlab checkout (Jupyter
    starts kernels in the notebook's directory), the checkout's ``./sdrlab-data`` — the same store
    ``make demo`` and the CLI use from the project root."""
    overrides: dict[str, Any] = {}
    root = project_root()
    if store:
        overrides["store"] = store
    elif ENV_PREFIX + "STORE" not in os.environ and root is not None:
        overrides["store"] = f"file://{root / 'sdrlab-data'}"
    if db:
        overrides["db"] = db
    elif ENV_PREFIX + "DB" not in os.environ and root is not None:
        overrides["db"] = f"sqlite:///{root / 'sdrlab-data' / 'index.db'}"
    return Settings.from_env(**overrides)
