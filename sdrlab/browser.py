"""A real headless browser for testing HTML reports and taking README screenshots.

Debian's ``chromium`` (``apt-get install chromium``; ``make test`` installs it as root) driven through
the Chrome DevTools Protocol (CDP) over a WebSocket on loopback, with a small synchronous client: no
browser download, no node, no network beyond 127.0.0.1.

>>> with HeadlessBrowser() as browser:                        # doctest: +SKIP
...     browser.open("report.html")
...     report = browser.page_report()   # images / decoded images / tables / title / text length
...     assert report["images"] == report["images_decoded"] and not browser.external_requests()
...     browser.screenshot("docs/report.png")

By default (``offline=True``) a request to any host but loopback is failed inside the browser, so a
report that reaches for a CDN shows what it looks like offline, at once rather than after DNS
timeouts; such requests are still recorded in :attr:`HeadlessBrowser.requests`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from sdrlab.errors import SdrlabError

log = logging.getLogger(__name__)

#: executables tried, in order, on PATH when ``$SDRLAB_CHROMIUM`` is not set
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
ENV_CHROMIUM = "SDRLAB_CHROMIUM"

#: schemes that never leave the machine; every other request counts as external
LOCAL_SCHEMES = frozenset({"file", "data", "about", "blob"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--mute-audio",
)
#: Chromium refuses to render a texture taller than this; a full-page screenshot is clipped to it
MAX_SCREENSHOT_HEIGHT = 16384
_DATA_URL_KEEP = 64  # data: URLs are recorded cut to this many characters (they can be megabytes)


class BrowserError(SdrlabError, RuntimeError):
    """The headless browser is missing, did not start, timed out or failed a command."""


class JavaScriptError(BrowserError):
    """A script run by :meth:`HeadlessBrowser.evaluate` threw; ``description`` is the JS error text."""

    def __init__(self, message: str, *, description: str = "") -> None:
        self.description = description
        super().__init__(message)


def find_chromium() -> str:
    """The chromium executable: ``$SDRLAB_CHROMIUM``, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get(ENV_CHROMIUM)
    if env:
        found = shutil.which(env)
        if found is None:
            raise BrowserError(f"{ENV_CHROMIUM}={env} is not an executable; point it at chromium or chrome")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserError(
        f"no headless browser found (none of {', '.join(CHROMIUM_NAMES)} is on PATH). Install Debian's "
        "chromium with `apt-get install chromium` (as root; `make test` does this), or set "
        f"{ENV_CHROMIUM} to a chromium or chrome executable."
    )


def _as_url(url_or_path: str | os.PathLike[str]) -> str:
    if isinstance(url_or_path, str) and (
        "://" in url_or_path or url_or_path.split(":", 1)[0] in ("data", "about", "blob")
    ):
        return url_or_path
    return Path(url_or_path).resolve().as_uri()


def is_external(url: str) -> bool:
    """True for a URL that would leave the page's own file (any scheme but file:, data:, about:, blob:)."""
    return urllib.parse.urlsplit(url).scheme.lower() not in LOCAL_SCHEMES


def _is_local_or_loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in LOCAL_SCHEMES or (parts.hostname or "") in LOOPBACK_HOSTS


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def chromium_processes(pgid: int, marker: str) -> list[int]:
    """Live (not zombie) processes of one browser: its process group, plus any whose command line
    holds ``marker`` (the crashpad handler detaches into a session of its own). Linux /proc only."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if stat[0] in (b"Z", b"X"):
                continue
            if int(stat[2]) == pgid or marker.encode() in (entry / "cmdline").read_bytes():
                found.append(pid)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def _shutdown(proc: subprocess.Popen[bytes], tmpdir: Path, timeout: float = 5.0) -> None:
    """Stop chromium and everything it spawned, wait until they are dead, then remove the temp dir."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.wait(10.0)
    # zygote, renderer, utility and crashpad processes that outlive the browser process
    deadline = time.monotonic() + 10.0
    while (left := chromium_processes(proc.pid, str(tmpdir))) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
    if left:
        log.warning("chromium processes %s survived SIGKILL", left)
    for _ in range(3):  # a child may still be writing in the profile while it dies
        shutil.rmtree(tmpdir, ignore_errors=True)
        if not tmpdir.exists():
            break
        time.sleep(0.1)


class CDPSession:
    """A synchronous CDP client on one WebSocket: commands wait for their id, events are dispatched."""

    def __init__(self, ws_url: str, on_event: Callable[[dict[str, Any]], None], timeout: float) -> None:
        # entered as a context manager (websockets >= 17.1 deprecates a bare connect());
        # proxy=None: never route loopback through $http_proxy; max_size=None: screenshots are large;
        # max_queue=None: the reader thread always reads (events wait in memory until the next call),
        # so a close never stalls behind flow control
        self._stack = contextlib.ExitStack()
        self._ws: ClientConnection = self._stack.enter_context(connect(
            ws_url, proxy=None, max_size=None, compression=None, open_timeout=timeout,
            ping_interval=None, close_timeout=1.0, max_queue=None,
        ))
        self._on_event = on_event
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._stack.close()

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a command without waiting for its answer; return its id."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params or {}}))
        return self._next_id

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        """One message (events are dispatched and queued), or None once ``deadline`` has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            raw = self._ws.recv(timeout=remaining)
        except TimeoutError:
            return None
        except WebSocketException as exc:
            raise BrowserError(f"lost the DevTools connection to chromium: {exc}") from exc
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            self._on_event(message)
            self._events.append(message)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and return its ``result``; raise :class:`BrowserError` on an error or timeout."""
        call_id = self.send(method, params)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message is None:
                raise BrowserError(f"chromium did not answer {method} within {timeout} s")
            if message.get("id") == call_id:
                if "error" in message:
                    error = message["error"]
                    raise BrowserError(f"{method} failed: {error.get('message')} {error.get('data', '')}".rstrip())
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_event(self, method: str, *, timeout: float) -> dict[str, Any]:
        """The first queued or incoming event named ``method`` (events before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    del self._events[: i + 1]
                    return event
            self._events.clear()
            if self._receive(deadline) is None:
                raise BrowserError(f"no {method} from chromium within {timeout} s")

    def pump(self, seconds: float) -> None:
        """Process incoming events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while self._receive(deadline) is not None:
            pass

    def clear_events(self) -> None:
        self._events.clear()


_PAGE_REPORT_JS = r"""
(() => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  const cut = s => s.length > 120 ? s.slice(0, 120) + '...' : s;
  return {
    url: location.href,
    title: document.title,
    images: imgs.length,
    images_decoded: imgs.length - broken.length,
    broken_images: broken.map(i => cut(i.currentSrc || i.src)),
    svgs: document.querySelectorAll('svg').length,
    tables: document.querySelectorAll('table').length,
    text_length: (document.body ? document.body.innerText : '').length,
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  };
})()
"""


class HeadlessBrowser:
    """Headless chromium on a fresh temporary profile, driven over CDP; a context manager.

    Started by the constructor; :meth:`close` (or leaving the ``with`` block, or garbage collection,
    or interpreter exit) kills chromium with every process it spawned and removes the profile.

    ``offline=True`` fails every request to a host other than loopback inside the browser (it is still
    recorded in :attr:`requests`); ``offline=False`` lets chromium try the network.
    """

    def __init__(
        self, *, executable: str | None = None, offline: bool = True, start_timeout: float = 30.0
    ) -> None:
        self.executable = executable or find_chromium()
        self.offline = offline
        self._requests: list[str] = []
        self._width, self._height = 1280, 900
        self._tmpdir = Path(tempfile.mkdtemp(prefix="sdrlab-chromium-"))
        self._profile = self._tmpdir / "profile"
        self._log = self._tmpdir / "chromium.log"
        self._cdp: CDPSession | None = None
        argv = [
            self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank",
        ]
        # crash reports, caches and config under the temp dir, not in ~/.config/chromium
        env = dict(os.environ, XDG_CONFIG_HOME=str(self._tmpdir / "config"),
                   XDG_CACHE_HOME=str(self._tmpdir / "cache"))
        with open(self._log, "wb") as logfile:
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # its own process group: close() kills the whole tree
                )
            except OSError as exc:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                raise BrowserError(f"cannot run {self.executable}: {exc}") from exc
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._tmpdir)
        try:
            port = self._wait_for_port(start_timeout)
            ws_url = self._page_websocket(port, start_timeout)
            self._cdp = CDPSession(ws_url, self._on_event, start_timeout)
            for domain in ("Page", "Network"):
                self._cdp.call(f"{domain}.enable")
            if offline:
                self._cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
        except BrowserError:
            self.close()
            raise
        except Exception as exc:  # urllib / websockets / OSError on the DevTools handshake
            tail = _tail(self._log)
            self.close()
            raise BrowserError(f"cannot attach to chromium's DevTools: {exc!r}; its output ends:\n{tail}") from exc
        except BaseException:  # KeyboardInterrupt...: still never leave chromium behind
            self.close()
            raise
        log.debug("chromium %s started (pid %d, DevTools port %d)", self.executable, self._proc.pid, port)

    # -- start-up -------------------------------------------------------------------------------------
    def _wait_for_port(self, timeout: float) -> int:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(
                    f"chromium exited ({self._proc.returncode}) before it opened DevTools:\n{_tail(self._log)}"
                )
            try:
                first_line = port_file.read_text().splitlines()[0]
                return int(first_line)
            except (OSError, IndexError, ValueError):  # not there yet, or half written
                time.sleep(0.05)
        raise BrowserError(
            f"chromium did not write {port_file.name} within {timeout} s; its output ends:\n{_tail(self._log)}"
        )

    def _page_websocket(self, port: int, timeout: float) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
        base = f"http://127.0.0.1:{port}"
        targets: list[dict[str, Any]] = json.loads(opener.open(f"{base}/json/list", timeout=timeout).read())
        pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        request = urllib.request.Request(f"{base}/json/new?about:blank", method="PUT")
        target: dict[str, Any] = json.loads(opener.open(request, timeout=timeout).read())
        return str(target["webSocketDebuggerUrl"])

    # -- events ---------------------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = str(params["request"]["url"])
            if url.startswith("data:") and len(url) > _DATA_URL_KEEP:
                url = url[:_DATA_URL_KEEP] + "..."
            self._requests.append(url)
        elif method == "Fetch.requestPaused" and self._cdp is not None:
            url = str(params["request"]["url"])
            if _is_local_or_loopback(url):
                self._cdp.send("Fetch.continueRequest", {"requestId": params["requestId"]})
            else:
                log.debug("offline: failing %s", url)
                self._cdp.send("Fetch.failRequest",
                               {"requestId": params["requestId"], "errorReason": "InternetDisconnected"})

    @property
    def cdp(self) -> CDPSession:
        """The raw DevTools session, for commands this class has no method for (``cdp.call(...)``)."""
        if self._cdp is None or not self._finalizer.alive:
            raise BrowserError("the browser is closed")
        return self._cdp

    @property
    def pid(self) -> int:
        """Process id of the chromium browser process (its children share its process group)."""
        return self._proc.pid

    # -- the page -------------------------------------------------------------------------------------
    def open(
        self, url_or_path: str | os.PathLike[str], *, width: int = 1280, height: int = 900,
        timeout: float = 30.0, settle: float = 0.25,
    ) -> None:
        """Load a URL or a local file (made a file:// URL) in a ``width`` x ``height`` viewport.

        Returns after the load event plus ``settle`` seconds; :attr:`requests` then holds this page's
        requests only. Raises :class:`BrowserError` if the navigation fails or times out.
        """
        url = _as_url(url_or_path)
        cdp = self.cdp
        self._width, self._height = width, height
        self._set_viewport(width, height)
        self._requests.clear()
        cdp.clear_events()
        result = cdp.call("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        cdp.wait_event("Page.loadEventFired", timeout=timeout)
        cdp.pump(settle)

    def _set_viewport(self, width: int, height: int) -> None:
        self.cdp.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, js: str, *, timeout: float = 30.0) -> Any:
        """Evaluate a JS expression in the page; return its value (JSON-able; promises are awaited).

        Raises :class:`JavaScriptError` if it throws or rejects.
        """
        result = self.cdp.call(
            "Runtime.evaluate",
            {"expression": js, "returnByValue": True, "awaitPromise": True, "userGesture": True},
            timeout=timeout,
        )
        details = result.get("exceptionDetails")
        if details:
            exception = details.get("exception", {})
            description = str(exception.get("description") or exception.get("value") or details.get("text", ""))
            raise JavaScriptError(f"JavaScript error: {description}", description=description)
        return result.get("result", {}).get("value")

    def screenshot(self, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
        """Write a PNG of the page, ``width`` pixels wide; the whole page or just the viewport."""
        cdp = self.cdp
        params: dict[str, Any] = {"format": "png", "fromSurface": True}
        if full_page:
            metrics = cdp.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = min(max(math.ceil(size["height"]), self._height), MAX_SCREENSHOT_HEIGHT)
            self._set_viewport(self._width, height)
            params["captureBeyondViewport"] = False
        try:
            data = cdp.call("Page.captureScreenshot", params)["data"]
        finally:
            if full_page:
                self._set_viewport(self._width, self._height)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    @property
    def requests(self) -> list[str]:
        """URLs of every request the current page made (the page itself first; data: URLs cut short)."""
        return list(self._requests)

    def external_requests(self) -> list[str]:
        """Requests that are not file:, data:, about: or blob: (a self-contained report makes none)."""
        return [u for u in self._requests if is_external(u)]

    def page_report(self) -> dict[str, Any]:
        """What the page shows: url, title, images and images_decoded (complete with a natural width),
        broken_images, svgs, tables, text_length, width/height (px), and external_requests."""
        report: dict[str, Any] = self.evaluate(_PAGE_REPORT_JS)
        report["external_requests"] = self.external_requests()
        return report

    # -- life cycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill chromium and all its processes and remove the temporary profile (idempotent)."""
        # kill first: a polite WebSocket close can wait close_timeout for a browser busy sending events
        self._finalizer()
        if self._cdp is not None:
            try:
                self._cdp.close()
            except Exception:  # the connection died with the browser; nothing is left to release
                pass

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
