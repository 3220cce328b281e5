"""``sdrlab`` command line: parse, call the library, print.  ``main(argv=None)`` returns the exit code.

Exit codes: 0 success; 1 the job failed (e.g. no station delivered data); 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from ._version import __version__
from .acquire import MIN_DURATION_S
from .errors import (
    AcquisitionError, CatalogError, ConfigError, IndexStoreError, NotebookRunError, SdrlabError, StorageError, quote,
)
from .redact import mask_url, mask_urls_in

log = logging.getLogger("sdrlab.cli")


def _duration(text: str) -> float:
    """``--duration``: seconds, at least :data:`sdrlab.acquire.MIN_DURATION_S` (a usage error here,
    before the library's own check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of seconds, got {quote(text)}") from None
    if not (math.isfinite(value) and value >= MIN_DURATION_S):
        raise argparse.ArgumentTypeError(f"must be at least {MIN_DURATION_S:g} s (a few frames of samples), "
                                         f"got {quote(text)}")
    return value


def _bucket(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number of seconds, got {quote(text)}") from None
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds >= 1, got {quote(text)}")
    return int(value)


def _session_id(text: str) -> str:
    """A session id as the store names them: an invalid one is a usage error (exit 2)."""
    from .store import check_session_id

    try:
        return check_session_id(text)
    except StorageError as exc:
        raise argparse.ArgumentTypeError(str(exc) if len(text) <= 100 else
                                         f"invalid session id {quote(text, 100)}") from None


def _session_or_latest(text: str) -> str:
    if text == "latest":
        return text
    if not text:
        raise argparse.ArgumentTypeError("empty: give a session id, or 'latest' for the newest session")
    return _session_id(text)


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
    who.add_argument("--network", metavar="NAME",
                     help="every station of one network of the catalogue (e.g. demo7, italy7: simulated, "
                          "served by `sdrlab sim serve --network NAME`)")
    acq.add_argument("--frequency", type=float, required=True, metavar="HZ")
    acq.add_argument("--duration", type=_duration, required=True, metavar="S",
                     help=f"seconds to capture (at least {MIN_DURATION_S:g})")
    acq.add_argument("--out", metavar="PATH", help="store directory (default: SDRLAB_STORE, ./sdrlab-data)")
    acq.add_argument("--catalog", metavar="TOML", help="station catalogue (default: SDRLAB_CATALOG or built-in)")
    acq.add_argument("--scheduler", metavar="ADDR", help="dask scheduler address (default: a LocalCluster)")
    acq.add_argument("--no-progress", action="store_true")

    mon = sub.add_parser("monitor", help="run a monitoring campaign (YAML: stations, frequencies, schedule) "
                                         "until its end or SIGINT/SIGTERM; a restart resumes it")
    mon.add_argument("spec", metavar="SPEC.yaml")
    mon.add_argument("--catalog", metavar="TOML", help="station catalogue (default: SDRLAB_CATALOG or built-in)")
    mon.add_argument("--scheduler", metavar="ADDR", help="dask scheduler address (default: a LocalCluster)")

    demo = sub.add_parser("demo", help="simulate demo7, acquire all seven, store the session, print the table")
    demo.add_argument("--duration", type=_duration, default=5.0, metavar="S")
    demo.add_argument("--out", metavar="PATH", help="store directory (default: ./sdrlab-data)")
    demo.add_argument("--speed", type=float, default=1.0, help="simulator speed-up (1.0 = real rate)")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--report", metavar="NOTEBOOK",
                      help="then run this report notebook (notebooks/report.ipynb) on the session and render it")
    demo.add_argument("--report-dir", metavar="DIR", default="reports",
                      help="where the executed report and its HTML go (default: ./reports)")

    run = sub.add_parser("run", help="run a notebook headless with papermill (parameters passed through)")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter, typed as papermill -p types it (repeatable)")
    run.add_argument("-y", "--parameters-yaml", metavar="YAML", help="parameters from a YAML file (-p wins)")
    run.add_argument("--out", metavar="PATH",
                     help="executed notebook; {name} fields are filled from the parameters, plus {notebook}, "
                          "{run_id}, {date} (default: reports/{notebook}-{run_id}.ipynb)")
    run.add_argument("--html", metavar="PATH", help="also render the HTML report there (same template fields)")
    run.add_argument("-k", "--kernel", default="python3", help="kernel name (default python3)")
    run.add_argument("--cwd", metavar="DIR", help="the kernel's working directory (default: this one)")
    run.add_argument("--log-output", action="store_true", help="echo the cells' output while running")

    td = sub.add_parser("tdoa", help="locate the transmitter of a stored session from GPS-timed lags (TDoA)")
    td.add_argument("session", type=_session_or_latest, help="session id, or 'latest'")
    td.add_argument("--min-overlap", type=float, default=10.0, metavar="S",
                    help="seconds all stations must share (default 10)")
    td.add_argument("--window", type=float, default=1.0, metavar="S", help="correlation window (default 1 s)")
    td.add_argument("--station", action="append", metavar="ID", help="use only these stations (repeatable)")
    td.add_argument("--json", action="store_true", help="print the result as one JSON object")
    td.add_argument("--map", metavar="PNG", help="also draw the map (stations, hyperbolas, likelihood, ellipse)")
    td.add_argument("--method", choices=("auto", "coherent", "envelope"), default="auto",
                    help="how lags are measured (default: chosen from what the signal carries)")
    td.add_argument("--station-delay-sigma", type=float, default=20.0, metavar="US",
                    help="each receiver's unknown processing delay, standard deviation in us (default 20; "
                         "0 for calibrated receivers)")
    td.add_argument("--calibrate", metavar="LAT,LON",
                    help="instead of locating: measure the stations' relative delays against a transmitter "
                         "at this known position")
    td.add_argument("--store", metavar="URL")

    rep = sub.add_parser("report", help="render an executed notebook as a self-contained HTML report")
    rep.add_argument("executed", metavar="EXECUTED.ipynb")
    rep.add_argument("--html", metavar="OUT.html", required=True)

    ses = sub.add_parser("sessions", help="stored sessions")
    sessub = ses.add_subparsers(dest="sessions_command", required=True)
    sl = sessub.add_parser("list", help="committed sessions with their summary")
    ssh = sessub.add_parser("show", help="one session: summary and per-station captures")
    ssh.add_argument("session", type=_session_id)
    sdl = sessub.add_parser("delete", help="delete a session and all its objects")
    sdl.add_argument("session", type=_session_id)
    for q in (sl, ssh, sdl):
        q.add_argument("--store", metavar="URL", help="store URL (default: SDRLAB_STORE)")

    sto = sub.add_parser("store", help="store maintenance")
    stosub = sto.add_subparsers(dest="store_command", required=True)
    fsck = stosub.add_parser("fsck", help="find uncommitted leftovers (interrupted writes)")
    fsck.add_argument("--remove", action="store_true", help="delete what was found")
    fsck.add_argument("--min-age", type=float, default=3600.0, metavar="S",
                      help="with --remove, spare leftovers written to in the last S seconds (a write may be running)")
    health = stosub.add_parser("health", help="write, read and delete a probe object; print latencies")
    push = stosub.add_parser("push", help="move sessions kept in the rescue directory (SDRLAB_RESCUE) to the "
                                          "store under their own ids, and index them")
    push.add_argument("session_ids", nargs="*", metavar="ID", help="default: every rescued session")
    fin = stosub.add_parser("finalise", help="complete streamed sessions left recording by a capture that stopped "
                                             "(a crash, a kill): measure, commit and index what was stored")
    fin.add_argument("session_ids", nargs="*", metavar="ID",
                     help="default: every recording session with no new chunk for --min-age seconds")
    fin.add_argument("--min-age", type=float, default=120.0, metavar="S",
                     help="with no ID, spare sessions written to in the last S seconds (still capturing)")
    for q in (fsck, health, push, fin):
        q.add_argument("--store", metavar="URL")

    exp = sub.add_parser("export", help="export a session")
    expsub = exp.add_subparsers(dest="export_command", required=True)
    es = expsub.add_parser("sigmf", help="one SigMF recording per station")
    es.add_argument("session", type=_session_id)
    es.add_argument("directory")
    es.add_argument("--archive", action="store_true", help="write .sigmf archives")
    es.add_argument("--store", metavar="URL")

    imp = sub.add_parser("import", help="import recordings into a new session")
    impsub = imp.add_subparsers(dest="import_command", required=True)
    isg = impsub.add_parser("sigmf", help="SigMF recordings (.sigmf-meta/.sigmf-data or .sigmf)")
    isg.add_argument("paths", nargs="+")
    ikw = impsub.add_parser("kiwi-wav", help="kiwirecorder --kiwi-wav IQ files, one per station")
    ikw.add_argument("paths", nargs="+")
    ikw.add_argument("--positions", metavar="DIR", help="gnss_pos directory (default: gnss_pos/ beside the files)")
    for q in (isg, ikw):
        q.add_argument("--store", metavar="URL")

    db = sub.add_parser("db", help="the metrics index database")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    for name in ("init", "upgrade"):
        dbsub.add_parser(name, help="create or upgrade the schema (idempotent)")
    ix = sub.add_parser("index", help="the metrics index")
    ixsub = ix.add_subparsers(dest="index_command", required=True)
    rb = ixsub.add_parser("rebuild", help="index every committed session of the store (idempotent)")
    rb.add_argument("--store", metavar="URL")

    qy = sub.add_parser("query", help="time-series queries on the index")
    qysub = qy.add_subparsers(dest="query_command", required=True)
    qm = qysub.add_parser("metric", help="a metric per station in time buckets")
    qm.add_argument("--metric", default="snr_db")
    qm.add_argument("--bucket", type=_bucket, default=3600, metavar="S", help="bucket length in whole seconds")
    qm.add_argument("--source", choices=("captures", "intervals"), default="captures",
                    help="one value per capture (default), or the metric time series: one per 10 s interval")
    qc = qysub.add_parser("captures", help="captures matching band, time, stations and thresholds")
    qc.add_argument("--band", nargs=2, type=float, metavar=("LO_HZ", "HI_HZ"))
    qc.add_argument("--min-snr", type=float, metavar="DB")
    for q in (qm, qc):
        q.add_argument("--station", action="append", metavar="ID")
        q.add_argument("--start", metavar="UTC", help="e.g. 2026-11-24T00:00")
        q.add_argument("--end", metavar="UTC")
    qysub.add_parser("latest", help="the latest capture status of each station")
    qysub.add_parser("availability", help="share of probes up per station per day")
    qr = qysub.add_parser("runs", help="notebook runs (sdrlab run), newest first, with their sessions")
    qr.add_argument("--limit", type=int, default=20)

    st = sub.add_parser("stations", help="the station catalogue")
    stsub = st.add_subparsers(dest="stations_command", required=True)
    ls = stsub.add_parser("list", help="list stations")
    ls.add_argument("--catalog", metavar="TOML")
    sy = stsub.add_parser("sync", help="sync the index's stations table with the catalogue and each /status page")
    sy.add_argument("--catalog", metavar="TOML")
    sy.add_argument("--no-probe", action="store_true", help="do not contact the receivers")
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
    if getattr(session, "index_error", None):
        print(f"not indexed ({session.index_error}); run `sdrlab index rebuild` when the index is back")


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


#: the settings of the command being run: read from the environment once, by main()
_COMMAND_SETTINGS: list[Any] = []


def _settings(**options: Any) -> Any:
    """The command's settings (SDRLAB_* read once per command by :func:`main`), with the
    command's own options (``None``: not given) in place of the environment's."""
    from dataclasses import replace

    from .config import Settings

    base = _COMMAND_SETTINGS[-1] if _COMMAND_SETTINGS else Settings.from_env()
    given = {k: v for k, v in options.items() if v is not None}
    return replace(base, **given) if given else base


def _store(url: str | None = None, out: str | None = None, *, existing: bool = False) -> Any:
    """The store: ``--out DIR`` (a local directory), ``--store URL``, or SDRLAB_STORE; a URL is
    checked as SDRLAB_STORE is (a bad one is a usage error, its password masked).  ``existing``:
    for commands that only read, an S3 bucket that does not exist is an error naming it (not an
    empty list)."""
    from .store import Store

    if url and urlsplit(url).scheme not in ("file", "s3"):
        raise ConfigError(f"--store must be file://PATH or s3://BUCKET/PREFIX, got {quote(mask_url(url))}")
    settings = _settings(store=url)
    if out:
        return Store(f"file://{Path(out).expanduser().resolve()}", timeout_s=settings.store_timeout_s)
    store = settings.store_obj()
    if existing and store.protocol == "s3":
        _check_bucket(store)
    return store


def _check_bucket(store: Any) -> None:
    bucket = store.root.split("/", 1)[0]
    try:
        found = store.fs.exists(bucket)
    except Exception as exc:  # unreachable endpoint, refused credentials: name the store
        raise StorageError(f"cannot reach the store {store.where}: {type(exc).__name__}: {exc}"[:500]) from None
    if not found:
        raise StorageError(f"the bucket {bucket!r} of the store {store.where} does not exist "
                           "(check SDRLAB_STORE / --store; it is made by the first acquisition)")


def _save_or_rescue(session: Any) -> int:
    """After acquire/save (which keep a session the store refused in the rescue directory, see
    ``acquire.save``): say where it is; non-zero when nothing was acquired or the store failed."""
    if session.dataset is None:
        return 1
    if session.store_error is None:
        return 0
    if session.rescued:
        print(f"sdrlab: the session could not be stored ({session.store_error}); it was kept in "
              f"{session.rescued}: `sdrlab store push {session.session_id}` moves it to the store",
              file=sys.stderr)
    else:
        print(f"sdrlab: the session could not be stored ({session.store_error})", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT / SIGTERM stop the capture at once and keep what has arrived (it is stored as
    usual); a second signal aborts.  Only in the main thread (elsewhere: an event nobody sets)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        print(f"sdrlab: {signal.Signals(signum).name}: stopping, keeping what has arrived "
              "(again to abort)", file=sys.stderr, flush=True)
        stop.set()
        for sig, h in old.items():
            signal.signal(sig, h)

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _cmd_acquire(a: argparse.Namespace) -> int:
    from .acquire import acquire

    settings = _settings(catalog=a.catalog, scheduler=a.scheduler)
    store = _store(out=a.out)
    store.health()  # a bad or unreachable store is named before anything is acquired
    catalog = settings.catalog_obj()
    ids = catalog.ids if a.all else [s.id for s in catalog.network(a.network)] if a.network else a.station
    if not ids:
        raise ConfigError(f"no station of network {a.network!r} in the catalogue "
                          f"(networks: {', '.join(sorted({s.network for s in catalog if s.network}))})")
    with _stop_on_signals() as stop:
        session = acquire(ids, a.frequency, a.duration, catalog=catalog, settings=settings,
                          progress=not a.no_progress and settings.progress, store=store, stop=stop)
    rc = _save_or_rescue(session)  # non-zero if no station delivered data or the store failed
    print_session(session)
    return rc


def _cmd_monitor(a: argparse.Namespace) -> int:
    from .monitor import load_campaign, monitor

    campaign = load_campaign(a.spec)
    settings = _settings(catalog=a.catalog, scheduler=a.scheduler)
    store = _store()
    store.health()  # a bad or unreachable store is named before the campaign starts
    catalog = settings.catalog_obj()
    for sid in campaign.stations:  # unknown ids are named before the campaign starts
        catalog.get(sid)
    n = campaign.n_slots()
    every = (f"continuous (each session connects {campaign.lead_s:g} s early)" if campaign.continuous
             else f"every {campaign.period_s:g} s")
    print(f"campaign {campaign.id}: {len(campaign.stations)} station(s), {len(campaign.frequencies_hz)} "
          f"frequency(ies), {campaign.duration_s:g} s {every}, "
          f"{f'{n} slot(s)' if n is not None else 'until stopped'}; store {store.where}", flush=True)

    def line(session: Any) -> None:
        attrs = session.dataset.attrs if session.dataset is not None else {}
        follows = attrs.get("continuity")
        if follows not in (None, "first", "unmeasured"):
            follows = f"{follows} to the previous (gap {attrs.get('continuity_gap_s', float('nan')) * 1e3:+.1f} ms)"
        print(f"slot {attrs.get('campaign_slot', '?')} {session.frequency_hz:.0f} Hz: {session.session_id} "
              f"{len(session.ok)} ok, {len(session.failed)} failed" + (f", {follows}" if follows else "")
              + (f"; not stored ({session.store_error})" if session.store_error else "")
              + (f"; not indexed ({session.index_error})" if session.index_error else ""), flush=True)

    with _stop_on_signals() as stop:
        report = monitor(campaign, settings=settings, catalog=catalog, store=store, stop=stop, on_session=line)
    print(f"campaign {campaign.id}: {len(report.sessions)} session(s) acquired, {len(report.skipped)} already "
          f"stored (resumed), {len(report.missed)} slot(s) missed"
          + (f", {len(report.gaps)} gap(s) between sessions" if campaign.continuous else "")
          + ("; stopped" if report.stopped else ""))
    return 0 if all(s.store_error is None for s in report.sessions) else 1


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    if a.report and not Path(a.report).is_file():
        raise ConfigError(f"--report {a.report}: no such notebook")
    session = run_demo(duration_s=a.duration, out=a.out, speed=a.speed, progress=not a.no_progress,
                       settings=_settings())
    rc = _save_or_rescue(session)
    print_session(session)
    if rc or not a.report:
        return rc
    from .runs import run_notebook

    params: dict[str, Any] = {"session": session.session_id}
    if a.out:
        params["store"] = f"file://{Path(a.out).expanduser().resolve()}"
    out = Path(a.report_dir) / f"{Path(a.report).stem}-{session.session_id}"
    result = run_notebook(a.report, params, output=f"{out}.ipynb", html=f"{out}.html")
    print(f"report of session {session.session_id} ({result.duration_s:.1f} s): {Path(result.html or '').resolve()}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from .runs import format_result, load_yaml_parameters, parse_parameter, run_notebook

    params: dict[str, Any] = load_yaml_parameters(a.parameters_yaml) if a.parameters_yaml else {}
    params.update({name: parse_parameter(value) for name, value in a.parameter})
    result = run_notebook(a.notebook, params, output=a.out, html=a.html, kernel=a.kernel, cwd=a.cwd,
                          log_output=a.log_output)
    for line in format_result(result):
        print(line)
    return 0


def _cmd_tdoa(a: argparse.Namespace) -> int:
    import json

    from .notebook import pick_session
    from .tdoa import tdoa

    if a.map:
        where = Path(a.map).expanduser()
        if where.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ConfigError(f"--map {a.map}: give a .png, .svg or .pdf file")
        if not where.parent.is_dir():
            raise ConfigError(f"--map {a.map}: the directory {where.parent} does not exist")
    sigma = a.station_delay_sigma
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"--station-delay-sigma must be a finite number of microseconds >= 0, got {sigma}")
    known = _lat_lon(a.calibrate) if a.calibrate else None
    store = _store(a.store, existing=True)
    sid = pick_session(store, a.session)
    ds = store.open(sid)
    if known is not None:
        from .tdoa import calibrate

        cal = calibrate(ds, known, stations=a.station, window_s=a.window, min_overlap_s=a.min_overlap,
                        method=a.method)
        if a.json:
            print(json.dumps({"session_id": sid, **cal.to_dict()}, sort_keys=True))
        else:
            print(f"session {sid}")
            for st, d in cal.delays_s.items():
                print(f"delay {st}: {d * 1e6:+.2f} us +- {cal.sigma_s[st] * 1e6:.2f} us")
            for note in cal.notes:
                print(note)
        return 0
    result = tdoa(ds, stations=a.station, window_s=a.window, min_overlap_s=a.min_overlap, method=a.method,
                  station_delay_sigma_s=sigma * 1e-6)
    if a.map:
        from .plots import plot_tdoa_map

        try:
            plot_tdoa_map(result, truth=result.truth).savefig(a.map, dpi=110)
        except OSError as exc:
            raise ConfigError(f"--map {a.map}: cannot write it ({exc.strerror or exc})") from None
    if a.json:
        print(json.dumps({"session_id": sid, **result.to_dict()}, sort_keys=True))
    else:
        print(f"session {sid}")
        print(result.summary())
        if a.map:
            print(f"map: {a.map}")
    return 0


def _lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--calibrate {text!r}: give LAT,LON in degrees, e.g. 50.0152,9.0112") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ConfigError(f"--calibrate {text!r}: not a latitude, longitude pair")
    return lat, lon


def _cmd_report(a: argparse.Namespace) -> int:
    from .runs import render_report

    print(render_report(a.executed, a.html))
    return 0


def _print_frame(df: Any) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(df.to_string(float_format=lambda v: f"{v:.3f}") if len(df) else "(none)")


def _cmd_sessions(a: argparse.Namespace) -> int:
    store = _store(a.store, existing=True)
    if a.sessions_command == "list":
        _print_frame(store.sessions())
    elif a.sessions_command == "show":
        s = store.summary(a.session)
        for key in ("session_id", "start_time", "center_frequency_hz", "duration_s", "status", "committed"):
            print(f"{key:20s} {s.get(key)}")
        print(f"{'store':20s} {store.where}")
        _print_frame(store.captures(a.session))
    else:
        from .index import delete_session, init_db

        n = store.delete(a.session)
        engine = _settings().engine()
        init_db(engine)
        delete_session(engine, a.session)  # its rows go with its objects
        print(f"deleted session {a.session}: {n} objects and its index rows removed")
    return 0


def _utc_arg(text: str | None, name: str) -> Any:
    if text is None:
        return None
    import pandas as pd

    try:
        t = pd.Timestamp(text)
    except ValueError:
        raise ConfigError(f"{name} must be a UTC time like 2026-11-24T06:00, got {text!r}") from None
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).to_pydatetime()


def _cmd_db(a: argparse.Namespace) -> int:
    from .index import init_db

    settings = _settings()
    kind = init_db(settings.engine())
    print(f"index schema ready ({kind})")
    return 0


def _cmd_index(a: argparse.Namespace) -> int:
    from .index import index_session, init_db

    settings = _settings()
    store = _store(a.store, existing=True)
    engine = settings.engine()
    init_db(engine)
    from .errors import IndexStoreError, StorageError

    ids = list(store.sessions().index)
    failed = 0
    for sid in ids:
        try:
            rows = index_session(engine, store.open(sid), store.session_url(sid))
        except (StorageError, IndexStoreError) as exc:  # one damaged session must not stop the rest
            failed += 1
            print(f"skipped {sid}: {exc}", file=sys.stderr)
            continue
        print(f"indexed {sid}: {rows} metric rows")
    print(f"{len(ids) - failed} session(s) indexed from {store.where}" + (f", {failed} skipped" if failed else ""))
    return 1 if failed else 0


def _cmd_query(a: argparse.Namespace) -> int:
    from .index import find_captures, init_db, latest_status, metric_over_time

    engine = _settings().engine()
    init_db(engine)
    if a.query_command == "latest":
        _print_frame(latest_status(engine))
        return 0
    if a.query_command == "runs":
        from .index.runs import list_runs

        _print_frame(list_runs(engine, limit=a.limit))
        return 0
    if a.query_command == "availability":
        from .index.stations import availability_per_day

        _print_frame(availability_per_day(engine))
        return 0
    start, end = _utc_arg(a.start, "--start"), _utc_arg(a.end, "--end")
    if a.query_command == "metric":
        _print_frame(metric_over_time(engine, a.metric, bucket_s=a.bucket, start=start, end=end,
                                      stations=a.station, source=a.source))
    else:
        _print_frame(find_captures(engine, frequency_hz=tuple(a.band) if a.band else None, start=start, end=end,
                                   stations=a.station,
                                   min_metrics={"snr_db": a.min_snr} if a.min_snr is not None else None))
    return 0


def _cmd_store(a: argparse.Namespace) -> int:
    if a.store_command == "push":
        return _store_push(a)
    if a.store_command == "finalise":
        return _store_finalise(a)
    store = _store(a.store, existing=a.store_command != "health")
    if a.store_command == "health":
        h = store.health()
        print(f"ok {h['store']}: write {h['write_ms']:.1f} ms, read {h['read_ms']:.1f} ms, "
              f"delete {h['delete_ms']:.1f} ms")
        return 0
    from .index import init_db
    from .index.ingest import consistency

    from .errors import StorageError

    found = store.fsck(remove=a.remove, min_age_s=a.min_age)
    damaged = 0
    for sid in found:
        try:
            gone = store.missing_objects(sid)
        except StorageError:
            gone = []
        if gone:
            damaged += 1
            print(f"damaged {sid}: {len(gone)} object(s) missing, e.g. {gone[0]} (kept; it will not open)")
        else:
            print(f"{'removed' if a.remove else 'uncommitted'} {sid}")
    engine = _settings().engine()
    init_db(engine)
    orphan_rows, unindexed = consistency(engine, store, remove=a.remove)
    for sid in orphan_rows:
        print(f"{'removed index rows of' if a.remove else 'index rows without objects:'} {sid}")
    for sid in unindexed:
        print(f"not indexed: {sid} (run `sdrlab index rebuild`)")
    problems = len(found) + len(orphan_rows) + len(unindexed)
    print(f"{problems} problem(s) {'handled' if a.remove else 'found'} in {store.where} and its index")
    return 1 if (found or orphan_rows) and not a.remove or unindexed or damaged else 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .interchange.sigmf import export_sigmf

    store = _store(a.store, existing=True)
    files = export_sigmf(store.open(a.session), a.directory, archive=a.archive)
    for f in files:
        print(f)
    return 0


def _cmd_import(a: argparse.Namespace) -> int:
    from .acquire import Session, save

    if a.import_command == "sigmf":
        from .interchange.sigmf import import_sigmf

        ds = import_sigmf(a.paths)
    else:
        from .interchange.kiwiwav import import_kiwi_wav

        ds = import_kiwi_wav(a.paths, positions_dir=a.positions)
    from .acquire import add_metrics

    ds = add_metrics(ds)  # an imported session carries the metrics a live one does
    session = Session(ds.attrs["session_id"], float(ds.attrs.get("center_frequency_hz", 0.0)),
                      float(ds.attrs.get("requested_duration_s", 0.0)), {}, ds)

    settings = _settings()
    save(session, _store(a.store), index=settings.engine(), rescue=settings.rescue_obj())  # stored, then indexed
    rc = _save_or_rescue(session)
    print(f"imported {ds.sizes['station']} station(s) into session {session.session_id}"
          + (f" at {session.path}" if session.path else ""))
    if session.index_error:
        print(f"not indexed ({session.index_error}); run `sdrlab index rebuild` later")
    return rc


def _store_finalise(a: argparse.Namespace) -> int:
    from .acquire import finalise

    settings = _settings()
    store = _store(a.store, existing=True)
    ids = list(a.session_ids) or store.stale_recordings(a.min_age)
    if not ids:
        print(f"nothing to finalise: no session left recording in {store.where}")
        return 0
    engine = settings.engine()
    rc = 0
    for sid in ids:
        session = finalise(store, sid, index=engine, rescue=settings.rescue_obj())
        if session.store_error:
            print(f"not finalised {sid}: {session.store_error}")
            rc = 1
            continue
        ds = session.dataset
        assert ds is not None
        kept = ", ".join(f"{s} {int(n) / float(r):.1f} s" for s, n, r in
                         zip(ds["station"].values, ds["n_samples"].values, ds["sample_rate"].values))
        note = f" (not indexed: {session.index_error})" if session.index_error else ""
        print(f"finalised {sid} at {session.path}: {kept}{note}")
    return rc


def _push_stream(rescue: Any, store: Any, sid: str, engine: Any) -> None:
    """The chunks of a streamed session the store refused: into the store beside those it took,
    then the session is finalised there (measured, committed, indexed) and leaves the rescue."""
    from .acquire import finalise

    moved = rescue.move_stream(sid, store)
    session = finalise(store, sid, index=engine)
    if session.store_error:
        raise StorageError(f"session {sid}: {session.store_error}")
    rescue.delete(sid)
    note = f" (not indexed: {session.index_error}; run `sdrlab index rebuild`)" if session.index_error else ""
    print(f"pushed {sid} ({moved} chunk object(s)) to {session.path}{note}")


def _store_push(a: argparse.Namespace) -> int:
    """Rescued sessions -> the store (same ids), then the index; each leaves the rescue
    directory only once it is committed in the store."""
    from .acquire import Session, add_to_index

    settings = _settings()
    rescue = settings.rescue_obj()
    store = _store(a.store)
    held = list(rescue.sessions().index) if Path(rescue.root).is_dir() else []
    ids = list(a.session_ids) or held
    if not ids:
        print(f"nothing to push: no session in {rescue.where}")
        return 0
    missing = [i for i in ids if i not in held]
    if missing:
        raise ConfigError(f"not in {rescue.where}: {', '.join(missing)}")
    engine = settings.engine()
    for sid in ids:
        if rescue.summary(sid).get("layout") == "recording":  # chunks of a streamed session
            _push_stream(rescue, store, sid, engine)
            continue
        ds = rescue.open(sid).load()
        ref = store.write(ds)  # idempotent: a session already pushed is left as it is
        session = Session(sid, float(ds.attrs.get("center_frequency_hz", 0.0)),
                          float(ds.attrs.get("requested_duration_s", 0.0)), {}, ds, path=ref.url)
        add_to_index(session, engine)
        store.open(sid)  # committed and readable before the rescue copy goes
        rescue.delete(sid)
        note = f" (not indexed: {session.index_error}; run `sdrlab index rebuild`)" if session.index_error else ""
        print(f"pushed {sid} to {ref.url}{note}")
    return 0


def _cmd_stations(a: argparse.Namespace) -> int:

    cat = _settings(catalog=a.catalog).catalog_obj()
    if a.stations_command == "sync":
        from .index import init_db
        from .index.stations import sync_stations
        from .receivers import probe_status

        engine = _settings().engine()
        init_db(engine)
        reports = sync_stations(engine, cat, probe=None if a.no_probe else probe_status)
        for r in reports:
            state = "-" if r["up"] is None else ("up" if r["up"] else "DOWN")
            extra = f" {r['latency_ms']} ms" if r["up"] else (f" {r['error']}" if r["error"] else "")
            if r.get("gps") == "no fixes":
                extra += " no GPS fixes (gps_good but fixes=0): not GPS-timed, no TDoA"
            print(f"{r['station']:20s} {state}{extra}")
        print(f"{len(reports)} station(s) synced")
        return 0
    for s in cat:
        print(f"{s.id:20s} {s.host}:{s.port:<6d} {s.latitude:9.4f} {s.longitude:9.4f} "
              f"ch={s.channels} {s.protocol} {s.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    handlers = {
        "sim": _cmd_sim_serve,
        "acquire": _cmd_acquire,
        "demo": _cmd_demo,
        "monitor": _cmd_monitor,
        "stations": _cmd_stations,
        "sessions": _cmd_sessions,
        "store": _cmd_store,
        "export": _cmd_export,
        "import": _cmd_import,
        "db": _cmd_db,
        "index": _cmd_index,
        "query": _cmd_query,
        "run": _cmd_run,
        "report": _cmd_report,
        "tdoa": _cmd_tdoa,
    }
    try:
        from .config import Settings

        _COMMAND_SETTINGS.append(Settings.from_env())  # once per command; a bad SDRLAB_* is exit 2
        try:
            return handlers[args.command](args)
        finally:
            _COMMAND_SETTINGS.pop()
    except (ConfigError, CatalogError) as exc:
        _error(f"error: {exc}")
        return 2
    except AcquisitionError as exc:
        _error(f"acquisition failed: {exc}")
        return 1
    except NotebookRunError as exc:
        _error(f"run {exc.result.run_id} failed: {exc}")
        if exc.result.html:
            _error(f"the partial report is in {exc.result.html}")
        return 1
    except IndexStoreError as exc:
        _error(f"index: {exc}")
        return 1
    except SdrlabError as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


#: the longest error message printed (the rest is cut, saying how much)
MAX_MESSAGE_CHARS = 4000


def _error(message: str) -> None:
    """An error on stderr: any password in a URL masked, whatever raised it; bounded in length."""
    text = mask_urls_in(message)
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    print(f"sdrlab: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
