"""The workbench notebooks in a real JupyterLab, in headless chromium, as a user meets them (issue 14).

One JupyterLab for the module (tests.support.lab: loopback, random token, a temporary copy of
``notebooks/`` with short captures injected as papermill would, store and index in a temporary
directory) and one chromium (tests.support.browser: Playwright driving Debian's chromium, offline).
Each test opens one notebook, runs Run > Run All Cells from the menu bar, clicks the panel's buttons
as a user would, saves it, and asserts on what the page shows: every cell ran, no traceback or error
output, the widgets rendered, progress bars full, tables with the simulated stations' rows, figures
decoded.  The simulated stations are the demo7 scene's receivers, so a table that lists other or
fewer stations fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdrlab.sim.networks import demo7
from sdrlab.store import Store
from tests.support.browser import HeadlessBrowser
from tests.support.lab import JupyterLabServer, LabNotebook, copy_notebooks, free_port

ROOT = Path(__file__).resolve().parent.parent
#: the simulated stations every notebook acquires from (the notebooks' default: demo7, seed 0)
STATIONS = sorted(rx.id for rx in demo7(0).receivers)
#: four of them around the transmitter for 04-tdoa (six pairs instead of 21: half its time)
TDOA_STATIONS = ("demo-enschede", "demo-zurich", "demo-berlin", "demo-paris")
#: short captures, injected after each notebook's parameters cell (the TDoA needs its overlap)
PARAMETERS: dict[str, dict[str, Any]] = {
    "01-acquire.ipynb": {"duration_s": 3.0},
    "02-explore.ipynb": {},
    "03-history.ipynb": {},
    "04-tdoa.ipynb": {"duration_s": 6.0, "min_overlap_s": 5.0, "stations": ",".join(TDOA_STATIONS)},
    "05-campaign.ipynb": {},
    "report.ipynb": {"duration_s": 6.0, "tdoa_min_overlap_s": 5.0},
}
#: Run All of one notebook, acquisitions included, on a loaded 2-core machine
RUN_TIMEOUT_S = 150.0
SESSION_RE = re.compile(r"session (\d{8}T\d{6}Z-[0-9a-f]+)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def lab(workdir: Path) -> Iterator[JupyterLabServer]:
    copy_notebooks(ROOT / "notebooks", workdir / "notebooks", PARAMETERS)
    data = workdir / "data"
    env = {"SDRLAB_STORE": f"file://{data}", "SDRLAB_DB": f"sqlite:///{data / 'index.db'}"}
    with JupyterLabServer(workdir / "notebooks", env=env) as server:
        yield server
    # stopped: the server, its kernels and what they started (simulators, dask) are all gone
    assert server.processes() == []


@pytest.fixture(scope="module")
def browser() -> Iterator[HeadlessBrowser]:
    with HeadlessBrowser(width=1280, height=900) as b:
        yield b


@pytest.fixture
def run_notebook(lab: JupyterLabServer, browser: HeadlessBrowser) -> Iterator[Any]:
    """``run_notebook(name)``: open it, Run All Cells, wait, save; the LabNotebook, its facts and the
    saved notebook.  Its kernel is shut down after the test."""
    opened: list[LabNotebook] = []

    def run(name: str) -> tuple[LabNotebook, dict[str, Any], dict[str, Any]]:
        t0 = time.perf_counter()
        nb = LabNotebook(lab, browser, name).open()
        opened.append(nb)
        t1 = time.perf_counter()
        nb.run_all()
        t2 = time.perf_counter()
        nb.wait_until_done(timeout=RUN_TIMEOUT_S)
        t3 = time.perf_counter()
        facts, saved = nb.facts(), nb.save()
        print(f"{name}: opened in {t1 - t0:.1f} s, kernel and Run All {t2 - t1:.1f} s, cells ran in {t3 - t2:.1f} s, "
              f"read and saved in {time.perf_counter() - t3:.1f} s")
        return nb, facts, saved

    yield run
    for nb in opened:
        nb.close()


# ---- what every notebook must show --------------------------------------------------------------
def assert_ran_clean(name: str, facts: dict[str, Any], saved: dict[str, Any], browser: HeadlessBrowser) -> None:
    cells = facts["cells"]
    not_run = [(c["index"], c["prompt"], c["source"][:60]) for c in cells if not re.fullmatch(r"\[\d+\]:", c["prompt"])]
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(saved["cells"]) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: cells raised: {errors}"
    assert not not_run, f"{name}: cells that did not run: {not_run}"
    tracebacks = [(c["index"], c["text"][-1500:]) for c in cells
                  if "Traceback" in c["text"] or any("Error" in s or "Traceback" in s for s in c["stderr"])]
    assert not tracebacks, f"{name}: error output shown: {tracebacks}"
    widget_errors = [(c["index"], c["widget_errors"]) for c in cells if c["widget_errors"]]
    assert not widget_errors, f"{name}: widgets failed to render: {widget_errors}"
    broken = [(c["index"], c["images"], c["images_decoded"]) for c in cells if c["images"] != c["images_decoded"]]
    assert not broken, f"{name}: images not decoded (cell, images, decoded): {broken}"
    # a widget output saved by the kernel is a rendered widget in the page, not its text repr
    for i, (cell, saved_cell) in enumerate(zip(cells, [c for c in saved["cells"] if c["cell_type"] == "code"])):
        views = [o for o in saved_cell.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        if views:
            assert cell["widgets"] > 0, f"{name}: cell {i} output {len(views)} widget(s), none rendered: {cell['text'][:300]}"
    unsaved = [i for i, c in enumerate(c for c in saved["cells"] if c["cell_type"] == "code") if c["execution_count"] is None]
    assert not unsaved, f"{name}: the saved notebook has code cells that never ran: {unsaved}"
    assert not browser.blocked_requests, f"{name}: the page asked for hosts off this machine: {browser.blocked_requests}"


def cell_with(facts: dict[str, Any], code: str, *, exact: bool = False) -> dict[str, Any]:
    """The first code cell whose source contains ``code`` (is ``code``, when ``exact``)."""
    found = [c for c in facts["cells"] if (c["source"].strip() == code if exact else code in c["source"])]
    assert found, f"no cell with {code!r} in {[c['source'][:40] for c in facts['cells']]}"
    cell: dict[str, Any] = found[0]
    return cell


def station_rows(cell: dict[str, Any]) -> list[str]:
    """The station ids listed by the cell's first table that lists stations: its first column whose
    cells are station ids (an index or a station column), sorted."""
    for table in cell["tables"]:
        for column in zip(*(row for row in table["body"] if len(row) == len(table["body"][0]))):
            if any(c.startswith("demo-") for c in column):
                return sorted(c for c in column if c)
    return []


def images(facts: dict[str, Any]) -> int:
    return sum(c["images_decoded"] + c["canvases"] for c in facts["cells"])


def assert_reads_cleanly(name: str, layout: dict[str, Any]) -> None:
    """At the 1280 px window, JupyterLab's default layout (about 850 px of output): no label or option
    cut, no table cell on two lines (free text aside), nothing wider than its box, no table wider than
    the output (tests.support.lab.LabNotebook.layout)."""
    assert not layout["cut"], f"{name}: text cut off: {layout['cut']}"
    assert not layout["wrapped"], f"{name}: table cells on two lines: {layout['wrapped']}"
    assert not layout["overflow"], f"{name}: wider than its box: {layout['overflow']}"
    wide = [t for t in layout["tables"] if t["width"] > layout["width"]]
    assert not wide, f"{name}: tables wider than the {layout['width']} px output: {wide}"


def full_bars(cell: dict[str, Any]) -> bool:
    bars = cell["progress"]
    return bool(bars) and all(b["percent"] >= 100.0 and "success" in b["style"] for b in bars)


# ---- the notebooks --------------------------------------------------------------------------------
def test_every_notebook_is_driven_here() -> None:
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(PARAMETERS)


def test_01_acquire_panel_acquires_when_acquire_is_clicked(run_notebook: Any, browser: HeadlessBrowser,
                                                            workdir: Path) -> None:
    t0 = time.perf_counter()
    nb, facts, saved = run_notebook("01-acquire.ipynb")
    assert_ran_clean("01-acquire", facts, saved, browser)
    panel = cell_with(facts, "AcquisitionPanel(")
    assert panel["widgets"] > 10 and "Acquire" in panel["buttons"], panel["text"][:500]
    # the run pressed Acquire itself (auto_acquire): one full bar per station, the results table
    assert len(panel["progress"]) == len(STATIONS) and full_bars(panel), panel["progress"]
    assert station_rows(panel) == STATIONS, panel["tables"]
    first = SESSION_RE.search(panel["text"])
    assert first, panel["text"][:800]
    assert f"{len(STATIONS)} ok, 0 partial, 0 failed" in panel["text"]
    layout = nb.layout("AcquisitionPanel(")
    assert_reads_cleanly("01-acquire", layout)
    assert layout["width"] < 1000 and len(layout["tables"]) == 1, layout  # the default layout, one table
    assert station_rows(cell_with(facts, "nb.station_table(ds)")) == STATIONS
    for plot in ("plot_psd", "plot_spectrogram", "plot_map"):
        assert cell_with(facts, plot)["images_decoded"] == 1, plot

    # a user presses Acquire: a new acquisition of the selected stations, its bars fill, its table shows
    nb.output("AcquisitionPanel(").locator("button.jupyter-button", has_text="Acquire").click()
    nb.wait_for("() => document.body.innerText.includes('acquiring 7 station(s)')", timeout=30,
                what="the panel saying it is acquiring")
    nb.wait_for(
        """(old) => { const t = document.body.innerText;
                      const m = t.match(/session (\\d{8}T\\d{6}Z-[0-9a-f]+): 7 ok/); return m && m[1] !== old; }""",
        first.group(1), timeout=90, what="a new session with 7 stations ok")
    facts = nb.facts()
    panel = cell_with(facts, "AcquisitionPanel(")
    sessions = {m.group(1) for m in SESSION_RE.finditer(panel["text"])}
    second = sessions - {first.group(1)}
    assert len(second) == 1, panel["text"][:800]
    # the new acquisition replaced the old result: its table and session id are gone from the panel
    assert first.group(1) not in panel["text"], panel["text"][:800]
    layout = nb.layout("AcquisitionPanel(")
    assert layout["sessions"] == list(second) and len(layout["tables"]) == 1, layout
    assert_reads_cleanly("01-acquire, second acquisition", layout)
    assert len(panel["progress"]) == len(STATIONS) and full_bars(panel), panel["progress"]
    captions = [t["caption"] for t in panel["tables"] if "sdrlab-table" in t["classes"]]
    assert any(second.pop() in c for c in captions), captions
    assert station_rows(panel) == STATIONS
    stored = Store(f"file://{workdir / 'data'}").sessions()
    assert {first.group(1)} | sessions <= set(stored.index), (sessions, list(stored.index))
    print(f"01-acquire: {time.perf_counter() - t0:.1f} s")


def test_02_explore_browser_opens_and_plots(run_notebook: Any, browser: HeadlessBrowser) -> None:
    nb, facts, saved = run_notebook("02-explore.ipynb")
    assert_ran_clean("02-explore", facts, saved, browser)
    panel = cell_with(facts, "SessionBrowser(")
    assert panel["widgets"] > 5 and {"Refresh", "Open", "Plot"} <= set(panel["buttons"]), panel["buttons"]
    assert station_rows(cell_with(facts, "table", exact=True)) == STATIONS
    assert station_rows(cell_with(facts, "metrics_table()")) == STATIONS
    for plot in ("plot_psd", "plot_spectrogram", "plot_map", "plt.subplots"):
        assert cell_with(facts, plot)["images_decoded"] == 1, plot
    # the browser's Plot button draws the selected session into the panel
    assert cell_with(nb.facts(), "SessionBrowser(")["images_decoded"] == 0
    assert_reads_cleanly("02-explore", nb.layout("SessionBrowser("))
    nb.output("SessionBrowser(").locator("button.jupyter-button", has_text="Plot").click()
    nb.wait_for("() => Array.from(document.querySelectorAll('.jp-OutputArea .jupyter-widgets img'))"
                ".some(i => i.complete && i.naturalWidth > 0)", timeout=60, what="the panel's plot")


def test_03_history_panel_plots(run_notebook: Any, browser: HeadlessBrowser) -> None:
    nb, facts, saved = run_notebook("03-history.ipynb")
    assert_ran_clean("03-history", facts, saved, browser)
    panel = cell_with(facts, "HistoryPanel(")
    assert panel["widgets"] > 5 and "Plot" in panel["buttons"], panel["buttons"]
    assert cell_with(facts, "history_figure(")["images_decoded"] == 1
    assert station_rows(cell_with(facts, "latest_status(engine)", exact=True)) == STATIONS
    nb.output("HistoryPanel(").locator("button.jupyter-button", has_text="Plot").click()
    nb.wait_for("() => Array.from(document.querySelectorAll('.jp-OutputArea .jupyter-widgets img'))"
                ".some(i => i.complete && i.naturalWidth > 0)", timeout=60, what="the panel's plot")
    panel = cell_with(nb.facts(), "HistoryPanel(")
    assert any(set(t["header"]) >= set(STATIONS) for t in panel["tables"]), panel["tables"]
    assert_reads_cleanly("03-history", nb.layout("HistoryPanel("))


def test_04_tdoa_locates_and_draws(run_notebook: Any, browser: HeadlessBrowser) -> None:
    nb, facts, saved = run_notebook("04-tdoa.ipynb")
    assert_ran_clean("04-tdoa", facts, saved, browser)
    printed = cell_with(facts, "position claimed")["text"]
    assert "GPS-timed stations: 4, used: 4" in printed and "position claimed: True" in printed, printed
    assert cell_with(facts, "plot_tdoa_map(")["images_decoded"] == 1
    assert cell_with(facts, "plot_tdoa_lags(")["images_decoded"] == 1
    pairs = cell_with(facts, "nb.tdoa_pairs(")["tables"]
    assert pairs and pairs[0]["rows"] == 6, pairs  # every pair of the four stations


def test_05_campaign_runs_stops_and_draws_its_waterfall(run_notebook: Any, browser: HeadlessBrowser,
                                                         workdir: Path) -> None:
    """The notebook's campaign (three simulated stations, 2 s slots 20 min apart on the simulator's
    clock, six slots) started from its panel and stopped after four sessions: the panel shows Start
    and Stop, its live plot and its state; the metric series and the waterfall are drawn; the store
    holds the four sessions of the campaign."""
    from sdrlab.monitor import campaign_sessions

    nb, facts, saved = run_notebook("05-campaign.ipynb")
    assert_ran_clean("05-campaign", facts, saved, browser)
    panel = cell_with(facts, "CampaignPanel(")
    assert {"Start", "Stop"} <= set(panel["buttons"]) and panel["widgets"] >= 5, panel["buttons"]
    assert panel["images_decoded"] == 1, panel  # the live plot, redrawn from the index after each session
    assert re.search(r"campaign notebook-\d{8}T\d{6}: 4 of 6 session\(s\) stored, stopped", panel["text"]), \
        panel["text"][:500]
    assert_reads_cleanly("05-campaign", nb.layout("CampaignPanel("))
    printed = cell_with(facts, "stopped before its end")["text"]
    assert "stopped before its end: True" in printed and "4 session(s) acquired of 6 slot(s)" in printed, printed
    assert "stored and indexed: 4 of 4" in printed and "stations ok per session: [3]" in printed, printed
    assert cell_with(facts, "history_figure(")["images_decoded"] == 1
    assert cell_with(facts, "plot_campaign_waterfall(")["images_decoded"] == 1
    waterfall = cell_with(facts, "strongest line")["text"]
    assert "4 rows (one per session) x 1024 frequencies over 1.0 h" in waterfall, waterfall
    assert "strongest line at +996 Hz from the tuned frequency in 4 of 4 rows" in waterfall, waterfall
    listed = cell_with(facts, "campaign_sessions(panel.run.store")["tables"]
    assert listed and listed[0]["rows"] == 4, listed
    campaign_id = re.search(r"campaign (notebook-\d{8}T\d{6}):", panel["text"]).group(1)  # type: ignore[union-attr]
    stored = campaign_sessions(Store(f"file://{workdir / 'data'}"), campaign_id)
    assert stored["slot"].tolist() == [0, 1, 2, 3] and set(stored["status"]) == {"ok"}, stored


def test_report_notebook_renders(run_notebook: Any, browser: HeadlessBrowser) -> None:
    nb, facts, saved = run_notebook("report.ipynb")
    assert_ran_clean("report", facts, saved, browser)
    assert f"{len(STATIONS)} of {len(STATIONS)} stations delivered" in cell_with(facts, "delivered the whole")["text"]
    for plot in ("plot_map()", "plot_psd()", "plot_spectrogram()", "plot_metrics()"):
        assert cell_with(facts, plot)["images_decoded"] == 1, plot
    # the TDoA section: three or more GPS-timed stations, a position, its map and the pairs table
    tdoa = cell_with(facts, "plot_tdoa_map(")
    assert tdoa["images_decoded"] == 1 and "position" in tdoa["text"], tdoa["text"][:500]
    assert images(facts) == 5


# ---- make lab ---------------------------------------------------------------------------------------
def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # not listening yet (URLError is an OSError)
        return 0


def test_make_lab_serves_the_notebooks_on_loopback_and_prints_its_url(tmp_path: Path) -> None:
    """``make lab`` (the venv taken as set up): JupyterLab on notebooks/, only on 127.0.0.1, the URL
    printed with a token that the server requires, and the notebooks' store and index those of
    ``make demo`` (the checkout's ./sdrlab-data) when SDRLAB_STORE / SDRLAB_DB are not set."""
    port = free_port()
    # not a sub-make of a running `make test` (no MAKEFLAGS / MAKELEVEL, no directory lines)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SDRLAB_", "JUPYTER", "MAKE", "MFLAGS"))}
    env.update({"JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"})
    cmd = ["make", "-s", "--no-print-directory", "-o", ".venv/.installed-stamp", "lab", f"LAB_PORT={port}", f"PY={sys.executable}",
           "LAB_ARGS=--ServerApp.terminals_enabled=False --LabApp.extension_manager=readonly"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline() for _ in range(2)]
        found = re.search(rf"make lab: open (http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]{{32,}}))\n", printed[1])
        assert found, printed
        url, token = found.groups()
        assert printed[0].startswith("make lab: ") and "./sdrlab-data" in printed[0], printed
        deadline = time.monotonic() + 90
        while _status(f"http://127.0.0.1:{port}/api/status?token={token}") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no answer"
            time.sleep(0.5)
        assert _status(f"http://127.0.0.1:{port}/api/status") == 403  # the token is required
        assert _status(url) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10) as resp:
            names = {item["name"] for item in json.load(resp)["content"]}
        assert set(PARAMETERS) <= names, names
        assert _listening(port) == {"0100007F"}, _listening(port)  # 127.0.0.1 only
        server = [pid for pid in os.listdir("/proc") if pid.isdigit() and _in_group(int(pid), proc.pid)
                  and b"jupyterlab" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(server) == 1, server
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{server[0]}/environ").read_text().split("\0") if "=" in kv)
        assert environ["SDRLAB_STORE"] == f"file://{ROOT}/sdrlab-data"
        assert environ["SDRLAB_DB"] == f"sqlite:///{ROOT}/sdrlab-data/index.db"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[2]) == pgid
    except (OSError, IndexError, ValueError):
        return False
