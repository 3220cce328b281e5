"""``sdrlab run`` / ``sdrlab report`` against the real report notebook: papermill runs with
several parameter sets (good and bad), the run recorded in the index, and the HTML report read
in a real headless chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from sqlalchemy import select

from sdrlab.cli import main
from sdrlab.demo import run_demo
from sdrlab.errors import ConfigError, NotebookRunError
from sdrlab.index import make_engine
from sdrlab.index.models import RunRow, SessionRow
from sdrlab.runs import (
    PUBLISH_MIME, collect_published, output_path, parse_parameter, render_report, run_notebook,
)
from sdrlab.sim.networks import demo7
from sdrlab.store import Store

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "notebooks" / "report.ipynb"
STATIONS = [rx.id for rx in demo7().receivers]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A store and index holding one simulated demo7 session."""
    root = tmp_path_factory.mktemp("lab")
    store, db = f"file://{root}/store", f"sqlite:///{root}/index.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDRLAB_DB", db)
        session = run_demo(duration_s=1.0, out=root / "store", speed=4.0, progress=False)
    assert session.path and session.index_error is None
    return {"root": root, "store": store, "db": db, "session": session.session_id}


@pytest.fixture(scope="module")
def report_run(lab):
    """One good papermill run of report.ipynb on the stored session, with the HTML report."""
    out = lab["root"] / "runs"
    result = run_notebook(
        REPORT, {"session": lab["session"], "store": lab["store"], "db": lab["db"]},
        output=f"{out}/{{notebook}}-{{session}}.ipynb", html=f"{out}/{{notebook}}-{{run_id}}.html",
        cwd=lab["root"], engine=make_engine(lab["db"]),
    )
    return result


def test_good_run_writes_the_templated_notebook_and_publishes_the_session(lab, report_run):
    r = report_run
    assert r.status == "ok" and r.error is None and r.failed_cell is None
    assert Path(r.output) == lab["root"] / "runs" / f"report-{lab['session']}.ipynb"
    assert Path(r.html).name == f"report-{r.run_id}.html"
    version = Store(lab["store"]).open(lab["session"]).attrs["data_version"]
    assert r.session_ids == [f"{lab['session']}@{version}"]  # exactly the data it read
    nb = nbformat.read(r.output, as_version=4)
    assert nb.metadata["sdrlab"]["run_id"] == r.run_id
    assert nb.metadata["sdrlab"]["parameters"]["session"] == lab["session"]
    # papermill's injected cell carries the parameters unchanged
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'session = "{lab["session"]}"' in injected.source
    # every station is in the report's table, all ok
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "7 of 7 stations delivered the whole capture." in text
    for st in STATIONS:
        assert st in text


def test_good_run_is_in_the_index(lab, report_run):
    engine = make_engine(lab["db"])
    with engine.connect() as c:
        row = c.execute(select(RunRow.status, RunRow.session_ids, RunRow.parameters, RunRow.html_path)
                        .where(RunRow.id == report_run.run_id)).one()
    assert row.status == "ok"
    assert row.session_ids == report_run.session_ids and row.session_ids[0].startswith(lab["session"] + "@")
    assert row.parameters["session"] == lab["session"]
    assert row.html_path == report_run.html


def test_html_report_is_self_contained(report_run):
    html = Path(report_run.html).read_text()
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*(src|href)=["']https?:""", html)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 4  # map, PSD, spectrogram, metrics
    assert "injected-parameters" not in html and "nb.check_session_param" not in html  # code hidden
    assert "application/vnd.jupyter.widget" not in html and PUBLISH_MIME not in html
    assert report_run.run_id in html  # the header names the run


def test_html_report_in_headless_chromium_shows_figures_and_the_metrics_table(report_run, tmp_path):
    from tests.support.browser import HeadlessBrowser

    with HeadlessBrowser() as browser:
        browser.open(report_run.html)
        page = browser.page_report()
        assert browser.external_requests() == []
        assert page["images"] == 4 and page["images_decoded"] == 4
        headers = browser.evaluate(
            "Array.from(document.querySelectorAll('table.dataframe thead th')).map(t => t.textContent.trim())")
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('table.dataframe tbody tr')).map("
            "r => Array.from(r.children).map(c => c.textContent.trim()))")
        figure_sizes = browser.evaluate(
            "Array.from(document.images).map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
        shot = browser.screenshot(tmp_path / "report.png")
    assert {"status", "SNR (dB)", "Noise floor (dBFS/Hz)", "Frequency offset (Hz)"} <= set(headers)
    by_station = {r[0]: r for r in rows if r and r[0] in STATIONS}
    assert sorted(by_station) == sorted(STATIONS)
    snr_col = headers.index("SNR (dB)")
    for r in by_station.values():
        assert r[1] == "ok"
        assert 5.0 < float(r[snr_col]) < 60.0  # the scene's SNRs, as shown on the page
    assert all(w > 300 and shown > 300 for w, shown in figure_sizes)  # drawn at a readable size
    assert shot.stat().st_size > 50_000


def test_run_that_acquires_carries_the_run_id_into_the_index(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(f"duration_s: 1.0\nstations: demo-berlin, demo-paris, demo-enschede\n"
                                     f"store: {lab['store']}-acq\ndb: {lab['db']}\n")
    rc = main(["run", str(REPORT), "-y", "p.yaml", "-p", "seed", "3", "--out", "out/{notebook}-{seed}.ipynb"])
    out = capsys.readouterr().out
    assert rc == 0, out
    run_id = re.search(r"^run (run-\S+): ok", out, re.M).group(1)
    [read] = re.search(r"^sessions: (.+)$", out, re.M).group(1).split(", ")
    sid, version = read.split("@")  # the session acquired, and the data version the report read
    assert Store(f"{lab['store']}-acq").open(sid).attrs["data_version"] == version
    assert (tmp_path / "out" / "report-3.ipynb").exists()
    with make_engine(lab["db"]).connect() as c:
        assert c.execute(select(SessionRow.papermill_run_id).where(SessionRow.id == sid)).scalar_one() == run_id
        assert c.execute(select(RunRow.parameters).where(RunRow.id == run_id)).scalar_one()["seed"] == 3
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(tmp_path / "out" / "report-3.ipynb", 4).cells])
    assert "3 of 3 stations delivered the whole capture." in text


@pytest.mark.parametrize("params, cell, message", [
    ({"frequency_hz": -5.0}, 2, "ConfigError: frequency -5 Hz is outside 0-30 MHz"),
    ({"duration_s": "long"}, 2, "ConfigError: parameter duration_s must be int or float, got 'long'"),
    ({"stations": "demo7,Bad"}, 2, "parameter stations: 'Bad' is not a station id or network name"),
    ({"session": "20200101T000000Z-abcdef"}, 3, "session 20200101T000000Z-abcdef is not in the store"),
], ids=["negative-frequency", "duration-not-a-number", "bad-station-id", "unknown-session"])
def test_bad_parameters_fail_naming_the_cell_and_keep_the_partial_output(lab, tmp_path, params, cell, message):
    params = {**params, "store": lab["store"], "db": lab["db"]}
    with pytest.raises(NotebookRunError) as err:
        run_notebook(REPORT, params, output=tmp_path / "bad.ipynb", html=tmp_path / "bad.html",
                     engine=make_engine(lab["db"]))
    r = err.value.result
    assert r.status == "failed" and r.failed_cell == cell
    assert message in str(err.value) and f"code cell {cell}" in str(err.value)
    assert str(tmp_path / "bad.ipynb") in str(err.value)
    nb = nbformat.read(tmp_path / "bad.ipynb", as_version=4)  # the partial output is kept ...
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ConfigError"
    assert "This run failed" in (tmp_path / "bad.html").read_text()  # ... and rendered
    with make_engine(lab["db"]).connect() as c:
        row = c.execute(select(RunRow.status, RunRow.failed_cell).where(RunRow.id == r.run_id)).one()
    assert tuple(row) == ("failed", cell)


def test_cli_failed_run_exits_1_and_names_the_cell(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(REPORT), "-p", "frequency_hz", "45e6", "-p", "store", lab["store"]])
    err = capsys.readouterr().err
    assert rc == 1
    assert "code cell 2 ('Check the parameters" in err and "ConfigError: frequency" in err and "outside 0-30 MHz" in err
    assert "the partial output is in reports/report-run-" in err
    assert list((tmp_path / "reports").glob("report-run-*.ipynb"))


@pytest.mark.parametrize("args, message", [
    (["-p", "sesion", "x"], "report.ipynb has no parameter 'sesion' (its parameters: session, stations"),
    (["--out", "x/{nope}.ipynb"], "names nope, which is neither a parameter given nor one of notebook, run_id, date"),
    (["-y", "missing.yaml"], "cannot read parameters file missing.yaml"),
])
def test_cli_bad_invocations_exit_2_before_running(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(REPORT), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_cli_run_of_missing_notebook_and_report_of_garbage(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.ipynb")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.ipynb").write_text("not json")
    assert main(["report", str(tmp_path / "x.ipynb"), "--html", str(tmp_path / "x.html")]) == 2
    assert "is not a readable notebook" in capsys.readouterr().err


def test_cli_report_renders_an_executed_notebook(report_run, tmp_path, capsys):
    assert main(["report", report_run.output, "--html", str(tmp_path / "again.html")]) == 0
    html = (tmp_path / "again.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 4


def test_parameters_typed_as_papermill_types_them():
    assert [parse_parameter(v) for v in ("True", "None", "3", "-5", "9.749e6", "demo7", "1,2")] == \
        [True, None, 3, -5, 9.749e6, "demo7", "1,2"]


def test_output_path_template():
    p = output_path("r/{notebook}-{session}-{frequency_hz}.ipynb", {"session": "a/b c", "frequency_hz": 9.7e6},
                    "x/report.ipynb", "run-1")
    assert str(p) == "r/report-a_b_c-9700000.0.ipynb"
    with pytest.raises(ConfigError, match="not a valid template"):
        output_path("r/{notebook", {}, "report.ipynb", "run-1")


def test_render_refuses_a_report_that_would_load_from_the_internet(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": '<script src="https://cdn.example.invalid/x.js"></script>'})])])
    nbformat.write(nb, tmp_path / "n.ipynb")
    with pytest.raises(Exception, match="would load from the internet .*cdn.example.invalid"):
        render_report(tmp_path / "n.ipynb", tmp_path / "n.html")
    assert not (tmp_path / "n.html").exists()


def test_collect_published_gathers_every_session(tmp_path):
    outs = [nbformat.v4.new_output("display_data", data={PUBLISH_MIME: {"session_id": s}, "text/plain": "p"})
            for s in ("a", "b", "a")]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=outs)])
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert collect_published(tmp_path / "n.ipynb") == {"session_id": ["a", "b"]}


def test_demo_ends_with_the_report_of_its_session(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["demo", "--duration", "1", "--speed", "4", "--no-progress", "--out", str(tmp_path / "store"),
               "--report", str(REPORT), "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    sid = re.search(r"^session (\S+): 7 ok", out, re.M).group(1)
    html = Path(re.search(r"^report of session \S+ \([\d.]+ s\): (\S+\.html)$", out, re.M).group(1))
    assert html == tmp_path / "r" / f"report-{sid}.html" and html.exists()
    assert sid in html.read_text() and "7 of 7 stations delivered the whole capture." in html.read_text()


def test_passwords_in_url_parameters_are_masked_for_the_report_and_the_index():
    from sdrlab.redact import public_parameters

    shown = public_parameters({"db": "postgresql+psycopg://lab:s3cret@127.0.0.1:5432/idx", "n": 3,
                               "store": "s3://bucket/x"})
    assert shown == {"db": "postgresql+psycopg://lab:***@127.0.0.1:5432/idx", "n": 3, "store": "s3://bucket/x"}
    assert "s3cret" not in json.dumps(shown)


def _tiny_notebook(path, *cells):
    nbk = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1  # a parameter", metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(c) for c in cells]])
    nbk.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nbk, path)
    return path


def test_a_dying_kernel_fails_the_run_names_the_cell_and_is_recorded(tmp_path):
    import os

    nbp = _tiny_notebook(tmp_path / "dies.ipynb", "y = x + 1", "# the crash\nimport os\nos._exit(3)", "z = 2")
    engine = make_engine(f"sqlite:///{tmp_path}/i.db")
    with pytest.raises(NotebookRunError) as err:
        run_notebook(nbp, {"x": 2}, output=tmp_path / "out.ipynb", engine=engine)
    r = err.value.result
    assert r.status == "failed" and r.failed_cell == 3
    assert "the run stopped in code cell 3 ('the crash')" in r.error and "DeadKernelError" in r.error
    assert (tmp_path / "out.ipynb").exists()
    assert os.environ.get("SDRLAB_RUN_ID") is None  # the kernel's environment did not leak
    with engine.connect() as c:
        assert c.execute(select(RunRow.status).where(RunRow.id == r.run_id)).scalar_one() == "failed"


def test_an_unusable_index_url_never_undoes_a_good_run(tmp_path):
    nbp = _tiny_notebook(tmp_path / "ok.ipynb", "y = x + 1")
    r = run_notebook(nbp, {"x": 2}, output=tmp_path / "out.ipynb",
                     engine="postgresql+psycopg://lab:s3cret@127.0.0.1:notaport/x")
    assert r.status == "ok"
    assert r.index_error and "s3cret" not in r.index_error


def test_report_has_a_tdoa_section_for_three_or_more_gps_timed_stations(tmp_path):
    """A 12 s demo7 session: the report locates the transmitter (inside its ellipse; demo7's
    receivers differ by tens of microseconds of processing delay, so kilometres) and draws the
    TDoA map; a 1 s session (the lab fixture) says why it cannot."""
    store = tmp_path / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDRLAB_DB", f"sqlite:///{tmp_path}/index.db")
        session = run_demo(duration_s=12.0, out=store, speed=4.0, progress=False)
    r = run_notebook(REPORT, {"session": session.session_id, "store": f"file://{store}"},
                     output=tmp_path / "r.ipynb", html=tmp_path / "r.html", engine=make_engine(f"sqlite:///{tmp_path}/i.db"))
    html = Path(r.html).read_text()
    assert "Where the signal comes from (TDoA)" in html and "Most likely position" in html
    m = re.search(r"The transmitter the session records is ([\d.]+) km from the estimate, (inside|outside) the ellipse",
                  html)
    assert m is not None and float(m.group(1)) < 5.0 and m.group(2) == "inside"
    assert "coherent</strong> method" in html and "station triangles close" in html
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 5  # + the TDoA map
    assert html.count("demo-berlin → demo-paris") == 1  # the pairs table


def test_report_of_a_short_session_says_why_there_is_no_position(report_run):
    html = Path(report_run.html).read_text()
    assert "Where the signal comes from (TDoA)" in html and "No position claimed" in html


def test_a_password_in_a_db_parameter_is_never_shown(tmp_path, capsys, monkeypatch):
    """``-p db postgresql://lab:PASSWORD@...``: not in the output notebook (injected-parameters
    cell, papermill's metadata, outputs, the error), the HTML report, the index or the terminal."""
    secret = "Pa55-w0rd-xyz"
    nbk = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('db = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(db)\ndb"),
        nbformat.v4.new_code_cell("from urllib.parse import unquote\nprint(unquote(db))"),
        nbformat.v4.new_code_cell('raise ValueError(f"cannot open the index {db}")')])
    nbk.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nbk, tmp_path / "leak.ipynb")
    monkeypatch.chdir(tmp_path)
    db = f"postgresql+psycopg://lab:{secret.replace('-', '%2D')}@127.0.0.1:1/idx"  # nothing listens: not recorded
    rc = main(["run", "leak.ipynb", "-p", "db", db, "--out", "out.ipynb", "--html", "out.html"])
    captured = capsys.readouterr()
    assert rc == 1 and "ValueError: cannot open the index postgresql+psycopg://lab:***@127.0.0.1:1/idx" in captured.err
    written = (tmp_path / "out.ipynb").read_text()
    assert "postgresql+psycopg://lab:***@127.0.0.1:1/idx" in written  # what was run stays readable
    for text in (captured.out, captured.err, written, (tmp_path / "out.html").read_text()):
        assert secret not in text and secret.replace("-", "%2D") not in text


def test_a_run_reproduces_exactly_the_data_version_it_is_given(lab, report_run, tmp_path):
    """``-p session ID@VERSION`` (what a run records) reads that version again; a version the
    store no longer holds stops the run at the open, naming both versions."""
    (recorded,) = report_run.session_ids
    again = run_notebook(REPORT, {"session": recorded, "store": lab["store"], "db": lab["db"]},
                         output=tmp_path / "again.ipynb", cwd=lab["root"])
    assert again.status == "ok" and again.session_ids == [recorded]
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(again.output, as_version=4).cells])
    assert f"data version `{recorded.split('@')[1]}`" in text
    with pytest.raises(NotebookRunError, match="not 0123456789abcdef"):
        run_notebook(REPORT, {"session": f"{lab['session']}@0123456789abcdef", "store": lab["store"], "db": lab["db"]},
                     output=tmp_path / "stale.ipynb", cwd=lab["root"])
