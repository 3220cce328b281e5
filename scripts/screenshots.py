"""Make the README's screenshots with the project's own tooling, offline:

    .venv/bin/python scripts/screenshots.py [--out docs/images]

- ``acquisition-panel.png``: :class:`sdrlab.widgets.AcquisitionPanel` as a user sees it in
  JupyterLab: ``notebooks/01-acquire.ipynb`` (3 s captures) run with Run > Run All Cells in a real
  JupyterLab on loopback (``tests/support/lab.py``, the tooling of ``tests/test_lab.py``), the panel's
  output photographed once the run acquired the demo7 network from the in-process simulator, at
  JupyterLab's default layout in a 1280 px wide window.
- ``report.png``: ``notebooks/report.ipynb`` run through :func:`sdrlab.runs.run_notebook` (12 s from
  the simulator) into its HTML report, photographed by ``tests/support/browser.py``'s
  :class:`HeadlessBrowser` (Playwright driving Debian's chromium; the top of the page only, to keep
  the PNG small); ``report-tdoa.png``: its TDoA section.

Needs the test extra (Playwright, JupyterLab) and chromium (``make test`` installs it; or set
``SDRLAB_CHROMIUM``).  Everything it acquires goes into a temporary store and index that are removed
afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without an editable install too; tests.support

from tests.support.browser import HeadlessBrowser  # noqa: E402
from tests.support.lab import JupyterLabServer, LabNotebook, copy_notebooks  # noqa: E402

PANEL_PNG = "acquisition-panel.png"
REPORT_PNG = "report.png"
TDOA_PNG = "report-tdoa.png"
TDOA_HEIGHT = 1150
#: the report is long: its first this many CSS pixels (header, station table, map) make the picture
REPORT_HEIGHT = 1800
REPORT_WIDTH = 1100
PANEL_WIDTH = 1280

#: the window's height while the panel is photographed (JupyterLab scrolls the notebook inside it)
PANEL_WINDOW_HEIGHT = 2400
#: how long Run All Cells of 01-acquire may take (kernel start and a 3 s acquisition, on a loaded machine)
PANEL_RUN_TIMEOUT_S = 300.0


def shoot_panel(tmp: Path, browser: HeadlessBrowser, png: Path) -> None:
    """The acquisition panel in JupyterLab after notebooks/01-acquire.ipynb acquired demo7."""
    copy_notebooks(ROOT / "notebooks", tmp / "notebooks", {"01-acquire.ipynb": {"duration_s": 3.0}})
    data = tmp / "data"
    env = {"SDRLAB_STORE": f"file://{data}", "SDRLAB_DB": f"sqlite:///{data / 'index.db'}"}
    with JupyterLabServer(tmp / "notebooks", env=env) as lab:
        nb = LabNotebook(lab, browser, "01-acquire.ipynb").open()
        try:
            nb.run_all()
            prompts = nb.wait_until_done(timeout=PANEL_RUN_TIMEOUT_S)
            panel = next(c for c in nb.facts()["cells"] if "AcquisitionPanel(" in c["source"])
            bars = panel["progress"]
            print(f"panel: prompts {' '.join(prompts)}; {len(bars)} bars, "
                  f"{sum(b['percent'] >= 100 for b in bars)} full; {panel['widgets']} widgets")
            if not bars or any(b["percent"] < 100 for b in bars) or not panel["tables"]:
                raise SystemExit(f"screenshots: the panel did not finish its acquisition: {panel['text'][:1000]}")
            # a window tall enough for the whole panel, its top at the top of the notebook's view
            browser.page.set_viewport_size({"width": PANEL_WIDTH, "height": PANEL_WINDOW_HEIGHT})
            output = nb.output("AcquisitionPanel(")
            output.evaluate("e => e.scrollIntoView({block: 'start'})")
            time.sleep(0.5)  # the last layout and the icon font
            box = output.bounding_box()
            if box is None or box["y"] + box["height"] > PANEL_WINDOW_HEIGHT:
                raise SystemExit(f"screenshots: the panel ({box}) does not fit a {PANEL_WINDOW_HEIGHT} px window")
            browser.page.screenshot(path=png, clip=box)
        finally:
            nb.close()


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
        report_html = report_page(tmp / "report")
        with HeadlessBrowser(width=PANEL_WIDTH) as browser:
            shoot_panel(tmp / "panel", browser, out / PANEL_PNG)
            shoot_report(browser, report_html, out / REPORT_PNG)
            shoot_report_tdoa(browser, report_html, out / TDOA_PNG)
    for name in (PANEL_PNG, REPORT_PNG, TDOA_PNG):
        p = out / name
        print(f"{p}: {p.stat().st_size / 1024:.0f} kB")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
