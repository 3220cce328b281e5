"""Monitoring campaigns: the same stations observed on a schedule, one session per slot and
frequency, for a duration or until stopped.

A campaign is a :class:`Campaign` (or a YAML file, :func:`load_campaign`)::

    id: beacon-watch            # names the campaign; sessions carry it (attrs campaign_id, ...)
    stations: [demo-berlin, demo-paris]     # catalogue ids
    frequencies_hz: [9749000]
    duration_s: 10              # each session
    every_s: 600                # a slot every 10 minutes; omit for back to back sessions
    total_s: 86400              # how long the campaign runs; omit: until stopped
    start: 2026-12-07T06:00:00Z # first slot (UTC); omit: now
    # continuous: true          # instead of every_s: each window starts where the last one ended
    # lead_s: 5                 # continuous: connect the next session this long before its window

Slot k starts at ``start + k * every_s``; in each slot one simultaneous session per frequency is
acquired (:func:`sdrlab.acquire.acquire`: stored, indexed, its metric time series included) on
one dask client kept for the whole campaign.  A receiver that drops or is down is a ``partial`` or
``failed`` station of that session, never the end of the campaign; a slot whose time passed while
the campaign was not running (a restart, a long outage) is a gap.  Restarting the same campaign
resumes it from what the store holds: sessions carry ``campaign_id``, ``campaign_slot`` and
``campaign_frequency_hz``, and (slot, frequency) pairs already stored are not acquired again.

Back to back (no ``every_s``): each session is acquired once the previous one is stored, so they
are seconds apart (connection and storing) and the slots drift.  ``continuous: true`` (one
frequency) leaves no gap: each session is connected ``lead_s`` before the previous one's window
ends and its window is fixed at that end in the receivers' GPS time, so the windows abut exactly
and every station's data of two consecutive sessions meet with no sample missing (they share at
most the two 512-sample frames around the boundary); each receiver holds two channels for
``lead_s`` seconds per session.  Each session records how it follows the previous one
(``continuity``, ``continuity_gap_s``, ... see :func:`sdrlab.continuous.continuity_attrs`) and the
report lists ``gaps``.  See :mod:`sdrlab.continuous`.

The clock is injectable (``clock`` in seconds, ``sleep``), so a simulated campaign of a day runs
in seconds against a simulator whose clock is advanced between slots
(:meth:`sdrlab.sim.server.SimServer.advance`); a continuous campaign waits in the receivers' GPS
time (``gps_now``), never advancing a clock while sessions capture.

A campaign's data: :func:`campaign_sessions` lists its sessions in a store (the one place that
reads the campaign attributes back), :func:`campaign_waterfall` draws one station's spectrum per
session or interval over the whole campaign from the store, one session in memory at a time, and
:func:`campaign_metrics` reads its metric time series from the index.  :class:`CampaignRun` runs
:func:`monitor` in a background thread that a notebook starts and stops
(:class:`sdrlab.widgets.CampaignPanel` puts Start / Stop buttons and a live plot on it).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from . import timing
from .config import Settings
from .constants import KIWI_RATE_HZ
from .continuous import MAX_IN_FLIGHT, ContinuousRun, bounded_waits, continuity_attrs
from .errors import ConfigError, StorageError

log = logging.getLogger(__name__)

#: the session attributes that tie a session to its campaign
CAMPAIGN_ATTRS = ("campaign_id", "campaign_slot", "campaign_frequency_hz", "campaign_start")


@dataclass(frozen=True)
class Campaign:
    """What to observe and when (see the module docstring)."""

    id: str
    stations: tuple[str, ...]
    frequencies_hz: tuple[float, ...]
    duration_s: float
    every_s: float | None = None
    total_s: float | None = None
    start: datetime | None = None
    #: one session after the other without a gap: each window starts where the previous ends
    continuous: bool = False
    #: continuous: how long before a window's start its session connects (seconds)
    lead_s: float = 5.0

    def __post_init__(self) -> None:
        from .acquire import validate_request

        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id) or len(self.id) > 64:
            raise ConfigError(f"campaign id must be 1-64 letters, digits, '-', '_' or '.', got {self.id!r}")
        if not self.stations:
            raise ConfigError(f"campaign {self.id}: no stations")
        if not self.frequencies_hz:
            raise ConfigError(f"campaign {self.id}: no frequencies")
        for f in self.frequencies_hz:  # within some family's range: each station's is checked by monitor()
            validate_request(f, self.duration_s, ())
        if self.every_s is not None and not (math.isfinite(self.every_s)
                                             and self.every_s >= self.duration_s * len(self.frequencies_hz)):
            raise ConfigError(f"campaign {self.id}: every_s must be at least duration_s x the number of "
                              f"frequencies ({self.duration_s * len(self.frequencies_hz):g} s), got {self.every_s!r}")
        if self.total_s is not None and not (math.isfinite(self.total_s) and self.total_s > 0):
            raise ConfigError(f"campaign {self.id}: total_s must be a positive number of seconds, got {self.total_s!r}")
        if not isinstance(self.continuous, bool):
            raise ConfigError(f"campaign {self.id}: continuous must be true or false, got {self.continuous!r}")
        if self.continuous and self.every_s is not None:
            raise ConfigError(f"campaign {self.id}: continuous sessions follow each other; every_s does not apply "
                              "(omit one of them)")
        if self.continuous and len(self.frequencies_hz) > 1:
            raise ConfigError(f"campaign {self.id}: a continuous campaign observes one frequency (got "
                              f"{len(self.frequencies_hz)}); run one campaign per frequency, side by side if the "
                              "receivers have the channels (two per campaign)")
        if not (isinstance(self.lead_s, (int, float)) and math.isfinite(self.lead_s) and self.lead_s > 0):
            raise ConfigError(f"campaign {self.id}: lead_s must be a positive number of seconds, got {self.lead_s!r}")

    @property
    def period_s(self) -> float:
        """Time between slot starts (back to back and continuous: the sessions' own length)."""
        return self.every_s if self.every_s is not None else self.duration_s * len(self.frequencies_hz)

    def n_slots(self) -> int | None:
        """Slots in the campaign (None: until stopped)."""
        return None if self.total_s is None else max(1, math.ceil(self.total_s / self.period_s - 1e-9))


def load_campaign(path: str | Path) -> Campaign:
    """A campaign from a YAML file (keys as :class:`Campaign`; ``start`` as ISO 8601 UTC)."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"campaign {p}: cannot read it: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"campaign {p}: expected a mapping of keys (id, stations, frequencies_hz, ...)")
    known = {"id", "stations", "frequencies_hz", "duration_s", "every_s", "total_s", "start", "continuous", "lead_s"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"campaign {p}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")
    missing = sorted({"id", "stations", "frequencies_hz", "duration_s"} - set(raw))
    if missing:
        raise ConfigError(f"campaign {p}: missing {', '.join(missing)}")
    try:
        start = raw.get("start")
        if isinstance(start, str):
            start = datetime.fromisoformat(start.replace("Z", "+00:00"))
        if isinstance(start, datetime) and start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        freqs = raw["frequencies_hz"]
        return Campaign(
            id=str(raw["id"]), stations=tuple(str(s) for s in raw["stations"]),
            frequencies_hz=tuple(float(f) for f in (freqs if isinstance(freqs, list) else [freqs])),
            duration_s=float(raw["duration_s"]),
            every_s=None if raw.get("every_s") is None else float(raw["every_s"]),
            total_s=None if raw.get("total_s") is None else float(raw["total_s"]), start=start,
            continuous=raw.get("continuous", False), **({"lead_s": float(raw["lead_s"])} if "lead_s" in raw else {}),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"campaign {p}: {str(exc)[:200]}") from None


#: the columns of :func:`campaign_sessions`
SESSION_COLUMNS = ("session_id", "campaign_id", "slot", "frequency_hz", "campaign_start", "start_time", "status")


def campaign_sessions(store: Any, campaign_id: str | None = None) -> pd.DataFrame:
    """The sessions of campaign ``campaign_id`` in ``store`` (of every campaign when None), in
    slot and frequency order: index ``session_id``; columns campaign_id, slot, frequency_hz,
    campaign_start (epoch seconds), start_time (UTC, the session's first sample) and status.

    The campaign attributes are in each session's commit record and so in the store's listing
    (:meth:`~sdrlab.store.Store.sessions`): no session is opened.  A store that cannot be
    listed raises :class:`~sdrlab.errors.StorageError`."""
    listed = store.sessions()
    if campaign_id is not None:
        listed = listed[listed["campaign_id"] == campaign_id]
    rows = []
    for sid, row in listed[listed["campaign_id"].notna()].iterrows():
        start = row["campaign_start"]
        rows.append({"session_id": str(sid), "campaign_id": str(row["campaign_id"]),
                     "slot": int(row["campaign_slot"]), "frequency_hz": float(row["campaign_frequency_hz"]),
                     "campaign_start": None if pd.isna(start) else float(start),
                     "start_time": row.get("start_time"), "status": row.get("status")})
    table = pd.DataFrame(rows, columns=list(SESSION_COLUMNS))
    table = table.sort_values(["campaign_id", "slot", "frequency_hz", "session_id"], kind="stable")
    return table.set_index("session_id")


def done_slots(store: Any, campaign_id: str) -> tuple[set[tuple[int, float]], float | None]:
    """The (slot, frequency) pairs of a campaign already in ``store``, and the campaign's start
    (epoch seconds) they recorded (None: no session yet, or a store that cannot be listed)."""
    try:
        table = campaign_sessions(store, campaign_id)
    except StorageError:
        return set(), None
    done = {(int(k), float(f)) for k, f in zip(table["slot"], table["frequency_hz"])}
    starts = table["campaign_start"].dropna()
    return done, (float(starts.iloc[-1]) if len(starts) else None)


@dataclass
class CampaignReport:
    """What a run of :func:`monitor` did."""

    campaign: Campaign
    sessions: list[Any] = field(default_factory=list)
    #: (slot, frequency) acquired earlier (resumed) and skipped
    skipped: list[tuple[int, float]] = field(default_factory=list)
    #: slots whose time had passed when the campaign reached them (a restart, an outage)
    missed: list[int] = field(default_factory=list)
    #: continuous: (slot, seconds) of sessions that did not follow the previous one without a gap
    #: (``continuity`` "gap": a station missed more than a frame between the two)
    gaps: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False

    def table(self) -> pd.DataFrame:
        rows = [{"session_id": s.session_id, "slot": int(s.dataset.attrs["campaign_slot"]) if s.dataset is not None else None,
                 "frequency_hz": s.frequency_hz, "ok": len(s.ok), "failed": len(s.failed),
                 "stored": s.path is not None, "indexed": s.index_error is None} for s in self.sessions]
        return pd.DataFrame(rows)


def monitor(
    campaign: Campaign,
    *,
    settings: Settings | None = None,
    catalog: Any = None,
    stations: Sequence[Any] | None = None,
    scheduler: str | None = None,
    options: Any = None,
    store: Any = None,
    index: Any = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
    on_session: Callable[[Any], None] | None = None,
    attrs: dict[str, Any] | None = None,
    keep_going: Callable[[int], bool] | None = None,
    gps_now: Callable[[], int] | None = None,
) -> CampaignReport:
    """Run ``campaign`` (see the module docstring) until its end or ``stop``; resumes what the
    store already holds of it.  ``stations`` (Station objects) replace the catalogue lookup of
    ``campaign.stations``; ``on_session`` is called with each session once stored and indexed;
    ``attrs`` are added to every session's attributes (a simulated scene's truth, say; the
    campaign's own attributes take precedence).  ``keep_going`` is asked with the number of
    sessions this run started before each new one: False starts no more (those running
    complete).  ``gps_now`` (continuous campaigns): the receivers' GPS time in ns, by which the
    next session is connected ``lead_s`` before its window; default the host's clock
    (:func:`sdrlab.timing.gps_now_ns`; a simulator faster than real time: ``sim.clock_ns``)."""
    from .acquire import acquire, resolve_stations, validate_request

    settings = settings or Settings.from_env()
    store = store if store is not None else settings.store_obj()
    index = index if index is not None else settings.engine()
    stop = stop or threading.Event()
    chosen = list(stations) if stations is not None else list(campaign.stations)
    resolved = resolve_stations(chosen, catalog, settings)  # unknown ids and frequencies a station cannot tune: named now
    for f in campaign.frequencies_hz:
        validate_request(f, campaign.duration_s, resolved)
    if campaign.continuous and any(st.protocol == "openwebrx" for st in resolved):
        from .receivers.openwebrx import OwrxOptions

        spacing = OwrxOptions().connect_spacing  # one connection per session, and OpenWebRX+ bans fast ones
        if campaign.duration_s < spacing:
            raise ConfigError(f"campaign {campaign.id}: continuous sessions of OpenWebRX receivers must last at least "
                              f"{spacing:g} s (connections to one receiver are spaced that far apart), got "
                              f"{campaign.duration_s:g} s")
    done, recorded_start = done_slots(store, campaign.id)
    now = clock()
    if campaign.start is not None:
        t0 = campaign.start.timestamp()
    elif recorded_start is not None:
        t0 = recorded_start  # a restart: the slots keep their times
    else:
        t0 = now
    report = CampaignReport(campaign)
    n_slots = campaign.n_slots()
    wait = sleep if sleep is not None else (lambda s: stop.wait(s))
    k = 0 if now <= t0 else int((now - t0) // campaign.period_s)
    if k:
        report.missed.extend(s for s in range(k) if any((s, f) not in done for f in campaign.frequencies_hz))
        report.skipped.extend(sorted(p for p in done if p[0] < k))
    if campaign.continuous:
        left = t0 - now
        if left > 0:
            wait(left)  # no stream runs yet: a simulator's clock may be advanced
        if not stop.is_set():
            from .receivers.kiwisdr import KiwiOptions

            options = bounded_waits(options or KiwiOptions(gps_utc_offset_s=settings.gps_utc_offset_s),
                                    campaign.lead_s + campaign.duration_s)
            offset = int(getattr(options, "gps_utc_offset_s", settings.gps_utc_offset_s))
            f0 = float(campaign.frequencies_hz[0])
            run = ContinuousRun(campaign, report, done, k, chosen, lambda s: _tags(campaign, s, f0, t0, attrs),
                                stop, on_session, keep_going, gps_now or (lambda: timing.gps_now_ns(offset)), store,
                                lambda s: _last_before(store, campaign.id, f0, s),
                                dict(catalog=catalog, settings=settings, options=options, progress=False,
                                     store=store, index=index))
            with settings.dask_client(scheduler, n_threads=2 + MAX_IN_FLIGHT) as client:
                run.run(client)
        report.stopped = stop.is_set()
        return report
    launched = 0
    with settings.dask_client(scheduler, n_threads=2) as client:
        while (n_slots is None or k < n_slots) and not stop.is_set():
            slot_t = t0 + k * campaign.period_s
            left = slot_t - clock()
            if left > 0:
                wait(left)
                if stop.is_set():
                    break
            elif -left > campaign.period_s:  # this slot's time passed (the previous one overran)
                report.missed.append(k)
                k += 1
                continue
            for i, f in enumerate(campaign.frequencies_hz):
                if stop.is_set() or keep_going is not None and not keep_going(launched):
                    break
                if (k, f) in done:
                    report.skipped.append((k, f))
                    continue
                tags = _tags(campaign, k, f, t0, attrs)
                launched += 1
                session = acquire(chosen, f, campaign.duration_s, catalog=catalog, settings=settings,
                                  client=client, options=options, progress=False, store=store, index=index,
                                  attrs=tags, stop=stop)
                report.sessions.append(session)
                log.info("campaign %s slot %d at %.0f Hz: session %s, %d ok, %d failed%s", campaign.id, k, f,
                         session.session_id, len(session.ok), len(session.failed),
                         f", not stored: {session.store_error}" if session.store_error else "")
                if on_session is not None:
                    on_session(session)
            if keep_going is not None and not keep_going(launched):
                break
            k += 1
    report.stopped = stop.is_set()
    return report


def _tags(campaign: Campaign, k: int, f: float, t0: float, attrs: dict[str, Any] | None) -> dict[str, Any]:
    """A session's attributes: the caller's, then the campaign's."""
    return {**(attrs or {}), "campaign_id": campaign.id, "campaign_slot": k, "campaign_frequency_hz": float(f),
            "campaign_start": float(t0), "campaign": json.dumps(_spec(campaign))}


def _last_before(store: Any, campaign_id: str, frequency_hz: float, k: int) -> str | None:
    """The id of a campaign's last stored session at ``frequency_hz`` before slot ``k`` (None:
    none, or the store cannot be listed)."""
    try:
        table = campaign_sessions(store, campaign_id)
    except StorageError:
        return None
    table = table[(table["slot"] < k) & (np.abs(table["frequency_hz"].to_numpy(float) - frequency_hz) < 0.5)]
    return None if table.empty else str(table.index[-1])



# ---- a campaign's data: its waterfall from the store, its metric time series from the index ----
def campaign_waterfall(
    store: Any,
    campaign_id: str,
    station: str,
    *,
    frequency_hz: float | None = None,
    nfft: int = 1024,
    interval_s: float | None = None,
    sessions: pd.DataFrame | None = None,
) -> xr.DataArray:
    """One station's waterfall over a campaign, from the store: power spectral density in
    dBFS/Hz, dims (time, frequency), one row per session (with ``interval_s``: one per interval
    of that many seconds of each session), in time order.

    Built session by session: each is opened lazily (:meth:`sdrlab.store.Store.open`), the
    station's rows come from the Welch engine (:func:`sdrlab.welch.psd`: ``nfft``-point Hann
    segments without overlap, averaged in linear power, chunk by chunk on a dask-backed session)
    and the session is dropped before the next is opened, so memory holds at most one station's
    session and the rows, never the campaign.

    ``time`` is the row's first sample (UTC, the station's GPS time base); a session in which the
    station has no data (failed, too short for one segment, not in it) is a row of NaN at the
    session's start, so gaps show as gaps.  ``frequency`` is the offset from the tuned frequency
    (Hz) on the first row's sample rate (the receivers' rates differ by parts per million, far
    below a bin), ``frequency_abs`` the absolute frequency.  Along ``time`` also: ``session_id``,
    ``slot``, ``status`` (the station's in that session) and ``samples`` (used for the row).  A
    campaign of several frequencies needs ``frequency_hz``.  ``sessions``: a
    :func:`campaign_sessions` table, instead of listing the store again."""
    if not isinstance(nfft, (int, np.integer)) or nfft < 16:
        raise ConfigError(f"nfft must be a whole number of at least 16, got {nfft!r}")
    if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
    table = sessions if sessions is not None else campaign_sessions(store, campaign_id)
    table = table[table["campaign_id"] == campaign_id]
    if table.empty:
        raise ConfigError(f"no session of campaign {campaign_id!r} in {getattr(store, 'where', store)}")
    freqs = sorted({float(f) for f in table["frequency_hz"]})
    if frequency_hz is None:
        if len(freqs) > 1:
            raise ConfigError(f"campaign {campaign_id} observed {len(freqs)} frequencies "
                              f"({', '.join(f'{f:.0f}' for f in freqs)} Hz): choose one with frequency_hz")
        frequency_hz = freqs[0]
    table = table[np.abs(table["frequency_hz"].to_numpy(float) - float(frequency_hz)) < 0.5]
    if table.empty:
        raise ConfigError(f"campaign {campaign_id} did not observe {frequency_hz:.0f} Hz "
                          f"(it observed {', '.join(f'{f:.0f}' for f in freqs)} Hz)")
    rows: list[_Row] = []
    axis: npt.NDArray[np.float64] | None = None
    for sid, info in table.iterrows():
        ds = store.open(str(sid))
        got, f = _station_rows(ds, station, nfft, interval_s)
        del ds  # before the next session is opened
        if axis is None and f is not None:
            axis = f
        start = pd.Timestamp(info["start_time"])
        begun = np.datetime64(start.tz_localize(None) if start.tzinfo is not None else start, "ns") \
            if pd.notna(start) else np.datetime64("NaT", "ns")
        for r in got:  # no GPS start (no data): the session's start
            rows.append(r._replace(time=begun if np.isnat(r.time) else r.time, session=str(sid), slot=int(info["slot"])))
    if axis is None:  # the station had no data in any session: the nominal axis
        axis = ((np.arange(nfft) - nfft // 2) * (KIWI_RATE_HZ / nfft)).astype(np.float64)
    rows.sort(key=lambda r: (np.isnat(r.time), r.time))
    values = np.full((len(rows), nfft), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r.db is not None:
            values[i] = r.db
    return xr.DataArray(
        values, dims=("time", "frequency"), name="waterfall",
        coords={
            "time": ("time", np.array([r.time for r in rows], dtype="datetime64[ns]"),
                     {"long_name": "UTC of the row's first sample (GPS time base)"}),
            "frequency": ("frequency", axis, {"units": "Hz", "long_name": "offset from tuned frequency"}),
            "frequency_abs": ("frequency", float(frequency_hz) + axis, {"units": "Hz", "long_name": "absolute frequency"}),
            "session_id": ("time", np.array([r.session for r in rows], dtype=object)),
            "slot": ("time", np.array([r.slot for r in rows], dtype=np.int64)),
            "status": ("time", np.array([r.status for r in rows], dtype=object)),
            "samples": ("time", np.array([r.samples for r in rows], dtype=np.int64)),
        },
        attrs={"units": "dBFS/Hz", "long_name": "power spectral density", "campaign_id": campaign_id,
               "station": station, "center_frequency_hz": float(frequency_hz), "nfft": int(nfft),
               "interval_s": float(interval_s) if interval_s is not None else float("nan"),
               "window": "hann", "noverlap": 0},
    )


class _Row(NamedTuple):
    time: np.datetime64
    db: npt.NDArray[np.float32] | None
    samples: int
    status: str
    session: str = ""
    slot: int = -1


def _station_rows(ds: xr.Dataset, station: str, nfft: int,
                  interval_s: float | None) -> tuple[list[_Row], npt.NDArray[np.float64] | None]:
    """The rows of one station of one session (one without data, at NaT, when it has none) and
    their frequency axis (None without data)."""
    from .welch import psd, psd_db

    if station not in ds["station"].values:  # failed (the session's station_status says so), or not in it
        known = json.loads(ds.attrs.get("station_status", "{}")).get(station, {})
        return [_Row(np.datetime64("NaT", "ns"), None, 0, str(known.get("status", "absent")))], None
    one = ds["iq"].sel(station=[station])
    n = int(one["n_samples"].values[0])
    fs = float(one["sample_rate"].values[0])
    t0 = one["start_time"].values[0]
    status = str(one["status"].values[0])
    if n < nfft or not (math.isfinite(fs) and fs > 0) or np.isnat(t0):
        return [_Row(t0, None, 0, status)], None
    length = n if interval_s is None else max(nfft, int(round(interval_s * fs)))
    rows: list[_Row] = []
    axis = None
    for i0 in range(0, n, length):
        m = min(length, n - i0)
        if m < nfft:  # a tail shorter than one segment
            break
        part = one.isel(sample=slice(i0, i0 + m)).assign_coords(n_samples=("station", [m]))
        p = psd(part, nperseg=nfft).compute()
        axis = p["frequency"].values.astype(np.float64)
        db = psd_db(p).values[0].astype(np.float32)
        rows.append(_Row(t0 + np.timedelta64(int(round(i0 / fs * 1e9)), "ns"), db, m, status))
    return rows, axis


def campaign_metrics(engine: Any, session_ids: Sequence[str], metric: str = "snr_db") -> pd.DataFrame:
    """A metric of every station and 10 s interval of the sessions named (a campaign's), from the
    index's time series (``interval_metrics``): columns time (UTC), station_id, session_id, value,
    in time order.  Sessions not indexed yet have no rows."""
    from sqlalchemy import select

    from .index.models import METRIC_COLUMNS, IntervalMetricRow

    if metric not in METRIC_COLUMNS:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(METRIC_COLUMNS)})")
    col = getattr(IntervalMetricRow, metric)
    ids = list(dict.fromkeys(str(s) for s in session_ids))
    parts = []
    with engine.connect() as c:
        for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            q = (select(IntervalMetricRow.time, IntervalMetricRow.station_id, IntervalMetricRow.session_id,
                        col.label("value")).where(IntervalMetricRow.session_id.in_(ids[i:i + 500])))
            parts.append(pd.DataFrame(c.execute(q).all(), columns=["time", "station_id", "session_id", "value"]))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["time", "station_id", "session_id", "value"])
    df["time"] = pd.to_datetime(df["time"], utc=True).dt.tz_convert(None)
    df["value"] = df["value"].astype(float)
    return df.sort_values(["time", "station_id"], kind="stable").reset_index(drop=True)


# ---- a campaign in the background (notebooks, the campaign panel) ------------------------------
class CampaignRun:
    """:func:`monitor` in a background thread, so a notebook's kernel stays free: :meth:`start`,
    :meth:`stop` (now) or :meth:`stop_after` (a number of sessions), :meth:`wait`; the sessions
    as they are stored (``sessions``), the report once it ends (``report``, or ``error``).

    ``store`` and ``index`` default to the settings'; the other keywords (``stations``,
    ``catalog``, ``scheduler``, ``options``, ``clock``, ``sleep``, ``attrs``) go to
    :func:`monitor`.  ``on_session`` (called with each stored session, in the campaign's thread)
    and ``on_done`` (called with this run when it ends) may fail without stopping the campaign:
    their errors are logged.  A run starts once; a new run of the same campaign resumes it."""

    def __init__(self, campaign: Campaign, *, settings: Settings | None = None, store: Any = None,
                 index: Any = None, on_session: Callable[[Any], None] | None = None,
                 on_done: Callable[[CampaignRun], None] | None = None, **monitor_kw: Any) -> None:
        reserved = {"stop", "on_session", "settings", "store", "index", "keep_going"} & set(monitor_kw)
        if reserved:
            raise ConfigError(f"CampaignRun sets {', '.join(sorted(reserved))} itself")
        self.campaign = campaign
        self.settings = settings or Settings.from_env()
        self.store = store if store is not None else self.settings.store_obj()
        self.index = index if index is not None else self.settings.engine()
        self.sessions: list[Any] = []
        self.report: CampaignReport | None = None
        self.error: BaseException | None = None
        self._kw = monitor_kw
        self._on_session, self._on_done = on_session, on_done
        self._stop = threading.Event()
        self._stop_after: int | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ended = False

    # ---- state ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended

    @property
    def done(self) -> bool:
        """Started and ended (its end, a stop, or an error)."""
        return self._ended

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def total(self) -> int | None:
        """Sessions the whole campaign holds (slots x frequencies; None: until stopped)."""
        n = self.campaign.n_slots()
        return None if n is None else n * len(self.campaign.frequencies_hz)

    @property
    def session_ids(self) -> list[str]:
        with self._changed:
            return [s.session_id for s in self.sessions]

    def progress(self) -> str:
        """One line: sessions stored of how many, running / stopping / stopped / ended."""
        with self._changed:
            n = len(self.sessions)
        of = f" of {self.total}" if self.total is not None else ""
        if self.error is not None:
            state = f"failed: {type(self.error).__name__}: {self.error}"
        elif self.running:
            state = "stopping" if self.stopping else "running"
        elif self.done:
            state = "stopped" if self.report is not None and self.report.stopped else "ended"
        else:
            state = "not started"
        return f"campaign {self.campaign.id}: {n}{of} session(s) stored, {state}"

    # ---- control -------------------------------------------------------------------------
    def start(self) -> CampaignRun:
        if self._thread is not None:
            raise ConfigError(f"campaign run {self.campaign.id} was started already (a new CampaignRun resumes it)")
        self._thread = threading.Thread(target=self._run, name=f"sdrlab-campaign-{self.campaign.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60.0) -> CampaignReport | None:
        """Stop now: a session being captured ends at once and is stored with what arrived; no
        new one starts.  Waits up to ``timeout`` seconds (0: not at all) for the run to end and
        returns its report (None while it has not ended)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None and timeout != 0:
            self._thread.join(timeout)
        return self.report

    def stop_after(self, n_sessions: int) -> None:
        """Stop once ``n_sessions`` sessions of this run are stored (at once if they are): the
        session being captured completes, no further one starts (a continuous campaign starts
        none beyond the ``n_sessions``-th, and those it started complete)."""
        with self._changed:
            self._stop_after = int(n_sessions)
            if len(self.sessions) >= self._stop_after:
                self._stop.set()

    def wait_sessions(self, n: int, timeout: float | None = None) -> int:
        """Wait until ``n`` sessions are stored or the run ends; returns how many are stored."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while len(self.sessions) < n and not self._ended and self._thread is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(0.5 if left is None else min(0.5, left))
            return len(self.sessions)

    def wait(self, timeout: float | None = None) -> CampaignReport:
        """The report once the run has ended; raises what the run raised, TimeoutError when it
        still runs after ``timeout`` seconds."""
        if self._thread is None:
            raise ConfigError(f"campaign run {self.campaign.id} has not been started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"campaign {self.campaign.id} still runs after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    # ---- its data ------------------------------------------------------------------------
    def metrics(self, metric: str = "snr_db") -> pd.DataFrame:
        """The run's metric time series so far, from the index (:func:`campaign_metrics`)."""
        return campaign_metrics(self.index, self.session_ids, metric)

    def waterfall(self, station: str, **kw: Any) -> xr.DataArray:
        """A station's waterfall over the campaign, from the store (:func:`campaign_waterfall`)."""
        return campaign_waterfall(self.store, self.campaign.id, station, **kw)

    # ---- the thread ----------------------------------------------------------------------
    def _keep_going(self, started: int) -> bool:
        """Whether monitor may start another session (a continuous campaign starts the next one
        before the current one is stored: ``stop_after`` must not cut it short)."""
        with self._changed:
            return self._stop_after is None or started < self._stop_after

    def _session(self, session: Any) -> None:
        with self._changed:
            self.sessions.append(session)
            if self._stop_after is not None and len(self.sessions) >= self._stop_after:
                self._stop.set()  # before monitor looks at it for the next slot
            self._changed.notify_all()
        if self._on_session is not None:
            try:
                self._on_session(session)
            except Exception:
                log.exception("campaign %s: the on_session callback failed (the campaign goes on)", self.campaign.id)

    def _run(self) -> None:
        try:
            self.report = monitor(self.campaign, settings=self.settings, store=self.store, index=self.index,
                                  stop=self._stop, on_session=self._session, keep_going=self._keep_going, **self._kw)
        except BaseException as exc:  # kept for wait(); the thread never dies silently
            self.error = exc
            log.exception("campaign %s failed", self.campaign.id)
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()
            if self._on_done is not None:
                try:
                    self._on_done(self)
                except Exception:
                    log.exception("campaign %s: the on_done callback failed", self.campaign.id)


def _spec(c: Campaign) -> dict[str, Any]:
    d = asdict(c)
    d["start"] = c.start.isoformat() if c.start is not None else None
    d["stations"], d["frequencies_hz"] = list(c.stations), list(c.frequencies_hz)
    return d


__all__ = ["CAMPAIGN_ATTRS", "SESSION_COLUMNS", "Campaign", "CampaignReport", "CampaignRun", "campaign_metrics",
           "campaign_sessions", "campaign_waterfall", "continuity_attrs", "done_slots", "load_campaign", "monitor"]
