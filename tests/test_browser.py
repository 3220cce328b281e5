"""sdrlab.browser against a real headless chromium (Debian `chromium`; `make test` installs it as root).

No mocks: small HTML pages written to tmp_path, one browser for the module. Without chromium these
fail with find_chromium's install hint, as the PostgreSQL tests do without postgresql-15.
"""

from __future__ import annotations

import base64
import io
import os
import struct
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

from sdrlab.browser import (
    BrowserError,
    HeadlessBrowser,
    JavaScriptError,
    chromium_processes,
    find_chromium,
    is_external,
)
from sdrlab.errors import SdrlabError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    assert report["external_requests"] == browser.external_requests() == []
    assert browser.requests[0] == report_page.resolve().as_uri()


def test_external_requests_are_recorded_and_fail_offline(browser: HeadlessBrowser, online_page: Path) -> None:
    t0 = time.monotonic()
    browser.open(online_page)
    assert time.monotonic() - t0 < 10  # offline=True fails them at once, no DNS wait
    assert sorted(browser.external_requests()) == [
        "https://cdn.example.invalid/x.js", "https://example.invalid/x.png"]
    report = browser.page_report()
    assert (report["images"], report["images_decoded"]) == (1, 0)
    assert report["broken_images"] == ["https://example.invalid/x.png"]
    assert browser.evaluate("typeof window.x") == "undefined"  # the CDN script never ran


def test_requests_are_per_page(browser: HeadlessBrowser, online_page: Path, report_page: Path) -> None:
    browser.open(online_page)
    assert browser.external_requests()
    browser.open(report_page)
    assert browser.external_requests() == []


@pytest.mark.parametrize("url, external", [
    ("file:///tmp/r.html", False), ("data:image/png;base64,AAAA", False), ("about:blank", False),
    ("blob:file:///x", False), ("https://cdn.example/x.js", True), ("http://127.0.0.1:8888/x", True),
    ("wss://example/x", True),
])
def test_is_external(url: str, external: bool) -> None:
    assert is_external(url) is external


@pytest.mark.parametrize("full_page", [True, False])
def test_screenshot(browser: HeadlessBrowser, report_page: Path, tmp_path: Path, full_page: bool) -> None:
    browser.open(report_page, width=800, height=600)
    out = browser.screenshot(tmp_path / "shots" / "report.png", full_page=full_page)
    data = out.read_bytes()
    width, height = png_size(data)
    assert width == 800
    if full_page:
        assert height > 1500  # the whole page, past the 600 px viewport
    else:
        assert height == 600
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.05  # a rendered page, not a blank one
    # the viewport is restored after a full-page shot
    assert browser.evaluate("[innerWidth, innerHeight]") == [800, 600]


def test_evaluate(browser: HeadlessBrowser, report_page: Path) -> None:
    browser.open(report_page)
    assert browser.evaluate("1 + 2") == 3
    assert browser.evaluate("({a: [1, 'x', null], b: true})") == {"a": [1, "x", None], "b": True}
    assert browser.evaluate("Promise.resolve(5)") == 5
    assert browser.evaluate("undefined") is None
    assert browser.evaluate("document.querySelector('td').textContent") == "kiwi-a"


@pytest.mark.parametrize("js", ["throw new Error('boom')", "Promise.reject(new Error('boom'))",
                                "null.boom"])
def test_evaluate_raises_on_js_error(browser: HeadlessBrowser, js: str) -> None:
    with pytest.raises(JavaScriptError, match="JavaScript error") as info:
        browser.evaluate(js)
    assert info.value.description
    assert "boom" in info.value.description
    assert browser.evaluate("'still usable'") == "still usable"


def test_open_missing_file(browser: HeadlessBrowser, tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
        browser.open(tmp_path / "missing.html")


def test_close_leaves_no_process() -> None:
    b = HeadlessBrowser()
    pid, tmpdir = b.pid, b._tmpdir
    assert b.evaluate("navigator.userAgent").startswith("Mozilla/")
    assert pid in chromium_processes(pid, str(tmpdir))
    assert len(chromium_processes(pid, str(tmpdir))) > 1  # zygote, renderers... share its group
    b.close()
    assert not Path(f"/proc/{pid}").exists()  # reaped, not even a zombie
    assert chromium_processes(pid, str(tmpdir)) == []
    assert not tmpdir.exists()
    b.close()  # idempotent
    with pytest.raises(BrowserError, match="closed"):
        b.evaluate("1")


def test_close_on_exception_inside_with() -> None:
    with pytest.raises(ZeroDivisionError):
        with HeadlessBrowser() as b:
            pid, tmpdir = b.pid, b._tmpdir
            1 / 0
    assert chromium_processes(pid, str(tmpdir)) == [] and not tmpdir.exists()


def test_start_failure_is_clear_and_clean(tmp_path: Path) -> None:
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("sdrlab-chromium-*"))
    with pytest.raises(BrowserError, match=r"exited \(3\)(.|\n)*cannot open display") as info:
        HeadlessBrowser(executable=str(fake), start_timeout=10)
    assert isinstance(info.value, SdrlabError) and isinstance(info.value, RuntimeError)
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("sdrlab-chromium-*")) == before


def test_start_timeout_kills_the_process(tmp_path: Path) -> None:
    fake = tmp_path / "silent-chromium"
    fake.write_text("#!/bin/sh\necho starting >&2\nsleep 61.2345 &\nwait\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(BrowserError, match=r"DevToolsActivePort within 0.5 s(.|\n)*starting"):
        HeadlessBrowser(executable=str(fake), start_timeout=0.5)
    assert time.monotonic() - t0 < 5
    left = [p for p in Path("/proc").glob("[0-9]*") if any(m in _cmdline(p) for m in (b"silent-chromium", b"61.2345"))]
    assert not [p for p in left if not (p / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"]


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_find_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert os.access(find_chromium(), os.X_OK)
    monkeypatch.setenv("SDRLAB_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(BrowserError, match="SDRLAB_CHROMIUM"):
        find_chromium()
    monkeypatch.delenv("SDRLAB_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserError, match="apt-get install chromium"):
        find_chromium()


def test_offline_still_reaches_loopback(tmp_path: Path) -> None:
    """offline=True fails only non-loopback hosts: a page served on 127.0.0.1 loads its image."""
    import functools
    import http.server
    import threading

    (tmp_path / "fig.png").write_bytes(base64.b64decode(png_data_uri().split(",", 1)[1]))
    (tmp_path / "index.html").write_text('<title>served</title><img src="fig.png">'
                                         '<img src="https://example.invalid/y.png">')
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with HeadlessBrowser() as b:
            b.open(f"{base}/index.html")
            report = b.page_report()
    finally:
        server.shutdown()
        server.server_close()
    assert (report["title"], report["images"], report["images_decoded"]) == ("served", 2, 1)
    # loopback counts as external for a report: it must read from its own file alone (chromium also
    # asks an http origin for /favicon.ico by itself; that is recorded too)
    assert {f"{base}/fig.png", f"{base}/index.html", "https://example.invalid/y.png"} <= set(
        report["external_requests"])
