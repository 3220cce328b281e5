"""One simulated OpenWebRX receiver's shared state: its SDRs (active profile, clock, one spectrum
task each feeding every listener the same FFT rows), its sessions and ``clients`` broadcasts,
admission (``max_clients``, Plus per-address limit, faults), profile changes and SDR failures
(protocol page sections 3, 4.4, 7), and the ground truth (never on the wire).

An SDR starts with its first listener and stops with its last (U ``source/__init__.py:438-467``);
its clock (``sdr_time``) runs from its start and times the emitters' modulation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Coroutine

import numpy as np

from ...receivers.owrxwire import encode_fft
from .config import OwrxConfig, OwrxFaults, Profile
from .dsp import Band, SpectrumChain
from .session import Session, SessionTruth

__all__ = ["OwrxTruth", "ProfileChange", "ReceiverHub"]

logger = logging.getLogger(__name__)

FULL_REASON = "Too many clients"
#: how long stopping waits for the receiver's tasks, s
STOP_TIMEOUT_S = 5.0
BANNED_REASON = "Client address banned"


@dataclass(frozen=True)
class ProfileChange:
    """A profile change (by a phantom listener, a client's ``selectprofile`` or an SDR failure)."""

    at: float  # time.monotonic()
    sdr_id: str
    old: str  # sdr|profile
    new: str
    by: str  # "phantom", "client #n"


@dataclass
class OwrxTruth:
    """A receiver's ground truth at one moment (see :meth:`OwrxSimServer.truth`)."""

    receiver_id: str
    profiles: dict[str, str]  # sdr_id -> active sdr|profile
    bands: dict[str, Band]  # sdr_id -> what its active profile hears (noise density, emitters)
    noise_dbfs_hz: dict[str, float]
    failed_sdrs: tuple[str, ...]
    profile_changes: tuple[ProfileChange, ...]
    sessions: tuple[SessionTruth, ...]
    users: int
    arrivals: int
    fft_rows_made: dict[str, int] = field(default_factory=dict)
    #: the SDRs' frequency error, ppm (:class:`~sdrlab.sim.owrx.config.OwrxConfig`); ``bands``
    #: hold the true frequencies, :meth:`apparent_hz` where the receiver shows them
    ppm: float = 0.0

    def apparent_hz(self, freq_hz: float) -> float:
        """Where this receiver shows a signal whose true frequency is ``freq_hz``."""
        return freq_hz / (1.0 + self.ppm * 1e-6)


@dataclass
class SdrState:
    sdr_id: str
    profile: Profile
    failed: bool = False
    t0: float | None = None  # loop time of its start, None while stopped
    task: asyncio.Task[None] | None = None
    listeners: set[Session] = field(default_factory=set)
    rows: int = 0


class ReceiverHub:
    """Shared state of one simulated receiver (see the module docstring)."""

    def __init__(self, cfg: OwrxConfig, index: int) -> None:
        self.cfg, self.index = cfg, index
        self.faults = OwrxFaults()
        self.port = 0
        self.sessions: set[Session] = set()
        self.receivers: list[Session] = []
        self.all_truth: list[SessionTruth] = []
        self.changes: list[ProfileChange] = []
        self.arrivals = 0
        self.sdrs: dict[str, SdrState] = {}
        for p in cfg.profiles:
            self.sdrs.setdefault(p.sdr_id, SdrState(p.sdr_id, p))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fft_size = cfg.fft_size  # the operator may change it (set_fft_size)

    # ---- bookkeeping -------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of this receiver: kept until done, cancelled and awaited by :meth:`stop`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def users(self) -> int:
        return len(self.receivers)

    def first_sdr(self) -> str | None:
        return next((s for s in self.cfg.sdr_ids if not self.sdrs[s].failed), None)

    def current_profile(self, sdr_id: str) -> Profile | None:
        sdr = self.sdrs.get(sdr_id)
        return sdr.profile if sdr is not None and not sdr.failed else None

    def sdr_time(self, sdr_id: str) -> float:
        """Seconds since the SDR started (0 when it is not running)."""
        sdr = self.sdrs[sdr_id]
        return 0.0 if sdr.t0 is None else asyncio.get_running_loop().time() - sdr.t0

    def profiles_message(self) -> list[dict[str, str]]:
        return [{"id": p.id, "name": f"{p.sdr_name} {p.name}"} for p in self.cfg.profiles
                if not self.sdrs[p.sdr_id].failed]

    def admission(self, session: Session) -> str | None:
        """Why a new receiver session is refused (``backoff`` reason), or None."""
        f = self.faults
        if self.cfg.plus and f.banned:
            return BANNED_REASON
        if f.full or self.users >= self.cfg.max_clients:
            return FULL_REASON
        if self.cfg.plus and sum(s.ip == session.ip for s in self.receivers) >= self.cfg.max_clients_per_ip:
            return FULL_REASON
        return None

    def opened(self, session: Session) -> None:
        self.arrivals += 1
        self.sessions.add(session)
        self.all_truth.append(session.truth)

    def register(self, session: Session) -> None:
        self.receivers.append(session)
        self._broadcast_clients()

    def closed(self, session: Session) -> None:
        session.close_tasks()
        if session.truth.closed is None and session.truth.kind:
            session.truth.closed = "client"
        self.sessions.discard(session)
        for sdr in self.sdrs.values():
            if session in sdr.listeners:
                sdr.listeners.discard(session)
                if not sdr.listeners:
                    self._stop_sdr(sdr)
        if session in self.receivers:
            self.receivers.remove(session)
            self._broadcast_clients()

    def _broadcast_clients(self) -> None:
        for s in self.receivers:
            s.enqueue_json("clients", self.users)

    # ---- SDRs and FFT rows ---------------------------------------------------------------------
    def listen_fft(self, session: Session) -> None:
        sdr = self.sdrs[session.sdr_id]
        sdr.listeners.add(session)
        if sdr.task is None and not sdr.failed:
            sdr.t0 = asyncio.get_running_loop().time()
            self._start_spectrum(sdr)

    def _start_spectrum(self, sdr: SdrState) -> None:
        if sdr.task is not None:
            sdr.task.cancel()
        sdr.task = self.spawn(self._spectrum(sdr))

    def _stop_sdr(self, sdr: SdrState) -> None:
        if sdr.task is not None:
            sdr.task.cancel()
            sdr.task = None
        sdr.t0 = None

    async def _spectrum(self, sdr: SdrState) -> None:
        c, p = self.cfg, sdr.profile
        chain = SpectrumChain(p.band.as_seen(c.clock), p.center_freq, p.samp_rate, self.fft_size, c.fft_fps, c.fft_voverlap,
                              t0=self.sdr_time(sdr.sdr_id), stream=self.index)
        loop = asyncio.get_running_loop()
        t_base, k = loop.time(), 0
        while True:
            await asyncio.sleep(max(0.0, t_base + (k + 1) * chain.period / c.clock - loop.time()))
            row = chain.row(k)
            payload = encode_fft(row) if c.fft_compression == "adpcm" else row.astype("<f4").tobytes()
            sdr.rows += 1
            for s in tuple(sdr.listeners):
                s.on_fft(payload, row)
            k += 1

    # ---- events ----------------------------------------------------------------------------------
    def select_profile(self, profile_id: str, by: Session | None = None) -> bool:
        """Activate a profile for every listener of its SDR: a ``config`` diff to each, FFT rows of
        the new profile, channels keep their offset (section 7.4).  False for an unknown id."""
        try:
            new = self.cfg.profile(profile_id)
        except KeyError:
            logger.info("%s: invalid profile %r ignored", self.cfg.id, profile_id)
            return False
        sdr = self.sdrs[new.sdr_id]
        if sdr.failed:
            return False
        old = sdr.profile
        if old.id == new.id:
            return True
        sdr.profile = new
        who = "phantom" if by is None else f"client #{by.number}"
        self.changes.append(ProfileChange(time.monotonic(), sdr.sdr_id, old.id, new.id, who))
        logger.info("%s: profile %s -> %s by %s", self.cfg.id, old.id, new.id, who)
        before, after = Session.profile_config(old), Session.profile_config(new)
        diff = {k: v for k, v in after.items() if before.get(k) != v or k in ("sdr_id", "start_offset_freq")}
        if sdr.task is not None:
            self._start_spectrum(sdr)
        for s in tuple(sdr.listeners):
            self.spawn(self._announce_profile(s, diff))
        return True

    async def _announce_profile(self, s: Session, diff: dict[str, Any]) -> None:
        await s.send("config", diff)
        await s.send("dial_frequencies", [])
        await s.send("bookmarks", [])
        if s.started:
            s.rebuild_channel()

    def set_fft_size(self, fft_size: int) -> None:
        """The operator changes ``fft_size``: a ``config`` with it to every listener, and the
        spectrum chains restart with the new size (U ``owrx/fft.py:50``)."""
        if fft_size <= 0 or fft_size % 2:
            raise ValueError(f"fft_size must be a positive even number, got {fft_size}")
        self.fft_size = fft_size
        for s in self.receivers:
            self.spawn(s.send("config", {"fft_size": fft_size}))
        for sdr in self.sdrs.values():
            if sdr.task is not None:
                self._start_spectrum(sdr)

    def fail_sdr(self, sdr_id: str | None = None) -> str:
        """The SDR's process dies (section 7.5): its listeners move to the first remaining SDR
        (``log_message``, new DSP and audio encoder) or get ``sdr_error``; it leaves ``profiles``
        and ``/status.json``.  Returns the failed SDR's id."""
        sid = sdr_id or self.first_sdr()
        if sid is None or sid not in self.sdrs:
            raise KeyError(f"{self.cfg.id}: no running SDR {sdr_id!r}")
        sdr = self.sdrs[sid]
        sdr.failed = True
        self._stop_sdr(sdr)
        movers, sdr.listeners = tuple(sdr.listeners), set()
        target = self.first_sdr()
        for s in movers:
            self.spawn(self._move(s, sdr.profile.sdr_name, target))
        for s in self.receivers:
            self.spawn(s.send("profiles", self.profiles_message()))
        return sid

    async def _move(self, s: Session, name: str, target: str | None) -> None:
        if target is None:
            s.stop_dsp()
            await s.send("sdr_error", "No SDR Devices available")
            return
        await s.send("log_message", f'SDR device "{name}" has failed, selecting new device')
        s.sdr_id = target
        prof = self.current_profile(target)
        assert prof is not None
        await s.send_sdr(prof)
        s.rebuild_dsp()

    # ---- truth -----------------------------------------------------------------------------------
    def truth(self) -> OwrxTruth:
        return OwrxTruth(
            receiver_id=self.cfg.id,
            profiles={k: v.profile.id for k, v in self.sdrs.items()},
            bands={k: v.profile.band for k, v in self.sdrs.items()},
            noise_dbfs_hz={k: v.profile.band.noise_dbfs_hz for k, v in self.sdrs.items()},
            failed_sdrs=tuple(k for k, v in self.sdrs.items() if v.failed),
            profile_changes=tuple(self.changes),
            sessions=tuple(_copy_truth(t) for t in self.all_truth),
            users=self.users, arrivals=self.arrivals,
            fft_rows_made={k: v.rows for k, v in self.sdrs.items()}, ppm=self.cfg.ppm,
        )

    async def stop(self) -> None:
        """Cancel every task of the receiver and wait for them."""
        tasks: list[asyncio.Task[Any]] = list(self._tasks)
        for s in tuple(self.sessions):
            tasks += s.close_tasks()
        for sdr in self.sdrs.values():
            if sdr.task is not None:
                tasks.append(sdr.task)
            self._stop_sdr(sdr)
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if pending:
                logger.warning("%s: %d tasks did not stop: %s", self.cfg.id, len(pending), pending)


def _copy_truth(t: SessionTruth) -> SessionTruth:
    return replace(t, smeter=list(t.smeter), fft_rows=deque((np.array(r) for r in t.fft_rows), maxlen=t.fft_rows.maxlen))
