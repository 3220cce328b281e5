"""tests.support.browser (Playwright for Python driving Debian's `chromium`; `make test` installs it as
root) against a real headless chromium.

No mocks: small HTML pages written to tmp_path, one browser for the module. Without chromium these
fail with find_chromium's install hint, as the PostgreSQL tests do without postgresql-15.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from websockets.sync.server import ServerConnection, serve

from tests.support import browser as browser_module
from tests.support.browser import (
    BrowserError,
    HeadlessBrowser,
    JavaScriptError,
    browser_processes,
    find_chromium,
    is_external,
    is_local_or_loopback,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> Iterator[HeadlessBrowser]:
    with HeadlessBrowser() as b:
        yield b


def png_data_uri() -> str:
    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot(np.arange(10), np.arange(10) ** 2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature and the chunk CRC."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(kind + body)
    width, height = struct.unpack(">II", body[:8])
    return width, height


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("pages") / "report.html"
    page.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Session report</title></head>
<body style="margin:0;background:#fff">
<h1 style="background:#1f77b4;color:#fff">Spectrum</h1>
<img alt="spectrum" src="{png_data_uri()}">
<table border="1"><tr><th>station</th><th>snr_db</th></tr><tr><td>kiwi-a</td><td>31.0</td></tr></table>
<button onclick="document.getElementById('out').textContent = 'clicked ' + (++window.clicks)">Acquire</button>
<span id="out">never</span><script>window.clicks = 0;</script>
<div style="height:1500px;background:linear-gradient(#fff,#f80)">tall</div>
</body></html>""")
    return page


@pytest.fixture(scope="module")
def online_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("pages") / "online.html"
    page.write_text("""<!DOCTYPE html><html><head><title>needs the internet</title>
<script src="https://cdn.example.invalid/x.js"></script></head>
<body><img src="https://example.invalid/x.png"><p>text</p></body></html>""")
    return page


def test_self_contained_report(browser: HeadlessBrowser, report_page: Path) -> None:
    browser.open(report_page)
    report = browser.page_report()
    assert report["title"] == "Session report"
    assert (report["images"], report["images_decoded"], report["tables"]) == (1, 1, 1)
    assert report["broken_images"] == []
    assert report["text_length"] > len("Spectrum")
    assert report["width"] == 1280 and report["height"] > 1500  # the 1500 px div, in a 1280 px viewport
    assert report["external_requests"] == browser.external_requests() == browser.blocked_requests == []
    assert browser.requests == [report_page.resolve().as_uri()]  # data: images are not requests


def test_external_requests_are_recorded_and_blocked_offline(browser: HeadlessBrowser, online_page: Path) -> None:
    t0 = time.monotonic()
    browser.open(online_page)
    assert time.monotonic() - t0 < 5  # aborted at once, no DNS wait
    external = ["https://cdn.example.invalid/x.js", "https://example.invalid/x.png"]
    assert sorted(browser.external_requests()) == sorted(browser.blocked_requests) == external
    assert browser.requests[0] == online_page.resolve().as_uri()
    report = browser.page_report()
    assert (report["images"], report["images_decoded"]) == (1, 0)
    assert report["broken_images"] == ["https://example.invalid/x.png"]
    assert browser.evaluate("typeof window.x") == "undefined"  # the CDN script never ran


def test_requests_are_per_page(browser: HeadlessBrowser, online_page: Path, report_page: Path) -> None:
    browser.open(online_page)
    assert browser.external_requests() and browser.blocked_requests
    browser.open(report_page)
    assert browser.external_requests() == browser.blocked_requests == []


@pytest.mark.parametrize("url, external, allowed", [
    ("file:///tmp/r.html", False, True), ("data:image/png;base64,AAAA", False, True),
    ("about:blank", False, True), ("blob:file:///x", False, True),
    ("https://cdn.example/x.js", True, False), ("http://127.0.0.1:8888/x", True, True),
    ("http://localhost:8888/api/kernels", True, True), ("ws://[::1]:8888/x", True, True),
    ("wss://example/x", True, False), ("http://127.0.0.2/x", True, False),
])
def test_is_external_and_is_local_or_loopback(url: str, external: bool, allowed: bool) -> None:
    assert is_external(url) is external
    assert is_local_or_loopback(url) is allowed


@pytest.mark.parametrize("full_page", [True, False])
def test_screenshot(browser: HeadlessBrowser, report_page: Path, tmp_path: Path, full_page: bool) -> None:
    browser.open(report_page, width=800, height=600)
    out = browser.screenshot(tmp_path / "shots" / "report.png", full_page=full_page)
    data = out.read_bytes()
    width, height = png_size(data)
    assert width == 800
    page_height = browser.evaluate("document.documentElement.scrollHeight")
    if full_page:
        assert height == page_height > 1500  # the whole page, past the 600 px viewport
    else:
        assert height == 600
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.05  # a rendered page, not a blank one
    # the heading's blue band (#1f77b4, full width) is where the page says it is
    band = int(browser.evaluate("(r => r.top + r.height / 2)(document.querySelector('h1').getBoundingClientRect())"))
    assert np.allclose(pixels[band, width - 10, :3], [0x1F / 255, 0x77 / 255, 0xB4 / 255], atol=0.02)
    # the viewport is restored after a full-page shot
    assert browser.evaluate("[innerWidth, innerHeight]") == [800, 600]


def test_evaluate(browser: HeadlessBrowser, report_page: Path) -> None:
    browser.open(report_page)
    assert browser.evaluate("1 + 2") == 3
    assert browser.evaluate("({a: [1, 'x', null], b: true})") == {"a": [1, "x", None], "b": True}
    assert browser.evaluate("Promise.resolve(5)") == 5
    assert browser.evaluate("undefined") is None
    assert browser.evaluate("document.querySelector('td').textContent") == "kiwi-a"
    assert browser.evaluate("([a, b]) => a * b", [6, 7]) == 42


@pytest.mark.parametrize("js, description", [
    ("throw new Error('boom')", "Error: boom"),
    ("Promise.reject(new Error('boom'))", "Error: boom"),
    ("null.boom", "TypeError: Cannot read properties of null (reading 'boom')"),
])
def test_evaluate_raises_on_js_error(browser: HeadlessBrowser, js: str, description: str) -> None:
    with pytest.raises(JavaScriptError, match="JavaScript error") as info:
        browser.evaluate(js)
    assert info.value.description == description
    assert isinstance(info.value, BrowserError)
    assert browser.evaluate("'still usable'") == "still usable"


def test_the_playwright_page_clicks_as_a_user(browser: HeadlessBrowser, report_page: Path) -> None:
    browser.open(report_page)
    button = browser.page.get_by_role("button", name="Acquire")
    button.click()
    button.click()
    assert browser.page.locator("#out").text_content() == "clicked 2"


def test_open_missing_file(browser: HeadlessBrowser, tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match=r"cannot open file://.*missing\.html: net::ERR_FILE_NOT_FOUND"):
        browser.open(tmp_path / "missing.html")
    assert browser.page.url == "about:blank"  # left in a known state, at once usable
    assert browser.evaluate("1 + 1") == 2


def test_close_leaves_no_process() -> None:
    b = HeadlessBrowser()
    tmpdir = b._tmpdir
    assert b.evaluate("navigator.userAgent").startswith("Mozilla/")
    running = b.processes()
    assert len(running) > 2  # browser, zygotes, renderer...
    names = {Path(f"/proc/{pid}/exe").resolve().name for pid in running}
    assert names & {"chromium", "chrome"}
    b.close()
    assert b.processes() == [] and b.closed
    assert [pid for pid in running if _live(Path(f"/proc/{pid}"))] == []
    assert not tmpdir.exists()
    b.close()  # idempotent
    with pytest.raises(BrowserError, match="closed"):
        b.evaluate("1")


def test_close_on_exception_inside_with() -> None:
    with pytest.raises(ZeroDivisionError):
        with HeadlessBrowser() as b:
            token, pgids, tmpdir = b.token, set(b._pgids), b._tmpdir
            assert browser_processes(token, pgids)
            1 / 0
    assert browser_processes(token, pgids) == [] and not tmpdir.exists()


def test_browsers_in_one_thread_share_the_driver(browser: HeadlessBrowser, report_page: Path) -> None:
    users = browser_module._drivers[threading.get_ident()][1]
    with HeadlessBrowser() as second:
        assert browser_module._drivers[threading.get_ident()][1] == users + 1
        second.open(report_page)
        assert second.page_report()["title"] == "Session report"
    assert browser_module._drivers[threading.get_ident()][1] == users
    browser.open(report_page)  # the module's browser still works
    assert browser.evaluate("document.title") == "Session report"


_CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from tests.support.browser import HeadlessBrowser

    def children():
        out = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] not in (b"Z", b"X"):
                out.append(int(entry.name))
        return out

    a, b = HeadlessBrowser(), HeadlessBrowser()
    assert a.evaluate("1") == b.evaluate("1") == 1
    seen = {{"tokens": [a.token, b.token], "pgids": sorted(a._pgids | b._pgids), "children": children()}}
    if sys.argv[1] == "exit":
        print(json.dumps(seen), flush=True)
        os._exit(0)  # no close(): the driver must still take chromium down
    a.close()
    b.close()
    seen["after"] = children()
    print(json.dumps(seen), flush=True)
""")


@pytest.mark.parametrize("how", ["close", "exit"])
def test_no_process_outlives_the_browsers(tmp_path: Path, how: str) -> None:
    """Two browsers in a fresh interpreter: after close() neither chromium nor Playwright's driver is
    left; after an exit without close() the driver takes chromium down."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["children"]  # Playwright's driver ran as a child
    if how == "close":
        assert seen["after"] == []
    deadline = time.monotonic() + 15
    while (left := [p for t in seen["tokens"] for p in browser_processes(t, seen["pgids"])]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def test_start_failure_is_clear_and_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    # the browser's temporary profile in a directory of this test's own (tempfile.mkdtemp's default),
    # so no other browser of a parallel test run comes or goes there
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    before = set(own_tmp.glob("sdrlab-chromium-*"))
    drivers = dict(browser_module._drivers)
    with pytest.raises(BrowserError, match=r"cannot start .*fake-chromium(.|\n)*cannot open display") as info:
        HeadlessBrowser(executable=str(fake), start_timeout=10)
    assert "exitCode=3" in str(info.value)
    assert set(own_tmp.glob("sdrlab-chromium-*")) == before == set()
    assert browser_module._drivers == drivers  # the driver reference is given back


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def _live(proc_dir: Path) -> bool:
    try:
        return (proc_dir / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_start_timeout_kills_the_process(tmp_path: Path) -> None:
    fake = tmp_path / "silent-chromium"
    fake.write_text("#!/bin/sh\necho starting >&2\nsleep 61.2345 &\nwait\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(BrowserError, match=r"Timeout 500ms exceeded(.|\n)*starting"):
        HeadlessBrowser(executable=str(fake), start_timeout=0.5)
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while (left := [p for p in Path("/proc").glob("[0-9]*")
                    if any(m in _cmdline(p) for m in (b"silent-chromium", b"61.2345")) and _live(p)]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


def test_find_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert os.access(find_chromium(), os.X_OK)
    monkeypatch.setenv("SDRLAB_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(BrowserError, match="SDRLAB_CHROMIUM"):
        find_chromium()
    monkeypatch.delenv("SDRLAB_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserError, match="apt-get install chromium"):
        find_chromium()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_offline_still_reaches_loopback(browser: HeadlessBrowser, tmp_path: Path) -> None:
    """Offline blocks only non-loopback hosts: a page served on 127.0.0.1 loads its images from
    127.0.0.1 and localhost; the one from the internet is blocked."""
    (tmp_path / "fig.png").write_bytes(base64.b64decode(png_data_uri().split(",", 1)[1]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    port = server.server_address[1]
    (tmp_path / "index.html").write_text(f'<title>served</title><img src="fig.png">'
                                         f'<img src="http://localhost:{port}/fig.png?via=localhost">'
                                         '<img src="https://example.invalid/y.png">')
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        browser.open(f"{base}/index.html")
        report = browser.page_report()
    finally:
        server.shutdown()
        server.server_close()
    assert (report["title"], report["images"], report["images_decoded"]) == ("served", 3, 2)
    assert browser.blocked_requests == ["https://example.invalid/y.png"]
    # loopback counts as external for a report: it must read from its own file alone (chromium also
    # asks an http origin for /favicon.ico by itself; that is recorded too)
    assert {f"{base}/fig.png", f"{base}/index.html", f"http://localhost:{port}/fig.png?via=localhost",
            "https://example.invalid/y.png"} <= set(report["external_requests"])


_WS_JS = """
url => new Promise(resolve => {
  const ws = new WebSocket(url), got = [];
  ws.onopen = () => ws.send('ping');
  ws.onmessage = e => { got.push(e.data); ws.close(1000); };
  ws.onclose = e => resolve({code: e.code, got});
  setTimeout(() => resolve({code: -1, got}), 5000);
})
"""


def test_websockets_reach_loopback_only(browser: HeadlessBrowser, report_page: Path) -> None:
    """What JupyterLab's kernel channels need: a WebSocket on loopback works, one elsewhere is closed
    (policy violation, 1008) without leaving the machine, and recorded."""
    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send("echo " + (message if isinstance(message, str) else message.decode()))

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        browser.open(report_page)
        local = browser.evaluate(_WS_JS, f"ws://127.0.0.1:{port}/api/kernels/x/channels")
        remote = browser.evaluate(_WS_JS, "wss://example.invalid/socket")
        server.shutdown()
    assert local == {"code": 1000, "got": ["echo ping"]}
    assert remote["code"] == 1008 and remote["got"] == []
    assert browser.blocked_requests == ["wss://example.invalid/socket"]
