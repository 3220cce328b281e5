"""Continuous campaigns: sessions one after the other, each window starting where the previous
one's ends in the receivers' GPS time, and how each session follows the previous one.

:func:`sdrlab.monitor.monitor` runs a campaign with ``continuous: true`` through
:class:`ContinuousRun`: session k+1 is acquired (:func:`sdrlab.acquire.acquire`) in its own
thread, connected ``lead_s`` before session k's window ends, with its window fixed in advance at
that end (``window_start_ns``).  The windows so lie on one GPS grid from the run's first session
on (start W0, then W0 + k x duration): consecutive windows abut exactly.  Each station
keeps whole 512-sample frames, from the one holding its window's start to the one holding its end,
so consecutive sessions of a station share at most the two frames around a boundary (85 ms at
12 kHz) and never miss a sample between them.  Costs: each receiver holds two channels for
``lead_s`` (the next session waits for its window while the current one captures), and a station
that comes up more than ``lead_s`` late starts late (``partial``) without moving the grid.

:func:`continuity_attrs` measures, from what is stored (each station's first sample, sample count
and rate), how a session follows the previous one; every session of a continuous campaign carries
the result as attributes (``continuity``, ``continuity_gap_s``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from typing import Any, Callable

import numpy as np
import xarray as xr

from .constants import KIWI_RATE_HZ
from .errors import StorageError


log = logging.getLogger(__name__)

#: sessions of a continuous campaign under way at once (one capturing, one connecting, the
#: previous ones being stored); a campaign that falls further behind waits, and that shows as a gap
MAX_IN_FLIGHT = 4
#: how long a session's storing waits for the previous one's to measure the continuity (seconds)
PREVIOUS_WAIT_S = 120.0
#: samples per KiwiSDR IQ frame: the resolution at which windows begin and end
FRAME_SAMPLES = 512


def bounded_waits(options: Any, budget_s: float) -> Any:
    """Receiver options whose waits end within ``budget_s`` (a continuous session's lead and
    window): no connect or busy retry that would come after the window's end, no connect or
    handshake timeout longer than the budget (5 s at least).  Otherwise a receiver that is down
    would hold its session open for its whole retry policy (14 s by default) after the window
    ended, and the sessions behind it would queue up."""
    backoff = getattr(options, "backoff", None)
    if not dataclasses.is_dataclass(options) or isinstance(options, type) or not callable(backoff):
        return options
    have = {f.name for f in dataclasses.fields(options)}

    def retries(base: str, n: str) -> int:
        spent, r = 0.0, 0
        while r < int(getattr(options, n)):
            spent += float(backoff(float(getattr(options, base)), r + 1))
            if spent >= budget_s:
                break
            r += 1
        return r

    changes: dict[str, Any] = {}
    for base, n in (("connect_delay", "connect_retries"), ("busy_delay", "busy_retries")):
        if {base, n} <= have:
            changes[n] = retries(base, n)
    for name in ("connect_timeout", "handshake_timeout"):
        if name in have:
            changes[name] = min(float(getattr(options, name)), max(budget_s, 5.0))
    return dataclasses.replace(options, **changes)


class Flight:
    """One session of a continuous campaign, acquired in its own thread."""

    def __init__(self, slot: int, window_start_ns: int | None, previous: Flight | None) -> None:
        self.slot = slot
        self.window_start_ns = window_start_ns  # fixed in advance (None: at its stations' first frames)
        self.previous = previous
        self.start_ns: int | None = None  # the window's start, once decided
        self.session: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def started(self, start_ns: int) -> None:
        self.start_ns = int(start_ns)


class ContinuousRun:
    """The loop of a continuous campaign (see the module docstring); :func:`sdrlab.monitor.monitor`
    runs it on its dask client.

    Session k+1 is started in a thread once session k's window start W_k is known, ``lead_s``
    before W_k + duration by ``gps_now`` (never before W_k), with its window fixed at
    W_k + duration: the windows lie on one GPS grid from the first session's start on.  So at
    most two sessions capture at once (each receiver holds two channels for ``lead_s``); a
    station slower than ``lead_s`` to come up starts late (``partial``) without moving the grid;
    a slot whose whole window passed before its session could start is missed."""

    def __init__(self, campaign: Any, report: Any, done: set[tuple[int, float]], k: int,
                 chosen: list[Any], tags: Callable[[int], dict[str, Any]], stop: threading.Event,
                 on_session: Callable[[Any], None] | None, keep_going: Callable[[int], bool] | None,
                 gps_now: Callable[[], int], store: Any, previous_in_store: Callable[[int], str | None],
                 acquire_kw: dict[str, Any]) -> None:
        """``campaign`` is a :class:`sdrlab.monitor.Campaign` and ``report`` its
        :class:`~sdrlab.monitor.CampaignReport` (typed ``Any``: monitor imports this module, and
        an import back, even for types only, would be a cycle).  From slot ``k`` on, skipping the (slot, frequency) pairs in ``done``; ``tags(k)``: the
        attributes of slot k's session; ``previous_in_store(k)``: the id of the campaign's last
        stored session before slot k (a resumed campaign's first session follows it)."""
        self.c, self.report, self.done, self.k = campaign, report, done, k
        self.f = float(campaign.frequencies_hz[0])
        self.chosen, self.tags, self.stop, self.on_session = chosen, tags, stop, on_session
        self.keep_going, self.gps_now, self.store, self.kw = keep_going, gps_now, store, acquire_kw
        self.previous_in_store = previous_in_store
        self.halt = threading.Event()  # the sessions' stop: the caller's, or this loop's on an error
        self.flights: list[Flight] = []
        self.error: BaseException | None = None
        self.duration_ns = round(campaign.duration_s * 1e9)
        self.lead_ns = round(campaign.lead_s * 1e9)

    # ---- the loop ------------------------------------------------------------------------
    def run(self, client: Any) -> None:
        n_slots, k = self.c.n_slots(), self.k
        prev: Flight | None = None
        launched = 0
        try:
            while (n_slots is None or k < n_slots) and not self._poll():
                if (k, self.f) in self.done:  # stored already (a resumed campaign): the grid starts anew after it
                    self.report.skipped.append((k, self.f))
                    k += 1
                    prev = None
                    continue
                if self.keep_going is not None and not self.keep_going(launched):
                    break
                window: int | None = None
                if prev is not None:
                    last = prev
                    if self._wait(lambda: last.start_ns is not None or last.done.is_set()):
                        break
                    if last.start_ns is not None:
                        window = last.start_ns + self.duration_ns
                        launch_at = max(last.start_ns, window - self.lead_ns)
                        if self._wait(lambda: self.gps_now() >= launch_at):
                            break
                if self._wait(lambda: sum(not f.done.is_set() for f in self.flights) < MAX_IN_FLIGHT):
                    break
                if window is not None:  # fell behind by whole windows: those slots are missed
                    behind = (self.gps_now() - window) // self.duration_ns
                    if behind >= 1:
                        log.warning("campaign %s: %d slot(s) missed (fell behind by %.1f s)", self.c.id, behind,
                                    behind * self.c.duration_s)
                        self.report.missed.extend(range(k, k + int(behind)))
                        k += int(behind)
                        window += int(behind) * self.duration_ns
                        if n_slots is not None and k >= n_slots:
                            break
                prev = self._launch(client, k, window, prev)
                launched += 1
                k += 1
        finally:
            self._drain()
        if self.error is not None:
            raise self.error

    def _launch(self, client: Any, k: int, window: int | None, prev: Flight | None) -> Flight:
        from .acquire import acquire

        flight = Flight(k, window, prev)
        stored_prev = None if prev is not None else self.previous_in_store(k)

        def measure(ds: xr.Dataset) -> dict[str, Any]:
            return self._continuity(flight, ds, stored_prev)

        def go() -> None:
            try:
                flight.session = acquire(self.chosen, self.f, self.c.duration_s, client=client, stop=self.halt,
                                         attrs=self.tags(k),
                                         window_start_ns=window, on_start=flight.started, finish_attrs=measure,
                                         **self.kw)
            except BaseException as exc:  # raised by monitor once the other sessions are in
                flight.error = exc
            finally:
                flight.done.set()

        flight.thread = threading.Thread(target=go, name=f"sdrlab-campaign-{self.c.id}-{k}", daemon=True)
        self.flights.append(flight)
        flight.thread.start()
        log.info("campaign %s slot %d: session started, window %s", self.c.id, k,
                 "at its stations' first frames" if window is None else f"from GPS {window / 1e9:.3f} s")
        return flight

    def _poll(self) -> bool:
        """Pass the caller's stop on, hand over the sessions that are in; whether to stop."""
        if self.stop.is_set():
            self.halt.set()
        self._collect()
        return self.halt.is_set()

    def _wait(self, until: Callable[[], bool]) -> bool:
        """Wait until ``until()``, handing sessions over meanwhile; True: stop instead."""
        while not self._poll():
            if until():
                return False
            self.halt.wait(0.02)
        return True

    def _drain(self) -> None:
        while not all(f.done.is_set() for f in self.flights):
            self._poll()
            time.sleep(0.02)
        self._collect()

    def _collect(self) -> None:
        """The sessions that ended, in slot order: into the report, to ``on_session``."""
        while self.flights and self.flights[0].done.is_set():
            flight = self.flights.pop(0)
            if flight.error is not None:
                log.error("campaign %s slot %d: %s", self.c.id, flight.slot, flight.error)
                self.error = self.error or flight.error
                self.halt.set()
                continue
            session = flight.session
            if never_opened(session):  # stopped while it waited for its window: nothing to keep
                log.info("campaign %s slot %d: stopped before its window opened (no session)", self.c.id, flight.slot)
                self._discard_shell(session.session_id)
                continue
            self.report.sessions.append(session)
            ds = session.dataset
            cont = ds.attrs.get("continuity") if ds is not None else None
            if cont == "gap":
                self.report.gaps.append((flight.slot, float(ds.attrs.get("continuity_gap_s", float("nan")))))
            log.info("campaign %s slot %d: session %s, %d ok, %d failed, %s%s", self.c.id, flight.slot,
                     session.session_id, len(session.ok), len(session.failed), cont or "no data",
                     f", not stored: {session.store_error}" if session.store_error else "")
            if self.on_session is not None:
                try:
                    self.on_session(session)
                except Exception as exc:  # raised once the sessions under way are in (stopped)
                    self.error = self.error or exc
                    self.halt.set()

    def _discard_shell(self, session_id: str) -> None:
        """A streamed session stopped before its window opened left its ``recording`` record
        and nothing else: removed, so it neither lists as a recording nor waits for a finalise."""
        try:
            keys = self.store.objects(session_id)
            if keys and all(k.startswith("commits/") for k in keys):
                self.store.delete(session_id)
        except StorageError as exc:
            log.warning("campaign %s: the empty recording %s stays in the store: %s", self.c.id, session_id, exc)

    # ---- continuity ----------------------------------------------------------------------
    def _continuity(self, flight: Flight, ds: xr.Dataset, stored_prev: str | None) -> dict[str, Any]:
        prev = flight.previous
        if prev is not None:
            if not prev.done.wait(PREVIOUS_WAIT_S):
                log.warning("campaign %s slot %d: the previous session is not in after %.0f s: continuity unmeasured",
                            self.c.id, flight.slot, PREVIOUS_WAIT_S)
            session = prev.session if prev.done.is_set() else None
            if session is None or never_opened(session):  # not in (yet), or nothing: there was one all the same
                return continuity_attrs("", None, ds, previous_slot=prev.slot)
            return continuity_attrs(session.session_id, session.dataset, ds, previous_slot=prev.slot)
        if stored_prev is None:
            return continuity_attrs(None, None, ds)
        try:
            before = self.store.open(stored_prev)
        except StorageError as exc:
            log.warning("campaign %s: previous session %s not readable: %s", self.c.id, stored_prev, exc)
            before = None
        slot = int(before.attrs["campaign_slot"]) if before is not None else None
        return continuity_attrs(stored_prev, before, ds, previous_slot=slot)


def never_opened(session: Any) -> bool:
    """A session stopped before its window opened: every station failed, stopped, with no data."""
    return (session is not None and session.dataset is None and bool(session.results)
            and all(r.status == "failed" and r.error_class == "Stopped" for r in session.results.values()))


def continuity_attrs(previous_id: str | None, previous: xr.Dataset | None, ds: xr.Dataset, *,
                     previous_slot: int | None = None) -> dict[str, Any]:
    """How session ``ds`` follows the previous one of its campaign (``previous``, id
    ``previous_id``; None: it is the first; "": there was one, not known), as session attributes:

    ``continuity_previous`` (its id, "" for none or not known), ``continuity_previous_slot`` (-1
    for none),
    ``continuity_window_gap_s`` (this window's start minus the previous window's end, from their
    GPS windows: 0 when they abut), ``continuity_gaps_s`` (JSON, per station GPS-timed in both:
    this session's first sample minus the end of the previous one's last, from the stored start
    times, sample counts and rates; negative: an overlap), ``continuity_gap_s`` (the largest of
    them, NaN with none) and ``continuity``: ``first``, ``abutting`` (no station misses more than
    one frame between the two, and none has more than the two frames around the boundary in
    both), ``gap``, ``overlap`` or ``unmeasured`` (no station GPS-timed in both)."""
    out: dict[str, Any] = {"continuity_previous": previous_id or "",
                           "continuity_previous_slot": -1 if previous_slot is None else int(previous_slot)}
    if previous_id is None:
        return {**out, "continuity": "first", "continuity_gap_s": float("nan"),
                "continuity_window_gap_s": float("nan"), "continuity_gaps_s": "{}"}
    window_gap = float("nan")
    if previous is not None and "window_end" in previous.attrs and "window_start" in ds.attrs:
        end = np.datetime64(str(previous.attrs["window_end"]).rstrip("Z"), "ns")
        start = np.datetime64(str(ds.attrs["window_start"]).rstrip("Z"), "ns")
        window_gap = float((start - end) / np.timedelta64(1, "ns")) / 1e9
    gaps: dict[str, float] = {}
    frame_s = FRAME_SAMPLES / KIWI_RATE_HZ
    if previous is not None:
        before = _spans(previous)
        for st, (t0, _end, fs) in _spans(ds).items():
            if st in before:
                gaps[st] = float((t0 - before[st][1]) / np.timedelta64(1, "ns")) / 1e9
                frame_s = FRAME_SAMPLES / fs
    if not gaps:
        kind, worst = "unmeasured", float("nan")
    else:
        worst = max(gaps.values())
        if worst > frame_s:
            kind = "gap"
        elif min(gaps.values()) < -2 * frame_s:
            kind = "overlap"
        else:
            kind = "abutting"
    return {**out, "continuity": kind, "continuity_gap_s": worst, "continuity_window_gap_s": window_gap,
            "continuity_gaps_s": json.dumps({k: round(v, 9) for k, v in sorted(gaps.items())})}


def _spans(ds: xr.Dataset) -> dict[str, tuple[np.datetime64, np.datetime64, float]]:
    """Station -> (first sample, end of the last, sample rate) of its GPS-timed data in ``ds``."""
    if "station" not in ds.dims or "start_time" not in ds.coords and "start_time" not in ds.variables:
        return {}
    out = {}
    timing_ = ds["timing"].values if "timing" in ds.coords else np.full(ds.sizes["station"], "gps")
    for i, st in enumerate(ds["station"].values):
        t0 = ds["start_time"].values[i]
        n = int(ds["n_samples"].values[i])
        fs = float(ds["sample_rate"].values[i])
        if str(timing_[i]) != "gps" or np.isnat(t0) or n <= 0 or not (math.isfinite(fs) and fs > 0):
            continue
        out[str(st)] = (t0, t0 + np.timedelta64(int(round(n / fs * 1e9)), "ns"), fs)
    return out
