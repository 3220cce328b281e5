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

Slot k starts at ``start + k * every_s``; in each slot one simultaneous session per frequency is
acquired (:func:`sdrlab.acquire.acquire`: stored, indexed, its metric time series included) on
one dask client kept for the whole campaign.  A receiver that drops or is down is a ``partial`` or
``failed`` station of that session, never the end of the campaign; a slot whose time passed while
the campaign was not running (a restart, a long outage) is a gap.  Restarting the same campaign
resumes it from what the store holds: sessions carry ``campaign_id``, ``campaign_slot`` and
``campaign_frequency_hz``, and (slot, frequency) pairs already stored are not acquired again.

The clock is injectable (``clock`` in seconds, ``sleep``), so a simulated campaign of a day runs
in seconds against a simulator whose clock is advanced between slots
(:meth:`sdrlab.sim.server.SimServer.advance`).
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
from typing import Any, Callable, Sequence

from .config import Settings
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

    def __post_init__(self) -> None:
        from .acquire import validate_request

        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id) or len(self.id) > 64:
            raise ConfigError(f"campaign id must be 1-64 letters, digits, '-', '_' or '.', got {self.id!r}")
        if not self.stations:
            raise ConfigError(f"campaign {self.id}: no stations")
        if not self.frequencies_hz:
            raise ConfigError(f"campaign {self.id}: no frequencies")
        for f in self.frequencies_hz:
            validate_request(f, self.duration_s)
        if self.every_s is not None and not (math.isfinite(self.every_s)
                                             and self.every_s >= self.duration_s * len(self.frequencies_hz)):
            raise ConfigError(f"campaign {self.id}: every_s must be at least duration_s x the number of "
                              f"frequencies ({self.duration_s * len(self.frequencies_hz):g} s), got {self.every_s!r}")
        if self.total_s is not None and not (math.isfinite(self.total_s) and self.total_s > 0):
            raise ConfigError(f"campaign {self.id}: total_s must be a positive number of seconds, got {self.total_s!r}")

    @property
    def period_s(self) -> float:
        """Time between slot starts (back to back: the sessions' own length)."""
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
    known = {"id", "stations", "frequencies_hz", "duration_s", "every_s", "total_s", "start"}
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
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"campaign {p}: {str(exc)[:200]}") from None


def done_slots(store: Any, campaign_id: str) -> tuple[set[tuple[int, float]], float | None]:
    """The (slot, frequency) pairs of a campaign already in ``store``, and the campaign's start
    (epoch seconds) they recorded (None: no session yet)."""
    done: set[tuple[int, float]] = set()
    start: float | None = None
    try:
        listed = store.sessions()
    except StorageError:
        return done, None
    for sid in listed.index:
        try:
            attrs = store.open(str(sid)).attrs
        except StorageError:  # a damaged session: fsck reports it; not counted as done
            continue
        if attrs.get("campaign_id") != campaign_id:
            continue
        done.add((int(attrs["campaign_slot"]), float(attrs["campaign_frequency_hz"])))
        if attrs.get("campaign_start") is not None:
            start = float(attrs["campaign_start"])
    return done, start


@dataclass
class CampaignReport:
    """What a run of :func:`monitor` did."""

    campaign: Campaign
    sessions: list[Any] = field(default_factory=list)
    #: (slot, frequency) acquired earlier (resumed) and skipped
    skipped: list[tuple[int, float]] = field(default_factory=list)
    #: slots whose time had passed when the campaign reached them (a restart, an outage)
    missed: list[int] = field(default_factory=list)
    stopped: bool = False

    def table(self) -> Any:
        import pandas as pd

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
) -> CampaignReport:
    """Run ``campaign`` (see the module docstring) until its end or ``stop``; resumes what the
    store already holds of it.  ``stations`` (Station objects) replace the catalogue lookup of
    ``campaign.stations``; ``on_session`` is called with each session once stored and indexed."""
    from .acquire import acquire

    settings = settings or Settings.from_env()
    store = store if store is not None else settings.store_obj()
    index = index if index is not None else settings.engine()
    stop = stop or threading.Event()
    chosen = list(stations) if stations is not None else list(campaign.stations)
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
                if stop.is_set():
                    break
                if (k, f) in done:
                    report.skipped.append((k, f))
                    continue
                attrs = {"campaign_id": campaign.id, "campaign_slot": k, "campaign_frequency_hz": float(f),
                         "campaign_start": float(t0), "campaign": json.dumps(_spec(campaign))}
                session = acquire(chosen, f, campaign.duration_s, catalog=catalog, settings=settings,
                                  client=client, options=options, progress=False, store=store, index=index,
                                  attrs=attrs, stop=stop)
                report.sessions.append(session)
                log.info("campaign %s slot %d at %.0f Hz: session %s, %d ok, %d failed%s", campaign.id, k, f,
                         session.session_id, len(session.ok), len(session.failed),
                         f", not stored: {session.store_error}" if session.store_error else "")
                if on_session is not None:
                    on_session(session)
            k += 1
    report.stopped = stop.is_set()
    return report


def _spec(c: Campaign) -> dict[str, Any]:
    d = asdict(c)
    d["start"] = c.start.isoformat() if c.start is not None else None
    d["stations"], d["frequencies_hz"] = list(c.stations), list(c.frequencies_hz)
    return d


__all__ = ["CAMPAIGN_ATTRS", "Campaign", "CampaignReport", "done_slots", "load_campaign", "monitor"]
