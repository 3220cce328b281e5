"""Headless Chromium for sdrlab's tests and README screenshots, driven by Playwright for Python.

The browser is Debian's ``chromium`` (``apt-get install chromium``; ``make test`` installs it as root)
or ``$SDRLAB_CHROMIUM``, started through Playwright's ``executable_path``: Playwright's own browser
download (``playwright install``) is never used and cannot reach the internet here anyway.

>>> with HeadlessBrowser() as browser:                        # doctest: +SKIP
...     browser.open("report.html")
...     report = browser.page_report()   # images / decoded images / tables / title / text length
...     assert report["images"] == report["images_decoded"] and not browser.external_requests()
...     browser.screenshot("docs/report.png")
...     browser.page.get_by_role("button", name="Acquire").click()   # the Playwright Page itself

Offline by default: a request to any host but loopback is aborted inside the browser (as if the
internet were gone: at once, no DNS wait), WebSockets to such hosts are closed, and host names other
than ``localhost`` do not resolve.  Every request is still recorded (:attr:`HeadlessBrowser.requests`;
the aborted ones also in :attr:`HeadlessBrowser.blocked_requests`), so a test can fail on any.

Playwright's sync API allows one driver per thread: the browsers open in a thread share it, and it
stops when the last of them closes.  A browser must be used and closed in the thread that opened it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Request, Route, WebSocketRoute
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

log = logging.getLogger(__name__)

#: executables tried, in order, on PATH when ``$SDRLAB_CHROMIUM`` is not set
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
ENV_CHROMIUM = "SDRLAB_CHROMIUM"
#: set in the browser's environment, so its processes can be found (and reaped) by this value
ENV_TOKEN = "SDRLAB_BROWSER_TOKEN"

#: schemes that never leave the machine; every other request counts as external
LOCAL_SCHEMES = frozenset({"file", "data", "about", "blob", "chrome-error"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: on top of the switches Playwright passes (no sandbox, no background networking, no component
#: updates, no crash reporter, ...); headless is Playwright's own option
CHROMIUM_ARGS = ("--disable-gpu", "--disable-quic", "--no-proxy-server", "--hide-scrollbars")
#: offline: nothing but loopback resolves, whatever a page or chromium itself asks for
OFFLINE_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",)

_PAGE_REPORT_JS = r"""
() => {
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
}
"""


class BrowserError(RuntimeError):
    """The headless browser is missing, did not start, could not open a page, or is closed."""


class JavaScriptError(BrowserError):
    """A script run by :meth:`HeadlessBrowser.evaluate` threw or rejected; ``description`` is the JS
    error as JavaScript prints it (``TypeError: ...``), without the stack."""

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
    """True for a URL that leaves the page's own file (any scheme but file:, data:, about:, blob:);
    loopback counts: a self-contained report reads from its own file alone."""
    return urllib.parse.urlsplit(url).scheme.lower() not in LOCAL_SCHEMES


def is_local_or_loopback(url: str) -> bool:
    """True for a URL an offline browser may load: a local scheme, or a loopback host."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in LOCAL_SCHEMES or (parts.hostname or "") in LOOPBACK_HOSTS


def _stat(proc_dir: Path) -> tuple[str, int]:
    """(state, process group) of one /proc entry."""
    fields = (proc_dir / "stat").read_bytes().rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[2])


def browser_processes(token: str, pgids: Collection[int] = (), *, env_name: str = ENV_TOKEN) -> list[int]:
    """Live (not zombie) processes of one browser, from /proc (Linux): those whose environment holds
    ``SDRLAB_BROWSER_TOKEN=token`` (the browser and its crashpad handlers, which detach into sessions
    of their own) and any in the process groups ``pgids`` (zygotes, renderers, GPU and utility
    processes write their command line over their environment, but stay in the browser's group).
    ``env_name``: another variable that marks a tree of processes (tests.support.lab's JupyterLab)."""
    marker = f"{env_name}={token}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, pgid = _stat(entry)
            if state in ("Z", "X"):
                continue
            if pgid in pgids or marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return found


# ---- one Playwright driver per thread ---------------------------------------------------------------
_drivers: dict[int, tuple[Playwright, int]] = {}  # thread id -> (driver, browsers using it)
_drivers_lock = threading.Lock()


def _acquire_driver() -> Playwright:
    tid = threading.get_ident()
    with _drivers_lock:
        if tid in _drivers:
            driver, users = _drivers[tid]
        else:
            try:
                driver, users = sync_playwright().start(), 0
            except PlaywrightError as exc:  # e.g. called inside a running asyncio loop
                raise BrowserError(f"cannot start Playwright: {exc.message}") from exc
        _drivers[tid] = (driver, users + 1)
        return driver


def _release_driver() -> None:
    tid = threading.get_ident()
    with _drivers_lock:
        driver, users = _drivers.pop(tid)
        if users > 1:
            _drivers[tid] = (driver, users - 1)
            return
    driver.stop()


def _first_line(exc: PlaywrightError) -> str:
    """The error's first line without Playwright's ``Page.goto: `` prefix."""
    lines = exc.message.strip().splitlines()
    return re.sub(r"^\w+\.\w+: ", "", lines[0]) if lines else type(exc).__name__


class HeadlessBrowser:
    """Headless chromium in one fresh browser context with one page; a context manager.

    Started by the constructor (``start_timeout`` seconds at most); :meth:`close` (or leaving the
    ``with`` block) closes it, waits until every process it started has ended (killing stragglers)
    and removes its temporary directory.  ``offline=True`` blocks every host but loopback (see the
    module's docstring); ``offline=False`` lets chromium try the network.  :attr:`page` and
    :attr:`context` are the Playwright objects, for clicks, locators and waits.
    """

    def __init__(
        self, *, executable: str | None = None, offline: bool = True, width: int = 1280, height: int = 900,
        start_timeout: float = 30.0,
    ) -> None:
        self.executable = executable or find_chromium()
        self.offline = offline
        self.token = uuid.uuid4().hex
        self._requests: list[str] = []
        self._blocked: list[str] = []
        self._pgids: set[int] = set()
        self._thread = threading.get_ident()
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self._closed = False
        self._tmpdir = Path(tempfile.mkdtemp(prefix="sdrlab-chromium-"))
        # crash reports, caches and config under the temp dir, not in ~/.config/chromium
        env: dict[str, str | float | bool] = {
            **os.environ, ENV_TOKEN: self.token, "XDG_CONFIG_HOME": str(self._tmpdir / "config"),
            "XDG_CACHE_HOME": str(self._tmpdir / "cache"),
        }
        args = [*CHROMIUM_ARGS, *(OFFLINE_ARGS if offline else ())]
        try:
            self._driver: Playwright | None = _acquire_driver()
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        try:
            try:
                self._browser = self._driver.chromium.launch(
                    executable_path=self.executable, headless=True, args=args, env=env,
                    timeout=start_timeout * 1000.0,
                )
            except PlaywrightError as exc:
                raise BrowserError(f"cannot start {self.executable}: {exc.message.strip()}") from exc
            # Playwright starts chromium in a process group of its own; never count ours (pytest's)
            self._pgids = {_stat(Path(f"/proc/{pid}"))[1] for pid in browser_processes(self.token)} - {os.getpgrp()}
            self._context = self._browser.new_context(
                viewport={"width": width, "height": height}, device_scale_factor=1, service_workers="block",
            )
            self._context.on("request", self._on_request)
            if offline:
                self._context.route(lambda url: not is_local_or_loopback(url), self._block)
                self._context.route_web_socket(lambda url: not is_local_or_loopback(url), self._block_websocket)
            self._page = self._context.new_page()
        except BaseException:  # KeyboardInterrupt too: never leave chromium behind
            self.close()
            raise
        log.debug("chromium %s started (browser %s, process groups %s)", self.executable,
                  self._browser.version, sorted(self._pgids))

    # -- the network ----------------------------------------------------------------------------------
    def _on_request(self, request: Request) -> None:
        self._requests.append(request.url)

    def _block(self, route: Route) -> None:
        url = route.request.url
        log.debug("offline: aborting %s", url)
        self._blocked.append(url)
        route.abort("internetdisconnected")

    def _block_websocket(self, ws: WebSocketRoute) -> None:
        log.debug("offline: closing WebSocket %s", ws.url)
        self._requests.append(ws.url)
        self._blocked.append(ws.url)
        ws.close(code=1008, reason="sdrlab test browser is offline")

    @property
    def requests(self) -> list[str]:
        """URLs of every request since the last :meth:`open` (the page itself first; data: URLs are
        not requests), WebSockets included."""
        return list(self._requests)

    @property
    def blocked_requests(self) -> list[str]:
        """The requests since the last :meth:`open` that offline mode aborted (non-loopback hosts)."""
        return list(self._blocked)

    def external_requests(self) -> list[str]:
        """Requests that are not file:, data:, about: or blob: (a self-contained report makes none)."""
        return [u for u in self._requests if is_external(u)]

    # -- the page -------------------------------------------------------------------------------------
    @property
    def page(self) -> Page:
        """The Playwright page (``page.locator(...)``, ``page.get_by_role(...)``, ``page.wait_for_function``)."""
        if self._page is None or self._closed:
            raise BrowserError("the browser is closed")
        return self._page

    @property
    def context(self) -> BrowserContext:
        """The Playwright browser context (its routes block the network when offline)."""
        if self._context is None or self._closed:
            raise BrowserError("the browser is closed")
        return self._context

    def open(
        self, url_or_path: str | os.PathLike[str], *, width: int = 1280, height: int = 900,
        timeout: float = 30.0, settle: float = 0.25,
    ) -> None:
        """Load a URL or a local file (made a file:// URL) in a ``width`` x ``height`` viewport.

        Returns after the load event plus ``settle`` seconds; :attr:`requests` then holds this page's
        requests only.  Raises :class:`BrowserError` if the navigation fails or times out.
        """
        url = _as_url(url_or_path)
        page = self.page
        page.set_viewport_size({"width": width, "height": height})
        self._requests.clear()
        self._blocked.clear()
        try:
            page.goto(url, wait_until="load", timeout=timeout * 1000.0)
        except PlaywrightError as exc:
            # a known state: let chromium's error page (if any) commit, then leave it for about:blank
            with contextlib.suppress(PlaywrightError):
                page.wait_for_url(lambda u: u.startswith("chrome-error:"), timeout=2000.0)
            with contextlib.suppress(PlaywrightError):
                page.goto("about:blank", timeout=5000.0)
            raise BrowserError(f"cannot open {url}: {_first_line(exc)}") from exc
        if settle > 0:
            page.wait_for_timeout(settle * 1000.0)

    def evaluate(self, js: str, arg: Any = None) -> Any:
        """Evaluate a JS expression (or call a JS function with ``arg``) in the page; return its value
        (JSON-able; promises are awaited).  Raises :class:`JavaScriptError` if it throws or rejects."""
        page = self.page
        try:
            return page.evaluate(js, arg)
        except PlaywrightError as exc:
            text = exc.message.removeprefix("Page.evaluate: ").strip()
            description = text.split("\n    at ", 1)[0].strip()
            raise JavaScriptError(f"JavaScript error: {description}", description=description) from exc

    def screenshot(self, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
        """Write a PNG of the page, as wide as the viewport: the whole page or just the viewport."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=out, full_page=full_page, type="png")
        return out

    def page_report(self) -> dict[str, Any]:
        """What the page shows: url, title, images and images_decoded (complete with a natural width),
        broken_images, svgs, tables, text_length, width/height (px), and external_requests."""
        report: dict[str, Any] = self.evaluate(_PAGE_REPORT_JS)
        report["external_requests"] = self.external_requests()
        return report

    # -- life cycle -----------------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Live processes of this browser (empty once it is closed)."""
        return browser_processes(self.token, self._pgids)

    def close(self, timeout: float = 10.0) -> None:
        """Close the browser, wait until its processes are gone (SIGKILL after ``timeout`` s) and remove
        its temporary directory.  Idempotent; call it from the thread that opened the browser."""
        if self._closed:
            return
        if threading.get_ident() != self._thread:
            raise BrowserError("close the browser from the thread that opened it (Playwright's sync API)")
        self._closed = True
        try:
            if self._browser is not None:
                with contextlib.suppress(PlaywrightError):
                    self._browser.close()
        finally:
            if self._driver is not None:
                self._driver = None
                _release_driver()
            # a browser that never started has nothing to close gracefully: its leftovers go at once
            self._reap(timeout if self._browser is not None else 0.5)
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(3):
            if not left:
                return
            log.warning("chromium processes %s outlived the browser: SIGKILL", left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            left = self.processes()
        log.warning("chromium processes %s survived SIGKILL", left)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
