"""OpenWebRX /status.json (protocol page section 6) into ReceiverStatus, and fork detection
(section 1.3), over a real loopback HTTP server serving the page's documented shape."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from sdrlab.receivers.owrxstatus import PLUS_TITLE, UPSTREAM_TITLE, fetch_status, fork_of, parse_status_json
from sdrlab.stations import Station

PAGE = {
    "receiver": {"name": "Aquila di Giaveno", "admin": "op@example.org", "gps": {"lat": 45.02, "lon": 7.29},
                 "asl": 600, "location": "Giaveno (TO)"},
    "max_clients": 20, "version": "v1.2.121",
    "sdrs": [{"name": "RTL-SDR", "type": "RtlSdrSource",
              "profiles": [{"name": "2m", "center_freq": 145000000, "sample_rate": 2400000},
                           {"name": "70cm", "center_freq": 433000000, "sample_rate": 2400000}]}],
}


def test_status_json_fields() -> None:
    st = parse_status_json(json.dumps(PAGE))
    assert (st.protocol, st.name, st.channels, st.gps, st.hw) == (
        "openwebrx", "Aquila di Giaveno", 20, "none", "OpenWebRX+ v1.2.121")
    assert st.bands_hz == (143_800_000.0, 434_200_000.0)
    assert st.fields["lat"] == "45.02" and st.fields["profiles"] == "2" and st.fields["asl"] == "600"
    up = parse_status_json(json.dumps({**PAGE, "version": "v1.2.2", "sdrs": []}))
    assert up.hw == "OpenWebRX v1.2.2" and up.bands_hz is None
    with pytest.raises(ValueError):
        parse_status_json('{"status": "active"}')


@pytest.mark.parametrize("version, title, fork", [
    ("v1.2.121", None, "openwebrx+"), ("v1.2.6", None, "openwebrx+"), ("v1.2.3", None, "openwebrx+"),
    ("v1.2.2", None, "unknown"), ("v1.2.2", PLUS_TITLE, "openwebrx+"), ("v1.2.2", UPSTREAM_TITLE, "openwebrx"),
    ("v1.3.0-dev", None, "openwebrx"), ("v1.1.0", None, "openwebrx"), ("", None, "unknown"),
])
def test_fork_of(version: str, title: str | None, fork: str) -> None:
    assert fork_of(version, title) == fork


@pytest.fixture
def server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(PAGE).encode() if self.path == "/status.json" else b"nope"
            self.send_response(200 if self.path == "/status.json" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_over_loopback(server: int) -> None:
    st = Station(id="owrx", name="x", host="127.0.0.1", port=server, latitude=0.0, longitude=0.0, protocol="openwebrx")
    status, latency, error = fetch_status(st)
    assert error is None and status is not None and status.name == "Aquila di Giaveno" and latency > 0
    gone, _, why = fetch_status(replace(st, port=9), timeout=1.0)
    assert gone is None and why
