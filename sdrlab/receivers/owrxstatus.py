"""An OpenWebRX receiver's ``/status.json`` (``openwebrx-protocol.md`` section 6) read into the
protocol-neutral :class:`~sdrlab.capture.ReceiverStatus`, and which fork it runs (section 1.3).

To be registered for ``openwebrx`` in :mod:`sdrlab.receivers` together with the client.  The page
has no user count, no profile ids and no gain; OpenWebRX has no GPS time at all (``gps = none``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..capture import ReceiverStatus
from ..stations import Station
from ._http import get_page

__all__ = ["PLUS_TITLE", "UPSTREAM_TITLE", "fetch_status", "fork_of", "parse_status_json"]

UPSTREAM_TITLE = "OpenWebRX | Open Source SDR Web App for Everyone!"
PLUS_TITLE = "OpenWebRX+ | Open Source SDR Web App for Everyone!"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
#: the most of a status page read
MAX_STATUS_BYTES = 1 << 20


def fork_of(version: str, title: str | None = None) -> str:
    """``openwebrx+`` or ``openwebrx`` from the version string (``v1.2.N`` with N >= 3 is Plus:
    upstream never released 1.2.3+) or, when the version cannot tell, the page title;
    ``unknown`` when neither can."""
    m = _VERSION.match(version.strip())
    if m and (int(m.group(1)), int(m.group(2))) == (1, 2) and int(m.group(3)) >= 3:
        return "openwebrx+"
    if title is not None:
        t = title.strip()
        if t == PLUS_TITLE:
            return "openwebrx+"
        if t == UPSTREAM_TITLE:
            return "openwebrx"
    if m and (int(m.group(1)), int(m.group(2))) != (1, 2):
        return "openwebrx"  # 1.3.0-dev, 1.1.x, 1.0.x: upstream only
    return "unknown"


def parse_status_json(text: str) -> ReceiverStatus:
    """The stations-table view of ``/status.json``; ``fields`` keeps the scalar facts as text
    (``version``, ``max_clients``, ``location``, ``asl``, ``lat``, ``lon``, ``profiles``: count)."""
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or "receiver" not in doc:
        raise ValueError("not an OpenWebRX /status.json (no 'receiver')")
    rx = doc.get("receiver") or {}
    gps = rx.get("gps") or {}
    edges = []
    for sdr in doc.get("sdrs") or []:
        for prof in sdr.get("profiles") or []:
            cf, sr = prof.get("center_freq"), prof.get("sample_rate")
            if isinstance(cf, (int, float)) and isinstance(sr, (int, float)) and sr > 0:
                edges.append((float(cf) - sr / 2, float(cf) + sr / 2))
    version = str(doc.get("version", ""))
    max_clients = doc.get("max_clients")
    fields = {k: str(v) for k, v in (("version", version), ("max_clients", max_clients),
                                      ("location", rx.get("location")), ("asl", rx.get("asl")),
                                      ("lat", gps.get("lat")), ("lon", gps.get("lon")),
                                      ("profiles", len(edges))) if v is not None}
    fork = fork_of(version)
    lat, lon, asl = gps.get("lat"), gps.get("lon"), rx.get("asl")
    where = None
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)) and not isinstance(lat, bool) \
            and not isinstance(lon, bool) and abs(lat) <= 90 and abs(lon) <= 180:
        where = (float(lat), float(lon))
    return ReceiverStatus(
        position=where, altitude=float(asl) if isinstance(asl, (int, float)) and not isinstance(asl, bool) else None,
        protocol="openwebrx", name=rx.get("name") or None, antenna=None,
        channels=int(max_clients) if isinstance(max_clients, int) and max_clients > 0 else None,
        bands_hz=(min(e[0] for e in edges), max(e[1] for e in edges)) if edges else None,
        gps="none", hw=f"{'OpenWebRX+' if fork == 'openwebrx+' else 'OpenWebRX'} {version}".strip(), fields=fields,
    )


def fetch_status(station: Station, timeout: float = 5.0) -> tuple[ReceiverStatus | None, float, str | None]:
    """(status or None, latency ms, error) of ``http://host:port/status.json``."""
    url = f"http://{station.host}:{station.port}/status.json"
    text, latency, error = get_page(url, timeout, MAX_STATUS_BYTES)
    if text is None:
        return None, latency, error
    try:
        return parse_status_json(text), latency, None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return None, latency, f"not an OpenWebRX /status.json: {exc}"[:300]
