"""A real JupyterLab on loopback for the workbench's browser tests (test-services.md section 4.1).

:class:`JupyterLabServer` starts ``python -m jupyterlab --no-browser --ip=127.0.0.1 --port=<free>``
with a random token on a directory (a temporary copy of ``notebooks/``), with Jupyter's config,
data, runtime, settings and workspace directories in a temporary directory of its own (a user's
``~/.jupyter`` or stale ``~/.local/share/jupyter`` kernelspec never leaks in), waits until it
answers, and at :meth:`~JupyterLabServer.stop` ends it: SIGTERM to its process group, SIGKILL after
a grace period, and the same for every process still carrying its marker in the environment (the
kernels, which jupyter_client starts in sessions of their own, and whatever they started).

:class:`LabNotebook` drives one notebook in that JupyterLab through a
:class:`~tests.support.browser.HeadlessBrowser` as a user would: open it, wait for its kernel, Run >
Run All Cells from the menu bar, wait until every cell has run, save it (Ctrl+S), and report what
the page shows (:meth:`~LabNotebook.facts`).

>>> with JupyterLabServer(copy_of_notebooks, env={"SDRLAB_STORE": ...}) as lab, HeadlessBrowser() as b:  # doctest: +SKIP
...     nb = LabNotebook(lab, b, "01-acquire.ipynb").open()
...     nb.run_all()
...     nb.wait_until_done(timeout=120)
...     facts = nb.facts()
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .browser import HeadlessBrowser, browser_processes

log = logging.getLogger(__name__)

#: set in the server's environment (so in its kernels' too): its processes are found by this value
ENV_TOKEN = "SDRLAB_LAB_TOKEN"

#: JupyterLab user settings for tests: every cell in the DOM (no windowing, so a test sees all the
#: outputs), no news or update checks (offline anyway), no autosave (a test saves when it means to)
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


class LabError(RuntimeError):
    """JupyterLab did not start, stopped answering, or a notebook did not do what was asked in time."""


def copy_notebooks(
    src: str | os.PathLike[str], dst: str | os.PathLike[str],
    parameters: Mapping[str, Mapping[str, Any]] | None = None, *, clear_outputs: bool = True,
) -> list[Path]:
    """Copy the notebooks of ``src`` into ``dst`` (made if missing); ``parameters[name]`` becomes a
    cell tagged ``injected-parameters`` after the notebook's ``parameters`` cell, as papermill's
    ``-p NAME VALUE`` writes it.  ``clear_outputs``: without the committed outputs and execution
    counts, so every prompt and output a test sees comes from its own run.  Returns the copies."""
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in sorted(Path(src).glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        if clear_outputs:
            for cell in nb["cells"]:
                if cell["cell_type"] == "code":
                    cell["outputs"], cell["execution_count"] = [], None
        values = (parameters or {}).get(path.name)
        if values:
            tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
            if len(tagged) != 1:
                raise LabError(f"{path.name} has {len(tagged)} cells tagged parameters, not one")
            source = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n"
            nb["cells"].insert(tagged[0] + 1, {
                "cell_type": "code", "execution_count": None, "id": f"injected-{uuid.uuid4().hex[:8]}",
                "metadata": {"tags": ["injected-parameters"]}, "outputs": [], "source": source})
        copy = out / path.name
        copy.write_text(json.dumps(nb, indent=1) + "\n", encoding="utf-8")
        copies.append(copy)
    return copies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class JupyterLabServer:
    """JupyterLab serving ``root_dir`` on 127.0.0.1 with a random token (``JUPYTER_TOKEN`` in its
    environment); a context manager.

    ``env``: added to this process's environment for the server and its kernels (the ``SDRLAB_*``
    store and index settings, say); ``drop_env``: prefixes of variables not passed on (default:
    ``SDRLAB_``, so only what ``env`` says reaches the notebooks).
    """

    def __init__(
        self, root_dir: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
        drop_env: tuple[str, ...] = ("SDRLAB_",), python: str = sys.executable,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.marker = uuid.uuid4().hex
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="sdrlab-lab-"))
        self.log_path = self._dir / "jupyterlab.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)}
        self.env = {
            **base, **(env or {}), ENV_TOKEN: self.marker, "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_TOKEN": self.token,  # in the environment: not on a command line other users can read
            "JUPYTER_CONFIG_DIR": str(self._dir / "config"), "JUPYTER_DATA_DIR": str(self._dir / "data"),
            "JUPYTER_RUNTIME_DIR": str(self._dir / "runtime"), "IPYTHONDIR": str(self._dir / "ipython"),
            "JUPYTERLAB_SETTINGS_DIR": str(self._dir / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self._dir / "lab-workspaces"),
        }
        for name, settings in LAB_SETTINGS.items():
            path = self._dir / "lab-settings" / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))

    # -- where ----------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL a user opens: JupyterLab with its token (what ``jupyter lab`` prints)."""
        return f"{self.base_url}/lab?token={self.token}"

    def notebook_url(self, path: str, *, workspace: str | None = None) -> str:
        """The URL that opens one notebook (relative to ``root_dir``), in a fresh ``workspace`` when
        named (no tabs left open from earlier pages)."""
        quoted = urllib.parse.quote(path)
        prefix = f"/lab/workspaces/{urllib.parse.quote(workspace)}" if workspace else "/lab"
        query = f"token={self.token}" + ("&reset" if workspace else "")
        return f"{self.base_url}{prefix}/tree/{quoted}?{query}"

    # -- the REST API ---------------------------------------------------------------------------------
    def api(self, path: str, *, method: str = "GET", timeout: float = 10.0) -> Any:
        """``/api/<path>`` with the token; the JSON answer (None for an empty one)."""
        req = urllib.request.Request(f"{self.base_url}/api/{path.lstrip('/')}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def sessions(self) -> list[dict[str, Any]]:
        """The server's sessions: one per open notebook, each with its ``kernel`` (id, execution_state)."""
        found: list[dict[str, Any]] = self.api("sessions")
        return found

    def kernel_for(self, path: str) -> dict[str, Any] | None:
        """The kernel of the notebook at ``path`` (relative to ``root_dir``), if it has one."""
        for s in self.sessions():
            if s.get("path") == path and s.get("kernel"):
                kernel: dict[str, Any] = s["kernel"]
                return kernel
        return None

    def shutdown_session(self, path: str) -> None:
        """End the notebook's session and its kernel (and the simulators it started)."""
        for s in self.sessions():
            if s.get("path") == path:
                self.api(f"sessions/{s['id']}", method="DELETE", timeout=30.0)

    def contents(self, path: str) -> dict[str, Any]:
        """The notebook as saved on disk (nbformat 4 JSON), through the contents API."""
        model: dict[str, Any] = self.api(f"contents/{urllib.parse.quote(path)}?content=1")
        content: dict[str, Any] = model["content"]
        return content

    # -- life cycle -----------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """No terminals, no extension manager or update checks (nothing asks PyPI from the server)."""
        return [
            self.python, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            "--port-retries=0", f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ]

    def start(self, timeout: float = 90.0) -> JupyterLabServer:
        """Start the server and wait (``timeout`` s at most) until its API answers with the token."""
        if self.proc is not None:
            raise LabError("this JupyterLab is already started")
        if self.python == sys.executable and importlib.util.find_spec("jupyterlab") is None:
            raise LabError(f"JupyterLab is not installed in {sys.prefix}: pip install 'sdrlab[lab]' "
                           "(make test and make lab install it)")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.root_dir, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise LabError(f"JupyterLab exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
                try:
                    self.api("status", timeout=5.0)
                    break
                except (OSError, urllib.error.URLError, json.JSONDecodeError):
                    if time.monotonic() > deadline:
                        raise LabError(f"JupyterLab did not answer on {self.base_url} within {timeout:g} s:\n"
                                       f"{self.log_tail()}") from None
                    time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        log.info("JupyterLab on %s (root %s)", self.base_url, self.root_dir)
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def processes(self) -> list[int]:
        """Live processes of this server: its process group and whatever carries its marker."""
        pgids = [self.proc.pid] if self.proc is not None else []
        return browser_processes(self.marker, pgids, env_name=ENV_TOKEN)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server's process group (it shuts its kernels down), SIGKILL to everything of
        it still alive after ``grace`` seconds; then the temporary directory goes.  Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        left = browser_processes(self.marker, [proc.pid] if proc is not None else [], env_name=ENV_TOKEN)
        for _ in range(3):
            if not left:
                break
            log.warning("JupyterLab processes %s outlived the server: SIGKILL", left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            left = browser_processes(self.marker, [proc.pid] if proc is not None else [], env_name=ENV_TOKEN)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> JupyterLabServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- a notebook in the browser ----------------------------------------------------------------------
#: the active notebook panel (JupyterLab hides the other tabs' panels with lm-mod-hidden)
ACTIVE_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

_PROMPTS_JS = """
(sel) => Array.from(document.querySelectorAll(sel + ' .jp-CodeCell .jp-InputPrompt'))
  .map(e => e.textContent.replace(/\\s+/g, ''))
"""

#: what the active notebook shows, per code cell and in all: outputs by kind, widgets, progress bars
#: (their fill in %), tables (caption, header, first column, the first 100 rows' cells), decoded
#: images, svg and canvas
_FACTS_JS = r"""
(sel) => {
  const panel = document.querySelector(sel);
  if (!panel) return null;
  const text = e => (e.innerText || e.textContent || '').trim();
  const table = t => ({
    caption: t.caption ? text(t.caption) : '',
    header: Array.from(t.querySelectorAll('thead tr:last-child th')).map(text),
    first_column: Array.from(t.querySelectorAll('tbody tr')).map(r => r.cells.length ? text(r.cells[0]) : ''),
    body: Array.from(t.querySelectorAll('tbody tr')).slice(0, 100).map(r => Array.from(r.cells).map(text)),
    rows: t.querySelectorAll('tbody tr').length,
    classes: t.className,
  });
  const bar = b => ({
    percent: parseFloat(b.style.width || '0'),
    style: Array.from(b.classList).filter(c => c.startsWith('progress-bar-')).join(' '),
  });
  const cells = Array.from(panel.querySelectorAll('.jp-CodeCell')).map((cell, i) => {
    const outs = Array.from(cell.querySelectorAll('.jp-OutputArea-output'));
    const imgs = Array.from(cell.querySelectorAll('.jp-OutputArea img'));
    return {
      index: i,
      prompt: text(cell.querySelector('.jp-InputPrompt') || cell).replace(/\s+/g, ''),
      source: text(cell.querySelector('.jp-InputArea-editor') || cell).slice(0, 2000),
      mime_types: outs.map(o => o.dataset.mimeType || (o.querySelector('.jupyter-widgets') ? 'widget' : 'other')),
      stderr: outs.filter(o => o.dataset.mimeType === 'application/vnd.jupyter.stderr').map(o => text(o).slice(0, 2000)),
      widgets: cell.querySelectorAll('.jp-OutputArea .jupyter-widgets').length,
      widget_errors: outs.map(text).filter(t => /Error displaying widget|Error rendering|model not found/i.test(t)),
      progress: Array.from(cell.querySelectorAll('.jp-OutputArea .widget-hprogress .progress-bar')).map(bar),
      tables: Array.from(cell.querySelectorAll('.jp-OutputArea table')).map(table),
      images: imgs.length,
      images_decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
      svgs: cell.querySelectorAll('.jp-OutputArea svg').length,
      canvases: cell.querySelectorAll('.jp-OutputArea canvas').length,
      buttons: Array.from(cell.querySelectorAll('.jp-OutputArea button')).map(b => text(b)),
      text: outs.map(text).join('\n').slice(0, 4000),
    };
  });
  return {cells: cells, dirty: !!document.querySelector('.lm-TabBar-tab.lm-mod-current.jp-mod-dirty')};
}
"""

#: how an output reads at the window's width (issue 14): labels and options whose text is cut
#: (a label scrolls, or an option's text is wider than its room, measured in the select's font),
#: table cells whose text wraps onto a second line (free-text notes and error columns excepted),
#: elements wider than their box (horizontal overflow), each table's width against the output's,
#: and the session ids the output shows
_LAYOUT_JS = r"""
(out) => {
  const shown = e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  const text = e => (e.innerText || e.textContent || '').trim();
  const cut = [];
  for (const e of out.querySelectorAll('.widget-label, .jupyter-widget-label')) {
    if (shown(e) && e.scrollWidth > e.clientWidth) cut.push({text: text(e), need: e.scrollWidth, room: e.clientWidth});
  }
  const ctx = document.createElement('canvas').getContext('2d');
  for (const sel of out.querySelectorAll('select')) {
    if (!shown(sel)) continue;
    const cs = getComputedStyle(sel);
    ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const room = sel.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight) - 8;
    for (const o of sel.options) {
      const need = ctx.measureText(o.text).width;
      if (need > room) cut.push({text: o.text, need: need, room: room});
    }
  }
  const wrapped = [], tables = [];
  for (const t of out.querySelectorAll('table')) {
    const heads = Array.from(t.querySelectorAll('thead th')).map(text);
    tables.push({width: t.getBoundingClientRect().width, heads: heads});
    for (const row of t.querySelectorAll('tbody tr')) {
      Array.from(row.cells).forEach((td, i) => {
        if (['notes', 'error'].includes(heads[i]) || !text(td)) return;
        const r = document.createRange();
        r.selectNodeContents(td);
        const lines = new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top))).size;
        if (lines > 1) wrapped.push({column: heads[i], text: text(td), lines: lines});
      });
    }
  }
  const overflow = [];
  for (const e of [out, ...out.querySelectorAll('.jupyter-widgets, .widget-html-content')]) {
    if (shown(e) && e.scrollWidth > e.clientWidth + 1)
      overflow.push({element: e.className.slice(0, 80), width: e.scrollWidth, box: e.clientWidth});
  }
  const sessions = Array.from(new Set(text(out).match(/\d{8}T\d{6}Z-[0-9a-f]+/g) || []));
  return {width: out.clientWidth, cut: cut, wrapped: wrapped, overflow: overflow, tables: tables, sessions: sessions};
}
"""


class LabNotebook:
    """One notebook of a :class:`JupyterLabServer`, opened in a :class:`HeadlessBrowser`, driven as a
    user drives it (menus, buttons, keys); every wait has a timeout that ends in :class:`LabError`
    naming what the page showed."""

    def __init__(self, lab: JupyterLabServer, browser: HeadlessBrowser, path: str) -> None:
        self.lab = lab
        self.browser = browser
        self.path = path

    @property
    def page(self) -> Page:
        return self.browser.page

    def open(self, timeout: float = 90.0) -> LabNotebook:
        """Load JupyterLab with only this notebook open (a fresh workspace) and wait for its cells."""
        workspace = "t-" + uuid.uuid4().hex[:8]
        self.browser.open(self.lab.notebook_url(self.path, workspace=workspace), timeout=timeout, settle=0)
        try:
            self.page.wait_for_selector(f"{ACTIVE_PANEL} .jp-CodeCell", timeout=timeout * 1000.0)
        except PlaywrightTimeoutError:
            raise LabError(f"{self.path} did not open in JupyterLab within {timeout:g} s") from None
        return self

    def menu(self, menu: str, item: str) -> None:
        """Click ``menu`` in the menu bar, then its ``item`` (exact label), as a user would."""
        self.page.locator(".lm-MenuBar-item", has_text=menu).first.click()
        self.page.get_by_role("menuitem", name=item, exact=True).click()

    def kernel_status(self) -> tuple[str, str]:
        """(kernel name, status) as the status bar shows them: ``("Python 3 (ipykernel)", "Idle")``,
        ``("No Kernel", "Initializing")``..."""
        text = self.page.locator("#jp-main-statusbar").inner_text()
        found = re.search(r"^\s*(.+?) \| (\w+)", text, re.MULTILINE)
        return (found.group(1).strip(), found.group(2)) if found else ("", "")

    def wait_for_kernel(self, timeout: float = 60.0) -> bool:
        """Wait until the notebook's kernel is idle as the page shows it (JupyterLab starts the kernel
        the notebook names when it opens).  False if none started in time: Run All starts one then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, status = self.kernel_status()
            if name and name != "No Kernel" and status == "Idle":
                return True
            self.accept_kernel_dialog(wait=0.0)
            time.sleep(0.25)
        log.warning("%s: no idle kernel after %g s (status bar: %s)", self.path, timeout, self.kernel_status())
        return False

    def run_all(self, *, kernel_timeout: float = 60.0, start_timeout: float = 30.0) -> None:
        """Run > Run All Cells once the kernel is idle; press Select if JupyterLab asks for a kernel.

        Cells run while JupyterLab has no kernel connected are dropped silently (their prompts stay
        ``[ ]:``), so the click is repeated (twice at most) when no cell started within
        ``start_timeout`` seconds."""
        self.wait_for_kernel(kernel_timeout)
        for attempt in range(3):
            self.menu("Run", "Run All Cells")
            deadline = time.monotonic() + start_timeout
            while time.monotonic() < deadline:
                if any(p not in ("[]:", "[ ]:") for p in self.prompts()):
                    return
                self.accept_kernel_dialog(wait=0.0)
                time.sleep(0.25)
            log.warning("%s: Run All Cells started no cell (attempt %d, status bar %s)", self.path, attempt + 1,
                        self.kernel_status())
            self.wait_for_kernel(kernel_timeout)
        raise LabError(f"{self.path}: Run All Cells started no cell (status bar: {self.kernel_status()})")

    def accept_kernel_dialog(self, wait: float = 1.5) -> bool:
        """JupyterLab may ask which kernel to start even when the notebook names one (under load): if
        its Select Kernel dialog shows within ``wait`` seconds, keep the proposed kernel."""
        dialog = self.page.locator(".jp-Dialog", has_text="Select Kernel")
        if wait <= 0:  # Playwright reads a zero timeout as none: look once instead
            if not dialog.is_visible():
                return False
        else:
            try:
                dialog.wait_for(state="visible", timeout=wait * 1000.0)
            except PlaywrightTimeoutError:
                return False
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        return True

    def prompts(self) -> list[str]:
        """The code cells' input prompts: ``[3]:`` ran, ``[*]:`` running or queued, ``[ ]:`` never ran."""
        found: list[str] = self.browser.evaluate(_PROMPTS_JS, ACTIVE_PANEL)
        return found

    def wait_until_done(self, timeout: float = 120.0, poll: float = 0.5) -> list[str]:
        """Wait until the kernel has started, some cell has run, none is running or queued, and the
        kernel is idle, twice in a row; return the prompts.  JupyterLab stops a Run All at a cell that
        raises, so cells after it keep ``[ ]:``: the caller asserts on that.  (Prompts left from a
        saved run would look done: open notebooks without outputs, see :func:`copy_notebooks`.)"""
        deadline = time.monotonic() + timeout
        calm = 0
        prompts: list[str] = []
        while time.monotonic() < deadline:
            prompts = self.prompts()
            kernel = self.lab.kernel_for(self.path)
            started = any(p not in ("[]:", "[ ]:") for p in prompts)
            if started and "[*]:" not in prompts and kernel is not None and kernel.get("execution_state") == "idle":
                calm += 1
                if calm >= 2:
                    return prompts
            else:
                calm = 0
            self.accept_kernel_dialog(wait=0.0)
            time.sleep(poll)
        raise LabError(f"{self.path}: cells still running after {timeout:g} s: prompts {prompts}, "
                       f"kernel {self.lab.kernel_for(self.path)}")

    def wait_for(self, js: str, arg: Any = None, *, timeout: float = 60.0, what: str = "") -> None:
        """Wait until the JS function ``js(arg)`` is truthy in the page."""
        try:
            self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000.0, polling=200)
        except PlaywrightTimeoutError:
            raise LabError(f"{self.path}: {what or js} not seen within {timeout:g} s") from None

    def save(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ctrl+S in the notebook, wait until the tab is clean; the saved notebook (nbformat JSON)."""
        self.page.locator(f"{ACTIVE_PANEL} .jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        self.wait_for("() => !document.querySelector('.lm-TabBar-tab.lm-mod-current.jp-mod-dirty')",
                      timeout=timeout, what="the notebook saved (tab not dirty)")
        return self.lab.contents(self.path)

    def facts(self) -> dict[str, Any]:
        """What the active notebook shows (see ``_FACTS_JS``): ``cells`` (prompt, output kinds, stderr,
        widgets and their errors, progress bars, tables, images, svg, canvas, buttons, text), ``dirty``."""
        found: dict[str, Any] | None = self.browser.evaluate(_FACTS_JS, ACTIVE_PANEL)
        if found is None:
            raise LabError(f"{self.path}: no notebook is shown")
        return found

    def output(self, code: str) -> Locator:
        """The first output of the first code cell whose source contains ``code`` (for a click or an
        element screenshot: ``nb.output("AcquisitionPanel(").screenshot(path=...)``)."""
        cell = self.page.locator(f"{ACTIVE_PANEL} .jp-CodeCell").filter(
            has=self.page.locator(".jp-InputArea", has_text=code)).first
        return cell.locator(".jp-OutputArea-output").first

    def layout(self, code: str) -> dict[str, Any]:
        """How the output of the cell with ``code`` reads at the window's width (see ``_LAYOUT_JS``):
        ``width``, ``cut`` labels and options, ``wrapped`` table cells, ``overflow``, ``tables``
        (width, headers), ``sessions`` (the session ids it shows)."""
        found: dict[str, Any] = self.output(code).evaluate(_LAYOUT_JS)
        return found

    def close(self) -> None:
        """End the notebook's kernel (and what it started) and leave the page."""
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.lab.shutdown_session(self.path)
        with contextlib.suppress(PlaywrightError):
            self.page.goto("about:blank", timeout=10000.0)
