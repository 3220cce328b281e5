"""The workbench panels, driven as a user would (``button.click()``) against the real simulator,
a real store and a real index; every figure is checked against the scene."""

from __future__ import annotations

import base64
import math
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="the panels need the notebook extra: pip install 'sdrlab[notebook]'")

from matplotlib.figure import Figure  # noqa: E402

from sdrlab.config import Settings  # noqa: E402
from sdrlab.demo import demo7_stations  # noqa: E402
from sdrlab.plots import metric_label  # noqa: E402
from sdrlab.errors import AcquisitionError, ConfigError, StorageError  # noqa: E402
from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7  # noqa: E402
from sdrlab.sim.scene import Faults  # noqa: E402
from sdrlab.sim.server import SimServer  # noqa: E402
from sdrlab.stations import load_catalog  # noqa: E402
from sdrlab.store import Store  # noqa: E402
from sdrlab.widgets import (  # noqa: E402
    PLOT_KINDS,
    SUMMARY_METRICS,
    TIME_OF_DAY,
    AcquisitionPanel,
    HistoryPanel,
    SessionBrowser,
    format_value,
    short_store_name,
    store_html,
    table_html,
)

THREE = ["demo-enschede", "demo-hamburg", "demo-berlin"]
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:8]


# ---- helpers ---------------------------------------------------------------------------------
class _TableParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and not self._in_head:
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.header if self._in_head else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_table(html_text: str) -> dict[str, dict[str, str]]:
    """The first column's value -> {header: cell} of an HTML table the panels render."""
    p = _TableParser()
    p.feed(html_text)
    assert p.header, f"no table in {html_text[:200]!r}"
    return {row[0]: dict(zip(p.header, row)) for row in p.rows}


def output_text(output: Any) -> str:
    return "".join(o.get("text", "") for o in output.outputs)


def assert_png(output: Any) -> None:
    assert len(output.outputs) == 1
    data = output.outputs[0]["data"]
    assert data["image/png"].startswith(PNG_B64)
    assert len(base64.b64decode(data["image/png"])) > 5_000


def settings_in(root: Path) -> Settings:
    return Settings(store=f"file://{root}/store", db=f"sqlite:///{root}/index.db", progress=False)


# ---- one real acquisition through the panel, shared by the read-side tests -------------------
@pytest.fixture(scope="module")
def acquired(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    settings = settings_in(tmp_path_factory.mktemp("widgets"))
    # a steady tone-AM carrier, not demo7's music programme: 1.5 s of a programme measures its
    # own loudness, up to a dB or more off the scene's long-term SNR (a CI run saw 1.2 dB)
    base = demo7(seed=2)
    scene = replace(base, transmitters=(replace(base.transmitters[0], modulation="am", params=()),))
    with SimServer(scene, base_port=0, speed=1.0) as sim:  # real rate: the run takes wall time
        panel = AcquisitionPanel(demo7_stations(sim.ports), settings=settings, frequency_hz=DEMO7_TUNE_HZ,
                                 duration_s=1.5, selected=THREE)
        flips: list[bool] = []
        panel.acquire_button.observe(lambda change: flips.append(change["new"]), names="disabled")
        panel.acquire_button.click()
        seen: list[tuple[bool, bool]] = []
        deadline = time.monotonic() + 60
        while panel.running and time.monotonic() < deadline:
            seen.append((panel.running, panel.acquire_button.disabled))
            time.sleep(0.05)
        session = panel.wait(timeout=60)
    return SimpleNamespace(scene=scene, settings=settings, panel=panel, session=session, flips=flips, seen=seen)


def test_click_acquires_three_stations_end_to_end(acquired: SimpleNamespace) -> None:
    panel, session, scene = acquired.panel, acquired.session, acquired.scene
    assert panel.errors == [] and panel.error_output.outputs == ()
    assert panel.session is session and panel.sessions == [session]
    assert session.ok == THREE and session.store_error is None and session.index_error is None
    assert session.path is not None and session.session_id in session.path
    # progress: one row per station, each walked through receiving to a full green bar
    assert list(panel.rows) == THREE
    for sid, row in panel.rows.items():
        assert (row.bar.value, row.state.value, row.bar.bar_style) == (1.0, "ok", "success")
        states = [e["state"] for e in panel.events if e["station"] == sid]
        assert states[0] == "queued" and "receiving" in states and states[-1] == "ok"
        assert "SNR" in row.detail.value
    # the results table says what the dataset says, and that agrees with the scene
    table = parse_table(panel.results.value)
    assert list(table) == THREE
    ds = session.dataset
    for sid in THREE:
        row = table[sid]
        truth = scene.truth(sid, DEMO7_TUNE_HZ)
        snr = float(ds["snr_db"].sel(station=sid))
        assert row["status"] == "ok" and "error" not in row and "notes" not in row  # no empty columns
        assert float(row["SNR (dB)"]) == pytest.approx(snr, abs=0.051)
        assert snr == pytest.approx(truth["snr_db"], abs=1.0)
        assert float(row["Frequency offset (Hz)"]) == pytest.approx(truth["frequency_offset_hz"], abs=1.0)
        assert int(row["samples"]) >= 1.5 * truth["sample_rate"]
        assert float(row["rate (Hz)"]) == pytest.approx(truth["sample_rate"], abs=0.01)
    assert "3 ok, 0 partial, 0 failed" in panel.status.value
    # the store by its short name (the settings' file://.../store), the session's full URL on hover
    assert f'title="{session.path}"' in panel.status.value and ">store</span>" in panel.status.value
    assert panel.status.value.count(session.path) == 1
    # starts as times of day (their date in the caption), every cell on one line
    for sid in THREE:
        start = ds["start_time"].sel(station=sid).values
        assert table[sid]["start (UTC)"] == format_value("start_utc", start, time_format=TIME_OF_DAY)
        assert len(table[sid]["start (UTC)"]) == len("04:48:33.397")
    assert f"on {format_value('start_utc', start)[:10]}" in panel.results.value
    assert "white-space:nowrap" in panel.results.value


def test_button_is_disabled_while_running_and_enabled_after(acquired: SimpleNamespace) -> None:
    assert acquired.seen, "the acquisition was over before the click returned"
    assert all(disabled for _, disabled in acquired.seen)
    assert acquired.flips == [True, False]
    assert not acquired.panel.running and not acquired.panel.acquire_button.disabled


def test_panel_displays_its_widget(acquired: SimpleNamespace) -> None:
    bundle = acquired.panel._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == acquired.panel.widget.model_id
    labels = [label for label, _ in acquired.panel.station_select.options]
    assert len(labels) == 7
    berlin = load_catalog().get("demo-berlin")
    assert f"demo-berlin — {berlin.name} ({berlin.latitude:.2f}°, {berlin.longitude:.2f}°)" in labels


def test_session_browser_lists_and_opens_the_stored_session(acquired: SimpleNamespace) -> None:
    browser = SessionBrowser(settings=acquired.settings)
    sid = acquired.session.session_id
    df = browser.refresh()
    assert list(df.index) == [sid] and browser.selector.value == sid
    listed = parse_table(browser.listing.value)
    assert listed[sid]["status"] == "ok" and listed[sid]["stations"] == "3"
    assert listed[sid]["frequency (kHz)"] == f"{DEMO7_TUNE_HZ / 1e3:.3f}"
    browser.open_button.click()
    assert browser.errors == []
    ds = browser.dataset
    assert ds is not None and browser.session_id == sid
    assert [str(s) for s in ds["station"].values] == THREE
    assert "3 station(s)" in browser.summary.value and "9749.000 kHz" in browser.summary.value
    summary = parse_table(browser.summary.value[browser.summary.value.index("<table"):])
    # the summary fits the panel: the acquisition table's metrics and the S-meter, the rest named
    assert list(summary["demo-berlin"]) == ["station", "status", *(metric_label(k) for k in SUMMARY_METRICS)]
    assert "ds.sdr.metrics_table()" in browser.summary.value
    for st in THREE:
        snr = float(acquired.session.dataset["snr_db"].sel(station=st))
        assert float(summary[st]["SNR (dB)"]) == pytest.approx(snr, abs=0.051)


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_session_browser_plots_each_kind(acquired: SimpleNamespace, kind: str) -> None:
    browser = SessionBrowser(settings=acquired.settings)
    browser.plot_kind.value = kind
    browser.plot_button.click()  # opens the selected session first
    assert browser.errors == []
    fig = browser.figure
    assert isinstance(fig, Figure) and fig.axes
    assert browser.dataset is not None
    assert_png(browser.plot_output)
    again = browser.plot(kind)
    assert isinstance(again, Figure) and again is not fig and again.axes


def test_history_panel_returns_the_acquired_metrics(acquired: SimpleNamespace) -> None:
    panel = HistoryPanel(settings=acquired.settings)
    ds = acquired.session.dataset
    assert list(panel.stations.options) == sorted(THREE) and panel.message.value == ""
    panel.bucket.value = 60
    panel.plot_button.click()
    assert panel.errors == []
    df = panel.data
    assert df is not None and sorted(df["station_id"]) == sorted(THREE) and (df["n"] == 1).all()
    for rec in df.itertuples():
        assert rec.value == pytest.approx(float(ds["snr_db"].sel(station=rec.station_id)), abs=1e-6)
    fig = panel.figure
    assert fig is not None and sorted(line.get_label() for line in fig.axes[0].get_lines()) == sorted(THREE)
    assert_png(panel.plot_output)
    table = parse_table(panel.table.value)
    # one bucket, or two when the stations' starts straddle a minute boundary (each station in one)
    assert 1 <= len(table) <= 2
    for st in THREE:
        cells = [row[st] for row in table.values() if row.get(st, "").strip() not in ("", "nan", "NaN", "—", "-")]
        assert len(cells) == 1, (st, table)
        assert float(cells[0]) == pytest.approx(float(ds["snr_db"].sel(station=st)), abs=0.051)
    # one station, another metric, an explicit date range
    panel.stations.value = ("demo-berlin",)
    panel.metric.value = "noise_floor_dbfs_hz"
    panel.range_mode.value = "dates"
    today = datetime.now(timezone.utc).date()
    panel.start_date.value, panel.end_date.value = today - timedelta(days=1), today
    one = panel.query()
    assert list(one["station_id"]) == ["demo-berlin"]
    assert one["value"].iloc[0] == pytest.approx(float(ds["noise_floor_dbfs_hz"].sel(station="demo-berlin")), abs=1e-6)
    panel.start_date.value = panel.end_date.value = today - timedelta(days=3)
    assert panel.query().empty and "no Noise floor" in panel.message.value


# ---- input, faults and failures ----------------------------------------------------------------
@pytest.mark.parametrize(("khz", "seconds", "selected", "message"), [
    (40_000.0, 1.0, THREE, "outside 0-30 MHz"),
    (-5.0, 1.0, THREE, "outside 0-30 MHz"),
    (math.nan, 1.0, THREE, "frequency must be a number"),
    (9749.0, 0.0, THREE, "at least 0.1 s"),
    (9749.0, -2.0, THREE, "at least 0.1 s"),
    (9749.0, 1e6, THREE, "exceeds the maximum"),
    (9749.0, 1.0, [], "select at least one station"),
])
def test_bad_input_shows_the_message_and_starts_nothing(khz: float, seconds: float, selected: list[str],
                                                        message: str) -> None:
    panel = AcquisitionPanel(load_catalog().network("demo7"), selected=selected)
    panel.frequency_khz.value, panel.duration.value = khz, seconds
    panel.acquire_button.click()
    assert message in panel.validation.value
    assert not panel.running and not panel.acquire_button.disabled
    assert panel.rows == {} and panel.progress_box.children == () and panel.sessions == []
    with pytest.raises(AcquisitionError, match="no acquisition has been started"):
        panel.wait(0)
    with pytest.raises(ConfigError, match=message):
        panel.acquire()
    assert panel.sessions == [] and not panel.running


def test_failed_stations_are_reported_and_never_lost(run_sim: Any) -> None:
    scene = demo7(seed=4).with_faults(demo_paris=Faults(down=True))
    with run_sim(scene, speed=10.0) as sim:
        panel = AcquisitionPanel(demo7_stations(sim.ports), frequency_hz=DEMO7_TUNE_HZ, duration_s=2.0,
                                 selected=["demo-enschede", "demo-paris", "demo-berlin"])
        panel.acquire_button.click()
        first = panel.wait(timeout=60)
        assert first.failed == ["demo-paris"] and first.ok == ["demo-enschede", "demo-berlin"]
        paris = panel.rows["demo-paris"]
        assert (paris.state.value, paris.bar.bar_style, paris.bar.value) == ("failed", "danger", 0.0)
        assert "ReceiverDown" in paris.detail.value
        for sid in ("demo-enschede", "demo-berlin"):
            assert (panel.rows[sid].state.value, panel.rows[sid].bar.value) == ("ok", 1.0)
        assert len(panel.errors) == 1
        assert "demo-paris" in panel.errors[0] and "ReceiverDown" in panel.errors[0]
        table = parse_table(panel.results.value)
        assert table["demo-paris"]["status"] == "failed" and table["demo-paris"]["error"].startswith("ReceiverDown")
        assert table["demo-berlin"]["status"] == "ok" and float(table["demo-berlin"]["SNR (dB)"]) == pytest.approx(
            scene.truth("demo-berlin", DEMO7_TUNE_HZ)["snr_db"], abs=1.0)
        # a second run with another fault: the first run's error stays, in the list and on screen
        sim.set_faults("demo-paris", Faults())
        sim.set_faults("demo-berlin", Faults(badp=1))
        shown: list[str] = []
        panel.results.observe(lambda change: shown.append(change["new"]), names="value")
        panel.acquire_button.click()
        second = panel.wait(timeout=60)
    # the first run's table went when Acquire was pressed, before the second run's came
    assert len(shown) == 2 and shown[0] == "" and second.session_id in shown[1]
    assert first.session_id not in panel.results.value and first.session_id not in panel.status.value
    assert second.failed == ["demo-berlin"] and "demo-paris" in second.ok
    assert panel.rows["demo-berlin"].state.value == "failed" and panel.rows["demo-paris"].state.value == "ok"
    assert len(panel.errors) == 2 and "demo-paris" in panel.errors[0]
    assert "demo-berlin" in panel.errors[1] and "ReceiverAuthError" in panel.errors[1]
    shown = output_text(panel.error_output)
    assert "demo-paris" in shown and "ReceiverDown" in shown and "ReceiverAuthError" in shown
    assert panel.sessions == [first, second] and first.dataset is not None and first.dataset.sizes["station"] == 2
    assert first.path is not None and second.path is not None


def test_a_failing_store_keeps_the_session_and_says_so(run_sim: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    store = Store(f"file://{blocker}")
    with run_sim(demo7(seed=6), speed=10.0) as sim:
        panel = AcquisitionPanel(demo7_stations(sim.ports), frequency_hz=DEMO7_TUNE_HZ, duration_s=1.0,
                                 selected=THREE[:2], store=store)
        panel.acquire_button.click()
        session = panel.wait(timeout=60)  # a store failure is data, not an exception
    assert session.store_error and session.path is None
    assert panel.sessions == [session] and session.ok == THREE[:2]
    assert session.dataset is not None and int(session.dataset["n_samples"].min()) >= 12_000
    assert len(panel.errors) == 1
    assert session.session_id in panel.errors[0] and "NOT stored" in panel.errors[0]
    assert session.store_error in panel.errors[0] and str(blocker) in panel.errors[0]
    assert "NOT stored" in output_text(panel.error_output) and "NOT stored" in panel.status.value
    assert all(r.state.value == "ok" for r in panel.rows.values())
    # write first, index second: nothing reached the index
    assert HistoryPanel().refresh() == []


def test_wait_raises_what_the_acquisition_raised() -> None:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(processes=False, n_workers=1, dashboard_address="127.0.0.1:0")
    client = Client(cluster, set_as_default=False)
    client.close()
    cluster.close()
    panel = AcquisitionPanel(load_catalog().network("demo7"), frequency_hz=DEMO7_TUNE_HZ, duration_s=1.0,
                             selected=THREE[:2], acquire_kwargs={"client": client})
    panel.acquire_button.click()
    with pytest.raises(Exception, match="[Cc]losed") as ei:
        panel.wait(timeout=30)
    assert not isinstance(ei.value, TimeoutError)
    assert panel.sessions == [] and not panel.running and not panel.acquire_button.disabled
    assert len(panel.errors) == 1 and panel.errors[0].startswith("acquisition failed")
    assert all(r.state.value == "failed" for r in panel.rows.values())


# ---- the browser and the history on empty or failing back ends ----------------------------
def test_session_browser_on_an_empty_store(tmp_path: Path) -> None:
    store = Store(f"file://{tmp_path}/empty")
    browser = SessionBrowser(store)
    assert browser.refresh().empty and browser.errors == []
    # the store by its short name, the full URL on hover
    assert f"no sessions in {store_html(store.where)} yet" in browser.listing.value
    assert f'title="{store.where}"' in browser.listing.value and ">empty</span>" in browser.listing.value
    assert "acquire" in browser.listing.value
    assert browser.selector.options == () and browser.open_button.disabled
    with pytest.raises(ConfigError, match="no session selected"):
        browser.plot()


def test_session_browser_shows_a_campaign_as_one_short_column(tmp_path: Path) -> None:
    """The listing's four campaign keys become one ``campaign`` column ("id #slot"), and none at
    all in a store without campaigns, so the table keeps to its box."""
    from sdrlab.testing import synthetic_dataset

    store = Store(f"file://{tmp_path}/store")
    plain = synthetic_dataset(2, 1.0)
    plain.attrs["session_id"] = "20261124T060000Z-plain1"
    store.write(plain)
    browser = SessionBrowser(store)
    browser.refresh()
    assert "campaign" not in browser.listing.value
    tagged = plain.copy()
    tagged.attrs = {**plain.attrs, "session_id": "20261124T070000Z-camp01", "campaign_id": "beacon",
                    "campaign_slot": 4, "campaign_frequency_hz": 9749000.0, "campaign_start": 1.5e9}
    store.write(tagged)
    browser.refresh()
    html = browser.listing.value
    assert ">campaign<" in html and "beacon #4" in html
    assert "campaign_frequency_hz" not in html and "campaign_start" not in html


def test_session_browser_reports_a_session_deleted_under_it(tmp_path: Path) -> None:
    from sdrlab import testing
    from sdrlab.testing import synthetic_dataset

    store = Store(f"file://{tmp_path}/store")
    store.write(synthetic_dataset(3, 2.0, snr_db=[10.0, 20.0, 31.0]))
    browser = SessionBrowser(store)
    assert browser.selector.value == "synthetic-0"
    ds = browser.open()  # no stored metrics: the summary computes them
    summary = parse_table(browser.summary.value[browser.summary.value.index("<table"):])
    truth = testing.truth(ds)
    for sid in ("syn0", "syn1", "syn2"):
        assert float(summary[sid]["SNR (dB)"]) == pytest.approx(truth[sid]["snr_passband_db"], abs=0.6)
    assert ds.sizes["station"] == 3
    store.delete("synthetic-0")
    browser.dataset = None
    browser.open_button.click()
    assert browser.dataset is None and len(browser.errors) == 1
    assert "no committed session 'synthetic-0'" in browser.errors[0]
    assert "synthetic-0" in output_text(browser.error_output)
    browser.refresh_button.click()
    assert "no sessions in" in browser.listing.value and len(browser.errors) == 1


def test_session_browser_reports_an_unreachable_store() -> None:
    pytest.importorskip("s3fs", reason="needs the s3 extra: pip install 'sdrlab[s3]'")
    from tests.support.servers import _free_ports

    port = _free_ports(1)[0]
    store = Store("s3://sdrlab-nowhere/lab", {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{port}"}, "config_kwargs": {"connect_timeout": 1,
                                                                      "retries": {"max_attempts": 1}}})
    browser = SessionBrowser(store)  # the constructor lists: the error is shown, not raised
    assert len(browser.errors) == 1 and f"127.0.0.1:{port}" in browser.errors[0]
    assert "StorageError" in browser.errors[0] and f"127.0.0.1:{port}" in output_text(browser.error_output)
    browser.refresh_button.click()
    assert len(browser.errors) == 2
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        browser.refresh()
    assert len(browser.errors) == 3


def test_history_panel_on_an_empty_index(tmp_path: Path) -> None:
    panel = HistoryPanel(settings=settings_in(tmp_path))
    assert panel.errors == [] and panel.stations.options == ()
    assert "no metrics in the index" in panel.message.value and "sdrlab index rebuild" in panel.message.value
    panel.plot_button.click()
    assert panel.errors == [] and panel.data is not None and panel.data.empty
    assert "no metrics in the index" in panel.message.value
    assert isinstance(panel.figure, Figure)
    assert_png(panel.plot_output)
    panel.range_mode.value = "dates"
    panel.start_date.value = datetime(2026, 1, 2).date()
    panel.end_date.value = datetime(2026, 1, 1).date()
    with pytest.raises(ConfigError, match="before it starts"):
        panel.query()
    assert len(panel.errors) == 1


# ---- layout: what fits at JupyterLab's default width (tests/test_lab.py checks it rendered) --------
def _em(width: str) -> float:
    assert width.endswith("em"), width
    return float(width[:-2])


def test_acquisition_panel_labels_have_room_for_their_text() -> None:
    """At ~0.62 em a character (DejaVu Sans at 13 px), every description fits its width and the
    station list its longest label, position included; the default 80 px holds about ten characters."""
    panel = AcquisitionPanel(load_catalog().network("demo7"))
    for widget in (panel.frequency_khz, panel.duration, panel.station_select):
        width = widget.style.description_width
        assert width, f"{widget.description!r} keeps the default 80 px description"
        assert _em(width) >= 0.6 * len(widget.description), (widget.description, width)
    longest = max(len(label) for label, _ in panel.station_select.options)
    assert _em(panel.station_select.layout.width) >= 0.62 * longest + 5
    assert panel.station_select.layout.max_width == "100%"
    assert all("°)" in label for label, _ in panel.station_select.options)


def test_panels_wrap_rows_instead_of_overflowing(tmp_path: Path) -> None:
    panel = AcquisitionPanel(load_catalog().network("demo7"))
    assert panel.widget.children[0].layout.flex_flow == "row wrap"
    browser = SessionBrowser(Store(f"file://{tmp_path}/store"))
    history = HistoryPanel(settings=settings_in(tmp_path))
    for p in (browser, history):
        rows = [c for c in p.widget.children if type(c).__name__ == "HBox"]
        assert rows and all(r.layout.flex_flow == "row wrap" for r in rows)
    for widget in (history.metric, history.stations, history.bucket, history.days, history.start_date,
                   history.end_date):
        assert widget.style.description_width or len(widget.description) <= 10, widget.description


@pytest.mark.parametrize(("url", "short"), [
    ("file:///home/me/sdrlab-data", "sdrlab-data"),
    ("file:///home/me/sdrlab-data/", "sdrlab-data"),
    ("file:///tmp/x/data/sessions/20261207T044832Z-827e7f", "20261207T044832Z-827e7f"),
    ("s3://bucket", "s3://bucket"),
    ("s3://bucket/lab", "s3://bucket/lab"),
    ("s3://bucket/a/b/campaign", "s3://bucket/…/campaign"),
    ("s3://bucket/lab at http://127.0.0.1:9000", "s3://bucket/lab"),
    ("sqlite:////home/me/sdrlab-data/index.db", "index.db"),
    ("postgresql+psycopg://me:secret@db.example/sdrlab", "db.example/sdrlab"),
    ("file:///data/" + "x" * 60, "x" * 31 + "…"),
    ("file:///data/meet at noon", "meet at noon"),
])
def test_short_store_name(url: str, short: str) -> None:
    assert short_store_name(url) == short


def test_store_html_shows_the_short_name_and_the_full_url_on_hover() -> None:
    shown = store_html("ftp://me:secret@host/a/b/store?x=1&y='2'")
    assert 'title="ftp://me:***@host/a/b/store?x=1&amp;y=&#x27;2&#x27;"' in shown
    assert "secret" not in shown
    assert store_html("file:///tmp/deep/path/data/sessions/S1", "data").endswith(">data</span>")


def test_tables_keep_cells_on_one_line_and_numbers_right() -> None:
    import pandas as pd

    df = pd.DataFrame({"status": ["ok", "failed"], "snr_db": [21.44, float("nan")],
                       "start_utc": pd.to_datetime(["2026-12-07 04:48:33.397", "2026-12-07 04:48:33.402"]),
                       "error": ["", "ReceiverDown: the receiver at 127.0.0.1:1 refused every connection"]},
                      index=pd.Index(["demo-enschede", "demo-paris"], name="station"))
    out = table_html(df, time_format="%H:%M:%S.%f")
    table = parse_table(out)
    assert table["demo-enschede"]["start (UTC)"] == "04:48:33.397" and table["demo-enschede"]["SNR (dB)"] == "21.4"
    assert out.count("white-space:nowrap") == 4 * 2 and out.count("white-space:normal") == 2  # error wraps
    assert "text-align:right;white-space:nowrap'>21.4<" in out
    assert "max-width:100%" in out
    assert table_html(df.iloc[:1], caption_html="in <b>x</b>").count("<caption style='text-align:left'>in <b>x</b>") == 1


def test_results_table_keeps_dates_when_the_starts_span_midnight() -> None:
    import pandas as pd

    from sdrlab.widgets import session_table_html

    starts = pd.to_datetime(["2026-12-07 23:59:59.900", "2026-12-08 00:00:00.100"])
    table = pd.DataFrame({"status": ["ok", "ok"], "start_utc": starts, "error": ["", ""]},
                         index=pd.Index(["demo-paris", "demo-zurich"], name="station"))
    session = SimpleNamespace(status=lambda: table, session_id="S", frequency_hz=DEMO7_TUNE_HZ, duration_s=3.0)
    out = session_table_html(session)
    assert parse_table(out)["demo-zurich"]["start (UTC)"] == "2026-12-08 00:00:00.100" and " on 2026" not in out
    one = SimpleNamespace(status=lambda: table.iloc[:1], session_id="S", frequency_hz=DEMO7_TUNE_HZ, duration_s=3.0)
    out = session_table_html(one)
    assert parse_table(out)["demo-paris"]["start (UTC)"] == "23:59:59.900" and "3 s on 2026-12-07" in out
    assert "error" not in parse_table(out)["demo-paris"]  # an empty error column is left out


# ---- the campaign panel -------------------------------------------------------------------------
def test_campaign_panel_starts_plots_each_session_from_the_index_and_stops(tmp_path: Path) -> None:
    """Start: three 1 s slots ten minutes apart on the simulator's clock; after each session the
    plot is redrawn from the index (at the end: a line per station through its three interval
    values); the bar fills.  A second panel of a campaign without end: Stop ends it, the session
    being captured is kept, and neither button can be pressed again."""
    from sdrlab.index import make_engine
    from sdrlab.monitor import Campaign, campaign_metrics, campaign_sessions
    from sdrlab.widgets import CampaignPanel

    store, engine = Store(f"file://{tmp_path}/store"), make_engine(f"sqlite:///{tmp_path}/index.db")
    two = ["demo-berlin", "demo-paris"]
    with SimServer(demo7(seed=37), base_port=0, speed=10) as sim:
        stations = [s for s in demo7_stations(sim.ports) if s.id in two]
        kw: dict[str, Any] = dict(settings=Settings(progress=False), stations=stations, store=store, index=engine,
                                  clock=lambda: sim.clock_ns() / 1e9, sleep=sim.advance)
        panel = CampaignPanel(Campaign("panel-1", tuple(two), (DEMO7_TUNE_HZ,), duration_s=1.0, every_s=600.0,
                                       total_s=1800.0), **kw)
        assert not panel.start_button.disabled and panel.stop_button.disabled and "not started" in panel.status.value
        redrawn: list[int] = []
        panel.plot_output.observe(lambda _change: redrawn.append(len(panel.run.sessions)), names="outputs")
        panel.start_button.click()
        assert panel.start_button.disabled and not panel.stop_button.disabled
        report = panel.wait(timeout=120)
        assert len(report.sessions) == 3 and not report.stopped and not panel.errors
        assert redrawn == [1, 2, 3] and panel.bar.value == 3 == panel.bar.max and panel.bar.bar_style == "success"
        assert "3 of 3 session(s) stored, ended" in panel.status.value
        assert panel.start_button.disabled and panel.stop_button.disabled
        assert_png(panel.plot_output)
        series = campaign_metrics(engine, [s.session_id for s in report.sessions])
        assert panel.figure is not None
        lines = {ln.get_label(): ln.get_ydata() for ln in panel.figure.axes[0].get_lines()}
        assert sorted(lines) == two
        for sid in two:
            np.testing.assert_allclose(lines[sid], series[series["station_id"] == sid]["value"].to_numpy())

        endless = CampaignPanel(Campaign("panel-2", tuple(two), (DEMO7_TUNE_HZ,), duration_s=30.0), **kw)
        assert endless.bar.layout.display == "none"  # no total to fill up to
        endless.start()
        assert endless.run.wait_sessions(1, timeout=120) == 1
        endless.stop_button.click()
        assert endless.stop_button.disabled
        stopped = endless.wait(timeout=60)
    assert stopped.stopped and len(stopped.sessions) in (1, 2) and endless.bar.bar_style == "warning"
    assert "stopped" in endless.status.value and endless.start_button.disabled
    assert len(campaign_sessions(store, "panel-2")) == sum(s.path is not None for s in stopped.sessions) >= 1
    with pytest.raises(ConfigError, match="unknown metric"):
        CampaignPanel(Campaign("panel-3", tuple(two), (DEMO7_TUNE_HZ,), duration_s=1.0), metric="loudness", **kw)


def test_the_browser_shows_and_plots_a_session_of_openwebrx_receivers(tmp_path: Path) -> None:
    """An audio-kind session (S-meter and waterfall of known truth, as an OpenWebRX capture
    delivers them): the summary lists its metrics and every plot kind draws from its waterfall."""
    from sdrlab import model
    from sdrlab.acquire import add_metrics
    from tests.test_metrics_spectrum import N0_DB, capture

    ds = add_metrics(model.build_dataset([capture()], {}, session_id="20261207T170000Z-a0d1a0"))
    store = Store(f"file://{tmp_path}/store")
    store.write(ds)
    browser = SessionBrowser(store)
    browser.open("20261207T170000Z-a0d1a0")
    assert "owrx" in browser.summary.value and "SNR" in browser.summary.value
    for kind in PLOT_KINDS:
        fig = browser.plot(kind)
        assert isinstance(fig, Figure) and fig.axes, kind
    psd = browser.dataset.sdr.psd()
    assert 10 * np.log10(float(np.median(psd.values))) == pytest.approx(N0_DB, abs=0.5)
