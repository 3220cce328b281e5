"""``sdrlab`` command line: parse, call the library, print.  ``main(argv=None)`` returns the exit code.

Exit codes: 0 success; 1 the job failed (e.g. no station delivered data); 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__
from .errors import AcquisitionError, CatalogError, ConfigError, SdrlabError

log = logging.getLogger("sdrlab.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdrlab", description="Multi-receiver KiwiSDR IQ workbench")
    p.add_argument("--version", action="version", version=f"sdrlab {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="the receiver simulator")
    simsub = sim.add_subparsers(dest="sim_command", required=True)
    serve = simsub.add_parser("serve", help="serve a simulated network on loopback until SIGINT/SIGTERM")
    serve.add_argument("--network", default="demo7")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8073, help="receiver k listens on PORT+k")
    serve.add_argument("--speed", type=float, default=1.0, help="speed-up factor (1.0 = real rate)")
    serve.add_argument("--seed", type=int, default=0)

    acq = sub.add_parser("acquire", help="acquire IQ from stations into a session")
    who = acq.add_mutually_exclusive_group(required=True)
    who.add_argument("--station", action="append", metavar="ID", help="station id (repeatable)")
    who.add_argument("--all", action="store_true", help="every station of the catalogue")
    acq.add_argument("--frequency", type=float, required=True, metavar="HZ")
    acq.add_argument("--duration", type=float, required=True, metavar="S")
    acq.add_argument("--out", metavar="PATH", help="store directory (default: SDRLAB_STORE, ./sdrlab-data)")
    acq.add_argument("--catalog", metavar="TOML", help="station catalogue (default: SDRLAB_CATALOG or built-in)")
    acq.add_argument("--scheduler", metavar="ADDR", help="dask scheduler address (default: a LocalCluster)")
    acq.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="simulate demo7, acquire all seven, store the session, print the table")
    demo.add_argument("--duration", type=float, default=5.0, metavar="S")
    demo.add_argument("--out", metavar="PATH", help="store directory (default: ./sdrlab-data)")
    demo.add_argument("--speed", type=float, default=1.0, help="simulator speed-up (1.0 = real rate)")
    demo.add_argument("--no-progress", action="store_true")

    st = sub.add_parser("stations", help="the station catalogue")
    stsub = st.add_subparsers(dest="stations_command", required=True)
    ls = stsub.add_parser("list", help="list stations")
    ls.add_argument("--catalog", metavar="TOML")
    return p


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sdrlab")
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose < 2:
        logging.getLogger("distributed").setLevel(logging.ERROR)


def print_session(session: object) -> None:
    import pandas as pd

    from .acquire import Session

    assert isinstance(session, Session)
    table = session.status()
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 70):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"session {session.session_id}: {len(session.ok)} ok, "
          f"{len(session.results) - len(session.ok) - len(session.failed)} partial, {len(session.failed)} failed")
    if session.path:
        print(f"stored at {session.path}")


def _cmd_sim_serve(a: argparse.Namespace) -> int:
    from .sim.networks import network
    from .sim.server import run_forever

    if a.speed <= 0:
        raise ConfigError(f"--speed must be positive, got {a.speed}")
    scene = network(a.network, a.seed)
    last = a.port + len(scene.receivers) - 1
    if a.port < 0 or (a.port and last > 65535):
        raise ConfigError(f"--port {a.port}: the {len(scene.receivers)} receivers need ports {a.port}-{last}, "
                          "beyond 65535 (use a lower port, or 0 for free ports)")
    try:
        run_forever(scene, host=a.host, base_port=a.port, speed=a.speed)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {a.host} from port {a.port}: {exc.strerror or exc}") from None
    return 0


def _store_root(out: str | None) -> Path:
    from .config import Settings

    return Path(out) if out else Settings.from_env().store_path()


def _cmd_acquire(a: argparse.Namespace) -> int:
    from .acquire import acquire
    from .config import Settings

    settings = Settings.from_env(catalog=a.catalog, scheduler=a.scheduler)
    root = _store_root(a.out)  # a bad store is named before anything is acquired
    catalog = settings.catalog_obj()
    ids = catalog.ids if a.all else a.station
    session = acquire(ids, a.frequency, a.duration, catalog=catalog, settings=settings,
                      progress=not a.no_progress and settings.progress)
    rc = 0 if session.dataset is not None else 1  # non-zero only if no station delivered data
    if session.dataset is not None:
        session.path, rc = _store_or_rescue(session.dataset, root)
    print_session(session)
    return rc


def _store_or_rescue(ds: object, root: Path) -> tuple[str, int]:
    """Write the session; if the store fails, keep the data in a local rescue directory."""
    from .errors import StorageError
    from .store import write_session

    try:
        return str(write_session(ds, root)), 0  # type: ignore[arg-type]
    except StorageError as exc:
        rescue = Path("sdrlab-rescue")
        path = write_session(ds, rescue)  # type: ignore[arg-type]
        print(f"sdrlab: {exc}; the session was kept in {path}", file=sys.stderr)
        return str(path), 1


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    session = run_demo(duration_s=a.duration, out=_store_root(a.out), speed=a.speed,
                       progress=not a.no_progress)
    print_session(session)
    return 0 if session.dataset is not None else 1


def _cmd_stations_list(a: argparse.Namespace) -> int:
    from .config import Settings

    cat = Settings.from_env(catalog=a.catalog).catalog_obj()
    for s in cat:
        print(f"{s.id:20s} {s.host}:{s.port:<6d} {s.latitude:9.4f} {s.longitude:9.4f} "
              f"ch={s.channels} {s.protocol} {s.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    handlers = {
        ("sim", "serve"): _cmd_sim_serve,
        ("acquire", None): _cmd_acquire,
        ("demo", None): _cmd_demo,
        ("stations", "list"): _cmd_stations_list,
    }
    sub = getattr(args, "sim_command", None) or getattr(args, "stations_command", None)
    try:
        return handlers[(args.command, sub)](args)
    except (ConfigError, CatalogError) as exc:
        print(f"sdrlab: error: {exc}", file=sys.stderr)
        return 2
    except AcquisitionError as exc:
        print(f"sdrlab: acquisition failed: {exc}", file=sys.stderr)
        return 1
    except SdrlabError as exc:
        print(f"sdrlab: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdrlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
