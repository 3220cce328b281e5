"""What the workbench notebooks call: parameter checks with clear messages, stations (simulated or
from the catalogue), the store and index the notebook should use, and :func:`publish`, which tells
``sdrlab run`` which sessions a run made or reported on.

Kept out of the notebooks so that they stay short and the logic is tested as code.
"""

from __future__ import annotations

import atexit
import logging
import re
from typing import TYPE_CHECKING, Any

from . import metric_table
from .config import Settings
from .config import project_root as project_root  # the notebooks call nb.workbench_settings(store, db)
from .config import workbench_settings as workbench_settings
from .demo import scene_attrs
from .errors import ConfigError
from .stations import Station

if TYPE_CHECKING:
    import pandas as pd

    from .sim.scene import Scene
    from .sim.server import SimServer
    from .store import Store

log = logging.getLogger(__name__)
#: simulated networks started by this kernel, reused by later cells: (network, seed, speed) -> server
_SERVERS: dict[tuple[str, int, float], tuple[Any, Scene | None]] = {}


# ---- parameter checks -------------------------------------------------------------------------
def check_type(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"parameter {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"parameter {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def check_positive(name: str, value: Any) -> float:
    import math

    check_type(name, value, (int, float))
    if not (float(value) > 0 and math.isfinite(float(value))):
        raise ConfigError(f"parameter {name} must be a finite positive number, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Any) -> Any:
    options = list(choices)
    if value not in options:
        raise ConfigError(f"parameter {name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def check_acquisition(frequency_hz: Any, duration_s: Any, stations: str | None = None,
                      settings: Settings | None = None) -> tuple[float, float]:
    """Frequency and duration as numbers within the receivers' limits (messages name the parameter):
    with ``stations`` (a network name, ``all`` or ids, as :func:`choose_stations` takes them) those
    stations' ranges (a KiwiSDR tunes 0-30 MHz), else any receiver family's."""
    from .acquire import validate_request
    from .stations import load_catalog

    check_type("frequency_hz", frequency_hz, (int, float))
    check_type("duration_s", duration_s, (int, float))
    chosen: list[Station] = []
    if stations is not None:
        words = parse_station_spec(stations)
        known: dict[str, Station] = {}
        for cat in (load_catalog(), (settings or Settings.from_env()).catalog_obj()):
            known.update({s.id: s for s in cat})
        by_net = [s for s in known.values() if s.network in words]
        chosen = by_net or [known[w] for w in words if w in known]
        if words == ["all"]:
            chosen = []
    validate_request(float(frequency_hz), float(duration_s), chosen)
    return float(frequency_hz), float(duration_s)


def check_session_param(session: Any) -> str:
    """``""`` (acquire, or take the newest), ``"latest"``, a session id as the store names them,
    or ``ID@VERSION``: that exact data version (a past run's ``data_version``), to reproduce it."""
    from .store import check_session_id

    check_type("session", session, str)
    if session in ("", "latest"):
        return str(session)
    sid, at, version = session.partition("@")
    if at and not re.fullmatch(r"[0-9a-f]{16}", version):
        raise ConfigError(f"parameter session: {version!r} after '@' is not a data version (16 hex digits, "
                          "as a run's data_version says)")
    try:
        check_session_id(sid)
    except Exception as exc:
        raise ConfigError(f"parameter session: {exc}") from None
    return str(session)


def open_session(store: Store, session: str = "") -> tuple[str, Any]:
    """``(session_id, dataset)`` of :func:`pick_session`'s choice; ``ID@VERSION`` opens that
    exact data version or fails naming the version the store holds now."""
    sid, _, version = session.partition("@")
    session_id = pick_session(store, sid)
    return session_id, store.open(session_id, version=version or None)


def parse_station_spec(spec: Any) -> list[str]:
    """``"demo7"`` (a network), ``"all"``, or ``"id1,id2"``: the words, validated."""
    check_type("stations", spec, str)
    words = [w.strip() for w in re.split(r"[,\s]+", spec) if w.strip()]
    if not words:
        raise ConfigError("parameter stations is empty: give a network name (e.g. demo7), 'all', or station ids")
    bad = [w for w in words if not re.match(r"^[a-z0-9][a-z0-9-]*$", w)]
    if bad:
        raise ConfigError(f"parameter stations: {', '.join(map(repr, bad))} "
                          f"{'is not a station id or network name' if len(bad) == 1 else 'are not station ids'} "
                          "(lower-case letters, digits and dashes)")
    return words


# ---- stations ---------------------------------------------------------------------------------
def stop_simulators() -> None:
    """Stop every simulated network this process started (also run at exit)."""
    while _SERVERS:
        server, _ = _SERVERS.popitem()[1]
        try:
            server.stop_thread()
        except Exception:  # the interpreter may be going away
            log.debug("simulator stop failed", exc_info=True)


def simulate(network: str = "demo7", *, seed: int = 0, speed: float = 1.0) -> tuple[SimServer, Scene]:
    """A simulated network on free loopback ports, started once per (network, seed, speed) and
    kept for the rest of this kernel's life (re-running a cell reuses it)."""
    from .sim.networks import network as make_scene
    from .sim.server import SimServer

    key = (network, int(seed), float(speed))
    if key not in _SERVERS:
        scene = make_scene(network, seed)
        if not _SERVERS:
            atexit.register(stop_simulators)
        _SERVERS[key] = (SimServer(scene, base_port=0, speed=speed).start_in_thread(), scene)
    server, sc = _SERVERS[key]
    assert sc is not None  # a KiwiSDR network always has its scene
    return server, sc


def simulate_owrx(network: str = "italy7", *, seed: int = 0) -> dict[str, int]:
    """A simulated OpenWebRX network on free loopback ports, started once per (network, seed)
    and kept for the rest of this kernel's life; its ports by station id."""
    from .sim.owrx.networks import italy7
    from .sim.owrx.server import OwrxSimServer

    key = (network, int(seed), 0.0)
    if key not in _SERVERS:
        if not _SERVERS:
            atexit.register(stop_simulators)
        _SERVERS[key] = (OwrxSimServer(italy7(seed), base_port=0).start_in_thread(), None)
    ports: dict[str, int] = _SERVERS[key][0].ports
    return ports


def choose_stations(spec: str, *, simulated: bool, settings: Settings | None = None,
                    seed: int = 0) -> tuple[list[Station], Scene | None]:
    """The stations a notebook acquires from.  ``simulated``: the named simulated network (or the
    named stations of demo7) served in-process; otherwise the catalogue's network, ``all``, or
    the named station ids."""
    from .demo import OWRX_NETWORKS, network_stations
    from .sim.networks import NETWORKS

    words = parse_station_spec(spec)
    settings = settings or Settings.from_env()
    if simulated:
        from .stations import load_catalog

        nets = set(NETWORKS) | set(OWRX_NETWORKS)
        cat = load_catalog()
        net = words[0] if len(words) == 1 and words[0] in nets else next(
            (n for n in OWRX_NETWORKS if words[0] in {s.id for s in cat.network(n)}), "demo7")
        known = [s.id for s in cat.network(net)]
        unknown = [w for w in words if w not in known and w not in nets and w != "all"]
        if unknown:  # checked before a simulator is started
            raise ConfigError(f"parameter stations: {', '.join(unknown)} not in the simulated network {net} "
                              f"(its stations: {', '.join(known)})")
        if net in OWRX_NETWORKS:
            ports, scene = simulate_owrx(net, seed=seed), None
        else:
            server, scene = simulate(net, seed=seed)
            ports = server.ports
        pointed = {s.id: s for s in network_stations(net, ports)}
        if words[0] in nets or words == ["all"]:
            return list(pointed.values()), scene
        return [pointed[w] for w in words], scene
    catalog = settings.catalog_obj()
    if words == ["all"]:
        return list(catalog), None
    if len(words) == 1 and words[0] not in catalog:
        net_stations = catalog.network(words[0])
        if net_stations:
            return list(net_stations), None
    return catalog.select(words), None


# ---- sessions ---------------------------------------------------------------------------------
def pick_session(store: Store, session: str = "") -> str:
    """``session`` when given (checked to exist), else the newest committed session."""
    sessions = store.sessions()
    if session and session != "latest":
        if session not in sessions.index:
            raise ConfigError(f"session {session} is not in the store {store.where} "
                              f"(`sdrlab sessions list` shows the {len(sessions)} there)")
        return session
    if sessions.empty:
        raise ConfigError(f"no sessions in the store {store.where} yet: acquire one first "
                          "(notebook 01-acquire, `make demo`, or `sdrlab acquire`)")
    return str(sessions.sort_values("start_time").index[-1])


def station_table(ds: Any) -> pd.DataFrame:
    """Per station: status, samples, rate, UTC start, and the stored signal metrics, rounded for
    reading."""
    import pandas as pd

    rows = []
    for i, st in enumerate(ds["station"].values):
        s = ds.isel(station=i)
        row: dict[str, Any] = {"station": str(st), "status": str(s["status"].values)}
        row["samples"] = int(s["n_samples"])
        row["sample rate (Hz)"] = round(float(s["sample_rate"]), 3)
        row["start (UTC)"] = pd.Timestamp(s["start_time"].values).round("ms")
        for name, nd in (("snr_db", 1), ("signal_power_dbfs", 1), ("noise_floor_dbfs_hz", 1),
                         ("frequency_offset_hz", 2)):
            if name in ds.variables:
                row[metric_table.label(name)] = round(float(s[name]), nd)
        rows.append(row)
    return pd.DataFrame(rows).set_index("station")


def publish(**facts: Any) -> None:
    """Tell ``sdrlab run`` about this run (e.g. ``publish(session_id=...)``): an output of a MIME
    type of its own that reports leave out; the text fallback says what was published."""
    from IPython.display import display

    from .runs import PUBLISH_MIME  # papermill and nbformat load with sdrlab.runs only when publishing

    clean = {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in facts.items()}
    text = ", ".join(f"{k}={v}" for k, v in clean.items())
    display({PUBLISH_MIME: clean, "text/plain": f"published: {text}"}, raw=True)


def acquire_session(spec: str, frequency_hz: float, duration_s: float, *, simulated: bool,
                    settings: Settings, seed: int = 0) -> Any:
    """Acquire from the stations ``spec`` names (see :func:`choose_stations`), record the
    simulated scene's truth, store and index the session.  Returns the
    :class:`~sdrlab.acquire.Session`; raises :class:`~sdrlab.errors.AcquisitionError` when no
    station delivered data (each station's reason in the message).  A store or index that fails
    is reported in the session's ``store_error`` / ``index_error``; the data stays in memory."""
    from .acquire import acquire, save
    from .errors import AcquisitionError

    chosen, scene = choose_stations(spec, simulated=simulated, settings=settings, seed=seed)
    session = acquire(chosen, frequency_hz, duration_s, settings=settings, write=False, progress=False,
                      attrs=scene_attrs(scene) if scene is not None else None)
    if session.dataset is None:
        why = "; ".join(f"{s}: {r.error_class}: {r.message}" for s, r in session.results.items())
        raise AcquisitionError(f"no station delivered data ({why})")
    save(session, settings.store_obj(), index=settings.engine(), rescue=settings.rescue_obj())
    if session.store_error:
        where = f"kept in {session.rescued}" if session.rescued else "in memory only"
        log.error("session %s not stored (%s): %s", session.session_id, where, session.store_error)
    return session


def heading(ds: Any) -> str:
    """A Markdown heading and one line of facts for a session."""
    import pandas as pd

    status = [str(s) for s in ds["status"].values]
    start = pd.Timestamp(ds["start_time"].values.min())
    freq = float(ds.attrs.get("center_frequency_hz", float("nan")))
    dur = ds.attrs.get("requested_duration_s")
    parts = [f"{len(status)} stations ({status.count('ok')} ok)", f"tuned to {freq / 1e3:,.3f} kHz"]
    if dur is not None:
        parts.append(f"{float(dur):g} s requested")
    parts.append(f"started {start:%Y-%m-%d %H:%M:%S} UTC")
    if ds.attrs.get("simulated_scene"):
        parts.append(f"simulated scene {ds.attrs['simulated_scene']}")
    if ds.attrs.get("data_version"):  # what a rerun passes as session=ID@VERSION to read the same data
        parts.append(f"data version `{ds.attrs['data_version']}`")
    return f"## Session `{ds.attrs.get('session_id', '?')}`\n\n" + ", ".join(parts) + "."


def methods_note(ds: Any) -> str:
    """Markdown: how each stored metric was measured (from the session's attrs)."""
    import json

    from .metrics import UNITS
    from .plots import metric_label

    lines = []
    for name in UNITS:
        if name not in ds.variables:
            continue
        a = ds[name].attrs
        extra = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in a.items() if k not in ("units", "long_name"))
        lines.append(f"- **{metric_label(name)}**: {a.get('long_name', name)}" + (f" ({extra})" if extra else ""))
    if ds.attrs.get("metrics_definition"):
        d = json.loads(ds.attrs["metrics_definition"])
        lines.append("- Spectral estimate: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items() if k != "title"))
    times = {"gps": "times are GPS-derived UTC",
             "receipt": "times are this host's receipt times (the receivers send no timestamps), not signal time",
             "mixed": "times are GPS-derived UTC for the GPS-timed stations and this host's receipt times for the "
                      "others (column timing)"}.get(str(ds.attrs.get("timing", "gps")), "no station has a time base")
    if "audio" in ds.variables:
        lines.append("- Audio receivers (OpenWebRX): levels from their S-meter and waterfall rows, relative to "
                     "each receiver's ADC full scale (uncalibrated); SNR = (S-meter power - N0 B) / (N0 B) with N0 "
                     "from the waterfall's median bin and B the passband plus the filter's transition")
    lines.append(f"- Recorded by {ds.attrs.get('core:recorder', 'sdrlab')}; {times}.")
    return "\n".join(lines)


# ---- TDoA ---------------------------------------------------------------------------------------
def gps_timed(ds: Any) -> list[str]:
    """The stations of a session whose samples have a GPS time fit."""
    return [str(s) for s, g in zip(ds["station"].values, ds["gps_status"].values) if str(g) == "ok"]


def tdoa_markdown(result: Any, heading: str = "### Where the signal comes from (TDoA)") -> str:
    """The TDoA result in a few sentences: position and uncertainty (or why none), the stations,
    the error against a known transmitter."""
    d = result.to_dict()
    lines = [heading, ""]
    if d["position"] is None:
        lines.append(f"No position claimed: {d['position_reason']}.")
    else:
        p, u = d["position"], d["uncertainty"] or {}
        lat, lon = p["latitude"], p["longitude"]
        text = (f"Most likely position **{abs(lat):.4f}° {'N' if lat >= 0 else 'S'}, "
                f"{abs(lon):.4f}° {'E' if lon >= 0 else 'W'}**")
        if u:
            text += (f", {u['confidence'] * 100:g} % uncertainty ellipse {u['semi_major_km']:.2f} × "
                     f"{u['semi_minor_km']:.2f} km (semi-axes), major axis {u['orientation_deg']:.0f}° from north")
        if d["gdop"] is not None:
            text += f", GDOP {d['gdop']:.2f}"
        lines.append(text + ".")
        if d["error_km"] is not None and result.truth is not None:
            inside = "inside" if result.contains(result.truth) else "outside"
            lines.append("")
            lines.append(f"The transmitter the session records is {d['error_km']:.3f} km from the estimate, "
                         f"{inside} the ellipse.")
    lines.append("")
    lines.append(f"From {len(d['stations_used'])} GPS-timed stations: {len(d['pairs'])} pairs cross-correlated in "
                 f"{d['n_windows']} windows over {d['overlap_s']:.1f} s of shared time.")
    if d.get("method"):
        sig = d.get("signal") or {}
        why = f" ({sig['reason']})" if sig.get("reason") else ""
        lines.append(f"Lags by the **{d['method']}** method{why}.")
    closures = d.get("closures") or []
    if closures:
        bad = [c for c in closures if not c.get("ok", True)]
        lines.append(f"{len(closures) - len(bad)} of {len(closures)} station triangles close within their "
                     "uncertainty.")
    prior = (d.get("parameters") or {}).get("station_delay_sigma_s")
    if prior:
        lines.append(f"The uncertainty allows {prior * 1e6:g} µs of unknown processing delay per receiver "
                     "(calibrate on a known transmitter to remove it).")
    for sid, why in d["stations_dropped"].items():
        lines.append(f"- dropped {sid}: {why}")
    return "\n".join(lines)


def tdoa_pairs(result: Any) -> pd.DataFrame:
    """Per station pair: lag and spread in microseconds, correlation, windows, residual, use."""
    import pandas as pd

    rows = [{"pair": f"{p['a']} → {p['b']}", "lag (µs)": p["lag_us"], "spread (µs)": p["spread_us"],
             "± 95 % (µs)": p.get("ci95_us"),
             "correlation": p["correlation"], "windows kept": f"{p['n_windows']}/{p['n_windows_valid']}",
             "baseline (km)": p["baseline_km"], "residual (µs)": p["residual_us"],
             "used": "yes" if p["used"] else f"no: {p['reason']}"} for p in result.to_dict()["pairs"]]
    columns = ["pair", "lag (µs)", "spread (µs)", "± 95 % (µs)", "correlation", "windows kept", "baseline (km)",
               "residual (µs)", "used"]
    return pd.DataFrame(rows, columns=columns).set_index("pair")
