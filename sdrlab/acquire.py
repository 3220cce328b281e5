"""Parallel acquisition on dask: one task per station, partial failure returned as data.

:func:`acquire` validates the request, submits one ``pure=False`` task per station (named
``acquire-<station>-<session>``) to a LocalCluster of threads or to a scheduler by address, and
gathers a :class:`Session`: one Dataset of every capture that holds data plus a status per station.
A station that is down, busy or sends garbage never costs the others their data, and what a
failing station sent before failing is kept (status ``partial``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import xarray as xr

from . import metric_table, model, timing
from .config import Settings
from .errors import ConfigError, ReceiverError
from .model import new_session_id
from .receivers import make_receiver
from .receivers.kiwisdr import Capture, KiwiOptions
from .stations import Catalog, Station

log = logging.getLogger(__name__)

MAX_FREQUENCY_HZ = 30_000_000.0  # KiwiSDR: HF, 0-30 MHz
#: the highest frequency each receiver family tunes (OpenWebRX: whatever its SDR's profiles cover,
#: the client checks the profile; 6 GHz bounds the hardware it runs on)
MAX_FREQUENCY_BY_PROTOCOL = {"kiwisdr": MAX_FREQUENCY_HZ, "openwebrx": 6_000_000_000.0}
#: the metrics shown in the per-station table (all of them are stored in the Dataset)
TABLE_METRICS = metric_table.TABLE_METRICS
#: metric flags behind the table's notes
NOTE_METRICS = ("passband_filled", "agc_gain_changed", "clipped_fraction", "overload_fraction")
#: the shortest capture: a few of the receivers' 512-sample frames at 12 kHz; anything shorter has
#: no spectrum to measure
MIN_DURATION_S = 0.1
MAX_DURATION_S = 24 * 3600.0

#: ``on_progress`` receives one dict per event: ``station``, ``state`` (``queued``,
#: ``connecting``, ``receiving``, then ``ok``, ``partial`` or ``failed``), ``fraction`` (0-1 of the
#: requested samples), ``samples``, ``message``, and with the final state the table's metrics.
ProgressCallback = Callable[[dict[str, Any]], None]
FINAL_STATES = frozenset({"ok", "partial", "failed"})
_PROGRESS_INTERVAL_S = 0.5


@dataclass
class StationResult:
    """What one acquisition task returns (picklable: it may cross processes)."""

    station: str
    status: str  # ok | partial | failed
    capture: Capture | None
    error_class: str | None = None
    message: str | None = None
    elapsed_s: float = 0.0
    #: the capture's signal metrics (name -> value, units in the name), computed in the task
    metrics: dict[str, float] = field(default_factory=dict)
    #: how they were measured: each variable's attrs, and the metrics' global attrs under ""
    metric_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: streaming: chunks the store did not take in the task, (station, k, chunk, sidecar)
    unsent: list[tuple[str, int, bytes, bytes]] = field(default_factory=list)

    def as_status(self) -> model.StationStatus:
        return model.StationStatus(self.station, self.status, self.error_class, self.message)


@dataclass
class Session:
    """The result of one acquisition."""

    session_id: str
    frequency_hz: float
    duration_s: float
    results: dict[str, StationResult]
    dataset: xr.Dataset | None
    #: where the session was stored (None: not written, see ``store_error``)
    path: str | None = None
    store_error: str | None = None
    #: None when indexed (or not asked to); why not otherwise: the session stays in the store
    #: and ``sdrlab index rebuild`` indexes it later
    index_error: str | None = None
    #: where the session was kept when the store failed (``sdrlab store push`` moves it back)
    rescued: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> list[str]:
        return [s for s, r in self.results.items() if r.status == "ok"]

    @property
    def failed(self) -> list[str]:
        return [s for s, r in self.results.items() if r.status == "failed"]

    def status(self) -> pd.DataFrame:
        """Per-station table: status, samples, measured rate, UTC start, RSSI, gaps, error."""
        rows = []
        ds = self.dataset
        for sid, r in self.results.items():
            row: dict[str, Any] = {"station": sid, "status": r.status}
            if ds is not None and sid in ds["station"].values:
                s = ds.sel(station=sid)
                audio = "kind" in s.coords and str(s["kind"].values) == "audio"
                row.update(
                    samples=int(s["n_samples"]),
                    sample_rate_hz=float(s["sample_rate"]),
                    start_utc=pd.Timestamp(s["start_time"].values),
                    rssi_dbm=float(s["rssi_dbm"]),
                    seq_gaps=int(s["seq_gaps"]),
                    segments=int((s["audio_segment_start" if audio else "segment_start"] >= 0).sum()),
                )
                row.update({k: float(s[k]) for k in TABLE_METRICS if k in s.variables})
                notes = measurement_notes({k: float(s[k]) for k in NOTE_METRICS if k in s.variables},
                                          timing=str(s["timing"].values) if "timing" in s.coords else "gps")
                row["notes"] = notes
            if not r.error_class and r.message:  # completed in pieces: what the gaps were
                row["notes"] = "; ".join(x for x in (r.message, row.get("notes", "")) if x)
            row["error"] = f"{r.error_class}: {r.message}" if r.error_class else ""
            rows.append(row)
        return pd.DataFrame(rows).set_index("station")


def measurement_notes(flags: dict[str, float], *, timing: str = "gps") -> str:
    """What a reader must know before trusting a station's numbers, in a few words."""
    notes = []
    if flags.get("passband_filled", 0.0) >= 0.5:
        notes.append("signal fills the passband: noise floor an upper bound, SNR a lower bound")
    if flags.get("agc_gain_changed", 0.0) >= 0.5:
        notes.append("AGC changed the gain")
    if flags.get("clipped_fraction", 0.0) > 0.0:
        notes.append("clipped samples")
    if flags.get("overload_fraction", 0.0) > 0.0:
        notes.append("ADC overload")
    if timing == "receipt":
        notes.append("no GPS time (receipt times only)")
    return "; ".join(notes)


def attach_metrics(ds: xr.Dataset, results: Sequence[StationResult]) -> xr.Dataset:
    """The per-capture metrics as (station,) variables with units, so they travel with the session."""
    from .metrics import LONG_NAMES, UNITS

    names = [n for n in UNITS if any(n in r.metrics for r in results)]
    by_station = {r.station: r.metrics for r in results}
    defs = next((r.metric_attrs for r in results if r.metric_attrs), {})
    ids = [str(s) for s in ds["station"].values]
    for name in names:
        values = [by_station.get(i, {}).get(name, float("nan")) for i in ids]
        attrs = {"units": UNITS[name], "long_name": LONG_NAMES.get(name, name), **defs.get(name, {})}
        ds[name] = ("station", values, _json_safe(attrs))
    if defs.get(""):
        ds.attrs["metrics_definition"] = json.dumps(_json_safe(defs[""]), sort_keys=True)
    return ds


def add_metrics(ds: xr.Dataset) -> xr.Dataset:
    """Compute every metric of a session (e.g. an imported one) and attach it like acquisition does."""
    from .metrics import metrics

    m = metrics(ds).compute()
    results = [
        StationResult(str(s), "ok", None, metrics={str(k): float(v.sel(station=s)) for k, v in m.data_vars.items()},
                      metric_attrs={**{str(k): dict(v.attrs) for k, v in m.data_vars.items()}, "": dict(m.attrs)})
        for s in ds["station"].values
    ]
    return attach_interval_metrics(attach_metrics(ds, results))


def attach_interval_metrics(ds: xr.Dataset, interval_s: float | None = None) -> xr.Dataset:
    """The metric time series of a session (:func:`sdrlab.metrics.interval_metrics`, default
    every 10 s) as variables ``interval_<metric>`` (station, interval) with coordinates
    ``interval_start`` and ``interval_samples`` and the attribute ``interval_s``: stored with the
    session, indexed as ``interval_metrics`` rows."""
    from .metrics import INTERVAL_S, LONG_NAMES, interval_metrics

    if ds.sizes.get("station", 0) == 0 or "iq" not in ds.data_vars:
        return ds
    step = INTERVAL_S if interval_s is None else interval_s
    from .model_audio import iq_part

    # audio stations (a mixed session) have no IQ to measure per interval: NaN rows for them
    m = interval_metrics(iq_part(ds), step).compute().reindex(station=ds["station"].values)
    for name, v in m.data_vars.items():
        attrs = {"units": v.attrs.get("units", ""), "long_name": f"{LONG_NAMES.get(str(name), name)} per interval"}
        ds[f"interval_{name}"] = (("station", "interval"), v.transpose("station", "interval").values,
                                  _json_safe(attrs))
    ds = ds.assign_coords(
        interval_start=(("station", "interval"), m["interval_start"].transpose("station", "interval").values,
                        {"long_name": "UTC of the interval's first sample (GPS time base)"}),
        interval_samples=(("station", "interval"), m["interval_samples"].transpose("station", "interval").values,
                          {"long_name": "valid samples in the interval", "units": "1"}),
    )
    ds.attrs["interval_s"] = float(step)
    return ds


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """zarr attributes must be JSON: numpy scalars to Python, the rest to strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif hasattr(v, "item"):
            out[k] = v.item()
        else:
            out[k] = str(v)
    return out


def validate_request(frequency_hz: float, duration_s: float, stations: Iterable[Station] | None = None) -> None:
    """The frequency (within every chosen station's family's range; without ``stations``:
    KiwiSDR's 0-30 MHz) and the duration, each named when wrong."""
    if not isinstance(frequency_hz, (int, float)) or not math.isfinite(frequency_hz):
        raise ConfigError(f"frequency must be a number of Hz, got {frequency_hz!r}")
    if stations is None:
        if not 0.0 < frequency_hz <= MAX_FREQUENCY_HZ:
            raise ConfigError(
                f"frequency {frequency_hz:g} Hz is outside 0-30 MHz (KiwiSDR receivers cover HF only)"
            )
    else:
        sts = list(stations)
        kiwi_out = [s.id for s in sts if s.protocol == "kiwisdr" and not 0.0 < frequency_hz <= MAX_FREQUENCY_HZ]
        if kiwi_out:
            raise ConfigError(f"frequency {frequency_hz:g} Hz is outside 0-30 MHz (KiwiSDR receivers cover HF only): "
                              f"{', '.join(kiwi_out)}")
        top = max(MAX_FREQUENCY_BY_PROTOCOL.values())
        if not 0.0 < frequency_hz <= top:
            raise ConfigError(f"frequency {frequency_hz:g} Hz is outside 0-{top / 1e6:g} MHz (no receiver tunes it)")
        other = [s.id for s in sts
                 if not 0.0 < frequency_hz <= MAX_FREQUENCY_BY_PROTOCOL.get(s.protocol, MAX_FREQUENCY_HZ)]
        if other:
            raise ConfigError(f"frequency {frequency_hz:g} Hz is outside what {', '.join(other)} can tune")
    if not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s):
        raise ConfigError(f"duration must be a finite number of seconds, got {duration_s!r}")
    if duration_s < MIN_DURATION_S:
        raise ConfigError(
            f"duration must be at least {MIN_DURATION_S:g} s (a few frames of samples), got {duration_s!r}"
        )
    if duration_s > MAX_DURATION_S:
        raise ConfigError(f"duration {duration_s:g} s exceeds the maximum of {MAX_DURATION_S:g} s")


def _progress_emitter(topic: str | None) -> Callable[[dict[str, Any]], None] | None:
    """Inside a dask worker: send progress events to the client under ``topic`` (the
    scheduler's event log, so it works for remote workers too).  Elsewhere: None."""
    if topic is None:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None

    def emit(msg: dict[str, Any]) -> None:
        try:
            worker.log_event(topic, msg)
        except Exception:  # progress is a display; never cost the capture
            log.debug("progress event not sent", exc_info=True)

    return emit


def _stop_poller(name: str | None) -> Callable[[], bool] | None:
    """Inside a dask worker: whether the cluster-wide Event ``name`` is set, asked of the scheduler
    at most once a second (through the worker's own scheduler connection: a worker Client would
    become the process's default one).  Elsewhere, or without a name: None."""
    if name is None:
        return None
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    state = {"at": 0.0, "set": False}

    def poll() -> bool:
        now = time.monotonic()
        if not state["set"] and now - state["at"] >= 1.0:
            state["at"] = now
            state["set"] = bool(sync(worker.loop, worker.scheduler.event_is_set, name=name))
        return bool(state["set"])

    return poll


def _started_before(name: str) -> bool:
    """Inside a dask worker: whether a task under this name has started before (a cluster-wide
    Event set on start, through the worker's scheduler connection).  Elsewhere: False."""
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
    except (ImportError, ValueError):
        return False
    try:
        if sync(worker.loop, worker.scheduler.event_is_set, name=name):
            return True
        sync(worker.loop, worker.scheduler.event_set, name=name)
    except Exception:  # bookkeeping must never cost a capture
        log.debug("start marker %s not set", name, exc_info=True)
    return False


def capture_group(
    stations: Sequence[Station], frequency_hz: float, duration_s: float, options: KiwiOptions, *,
    session_id: str = "", group: int = 0, progress_topic: str | None = None, stop_event: str | None = None,
    window_topics: tuple[str, str] | None = None, start_wait_s: float = 20.0,
    stream: dict[str, Any] | None = None, window_start_ns: int | None = None,
    protocol_options: dict[str, Any] | None = None,
) -> list[StationResult]:
    """The dask task: capture every station of one group at once, in one event loop (one worker
    thread holds hundreds of streams); never raises for receiver trouble.

    With ``window_topics`` (report, start: topics of the dask event log) the captures share one
    :class:`~sdrlab.receivers.window.Window`: when every station of the group has its first frame
    (or ``start_wait_s`` passed) the group reports the latest first time under ``report``, then
    waits for the session's start under ``start`` (decided by :func:`acquire` from all groups).
    Without them (no dask worker) the group's own latest first time is the start.
    ``window_start_ns`` (GPS ns): the window's start, fixed in advance (see :func:`acquire`).
    ``stop_event`` (the name of a distributed Event) ends every capture as soon as it is set,
    keeping what has arrived (status ``partial``); ``progress_topic``: ``connecting`` and
    ``receiving`` events (see :data:`ProgressCallback`) to the event log under that topic.
    """
    import asyncio

    t = time.perf_counter()
    rerun = bool(session_id) and _started_before(f"sdrlab-started-{session_id}-g{group}")
    if rerun and stream is None:
        # the scheduler re-ran this task because the worker running it died: capturing from
        # scratch, seconds late, would silently break the session's simultaneity
        return [StationResult(st.id, "failed", None, "WorkerDied",
                              "the dask worker capturing it died mid-capture; what it had received was lost with "
                              "it, and it is not captured again late (that would not be simultaneous)",
                              time.perf_counter() - t) for st in stations]
    emit = _progress_emitter(progress_topic)
    poll = _stop_poller(stop_event)
    writer = recorders = None
    if stream is not None:
        # streaming and re-run (its worker died): each station continues after what it stored,
        # as a new segment, to the end of the session's window; never from scratch
        writer, recorders = _stream_writers(stations, stream, resume=rerun)
    # asyncio's own loop, not uvloop: it reads the sockets before it runs the timers that fell due, so
    # an overloaded client is less likely to take its own lateness for a receiver's stall (README
    # "2,000 streams, and uvloop")
    results = asyncio.run(_capture_group(stations, frequency_hz, duration_s, options, emit, poll,
                                         _window_link(window_topics, group), start_wait_s, t, recorders,
                                         window_start_ns, protocol_options))
    if writer is not None and recorders is not None:
        _close_stream(writer, recorders, results, float(stream["timeout_s"]) if stream else 60.0)
        if rerun:
            _note_resumed(results, recorders)
        return results  # metrics are measured on the stored session when it is finalised
    for st, res in zip(stations, results):
        if res.capture is not None:
            try:
                res.metrics, res.metric_attrs = capture_metrics(res.capture, st)
            except Exception as exc:  # metrics must never cost the capture
                log.exception("station %s: metrics failed", st.id)
                res.message = (res.message or "") + f" (metrics failed: {exc})"
    return results


#: how a segment ends when the dask worker capturing it died (a resumed station's)
WORKER_DIED = "the dask worker capturing it died"


def _note_resumed(results: list[StationResult], recorders: dict[str, Any]) -> None:
    """A re-run group's stations: ``partial``, saying they resumed; what the dead worker stored
    counts as their data even when nothing more came."""
    for res in results:
        rec = recorders.get(res.station)
        if rec is None or not rec.resumed_from:
            continue
        note = (f"its dask worker died after {rec.resumed_from} stored sample(s); resumed on another worker as a "
                "new segment")
        if res.status == "failed" and res.error_class in ("NoData", "Stopped"):
            res.error_class = None
            note += f" ({res.message})"
            res.message = None
        res.status = "partial"
        res.message = "; ".join(x for x in (note, res.message) if x)


def _stream_writers(stations: Sequence[Station], stream: dict[str, Any],
                    resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Streaming: the store the chunks go to (from ``stream``: url, storage_options, timeout_s,
    session_id, chunk_samples), its background writer and one recorder per station (``resume``:
    each continuing after what the store holds of it)."""
    from .recording import ChunkWriter, StationRecorder, steady_heap
    from .recording_audio import AudioRecorder
    from .store import Store

    steady_heap()

    store = Store(stream["url"], stream.get("storage_options"), timeout_s=float(stream["timeout_s"]))
    sid = str(stream["session_id"])

    def put(station: str, k: int, chunk: bytes, sidecar: bytes) -> None:
        store.put_stream(sid, station, k, chunk, sidecar)

    after = None
    if stream.get("db"):  # the metric time series to the index as each chunk is committed
        from .index import make_engine
        from .index.ingest import add_interval_rows
        from .recording import sidecar_intervals

        engine = make_engine(str(stream["db"]))

        def after(station: str, k: int, chunk: bytes, sidecar: bytes) -> None:
            meta, ivs = sidecar_intervals(sidecar)
            if (meta.get("capture") or {}).get("info") is None or not ivs:
                return
            add_interval_rows(engine, sid, station, float(meta["capture"]["frequency_hz"]),
                              float(meta.get("interval_s") or 0.0), [iv for iv in ivs if iv["utc"] is not None])

    writer = ChunkWriter(put, after=after)
    n = int(stream["chunk_samples"])
    # IQ receivers: fixed-size chunks of samples; audio receivers (OpenWebRX): a piece of
    # everything that arrived every chunk's worth of seconds
    recorders = {st.id: StationRecorder(st.id, n, writer.put, interval_s=float(stream["interval_s"]))
                 if st.protocol == "kiwisdr" else AudioRecorder(st.id, writer.put, piece_s=n / 12000.0)
                 for st in stations}
    if resume:
        for st_id, (cars, n) in store.stream_runs(sid, list(recorders)).items():
            recorders[st_id].resume(cars, n, WORKER_DIED)
    return writer, recorders


def _close_stream(writer: Any, recorders: dict[str, Any], results: list[StationResult], timeout_s: float) -> None:
    """Store each station's last chunk and wait for the writer; chunks the store did not take
    travel back with the results (``unsent``) for the session's finalisation to try again."""
    for res in results:
        rec = recorders.get(res.station)
        if rec is not None:
            rec.close(res.capture)
    writer.close(timeout_s)
    for res in results:
        mine = [u for u in writer.unsent if u[0] == res.station]
        if mine:
            res.unsent = mine
            note = f"{len(mine)} chunk(s) not stored yet ({writer.error})"
            res.message = "; ".join(x for x in (res.message, note) if x)


#: (report(first_ns), fetch() -> start_ns or None) of the cluster-wide window, or None
WindowLink = tuple[Callable[[int | None], None], Callable[[], int | None]] | None


def _window_link(topics: tuple[str, str] | None, group: int) -> WindowLink:
    """Inside a dask worker: how a group reports its candidate start and learns the session's,
    through the scheduler's event log (works for remote workers).  Elsewhere: None."""
    if topics is None:
        return None
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    report_topic, start_topic = topics

    def report(first_ns: int | None) -> None:
        worker.log_event(report_topic, {"group": group, "first_ns": first_ns})

    def fetch() -> int | None:
        events = sync(worker.loop, worker.scheduler.events, topic=start_topic)
        for _t, msg in events or ():
            if isinstance(msg, dict) and msg.get("start_ns") is not None:
                return int(msg["start_ns"])
        return None

    return report, fetch


async def _capture_group(
    stations: Sequence[Station], frequency_hz: float, duration_s: float, options: KiwiOptions,
    emit: Callable[[dict[str, Any]], None] | None, poll: Callable[[], bool] | None, link: WindowLink,
    start_wait_s: float, t: float, recorders: dict[str, Any] | None = None, window_start_ns: int | None = None,
    protocol_options: dict[str, Any] | None = None,
) -> list[StationResult]:
    import asyncio

    from .receivers.window import Window

    window = Window(duration_s, [st.id for st in stations], auto=link is None, start_ns=window_start_ns)
    every = max(_PROGRESS_INTERVAL_S, len(stations) / 200.0)  # the event log carries ~200 events/s
    receivers = []
    for st in stations:
        # a station's own protocol's options when given (OwrxOptions for openwebrx), else the session's
        rx = make_receiver(st, (protocol_options or {}).get(st.protocol, options))
        rx.window = window
        if recorders is not None:
            rx.sink = recorders[st.id]
        if poll is not None:
            rx.should_stop = poll
        if emit is not None:
            emit({"station": st.id, "state": "connecting", "fraction": 0.0, "samples": 0, "message": ""})
            rx.on_progress = _progress_reporter(emit, st.id, duration_s, every)
        receivers.append(rx)
    coordinator = None
    if link is not None:
        coordinator = asyncio.create_task(_coordinate(window, link, start_wait_s, poll))
    elif len(stations) > 1:
        coordinator = asyncio.create_task(_start_anyway(window, start_wait_s))
    try:
        return list(await asyncio.gather(*(
            _capture_one(rx, st, frequency_hz, duration_s, window, t) for rx, st in zip(receivers, stations))))
    finally:
        if coordinator is not None:
            coordinator.cancel()


def _progress_reporter(emit: Callable[[dict[str, Any]], None], station: str, duration_s: float,
                       every: float) -> Callable[[int, float], None]:
    last = [0.0]

    def on_samples(samples: int, rate: float) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            want = max(1.0, duration_s * rate)
            emit({"station": station, "state": "receiving", "fraction": min(1.0, samples / want),
                  "samples": int(samples), "message": ""})

    return on_samples


async def _start_anyway(window: Any, start_wait_s: float) -> None:
    """One process, no coordinator: a station that never comes up must not hold the others' start."""
    if not await window.wait(reported=True, timeout=start_wait_s):
        cand = window.candidate()
        window.set_start(cand if cand is not None else timing.gps_now_ns())


async def _coordinate(window: Any, link: Any, start_wait_s: float, poll: Callable[[], bool] | None) -> None:
    """Report this group's candidate start once every station has its first frame (or gave up,
    or ``start_wait_s`` passed), then poll the event log for the session's start."""
    import asyncio

    report, fetch = link
    loop = asyncio.get_running_loop()
    await window.wait(reported=True, timeout=start_wait_s)
    if window.start_ns is not None:
        return
    try:
        await loop.run_in_executor(None, report, window.candidate())
    except Exception:  # the scheduler is going: the fallback below still starts the window
        log.warning("window candidate not reported to the scheduler", exc_info=True)
    give_up = time.monotonic() + 3 * start_wait_s + 10.0
    while window.start_ns is None:
        try:
            start = await loop.run_in_executor(None, fetch)
        except Exception:  # the scheduler is busy or going: ask again
            log.debug("window start not fetched", exc_info=True)
            start = None
        if start is not None:
            window.set_start(start)
            return
        if time.monotonic() > give_up:  # no word from the session: never hold the samples forever
            cand = window.candidate()
            log.warning("no session start from the scheduler after %.0f s: this group starts on its own",
                        3 * start_wait_s + 10.0)
            window.set_start(cand if cand is not None else timing.gps_now_ns())
            return
        await asyncio.sleep(0.1)


async def _capture_one(rx: Any, station: Station, frequency_hz: float, duration_s: float, window: Any,
                       t: float) -> StationResult:
    try:
        res = await _capture(rx, station, frequency_hz, duration_s, t)
    finally:
        window.gave_up(station.id)  # no-op once it arrived: the start never waits for a finished one
    if getattr(rx, "stopped", False):
        got = res.capture.n_samples / (res.capture.sample_rate or 12000.0) if res.capture else 0.0
        if res.capture is not None and res.capture.n_samples:
            res.status = "partial"
            note = f"stopped by request after {got:.1f} s of the {duration_s:g} s asked for"
            res.message = "; ".join(x for x in (note, res.message) if x)
        elif res.status != "failed":
            res.status, res.capture = "failed", None
            res.error_class, res.message = "Stopped", "stopped by request before any data arrived"
    if res.status != "failed" and (res.capture is None or not res.capture.n_samples):
        why = res.capture.events[-1] if res.capture is not None and res.capture.events else "nothing arrived in time"
        res.status, res.capture = "failed", None
        res.error_class, res.message = "NoData", f"no data inside the session's window ({why})"
    return res


def capture_metrics(capture: Capture, station: Station) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Every metric of one capture (see :mod:`sdrlab.metrics`) as plain floats, and the attrs
    that say how each was measured (bandwidths, Welch parameters, passband)."""
    from .metrics import metrics

    one = model.build_dataset([capture], {station.id: station})
    m = metrics(one).compute()
    attrs = {str(k): dict(v.attrs) for k, v in m.data_vars.items()}
    attrs[""] = dict(m.attrs)
    return {str(k): float(v.values[0]) for k, v in m.data_vars.items()}, attrs


async def _capture(receiver: Any, station: Station, frequency_hz: float, duration_s: float, t: float) -> StationResult:
    try:
        cap = await receiver.capture(frequency_hz, duration_s)
        gaps = describe_gaps(cap)
        if gaps:  # the samples came in pieces: usable, but not one uninterrupted capture
            return StationResult(station.id, "partial", cap, None, gaps, time.perf_counter() - t)
        return StationResult(station.id, "ok", cap, elapsed_s=time.perf_counter() - t)
    except ReceiverError as exc:
        part = exc.partial if isinstance(exc.partial, Capture) and exc.partial.n_samples else None
        log.warning("%s", exc)
        return StationResult(
            station.id, "partial" if part else "failed", part, type(exc).__name__, exc.detail,
            time.perf_counter() - t,
        )
    except Exception as exc:  # a bug or an unexpected condition: report it, keep the others
        log.exception("station %s: unexpected error", station.id)
        return StationResult(station.id, "failed", None, type(exc).__name__, str(exc), time.perf_counter() - t)


def describe_gaps(cap: Capture) -> str:
    """Where a capture that completed is not one uninterrupted stretch, in words (empty when it is):
    each reconnect with why the segment before it ended and how long the gap was (GPS time), and
    the frames missing inside segments (zero-filled)."""
    parts: list[str] = []
    if cap.kind == "audio":  # receipt-timed audio: why each segment ended (a profile change, a reconnect)
        ends = [f"{a.n_samples / (a.rate_hz or 12000.0):.1f} s ({a.end_reason})" for a in cap.audio[:-1]]
        return f"{len(cap.audio)} audio segment(s): " + "; ".join(ends) if ends else ""
    segs = cap.segments
    for a, b in zip(segs, segs[1:]):
        gap = ""
        if a.fit.ok and b.fit.ok:
            end_ns = a.fit.t0_gps_ns + round(a.n_samples / a.fit.fs * 1e9)
            gap = f", {max(b.fit.t0_gps_ns - end_ns, 0) / 1e9:.1f} s lost"
        parts.append(f"reconnected after {a.n_samples / (a.fit.fs or 12000.0):.1f} s ({a.end_reason}{gap})")
    missing = sum(sg.missing_frames for sg in segs)
    if missing:
        parts.append(f"{missing} frame(s) missing, zero-filled")
    if not parts:
        return ""
    return f"{len(segs)} segment(s): " + "; ".join(parts)


def resolve_stations(stations: Iterable[Station | str], catalog: Catalog | None, settings: Settings) -> list[Station]:
    """The stations named (ids from the catalogue, Station objects as they are), each once."""
    items = list(stations)
    if not items:
        raise ConfigError("no station given (name stations by id, or use all)")
    ids = [s for s in items if isinstance(s, str)]
    chosen: dict[str, Station] = {}
    if ids:
        cat: Catalog = catalog if catalog is not None else settings.catalog_obj()
        chosen = {s.id: s for s in cat.select(ids)}
    out = [s if isinstance(s, Station) else chosen[s] for s in items]
    seen: set[str] = set()
    for s in out:
        if s.id in seen:
            raise ConfigError(f"station {s.id} named twice")
        seen.add(s.id)
    return out


def acquire(
    stations: Sequence[Station | str],
    frequency_hz: float,
    duration_s: float,
    *,
    catalog: Catalog | None = None,
    settings: Settings | None = None,
    scheduler: str | None = None,
    client: Any = None,
    options: KiwiOptions | None = None,
    protocol_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    store: Any = None,
    write: bool = True,
    index: Any = None,
    on_progress: ProgressCallback | None = None,
    attrs: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    start_wait_s: float = 20.0,
    stream: bool | None = None,
    window_start_ns: int | None = None,
    on_start: Callable[[int], None] | None = None,
    finish_attrs: Callable[[xr.Dataset], dict[str, Any]] | None = None,
) -> Session:
    """Acquire ``duration_s`` of IQ at ``frequency_hz`` from every station, in parallel, and
    write the session to the store as soon as it is complete.

    ``stations`` are ids from the catalogue (``catalog`` or the settings' one) or
    :class:`~sdrlab.stations.Station` objects.  ``client`` reuses a distributed Client;
    otherwise ``scheduler`` (or ``SDRLAB_SCHEDULER``) names a scheduler, else a LocalCluster runs.
    ``store`` is a :class:`~sdrlab.store.Store` (default: the settings' one); ``write=False``
    keeps the session in memory only.  If the store fails the session is still returned, with
    ``store_error`` saying why: acquired data is never dropped.  Once stored, the session is
    indexed (``index``: a SQLAlchemy engine, default the settings' one; ``index=False`` skips it);
    a failing index is reported in ``index_error`` and loses nothing.

    ``attrs`` are added to the Dataset's global attributes before it is stored (notes about the
    experiment, a simulated scene's truth); they cannot replace the ones sdrlab sets.

    ``on_progress`` is called with per-station events (:data:`ProgressCallback`) from a
    background thread while the acquisition runs; widgets use it to draw progress bars.

    ``stop``: setting this event (e.g. from a SIGINT/SIGTERM handler, as the CLI does) ends every
    station's capture within about two seconds; what has arrived is kept and stored as usual
    (those stations ``partial``).

    ``start_wait_s``: how long the session's common start waits for stations still connecting
    once the first have data (see :mod:`sdrlab.receivers.window`); those later than that start
    late and are ``partial``.

    ``stream``: store the samples as they arrive (:mod:`sdrlab.recording`), in chunks of
    ``settings.chunk_s`` seconds: memory stays flat whatever the duration, the session lists as
    ``recording`` while it grows and opens at every chunk boundary, and a crash loses at most the
    chunk being filled (``sdrlab store finalise`` completes such a session).  Default: sessions
    longer than ``settings.stream_above_s`` stream, shorter ones are held in memory.

    ``window_start_ns`` (GPS ns) fixes the session's window in advance instead of starting it at
    the latest first frame: stations that come up before it wait (dropping what ends before it),
    those that come up after it are ``partial``, saying how late (a start already past costs the
    stations that much of the window).  ``on_start`` is called with the window's start (GPS ns) as
    soon as it is decided, from the acquiring thread.  A continuous campaign (:mod:`sdrlab.monitor`)
    uses both to start each session's window where the previous one's ends.

    ``options`` are the KiwiSDR client's (and the session's time settings); ``protocol_options``
    maps another protocol to its own, e.g. ``{"openwebrx": OwrxOptions(mode="am")}`` (default:
    that client's defaults; OpenWebRX: NFM with the mode's passband).

    ``finish_attrs`` is called with the session's Dataset (data and metrics in) just before it is
    stored; the attributes it returns are added (never replacing sdrlab's; an error in it is
    logged and costs nothing).
    """
    settings = settings or Settings.from_env()
    chosen = resolve_stations(stations, catalog, settings)
    validate_request(frequency_hz, duration_s, chosen)
    reserved = sorted(set(attrs or {}) & model.RESERVED_ATTRS)
    if reserved:  # checked before anything is acquired, so nothing acquired is ever refused
        raise ConfigError(f"attrs: {', '.join(map(repr, reserved))} set by sdrlab, cannot be replaced")
    if write and store is None:
        store = settings.store_obj()
    if write and index is None:
        # a URL that cannot even make an engine is a configuration error, named before anything is
        # acquired; an index that is merely down is met after the store commit (index_error)
        from .errors import IndexStoreError

        try:
            index = settings.engine()
        except IndexStoreError as exc:
            raise ConfigError(f"the metrics index: {exc}") from None
    options = options or KiwiOptions(gps_utc_offset_s=settings.gps_utc_offset_s)
    show = settings.progress if progress is None else progress
    sid = new_session_id()
    streaming = write and (duration_s > settings.stream_above_s if stream is None else bool(stream))
    spec = None
    if streaming:
        spec = begin_stream(store, sid, chosen, frequency_hz, duration_s, settings, options, attrs)
        spec["db"] = _live_index(index)
    t0 = time.perf_counter()
    if client is not None:
        results, start_ns = _run(client, chosen, frequency_hz, duration_s, options, sid, show, on_progress, stop,
                                 start_wait_s, spec, window_start_ns, on_start, protocol_options)
    else:
        with settings.dask_client(scheduler, n_threads=2) as c:
            results, start_ns = _run(c, chosen, frequency_hz, duration_s, options, sid, show, on_progress, stop,
                                     start_wait_s, spec, window_start_ns, on_start, protocol_options)
    t_acq = time.perf_counter() - t0
    ordered = {s.id: results[s.id] for s in chosen}
    _check_window(ordered, start_ns)
    if streaming:
        assert spec is not None
        session = Session(sid, float(frequency_hz), float(duration_s), ordered, None, timings={"acquire_s": t_acq})
        return finalise(store, sid, session=session, start_ns=start_ns, index=index, rescue=settings.rescue_obj(),
                        record=spec["record"], finish_attrs=finish_attrs)
    caps = [r.capture for r in ordered.values() if r.capture is not None]
    ds = None
    if caps:
        ds = model.build_dataset(
            caps, {s.id: s for s in chosen}, statuses=[r.as_status() for r in ordered.values()],
            session_id=sid,
        )
        ds = attach_metrics(ds, [r for r in ordered.values() if r.capture is not None])
        try:
            ds = attach_interval_metrics(ds)
        except Exception:  # the metric time series must never cost the session
            log.exception("interval metrics failed")
        ds.attrs.update(window_attrs(ds, start_ns, duration_s, options.gps_utc_offset_s))
        ds.attrs.update({k: v for k, v in (attrs or {}).items() if k not in ds.attrs})
        if settings.run_id:  # acquired inside `sdrlab run`: the index links the session to the run
            ds.attrs["papermill_run_id"] = settings.run_id
        _add_finish_attrs(ds, finish_attrs)
    session = Session(sid, float(frequency_hz), float(duration_s), ordered, ds,
                      timings={"acquire_s": t_acq, "build_s": time.perf_counter() - t0 - t_acq})
    if write and ds is not None:
        save(session, store, index=index, rescue=settings.rescue_obj())
    return session


def begin_stream(store: Any, sid: str, chosen: Sequence[Station], frequency_hz: float, duration_s: float,
                 settings: Settings, options: KiwiOptions, attrs: dict[str, Any] | None) -> dict[str, Any]:
    """Make the session visible in the store as ``recording`` (this also checks the store before
    anything is captured: a store that fails here is a StorageError, nothing acquired yet) and
    return what the capture tasks need to stream into it."""
    from .metrics import INTERVAL_S
    from .recording import chunk_samples

    n = chunk_samples(settings.chunk_s)
    record = {
        "stations": [st.id for st in chosen],
        "positions": {st.id: {"name": st.name, "latitude": st.latitude, "longitude": st.longitude,
                              "altitude": st.altitude} for st in chosen},
        "center_frequency_hz": float(frequency_hz), "duration_s": float(duration_s), "chunk_samples": n,
        "passband_hz": [float(options.low_cut), float(options.high_cut)],
        "attrs": {**_json_safe(dict(attrs or {})),
                  **({"papermill_run_id": settings.run_id} if settings.run_id else {})},
        "start_time": None,
    }
    record["interval_s"] = INTERVAL_S
    store.begin_recording(sid, record)
    return {"url": store.url, "storage_options": store.options, "timeout_s": store.timeout_s, "session_id": sid,
            "chunk_samples": n, "interval_s": INTERVAL_S, "record": record}


#: how a segment still open when its capture's process ended is recorded
STOPPED = "the capture stopped with its process (not finalised)"


def finalise(store: Any, session_id: str, *, session: Session | None = None, start_ns: int | None = None,
             index: Any = False, rescue: Any = None, record: dict[str, Any] | None = None,
             finish_attrs: Callable[[xr.Dataset], dict[str, Any]] | None = None) -> Session:
    """Complete a streamed session: chunks that did not reach the store in the capture tasks are
    tried again, the session is opened from the store as recorded, its statuses (from the capture
    results when given, else ``partial`` for every station with data), metrics and metric time
    series are computed chunk by chunk from the store, and its commit record replaces the
    ``recording`` one; then it is indexed.  Also completes a session whose capturing process
    died (``sdrlab store finalise``): what was stored is kept, the chunk being filled is lost.
    ``finish_attrs``: as :func:`acquire`'s, called before the commit record is replaced."""
    from .errors import StorageError
    from .recording import release_heap

    t = time.perf_counter()
    results = session.results if session is not None else {}
    unsent = [u for r in results.values() for u in r.unsent]
    for i, (station, k, chunk, side) in enumerate(unsent):
        try:
            store.put_stream(session_id, station, k, chunk, side)
        except StorageError as exc:
            left = unsent[i:]
            msg = f"{len(left)} chunk(s) of session {session_id} not stored: {exc}"
            return _rescue_stream(store, session_id, left, msg, session, rescue, record)
    try:
        ds = store.open(session_id)
        record = store.summary(session_id)
    except StorageError as exc:  # every chunk is in the store: it stays `recording`, finalised later
        if session is None:
            raise
        session.store_error = (f"session {session_id} not finalised ({exc}); its chunks are in the store: "
                               f"`sdrlab store finalise {session_id}` completes it")
        return session
    if results:
        statuses = {sid: r.as_status().as_dict() for sid, r in results.items()}
        _late_in_store(ds, statuses, start_ns, float(record.get("duration_s") or 0.0))
        for sid, st in statuses.items():  # the session's table says the same
            if sid in results and results[sid].status != st["status"]:
                results[sid].status = str(st["status"])
                results[sid].message = st.get("message")
    elif record.get("station_status"):  # pushed back from the rescue directory: as captured
        statuses = dict(record["station_status"])
    else:  # the capturing process ended without finalising: what was stored is what there is
        have = {str(s) for s in ds["station"].values}
        statuses = {sid: {"status": "partial", "error_class": "CaptureStopped",
                          "message": "the capture stopped before the session was finalised (its process ended); "
                                     "what was stored is kept"} if sid in have else
                    {"status": "failed", "error_class": "NoData", "message": "nothing was stored"}
                    for sid in record.get("stations", sorted(have))}
        import numpy as np

        for name in ("segment_end", "audio_segment_end"):  # IQ and audio stations' segments
            if name in ds:
                ends = ds[name].values.astype(object)
                ds[name] = (ds[name].dims, np.where(ends == "recording", STOPPED, ends))
    ds.attrs["station_status"] = json.dumps(statuses, sort_keys=True)
    ds = ds.assign_coords(status=("station", [statuses.get(str(s), {}).get("status", "partial")
                                               for s in ds["station"].values]))
    ds = _attach_streamed_metrics(ds)
    duration_s = float(record.get("duration_s") or ds.attrs.get("requested_duration_s", 0.0))
    ds.attrs.update(window_attrs(ds, start_ns, duration_s, int(ds.attrs.get("gps_utc_offset_s", 18))))
    ds.attrs["requested_duration_s"] = duration_s
    _add_finish_attrs(ds, finish_attrs)
    ref = store.finish_recording(ds)
    del ds  # the recording's shell (its frame records): the finished session is opened below
    release_heap()
    final = store.open(session_id)
    if session is None:
        session = Session(session_id, float(final.attrs["center_frequency_hz"]), duration_s, {}, final)
    session.dataset, session.path = final, ref.url
    session.timings["store_s"] = time.perf_counter() - t
    if index is not False and index is not None:
        add_to_index(session, index)
    return session


def _late_in_store(ds: xr.Dataset, statuses: dict[str, dict[str, Any]], start_ns: int | None,
                   duration_s: float) -> None:
    """A streamed station that came up after the session's start, or stopped before its end, is
    ``partial`` saying by how much, from the time fit of everything stored (the capture task only
    had its first second's, which may have had too few GPS fixes to say)."""
    if start_ns is None:
        return
    for i, sid in enumerate(str(s) for s in ds["station"].values):
        st = statuses.get(sid)
        t0 = ds["start_time"].values[i]
        if st is None or st.get("status") != "ok" or str(ds["timing"].values[i]) != "gps" or t0 != t0:
            continue
        late = (timing.utc_to_gps_ns(t0, int(ds.attrs.get("gps_utc_offset_s", 18))) - start_ns) / 1e9
        span = float(ds["n_samples"].values[i]) / float(ds["sample_rate"].values[i])
        notes = []
        if late > LATE_START_S:
            notes.append(f"started {late:.2f} s after the session's start (came up late)")
        if late + span < duration_s - LATE_START_S - 512 / float(ds["sample_rate"].values[i]):
            notes.append(f"ended {duration_s - late - span:.2f} s before the session's end")
        if notes:
            st["status"] = "partial"
            st["message"] = "; ".join(x for x in (*notes, st.get("message")) if x)


def _live_index(engine: Any) -> str | None:
    """The URL the capture tasks index each chunk's metric time series with (the schema set up
    here first); None when there is no index or it cannot be set up now (the rows then go in
    when the session is finalised)."""
    if engine is None or engine is False:
        return None
    from .index import init_db

    try:
        init_db(engine)
        return str(engine.url.render_as_string(hide_password=False))
    except Exception as exc:  # an index that is down now costs nothing: rows go in at the end
        log.warning("the metric time series will be indexed when the session is finalised: %s", exc)
        return None


def _attach_streamed_metrics(ds: xr.Dataset) -> xr.Dataset:
    """The per-station metrics of a streamed session, read from the store one chunk at a time
    (dask's synchronous scheduler: one chunk in memory, one station at a time); its metric time
    series was measured while it was recorded."""
    import dask

    from .metrics import metrics

    # station by station: the Welch sums of one station's chunks wait for their reduction, not all
    with dask.config.set(scheduler="synchronous"):
        m = xr.concat([metrics(ds.isel(station=[i])).compute() for i in range(ds.sizes["station"])], "station")
    res = [StationResult(str(s), "ok", None, metrics={str(k): float(v.sel(station=s)) for k, v in m.data_vars.items()},
                         metric_attrs={**{str(k): dict(v.attrs) for k, v in m.data_vars.items()}, "": dict(m.attrs)})
           for s in ds["station"].values]
    return attach_metrics(ds, res)


def _rescue_stream(store: Any, session_id: str, unsent: list[tuple[str, int, bytes, bytes]], msg: str,
                   session: Session | None, rescue: Any, record: dict[str, Any] | None = None) -> Session:
    """The store would not take a streamed session's last chunks: they go to the rescue store
    (with the session's record, as a recording there) for ``sdrlab store push``; the session
    stays ``recording`` in the store with what it took."""
    from .errors import StorageError

    log.error("%s", msg)
    if session is None:
        session = Session(session_id, float("nan"), float("nan"), {}, None)
    session.store_error = msg
    if rescue is None:
        session.store_error += "; no rescue store: those chunks are lost"
        return session
    try:
        if record is None:
            try:
                record = store.summary(session_id)
            except StorageError:
                record = None
        if record is not None and not rescue.fs.exists(rescue._commit_key(session_id)):
            keep = {k: v for k, v in record.items() if k not in ("layout", "status", "committed", "session_id")}
            if session.results:  # how each station went, for when it is pushed back and finalised
                keep["station_status"] = {sid: r.as_status().as_dict() for sid, r in session.results.items()}
            rescue.begin_recording(session_id, keep)
        for station, k, chunk, side in unsent:
            rescue.put_stream(session_id, station, k, chunk, side)
        session.rescued = rescue.session_url(session_id)
    except StorageError as exc:
        session.store_error += f"; not rescued to {rescue.where} either ({exc})"
    return session


#: a station whose first sample is later than this after the session's start started late
LATE_START_S = 0.1


def _check_window(results: dict[str, StationResult], start_ns: int | None) -> None:
    """A GPS-timed station that came up after the session's start misses the beginning of the
    common window: ``partial``, saying by how much."""
    if start_ns is None:
        return
    for res in results.values():
        cap = res.capture
        if cap is None or not cap.segments or not cap.segments[0].fit.ok:
            continue
        last = cap.segments[-1]
        if last.fit.ok and last.fit.t0_gps_ns + last.n_samples / last.fit.fs * 1e9 <= start_ns:
            note = "its data ended before the session's window opened (kept, outside the window)"
            res.message = "; ".join(x for x in (note, res.message) if x)
            if res.status == "ok":
                res.status = "partial"
            continue
        late = (cap.segments[0].fit.t0_gps_ns - start_ns) / 1e9
        if late > LATE_START_S:
            note = f"started {late:.2f} s after the session's start (came up late)"
            res.message = "; ".join(x for x in (note, res.message) if x)
            if res.status == "ok":
                res.status = "partial"


def window_attrs(ds: xr.Dataset, start_ns: int | None, duration_s: float, gps_utc_offset_s: int) -> dict[str, Any]:
    """The session's window and the span its GPS-timed stations really cover together: global
    attributes ``window_start`` / ``window_end`` (UTC, ISO 8601), ``common_start`` /
    ``common_end`` (latest start and earliest end of the GPS-timed stations) and
    ``start_spread_s`` (latest minus earliest start)."""
    import numpy as np

    out: dict[str, Any] = {}

    def iso(t: Any) -> str:
        return str(np.datetime_as_string(t, unit="us")) + "Z"

    if start_ns is not None:
        out["window_start"] = iso(timing.gps_ns_to_utc(start_ns, gps_utc_offset_s))
        out["window_end"] = iso(timing.gps_ns_to_utc(start_ns + round(duration_s * 1e9), gps_utc_offset_s))
    gps = ds["timing"].values == "gps"
    if gps.any():
        starts = ds["start_time"].values[gps]
        ends = starts + (ds["n_samples"].values[gps] / ds["sample_rate"].values[gps] * 1e9).astype("timedelta64[ns]")
        out["common_start"] = iso(starts.max())
        out["common_end"] = iso(ends.min())
        out["start_spread_s"] = float((starts.max() - starts.min()) / np.timedelta64(1, "ns") / 1e9)
    return out


def _add_finish_attrs(ds: xr.Dataset, finish_attrs: Callable[[xr.Dataset], dict[str, Any]] | None) -> None:
    """The attributes ``finish_attrs`` makes of the session, added to it (never one sdrlab sets,
    never at the cost of the session)."""
    if finish_attrs is None:
        return
    try:
        more = _json_safe(dict(finish_attrs(ds)))
    except Exception:
        log.exception("finish_attrs failed: the session is stored without its attributes")
        return
    refused = sorted(k for k in more if k in model.RESERVED_ATTRS or k in ds.attrs)
    if refused:
        log.warning("finish_attrs: %s set already, not replaced", ", ".join(refused))
    ds.attrs.update({k: v for k, v in more.items() if k not in refused})


def save(session: Session, store: Any, index: Any = False, rescue: Any = None) -> Session:
    """Write the session to ``store``; a failure is recorded in ``store_error``, never raised.

    Then nothing is lost: the failed write's leftovers are removed from a local store (a full
    disk gets its space back), and the session is written to ``rescue`` (a local
    :class:`~sdrlab.store.Store`, e.g. ``Settings.rescue_obj()``; ``session.rescued`` says
    where) for ``sdrlab store push`` to move back under its own id; if that fails too, the data
    stays in ``session.dataset`` and ``store_error`` says so."""
    from .errors import StorageError
    from .store import DATA_VERSION

    if session.dataset is None:
        return session
    t = time.perf_counter()
    try:
        ref = store.write(session.dataset)
        session.path, session.store_error = ref.url, None
        session.dataset.attrs[DATA_VERSION] = ref.version  # as an open of it would say
    except StorageError as exc:
        log.error("session %s not stored: %s", session.session_id, exc)
        session.store_error = str(exc)
        _remove_leftovers(store, session.session_id)
        if rescue is not None and getattr(rescue, "where", None) != getattr(store, "where", None):
            try:
                session.rescued = rescue.write(session.dataset).url
            except StorageError as exc2:
                log.error("session %s not rescued either: %s", session.session_id, exc2)
                session.store_error += f"; not rescued to {rescue.where} either ({exc2}): in memory only"
            else:
                log.warning("session %s kept in %s (sdrlab store push moves it to the store)",
                            session.session_id, session.rescued)
    session.timings["store_s"] = time.perf_counter() - t
    if index is not False and index is not None and session.path is not None:
        add_to_index(session, index)  # write first, index second: rows point at data that exists
    return session


def _remove_leftovers(store: Any, session_id: str) -> None:
    """After a failed write to a local store: remove what it left (never a committed session),
    so a full disk has its space back for the rescue copy.  An S3 store's leftovers stay for the
    next write or ``store fsck`` (the server may be the problem)."""
    from .errors import StorageError

    if getattr(store, "protocol", None) != "file":
        return
    try:
        if any(str(k).startswith("commits/") for k in store.objects(session_id)):
            return  # committed (the write failed on something else): never removed here
    except StorageError:
        return
    try:
        n = store.delete(session_id)
        log.warning("removed %d object(s) left by the failed write of %s", n, session_id)
    except StorageError:
        pass  # nothing was left, or it cannot be removed: the rescue tries all the same


def add_to_index(session: Session, engine: Any) -> Session:
    from .errors import IndexStoreError
    from .index import index_session, init_db

    if session.dataset is None:
        return session
    t = time.perf_counter()
    try:
        init_db(engine)
        index_session(engine, session.dataset, session.path or "")
        session.index_error = None
    except IndexStoreError as exc:
        log.error("session %s stored but not indexed: %s", session.session_id, exc)
        session.index_error = str(exc)
    except Exception as exc:  # never let the index cost a stored session
        log.exception("session %s stored but not indexed", session.session_id)
        session.index_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    session.timings["index_s"] = time.perf_counter() - t
    return session


def _groups(client: Any, chosen: list[Station]) -> list[tuple[str | None, list[Station]]]:
    """The stations split over the cluster's worker processes, one group (one task, one event
    loop) per worker, the stations of one receiver (host:port) always in the same group so that
    its channels are counted in one place; (worker address or None, stations)."""
    try:
        workers = sorted(client.scheduler_info().get("workers", {}))
    except Exception:
        workers = []
    by_endpoint: dict[tuple[str, int], list[Station]] = {}
    for st in chosen:
        by_endpoint.setdefault((st.host, st.port), []).append(st)
    n = max(1, min(len(workers), len(by_endpoint)))
    groups: list[list[Station]] = [[] for _ in range(n)]
    for members in sorted(by_endpoint.values(), key=len, reverse=True):
        min(groups, key=len).extend(members)
    order = {st.id: i for i, st in enumerate(chosen)}
    out = []
    for i, g in enumerate(groups):
        g.sort(key=lambda st: order[st.id])
        out.append((workers[i] if i < len(workers) else None, g))
    return out


def _run(
    client: Any, chosen: list[Station], frequency_hz: float, duration_s: float,
    options: KiwiOptions, sid: str, show: bool, on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None, start_wait_s: float = 20.0, stream: dict[str, Any] | None = None,
    window_start_ns: int | None = None, on_start: Callable[[int], None] | None = None,
    protocol_options: dict[str, Any] | None = None,
) -> tuple[dict[str, StationResult], int | None]:
    """Run the group tasks, coordinate the session's start, gather the results: (station ->
    result, the window's start in GPS ns or None when no group reported one).  ``window_start_ns``
    fixes the start in advance; ``on_start`` is called with the start once it is decided."""
    from distributed import Event

    topic = None
    notify = _safe_callback(on_progress)
    bar = None
    results: dict[str, StationResult] = {}
    stop_name = f"sdrlab-stop-{sid}" if stop is not None else None
    finished = threading.Event()
    report_topic, start_topic = f"sdrlab-window-{sid}", f"sdrlab-start-{sid}"
    reports: dict[int, int | None] = {}
    start_ns: int | None = None if window_start_ns is None else int(window_start_ns)

    def _started(at_ns: int) -> None:
        if on_start is not None:
            try:
                on_start(at_ns)
            except Exception:  # the caller's scheduling must never cost the capture
                log.exception("on_start callback failed")

    def _record(res: StationResult) -> None:
        results[res.station] = res
        if notify is not None:
            notify(final_event(res, duration_s))
        if bar is not None:
            bar.set_postfix_str(f"{res.station}: {res.status}")
            bar.update(1)

    if stop is not None:
        def relay() -> None:  # the caller's stop -> the cluster-wide event the tasks poll
            while not finished.is_set():
                if stop.wait(0.2):
                    try:
                        Event(stop_name, client=client).set()
                    except Exception:
                        log.exception("could not pass the stop request to the cluster")
                    return

        threading.Thread(target=relay, name=f"sdrlab-stop-{sid}", daemon=True).start()
    groups = _groups(client, chosen)
    if start_ns is not None:  # fixed in advance: every group's window has it from the start
        _started(start_ns)
    try:
        if notify is not None:
            topic = f"sdrlab-progress-{sid}"
            for st in chosen:
                notify({"station": st.id, "state": "queued", "fraction": 0.0, "samples": 0, "message": ""})
            client.subscribe_topic(topic, lambda event: notify(event[1]))
        client.subscribe_topic(report_topic, lambda event: reports.update({int(event[1]["group"]): event[1]["first_ns"]}))
        futures = {
            client.submit(
                capture_group, members, frequency_hz, duration_s, options, session_id=sid, group=g,
                progress_topic=topic, stop_event=stop_name, window_topics=(report_topic, start_topic),
                start_wait_s=start_wait_s, stream=stream, window_start_ns=window_start_ns,
                protocol_options=protocol_options, key=f"acquire-g{g}-{sid}", pure=False, retries=0,
                workers=[addr] if addr else None, allow_other_workers=True,
            ): (g, members)
            for g, (addr, members) in enumerate(groups)
        }
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(chosen), desc="acquire", unit="station")
        pending = set(futures)
        lonely_since: float | None = None
        first_report: float | None = None
        t_submit = time.monotonic()
        while pending:
            done_now, pending = _first_done(pending, 0.1 if start_ns is None else 2.0)
            for fut in done_now:
                try:
                    for res in fut.result():
                        _record(res)
                except Exception as exc:  # the worker died or could not run the task
                    for st in futures[fut][1]:
                        _record(StationResult(st.id, "failed", None, type(exc).__name__, f"task failed: {exc}"))
            if start_ns is None:
                # every group reported (or finished without), or the slow ones waited for long enough
                if reports and first_report is None:
                    first_report = time.monotonic()
                groups_in = len(set(reports) | {g for f, (g, _m) in futures.items() if f.done()})
                late = (first_report is not None and time.monotonic() - first_report > start_wait_s
                        or time.monotonic() - t_submit > 3 * start_wait_s)
                if groups_in >= len(futures) or late:
                    firsts = [v for v in reports.values() if v is not None]
                    start_ns = max(firsts) if firsts else timing.gps_now_ns(options.gps_utc_offset_s)
                    client.log_event(start_topic, {"start_ns": start_ns})
                    _started(start_ns)
            if done_now or not pending:
                lonely_since = None
                continue
            # no dask worker at all for long: nothing will ever finish (all of them died)
            if _worker_count(client) > 0:
                lonely_since = None
            elif lonely_since is None:
                lonely_since = time.monotonic()
            elif time.monotonic() - lonely_since > NO_WORKER_GRACE_S:
                for fut in pending:
                    fut.cancel()
                    for st in futures[fut][1]:
                        _record(StationResult(st.id, "failed", None, "NoWorkers",
                                              f"no dask worker left to run it for {NO_WORKER_GRACE_S:g} s "
                                              "(every worker died)"))
                pending = set()
    finally:
        finished.set()
        if bar is not None:
            bar.close()
        for t_ in (topic, report_topic):
            if t_ is not None:
                try:
                    client.unsubscribe_topic(t_)
                except Exception:  # the client may be closing
                    log.debug("unsubscribe %s failed", t_, exc_info=True)
    return results, start_ns


def _first_done(pending: set[Any], timeout: float) -> tuple[set[Any], set[Any]]:
    """(done, still pending) of the futures ``pending`` once one is done or ``timeout`` seconds
    passed.  Polled: ``distributed.wait`` needs the client made the current one
    (``Client.as_current``), which sets dask's global config and restores it on exit, so two
    acquisitions in threads of one process (a continuous campaign) could leave the config naming
    a client that is gone."""
    end = time.monotonic() + timeout
    while True:
        done = {f for f in pending if f.done()}
        if done or time.monotonic() >= end:
            return done, pending - done
        time.sleep(0.02)


#: how long an acquisition waits with no dask worker at all before its pending stations fail
NO_WORKER_GRACE_S = 30.0


def _worker_count(client: Any) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # the scheduler itself is gone: count as none
        return 0


def _safe_callback(fn: ProgressCallback | None) -> ProgressCallback | None:
    """``fn`` wrapped so that an error in a display never stops the acquisition (logged), calls
    from the event-log thread and the gathering thread never overlap, and a station's events
    after its final state (a late ``receiving``) are dropped."""
    if fn is None:
        return None
    import threading

    lock = threading.Lock()
    finished: set[str] = set()

    def call(event: dict[str, Any]) -> None:
        with lock:
            station = str(event.get("station"))
            if station in finished:
                return
            if event.get("state") in FINAL_STATES:
                finished.add(station)
            try:
                fn(event)
            except Exception:
                log.exception("on_progress callback failed for %s", station)

    return call


def final_event(res: StationResult, duration_s: float) -> dict[str, Any]:
    """The progress event of a station's final state (:data:`ProgressCallback`)."""
    samples = res.capture.n_samples if res.capture is not None else 0
    rate = res.capture.sample_rate if res.capture is not None else float("nan")
    want = duration_s * rate if rate == rate and rate > 0 else 0.0
    fraction = min(1.0, samples / want) if want else (1.0 if res.status == "ok" else 0.0)
    message = f"{res.error_class}: {res.message}" if res.error_class else (res.message or "")
    return {"station": res.station, "state": res.status, "fraction": fraction, "samples": samples,
            "message": message, "elapsed_s": res.elapsed_s,
            **{k: v for k, v in res.metrics.items() if k in TABLE_METRICS}}
