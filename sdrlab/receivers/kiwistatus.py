"""A KiwiSDR's ``/status`` page (key=value lines, KiwiSDR protocol reference section 9): what the
receiver says about itself, read into the protocol-neutral :class:`~sdrlab.capture.ReceiverStatus`
the stations table keeps (registered for ``kiwisdr`` in :mod:`sdrlab.receivers`)."""

from __future__ import annotations


from ..capture import ReceiverStatus
from ..stations import Station
from ._http import get_page

__all__ = ["fetch_status", "gps_timing", "parse_status"]

#: the most of a /status page read (a real one is about 1 kB)
MAX_STATUS_BYTES = 65536


def _int(fields: dict[str, str], key: str) -> int | None:
    v = fields.get(key, "")
    return int(v) if v.lstrip("-").isdigit() else None


def gps_timing(fields: dict[str, str]) -> str:
    """Whether the receiver's frames can carry GPS time: ``ok`` (fixes are coming in), ``no
    fixes`` (``gps_good`` claims a GPS but ``fixes`` and ``fixes_hour`` are 0, as servers posing
    as KiwiSDRs answer, e.g. UberSDR's emulation: no GPS timestamps, no TDoA), or ``unknown``."""
    fixes, hour = _int(fields, "fixes"), _int(fields, "fixes_hour")
    if fixes is None and hour is None:
        return "unknown"
    if not fixes and not hour:
        return "no fixes"
    return "ok"


def _bands(fields: dict[str, str]) -> tuple[float, float] | None:
    lo, sep, hi = fields.get("bands", "").partition("-")
    try:
        return (float(lo), float(hi)) if sep else None
    except ValueError:
        return None


def parse_status(text: str) -> ReceiverStatus:
    """The ``key=value`` lines of a KiwiSDR ``/status`` page."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    users_max = _int(fields, "users_max")
    return ReceiverStatus(
        protocol="kiwisdr", name=fields.get("name") or None, antenna=fields.get("antenna") or None,
        channels=users_max if users_max and users_max > 0 else None, bands_hz=_bands(fields),
        gps=gps_timing(fields), hw=fields.get("sdr_hw") or None, fields=fields,
    )


def fetch_status(station: Station, timeout: float = 5.0) -> tuple[ReceiverStatus | None, float, str | None]:
    """(status or None, latency ms, error) of ``http://host:port/status``."""
    url = f"http://{station.host}:{station.port}/status"
    text, latency, error = get_page(url, timeout, MAX_STATUS_BYTES)
    if text is None:
        return None, latency, error
    status = parse_status(text)
    if "status" not in status.fields and "sdr_hw" not in status.fields:
        return None, latency, "not a KiwiSDR /status page"
    return status, latency, None
