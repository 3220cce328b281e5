"""Receiver protocols, by name.  One module per protocol; :func:`make_receiver` picks by the
station's ``protocol``."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from ..stations import Station
from .kiwisdr import KiwiOptions, KiwiReceiver

_REGISTRY: dict[str, Callable[[Station, Any], Any]] = {}


def register(name: str, factory: Callable[[Station, Any], Any]) -> None:
    _REGISTRY[name] = factory


def make_receiver(station: Station, options: Any = None) -> KiwiReceiver:
    try:
        factory = _REGISTRY[station.protocol]
    except KeyError:
        raise ConfigError(f"station {station.id}: no receiver for protocol {station.protocol!r}") from None
    rx: KiwiReceiver = factory(station, options)
    return rx


def _kiwi(station: Station, options: KiwiOptions | None) -> KiwiReceiver:
    opts = options or KiwiOptions()
    if station.password and not opts.password:
        from dataclasses import replace

        opts = replace(opts, password=station.password)
    return KiwiReceiver(station.id, station.host, station.port, channels=station.channels, options=opts)


register("kiwisdr", _kiwi)

__all__ = ["KiwiOptions", "KiwiReceiver", "make_receiver", "register"]
