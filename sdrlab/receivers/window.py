"""The common observation window of a session: every station captures the same span of time.

Connections come up at different moments (a slow handshake, a busy receiver, a worker that starts
late), so a session cannot simply say "go".  Instead each capture keeps what arrives from its first
frame and reports that frame's GPS time (:meth:`Window.arrived`); whoever coordinates the session
(for one process the window itself, on a cluster :mod:`sdrlab.acquire` across worker processes)
takes the latest of those first times as the start (:meth:`Window.set_start`), and every capture
then drops what it holds from before the start and ends at ``start + duration``.  Only the
receivers' own time stamps decide, never the host clock, so this works at any clock rate (the
simulator's speed-up too).  A capture that comes up after the start simply starts late, and the
session says by how much.

A window's start may also be fixed in advance (``start_ns``): no first time is awaited, captures
that come up before it wait (dropping the frames that end before it) and those that come up after
it start late.  A continuous campaign (:mod:`sdrlab.monitor`) connects each next session a few
seconds early with its window fixed where the current one's ends, so consecutive sessions abut in
GPS time.

Protocol-neutral: a receiver client gives its frames' first-sample times in GPS ns, or ``None``
where a frame has no GPS time (receipt-timed receivers are then kept from the moment the start is
known).
"""

from __future__ import annotations

import asyncio
import math
from typing import Iterable
from ..constants import NS



class Window:
    """The window shared by the captures of one process.

    ``stations`` are the captures expected to report; with ``auto=True`` the start is set to the
    latest reported first time as soon as every station has reported (one process, no
    coordinator).  ``start_ns`` (GPS ns): the start, fixed in advance."""

    def __init__(self, duration_s: float, stations: Iterable[str], *, auto: bool = False,
                 start_ns: int | None = None) -> None:
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"window duration must be a positive number of seconds, got {duration_s!r}")
        self.duration_s = float(duration_s)
        self.duration_ns = round(duration_s * NS)
        self.expected = set(stations)
        self.auto = auto
        #: station -> GPS ns of its first frame (None: no GPS time, or it ended without data)
        self.first: dict[str, int | None] = {}
        self.start_ns: int | None = None if start_ns is None else int(start_ns)
        self._changed: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (f"Window({self.duration_s:g} s, {len(self.first)}/{len(self.expected)} reported, "
                f"start={self.start_ns})")

    @property
    def end_ns(self) -> int | None:
        return None if self.start_ns is None else self.start_ns + self.duration_ns

    @property
    def reported(self) -> bool:
        """Every expected station has reported (arrived or given up)."""
        return self.expected <= set(self.first)

    def candidate(self) -> int | None:
        """The latest first time reported so far (None: none with a GPS time)."""
        times = [t for t in self.first.values() if t is not None]
        return max(times) if times else None

    def arrived(self, station: str, first_ns: int | None) -> None:
        """``station``'s first frame: its first sample at ``first_ns`` (GPS ns; None = no GPS time)."""
        if station not in self.first:
            self.first[station] = first_ns
            self._update()

    def gave_up(self, station: str) -> None:
        """``station`` ended before any frame (failed, stopped): the start does not wait for it."""
        if station not in self.first:
            self.first[station] = None
            self._update()

    def set_start(self, start_ns: int) -> None:
        if self.start_ns is None:
            self.start_ns = int(start_ns)
            self._update()

    def _update(self) -> None:
        if self.auto and self.start_ns is None and self.reported:
            cand = self.candidate()
            if cand is not None:
                self.start_ns = cand
        if self._changed is not None:
            self._changed.set()

    async def wait(self, *, reported: bool = False, timeout: float | None = None) -> bool:
        """Wait until the start is set (or, with ``reported``, until every station reported or
        the start is set); False on timeout."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not (self.start_ns is not None or reported and self.reported):
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True
