"""Make the README's screenshots with the project's own tooling, offline:

    .venv/bin/python scripts/screenshots.py [--out docs/images]

- ``acquisition-panel.png``: :class:`sdrlab.widgets.AcquisitionPanel` after a finished acquisition
  of the demo7 network from the in-process simulator (3 s at 9749 kHz), its widget state rendered
  to a standalone page with ``ipywidgets.embed.embed_minimal_html`` and the
  ``@jupyter-widgets/html-manager`` that ipywidgets embeds (fetched with ``npm pack`` from the npm
  registry, never from a CDN), then photographed by headless chromium.
- ``report.png``: ``notebooks/report.ipynb`` run through :func:`sdrlab.runs.run_notebook` (5 s from
  the simulator) into its HTML report, photographed by ``tests/support/browser.py``'s
  :class:`HeadlessBrowser` (Playwright driving Debian's chromium; the top of the page only, to keep
  the PNG small).

Needs the test extra (Playwright), chromium (``make test`` installs it; or set ``SDRLAB_CHROMIUM``)
and npm on PATH.  Everything it acquires goes into a temporary store and index that are removed
afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without an editable install too; tests.support

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402

from tests.support.browser import HeadlessBrowser  # noqa: E402

PANEL_PNG = "acquisition-panel.png"
REPORT_PNG = "report.png"
TDOA_PNG = "report-tdoa.png"
TDOA_HEIGHT = 1150
#: the report is long: its first this many CSS pixels (header, station table, map) make the picture
REPORT_HEIGHT = 1800
REPORT_WIDTH = 1100
PANEL_WIDTH = 1280

#: how long the embedded widgets may take to render (the manager's views, the progress bars and
#: the results table, the HTML widget's <table>)
WIDGETS_TIMEOUT_S = 20.0
#: what rendered, counted in the page
_WIDGET_FACTS_JS = r"""
() => ({
  widgets: document.querySelectorAll('[class*="widget-"]').length,
  jupyter_widgets: document.querySelectorAll('.jupyter-widgets').length,
  progress_bars: document.querySelectorAll('.widget-hprogress, .progress-bar').length,
  select_options: document.querySelectorAll('.widget-select-multiple option').length,
  results_tables: document.querySelectorAll('table.sdrlab-table').length,
  buttons: document.querySelectorAll('button.jupyter-button').length,
  unrendered_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')
    .length - document.querySelectorAll('.widget-subarea, .jupyter-widgets-view').length,
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
})
"""
#: true once the results table, a progress bar and the station list are there
_WIDGETS_RENDERED_JS = r"""
() => document.querySelectorAll('table.sdrlab-table').length > 0
  && document.querySelectorAll('.widget-hprogress, .progress-bar').length > 0
  && document.querySelectorAll('.widget-select-multiple option').length > 0
"""

_PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<title>{title}</title>
<style>
  body {{ margin: 16px 20px; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         font-size: 13px; background: #fff; }}
  table.sdrlab-table {{ font-size: 12px; }}
  table.sdrlab-table td {{ white-space: nowrap; }}
  table.sdrlab-table tbody tr:nth-child(odd) {{ background: #f5f5f5; }}
</style>
</head>
<body>
{snippet}
</body>
</html>
"""


def html_manager(tmp: Path) -> Path:
    """``dist/embed.js`` of the html-manager version ipywidgets embeds, from the npm registry."""
    from ipywidgets._version import __html_manager_version__

    spec = f"@jupyter-widgets/html-manager@{__html_manager_version__}"
    tmp.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("screenshots: npm is not on PATH (apt-get install npm)")
    done = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"screenshots: npm pack {spec} failed:\n{done.stderr.strip()}")
    tgz = tmp / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(tmp)
    embed = tmp / "package" / "dist" / "embed.js"
    version = json.loads((tmp / "package" / "package.json").read_text())["version"]
    if not embed.is_file():
        raise SystemExit(f"screenshots: {tgz.name} has no dist/embed.js")
    print(f"html-manager {version} ({spec}) from npm")
    return embed


def panel_page(tmp: Path, embed_js: Path) -> Path:
    """The acquisition panel after acquiring demo7 from the simulator, as a standalone HTML page."""
    from ipywidgets.embed import dependency_state, embed_minimal_html

    from sdrlab.config import Settings
    from sdrlab.demo import demo7_stations
    from sdrlab.sim.networks import demo7
    from sdrlab.sim.server import SimServer
    from sdrlab.widgets import AcquisitionPanel

    data = tmp / "data"
    settings = Settings.from_env(store=f"file://{data}", db=f"sqlite:///{data / 'index.db'}", progress=False)
    with SimServer(demo7(0), base_port=0) as sim:
        stations = demo7_stations(sim.ports)
        panel = AcquisitionPanel(stations, selected=[s.id for s in stations], frequency_hz=9_749_000.0,
                                 duration_s=3.0, settings=settings)
        panel.acquire()
        session = panel.wait(timeout=300)
    statuses = {sid: r.status for sid, r in session.results.items()}
    print(f"panel: session {session.session_id}: {statuses}")
    if panel.errors:
        print("panel errors:\n  " + "\n  ".join(panel.errors))
    page = tmp / "acquisition-panel.html"
    embed_minimal_html(
        str(page), views=[panel.widget], title="sdrlab AcquisitionPanel",
        state=dependency_state(panel.widget, drop_defaults=True),
        requirejs=False, embed_url=embed_js.as_uri(), cors=False, template=_PAGE_TEMPLATE,
    )
    return page


def shoot_panel(browser: HeadlessBrowser, page: Path, png: Path) -> None:
    browser.open(page, width=PANEL_WIDTH, height=600, settle=0.5)
    try:
        browser.page.wait_for_function(_WIDGETS_RENDERED_JS, timeout=WIDGETS_TIMEOUT_S * 1000, polling=100)
    except PlaywrightTimeoutError:
        pass  # named below, with what did render
    facts = browser.evaluate(_WIDGET_FACTS_JS)
    print(f"panel page: {facts}")
    missing = [k for k in ("jupyter_widgets", "progress_bars", "select_options", "results_tables", "buttons")
               if not facts.get(k)]
    if missing:
        raise SystemExit(f"screenshots: the widgets did not render ({', '.join(missing)} missing): {facts}; "
                         f"requests: {browser.requests}")
    time.sleep(0.3)  # let the last layout and the bundled icon font settle
    browser.screenshot(png, full_page=True)


def report_page(tmp: Path) -> Path:
    """``notebooks/report.ipynb`` acquired from the simulator and rendered to HTML."""
    from sdrlab.runs import run_notebook

    data = tmp / "data"
    result = run_notebook(
        ROOT / "notebooks" / "report.ipynb",
        {"duration_s": 12.0, "store": f"file://{data}", "db": f"sqlite:///{data / 'index.db'}"},
        output=str(tmp / "report.ipynb"), html=str(tmp / "report.html"), cwd=tmp,
    )
    print(f"report: run {result.run_id} {result.status} in {result.duration_s:.1f} s, "
          f"sessions {', '.join(result.session_ids)}")
    assert result.html is not None
    return Path(result.html)


def shoot_report(browser: HeadlessBrowser, page: Path, png: Path) -> None:
    browser.open(page, width=REPORT_WIDTH, height=REPORT_HEIGHT, settle=0.5)
    # end the picture below the first figure (the station map) when it fits in REPORT_HEIGHT
    bottom = browser.evaluate(
        "document.images.length ? Math.ceil(document.images[0].getBoundingClientRect().bottom + scrollY) : 0")
    height = int(bottom) + 24 if 600 < int(bottom or 0) + 24 <= REPORT_HEIGHT else REPORT_HEIGHT
    if height != REPORT_HEIGHT:
        browser.open(page, width=REPORT_WIDTH, height=height, settle=0.5)
    facts = browser.page_report()
    print(f"report page: {facts['images_decoded']}/{facts['images']} images decoded, {facts['tables']} tables, "
          f"{facts['height']} px tall, external requests: {facts['external_requests'] or 'none'}")
    if facts["broken_images"]:
        raise SystemExit(f"screenshots: the report has broken images: {facts['broken_images']}")
    browser.screenshot(png, full_page=False)  # the viewport: the report's first REPORT_HEIGHT px


def shoot_report_tdoa(browser: HeadlessBrowser, page: Path, png: Path) -> None:
    """The report's TDoA section: its heading at the top of the picture, the map below."""
    browser.open(page, width=REPORT_WIDTH, height=TDOA_HEIGHT, settle=0.5)
    top = browser.evaluate(
        "(() => { const h = Array.from(document.querySelectorAll('h3'))"
        ".find(e => e.textContent.includes('TDoA')); if (!h) return -1;"
        " const y = h.getBoundingClientRect().top + scrollY - 12; scrollTo(0, y); return y; })()")
    if top < 0:
        raise SystemExit("screenshots: the report has no TDoA section")
    browser.screenshot(png, full_page=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="directory for the PNGs")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdrlab-screenshots-") as scratch:
        tmp = Path(scratch)
        embed_js = html_manager(tmp / "npm")
        panel_html = panel_page(tmp / "panel", embed_js)
        report_html = report_page(tmp / "report")
        with HeadlessBrowser() as browser:
            shoot_panel(browser, panel_html, out / PANEL_PNG)
            shoot_report(browser, report_html, out / REPORT_PNG)
            shoot_report_tdoa(browser, report_html, out / TDOA_PNG)
    for name in (PANEL_PNG, REPORT_PNG, TDOA_PNG):
        p = out / name
        print(f"{p}: {p.stat().st_size / 1024:.0f} kB")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
