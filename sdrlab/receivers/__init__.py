"""Receiver protocols, by name.  One module per protocol; the registry maps a station's
``protocol`` to its client (:func:`make_receiver`) and to the reader of its status page
(:func:`probe_status`).  Everything after the receivers in the data flow sees only the
protocol-neutral types of :mod:`sdrlab.capture` (:class:`~sdrlab.capture.Receiver`,
:class:`~sdrlab.capture.Capture`, :class:`~sdrlab.capture.ReceiverStatus`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..capture import Receiver, ReceiverStatus
from ..errors import ConfigError
from ..stations import Station
from . import kiwistatus, owrxstatus
from .kiwisdr import KiwiOptions, KiwiReceiver
from .openwebrx import OwrxOptions, OwrxReceiver

#: a client for one station: (station, protocol options or None) -> receiver
ReceiverFactory = Callable[[Station, Any], Receiver]
#: a status page reader: (station, timeout s) -> (status or None, latency ms, error or None)
StatusProbe = Callable[[Station, float], tuple[ReceiverStatus | None, float, str | None]]


@dataclass(frozen=True)
class ProtocolEntry:
    name: str
    receiver: ReceiverFactory
    status: StatusProbe | None = None


_REGISTRY: dict[str, ProtocolEntry] = {}


def register(name: str, factory: ReceiverFactory, *, status: StatusProbe | None = None) -> None:
    """Make ``name`` a protocol: ``factory`` builds its client, ``status`` reads its status page."""
    _REGISTRY[name] = ProtocolEntry(name, factory, status)


def protocols() -> list[str]:
    """The registered protocol names."""
    return sorted(_REGISTRY)


def _entry(station: Station) -> ProtocolEntry:
    try:
        return _REGISTRY[station.protocol]
    except KeyError:
        raise ConfigError(f"station {station.id}: no receiver for protocol {station.protocol!r} "
                          f"(known: {', '.join(protocols())})") from None


def make_receiver(station: Station, options: Any = None) -> Receiver:
    """The client for ``station``, by its protocol (unknown protocol: :class:`ConfigError`)."""
    return _entry(station).receiver(station, options)


def probe_status(station: Station, timeout: float = 5.0) -> tuple[ReceiverStatus | None, float, str | None]:
    """Read ``station``'s own status page by its protocol: (status or None, latency ms, error).
    A protocol without one answers (None, 0, a reason); an unknown protocol: :class:`ConfigError`."""
    probe = _entry(station).status
    if probe is None:
        return None, 0.0, f"protocol {station.protocol} has no status page reader"
    return probe(station, timeout)


def _kiwi(station: Station, options: KiwiOptions | None) -> KiwiReceiver:
    opts = options or KiwiOptions()
    if station.password and not opts.password:
        opts = replace(opts, password=station.password)
    return KiwiReceiver(station.id, station.host, station.port, channels=station.channels, options=opts)


register("kiwisdr", _kiwi, status=kiwistatus.fetch_status)


def _openwebrx(station: Station, options: Any) -> OwrxReceiver:
    """``options``: :class:`OwrxOptions`, or None / another protocol's options (a session's
    common options are KiwiSDR's): then the defaults, NFM with the mode's own passband.  Another
    protocol's ``low_cut``/``high_cut`` are not taken: a KiwiSDR passband bounds IQ, not a
    demodulator, and its defaults cannot be told from a choice."""
    opts = options if isinstance(options, OwrxOptions) else OwrxOptions()
    return OwrxReceiver(station.id, station.host, station.port, options=opts)


register("openwebrx", _openwebrx, status=owrxstatus.fetch_status)

__all__ = ["KiwiOptions", "KiwiReceiver", "OwrxOptions", "OwrxReceiver", "ProtocolEntry", "make_receiver", "probe_status", "protocols", "register"]
