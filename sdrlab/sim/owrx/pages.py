"""The HTTP pages of a simulated OpenWebRX receiver (protocol page section 6): ``/status.json``,
``/metrics.json``, ``/metrics`` (Prometheus text) and ``/`` whose ``<title>`` names the fork."""

from __future__ import annotations

import json
from typing import Iterable

from ...receivers.owrxstatus import PLUS_TITLE, UPSTREAM_TITLE
from .config import OwrxConfig

__all__ = ["index_html", "metrics_json", "metrics_text", "status_json"]


def status_json(cfg: OwrxConfig, failed_sdrs: Iterable[str] = ()) -> str:
    """``/status.json``: receiver, ``max_clients``, version, the enabled non-failed SDRs with their
    profiles' centre and sample rate; no user count, no profile ids, no gain (U ``status.py``)."""
    failed = set(failed_sdrs)
    sdrs = []
    for sdr_id in cfg.sdr_ids:
        if sdr_id in failed:
            continue
        profs = [p for p in cfg.profiles if p.sdr_id == sdr_id]
        sdrs.append({"name": profs[0].sdr_name, "type": profs[0].sdr_type,
                     "profiles": [{"name": p.name, "center_freq": p.center_freq, "sample_rate": p.samp_rate}
                                  for p in profs]})
    doc = {"receiver": {"name": cfg.name, "admin": cfg.admin, "gps": {"lat": cfg.lat, "lon": cfg.lon},
                        "asl": cfg.asl, "location": cfg.location},
           "max_clients": cfg.max_clients, "version": cfg.version, "sdrs": sdrs}
    return json.dumps(doc)


def metrics_json(users: int) -> str:
    return json.dumps({"openwebrx": {"users": users}})


def metrics_text(users: int) -> str:
    return f"# TYPE openwebrx_users gauge\nopenwebrx_users {users}\n"


def index_html(cfg: OwrxConfig) -> str:
    title = PLUS_TITLE if cfg.plus else UPSTREAM_TITLE
    return (
        "<!DOCTYPE HTML>\n<html>\n<head>\n"
        f"    <title>{title}</title>\n"
        '    <meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
        '    <script src="compiled/receiver.js"></script>\n'
        "</head>\n<body>\n"
        '    <div id="webpage">\n        <div id="openwebrx-panel-receiver" class="openwebrx-panel"></div>\n'
        "    </div>\n</body>\n</html>\n"
    )
