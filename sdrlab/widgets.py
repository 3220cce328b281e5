"""The workbench's ipywidgets panels: acquire, browse the store, look at metrics over time.

    AcquisitionPanel(stations)   pick stations, frequency (kHz) and duration, Acquire: per-station
                                 progress bars, the results table, errors that are never cleared
    SessionBrowser()             the store's sessions: open one, summary, PSD / spectrogram / map /
                                 metric plots
    HistoryPanel()               a metric per station over time from the index, plot and table
    CampaignPanel(campaign)      Start / Stop a monitoring campaign in the background; sessions
                                 stored, its state, and its metric per station live from the index

Each panel is a plain object whose ``.widget`` is the ipywidgets container; a panel displays
itself (``display(panel)`` or a bare ``panel`` at the end of a cell).  Every button calls a public
method (``acquire``, ``refresh``, ``open``, ``plot``, ``query``): the methods raise on bad input or a
failing store/index, the buttons show the same message in the panel instead.  No logic lives in
the widgets, so the panels are tested by calling ``button.click()`` without a browser or kernel.

Layout: the panels are sized for JupyterLab's default notebook width (about 850 px of output at a
1280 px window): descriptions wide enough for their text, rows that wrap instead of overflowing,
compact tables whose cells never wrap (headers may), times shortened to what the table needs, and
stores named briefly with the full URL in a tooltip (:func:`short_store_name`).

Figures go into the Outputs as PNG (rendered here, so they show whether or not the inline
matplotlib backend is active, and from any thread); they are ``matplotlib.figure.Figure`` objects
that no pyplot registry holds, so nothing leaks.

Needs the ``notebook`` extra: ``pip install 'sdrlab[notebook]'``.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import logging
import math
import threading
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterable, NoReturn, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from .acquire import FINAL_STATES, TABLE_METRICS, Session, final_event, validate_request
from .acquire import acquire as run_acquisition
from .config import Settings
from .errors import AcquisitionError, ConfigError
from .metrics import UNITS
from .monitor import Campaign, CampaignReport, CampaignRun
from .plots import metric_label
from .redact import mask_url
from .stations import Catalog, Station

log = logging.getLogger(__name__)


def _import_ipywidgets() -> Any:
    """ipywidgets ships no type information: the module is used as ``Any``."""
    try:
        return importlib.import_module("ipywidgets")
    except ImportError:
        raise ImportError("the workbench panels need ipywidgets: pip install 'sdrlab[notebook]'") from None


W: Any = _import_ipywidgets()

#: the frequency the acquisition panel starts with when none is given (the demo network's tuning)
DEFAULT_FREQUENCY_HZ = 9_749_000.0
#: final states and their progress-bar colours
BAR_STYLES = {"ok": "success", "partial": "warning", "failed": "danger", "receiving": "info"}
PLOT_KINDS = ("psd", "spectrogram", "map", "metrics")
#: bucket choices of the history panel (label, seconds)
BUCKETS = (("1 min", 60), ("10 min", 600), ("1 h", 3600), ("1 day", 86400))
#: column headers of the tables (metrics get theirs from plots.metric_label)
HEADERS = {
    "station": "station", "status": "status", "samples": "samples", "sample_rate_hz": "rate (Hz)",
    "start_utc": "start (UTC)", "rssi_dbm": "RSSI (dBm)", "seq_gaps": "gaps", "segments": "segments",
    "error": "error", "session_id": "session", "start_time": "start (UTC)",
    "center_frequency_hz": "frequency (kHz)", "duration_s": "duration (s)", "stations": "stations",
    "failed": "failed", "bucket": "bucket (UTC)", "station_id": "station", "n": "captures",
}
_STATUS_COLOURS = {"ok": "#2e7d32", "partial": "#ef6c00", "failed": "#c62828"}
#: free-text columns: their cells may wrap (every other cell stays on one line)
WRAPPING_COLUMNS = ("notes", "error", "message")
#: how a table shows times: date and time to the ms (default), the time of day alone, to the second
TIME_FULL = "%Y-%m-%d %H:%M:%S.%f"
TIME_OF_DAY = "%H:%M:%S.%f"
TIME_SECONDS = "%Y-%m-%d %H:%M:%S"
#: the tables' look: compact (12 px, tight lines), never wider than the panel when it can wrap headers
TABLE_STYLE = "border-collapse:collapse;max-width:100%;font-size:12px;line-height:1.3"
#: the metrics a session's summary shows (the acquisition table's, and the S-meter): all ~20 would not
#: fit the panel; ``ds.sdr.metrics_table()`` has the rest
SUMMARY_METRICS = (*TABLE_METRICS, "rssi_mean_dbm")
#: the width of the acquisition panel's descriptions ("Frequency (kHz)" in full at the widgets' 13 px)
DESCRIPTION_WIDTH = "9em"
#: a store name longer than this is shortened in the panels (the full URL is in the tooltip)
SHORT_NAME_CHARS = 32


# ---- shared helpers -------------------------------------------------------------------------
def format_value(column: str, value: Any, *, time_format: str = TIME_FULL) -> str:
    """A table cell, rounded for reading: dB to 0.1, frequency offsets to 0.1 Hz, the sample
    rate to mHz, fractions to 3 digits, times by ``time_format`` (a ``%f`` is shown to the
    millisecond); missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, (pd.Timestamp, datetime, np.datetime64)):
        text = str(pd.Timestamp(value).strftime(time_format))
        return text[:-3] if time_format.endswith("%f") else text
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if column == "center_frequency_hz":
            return f"{v / 1e3:.3f}"
        if column in ("sample_rate_hz", "sample_rate"):
            return f"{v:.3f}"
        if column.endswith("_fraction"):
            return f"{v:.3g}"
        if column in ("occupied_bandwidth_hz", "duration_s"):
            return f"{v:.0f}" if column == "occupied_bandwidth_hz" else f"{v:g}"
        if column.endswith(("_db", "_dbfs", "_dbm", "_dbfs_hz", "_dbhz", "offset_hz")):
            return f"{v:.1f}"
        return f"{v:.6g}"
    return str(value)


def _header(column: str) -> str:
    if column in UNITS:
        return metric_label(column)
    return HEADERS.get(column, column)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def table_html(df: pd.DataFrame, *, caption: str = "", caption_html: str = "", time_format: str = TIME_FULL) -> str:
    """A DataFrame (index included) as a compact HTML table, cells rounded by :func:`format_value`
    (times by ``time_format``), status cells coloured.  Cells stay on one line (free text in
    :data:`WRAPPING_COLUMNS` excepted), headers wrap between words when the table would not fit,
    numbers align right.  ``caption`` is text; ``caption_html`` markup (a tooltip, say) instead."""
    frame = df.reset_index() if df.index.name is not None else df
    cols = [str(c) for c in frame.columns]
    right = {c for c, name in zip(cols, frame.columns) if _numeric(frame[name])}
    pad = "padding:2px 4px"

    def align(col: str) -> str:
        return "right" if col in right else "left"

    head = "".join(f"<th style='text-align:{align(c)};vertical-align:bottom;{pad}'>{html.escape(_header(c))}</th>"
                   for c in cols)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for col, value in zip(cols, rec):
            text = html.escape(format_value(col, value, time_format=time_format))
            wrap = "white-space:normal;min-width:6em" if col in WRAPPING_COLUMNS else "white-space:nowrap"
            style = f"{pad};text-align:{align(col)};{wrap}"
            if col == "status" and str(value) in _STATUS_COLOURS:
                style += f";color:{_STATUS_COLOURS[str(value)]};font-weight:bold"
            cells.append(f"<td style='{style}'>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap_inner = caption_html or html.escape(caption)
    cap = f"<caption style='text-align:left'>{cap_inner}</caption>" if cap_inner else ""
    return (f"<table class='sdrlab-table' style='{TABLE_STYLE}'>{cap}"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _message_html(text: str, colour: str = "#555", *, markup: str = "") -> str:
    """A line of text (escaped), or of ``markup`` when given."""
    return f"<div style='color:{colour}'>{markup or html.escape(text)}</div>"


def short_store_name(url: str) -> str:
    """A store or index URL as the panels name it: ``file:///home/me/sdrlab-data`` as
    ``sdrlab-data``, ``sqlite:////home/me/sdrlab-data/index.db`` as ``index.db``,
    ``s3://bucket/a/b/c`` as ``s3://bucket/…/c``, ``postgresql+psycopg://me:pw@host/db`` as
    ``host/db``; no credentials (the full URL, its password masked, goes in the tooltip:
    :func:`store_html`)."""
    masked = mask_url(url)
    if masked.startswith("s3://"):  # Store.where: "s3://bucket/prefix at http://endpoint"
        masked = masked.split(" at ", 1)[0]
    masked = masked.rstrip("/")
    scheme, sep, rest = masked.partition("://")
    if not sep:
        return masked
    if scheme == "file" or scheme.startswith("sqlite"):
        name = rest.rsplit("/", 1)[-1] or masked
    else:
        host, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        name = ("s3://" if scheme == "s3" else "") + host.rpartition("@")[2] + (
            "/" + parts[0] if len(parts) == 1 else "/…/" + parts[-1] if parts else "")
    return name if len(name) <= SHORT_NAME_CHARS else name[:SHORT_NAME_CHARS - 1] + "…"


def store_html(url: str, name: str | None = None) -> str:
    """The short name of a store (or ``name``) with the full URL, masked, as its tooltip."""
    full = html.escape(mask_url(url), quote=True)
    shown = html.escape(name if name is not None else short_store_name(url))
    return f"<span title=\"{full}\" style='text-decoration:underline dotted'>{shown}</span>"


def figure_output(fig: Figure, dpi: int = 100) -> dict[str, Any]:
    """A Figure as an Output's ``display_data`` entry (PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    w, h = fig.get_size_inches() * dpi
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": f"<Figure size {w:.0f}x{h:.0f} with {len(fig.axes)} Axes>"}}


def _show_figure(out: Any, fig: Figure) -> None:
    """Put the figure (alone) into the Output, then close it if pyplot manages it."""
    out.outputs = (figure_output(fig),)
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


class _ErrorLog:
    """An Output that is only ever appended to, and the same messages as a list."""

    def __init__(self) -> None:
        self.output = W.Output(layout=W.Layout(max_height="16em", overflow="auto"))
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%SZ")
        with self._lock:
            self.messages.append(message)
            self.output.outputs += ({"output_type": "stream", "name": "stderr", "text": f"[{stamp}] {message}\n"},)
        log.warning("%s", message)


class _Panel:
    """Display delegation and error reporting shared by the panels."""

    widget: Any
    _log: _ErrorLog

    @property
    def errors(self) -> list[str]:
        """Every error message this panel showed, oldest first (never cleared)."""
        return self._log.messages

    @property
    def error_output(self) -> Any:
        return self._log.output

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _report(self, what: str, exc: BaseException) -> None:
        self._log.add(f"{what}: {type(exc).__name__}: {exc}")

    def _handler(self, what: str, fn: Callable[[], object]) -> Callable[[Any], None]:
        """A button callback: run ``fn``; an error the method reported is not shown twice."""
        def on_click(_button: Any) -> None:
            try:
                fn()
            except Exception as exc:
                if not _reported(exc):
                    self._report(what, exc)

        return on_click

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; an error goes to the error output, then is raised again (marked reported)."""
        try:
            return fn()
        except Exception as exc:
            if not _reported(exc):
                self._report(what, exc)
                _mark_reported(exc)
            raise

    def _fail(self, what: str, exc: Exception) -> NoReturn:
        """Report ``exc`` and raise it."""
        self._report(what, exc)
        _mark_reported(exc)
        raise exc


def _mark_reported(exc: BaseException) -> None:
    try:
        exc.__dict__["_sdrlab_reported"] = True
    except AttributeError:  # an exception type without a __dict__
        pass


def _reported(exc: BaseException) -> bool:
    return bool(getattr(exc, "_sdrlab_reported", False))


# ---- acquisition ----------------------------------------------------------------------------
def station_label(st: Station) -> str:
    return f"{st.id} — {st.name} ({st.latitude:.2f}°, {st.longitude:.2f}°)"


#: the progress grid's columns: station and state as wide as their text, the bar and the detail share
#: the rest (the detail wraps rather than running off the panel)
PROGRESS_COLUMNS = "max-content minmax(6em, 1fr) max-content minmax(14em, 2fr)"


class StationProgress:
    """One row of the progress display: station, bar (0..1), state, detail; ``cells`` are the
    row's four widgets, laid out by the panel's grid (:data:`PROGRESS_COLUMNS`)."""

    def __init__(self, station: str) -> None:
        self.station = station
        self.label = W.Label(value=station, layout=W.Layout(width="auto"))
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="auto"))
        self.state = W.Label(value="queued", layout=W.Layout(width="auto", min_width="4.5em"))
        self.detail = W.HTML(value="", layout=W.Layout(width="auto"))
        self.cells = (self.label, self.bar, self.state, self.detail)

    @property
    def final(self) -> bool:
        return str(self.state.value) in FINAL_STATES

    def update(self, event: dict[str, Any]) -> None:
        state = str(event.get("state", ""))
        if self.final and state not in FINAL_STATES:
            return  # a late 'receiving' event never undoes the final state
        fraction = event.get("fraction")
        if isinstance(fraction, (int, float)) and math.isfinite(fraction):
            self.bar.value = min(1.0, max(0.0, float(fraction)))
        self.bar.bar_style = BAR_STYLES.get(state, "")
        self.state.value = state
        parts = []
        samples = event.get("samples")
        if samples:
            parts.append(f"{int(samples)} samples")
        if isinstance(event.get("snr_db"), (int, float)) and math.isfinite(event["snr_db"]):
            parts.append(f"SNR {event['snr_db']:.1f} dB")
        if isinstance(event.get("frequency_offset_hz"), (int, float)) and math.isfinite(event["frequency_offset_hz"]):
            parts.append(f"offset {event['frequency_offset_hz']:+.1f} Hz")
        if event.get("message"):
            parts.append(str(event["message"])[:160])
        self.detail.value = html.escape(" · ".join(parts))


def session_table_html(session: Session) -> str:
    """``session.status()`` as an HTML table (status and metrics, rounded); starts as times of day,
    their date in the caption; the notes and error columns only when a station has one."""
    table = session.status()
    for col in WRAPPING_COLUMNS:
        if col in table and not table[col].fillna("").astype(str).str.strip().any():
            table = table.drop(columns=col)
    starts = pd.to_datetime(table["start_utc"]).dropna() if "start_utc" in table else pd.Series([], dtype=object)
    one_day = len(starts) > 0 and starts.dt.date.nunique() == 1  # else full dates: the day would be ambiguous
    day = f" on {starts.min():%Y-%m-%d}" if one_day else ""
    return table_html(table, time_format=TIME_OF_DAY if one_day else TIME_FULL,
                      caption=f"session {session.session_id} at {session.frequency_hz / 1e3:.3f} kHz, "
                              f"{session.duration_s:g} s{day}")


def station_select_width(labels: Iterable[str]) -> str:
    """A width for the station list that shows its longest label whole at the widgets' 13 px:
    the description, ~0.62 em a character (DejaVu Sans, the widest usual UI font), the scrollbar."""
    longest = max((len(x) for x in labels), default=20)
    return f"{6 + 0.62 * longest:.1f}em"


class AcquisitionPanel(_Panel):
    """Pick stations, a frequency (kHz) and a duration; Acquire runs :func:`sdrlab.acquire.acquire`
    in a background thread, draws per-station progress, then the results table.

    ``stations``: Station objects (default: the settings' catalogue, or ``catalog``);
    ``selected``: ids ticked at start; ``store``/``index``: where sessions go (default: the
    settings'); ``acquire_kwargs``: passed on to ``acquire`` (``options``, ``client``,
    ``scheduler``, ``write``...).  Every session stays in ``sessions``; ``session`` is the latest
    acquisition's (None while one runs: Acquire clears the previous table and session); errors
    accumulate in ``errors`` and the error output.
    """

    def __init__(
        self,
        stations: Sequence[Station] | None = None,
        *,
        catalog: Catalog | None = None,
        settings: Settings | None = None,
        frequency_hz: float | None = None,
        duration_s: float = 10.0,
        selected: Iterable[str] | None = None,
        store: Any = None,
        index: Any = None,
        acquire_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        if stations is None:
            stations = list(catalog if catalog is not None else self.settings.catalog_obj())
        self.stations: dict[str, Station] = {}
        for st in stations:
            if st.id in self.stations:
                raise ConfigError(f"station {st.id} listed twice")
            self.stations[st.id] = st
        chosen = list(selected or [])
        unknown = [s for s in chosen if s not in self.stations]
        if unknown:
            raise ConfigError(f"selected stations not in the list: {', '.join(unknown)}")
        self.acquire_kwargs = dict(acquire_kwargs or {})
        for reserved in ("progress", "on_progress", "settings"):
            if reserved in self.acquire_kwargs:
                raise ConfigError(f"acquire_kwargs must not set {reserved!r}: the panel sets it")
        self.store = store
        self.index = index
        self.session: Session | None = None
        self.sessions: list[Session] = []
        #: the progress events of the latest acquisition, in arrival order
        self.events: list[dict[str, Any]] = []
        self.rows: dict[str, StationProgress] = {}
        self._log = _ErrorLog()
        self._lock = threading.RLock()
        self._running = False
        self._thread: threading.Thread | None = None
        self._exc: BaseException | None = None

        options = [(station_label(s), s.id) for s in self.stations.values()]
        self.station_select = W.SelectMultiple(
            options=options, value=tuple(chosen), rows=min(10, max(3, len(self.stations))), description="Stations",
            style={"description_width": "5em"},
            layout=W.Layout(width=station_select_width(label for label, _ in options), max_width="100%"))
        controls = W.Layout(width="18em")
        self.frequency_khz = W.FloatText(
            value=(DEFAULT_FREQUENCY_HZ if frequency_hz is None else float(frequency_hz)) / 1e3,
            description="Frequency (kHz)", style={"description_width": DESCRIPTION_WIDTH}, layout=controls)
        self.duration = W.FloatText(value=float(duration_s), description="Duration (s)",
                                    style={"description_width": DESCRIPTION_WIDTH}, layout=controls)
        self.acquire_button = W.Button(description="Acquire", button_style="primary", icon="download",
                                       tooltip="acquire the selected stations in parallel",
                                       layout=W.Layout(margin=f"2px 2px 2px calc({DESCRIPTION_WIDTH} + 8px)"))
        self.acquire_button.on_click(self._handler("acquisition", lambda: self.acquire()))
        self.validation = W.HTML(value="")
        self.status = W.HTML(value="")
        self.progress_box = W.GridBox([], layout=W.Layout(
            grid_template_columns=PROGRESS_COLUMNS, grid_gap="0 8px", align_items="center"))
        self.results = W.HTML(value="", layout=W.Layout(max_width="100%", overflow="auto"))
        self.widget = W.VBox([
            W.HBox([self.station_select, W.VBox([self.frequency_khz, self.duration, self.acquire_button])],
                   layout=W.Layout(flex_flow="row wrap")),
            self.validation, self.status, self.progress_box, self.results, self.error_output,
        ])

    # ---- public API ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    def request(self) -> tuple[list[Station], float, float]:
        """The stations, frequency (Hz) and duration (s) the widgets hold, validated
        (:class:`~sdrlab.errors.ConfigError` names what is wrong)."""
        frequency_hz = float(self.frequency_khz.value) * 1e3
        duration_s = float(self.duration.value)
        ids = [str(s) for s in self.station_select.value]
        validate_request(frequency_hz, duration_s, [self.stations[s] for s in ids] if ids else None)
        if not ids:
            raise ConfigError("select at least one station")
        return [self.stations[s] for s in ids], frequency_hz, duration_s

    def acquire(self, wait: bool = False) -> threading.Thread:
        """Start an acquisition of the selected stations in a background thread (the button does
        the same).  Bad input raises ConfigError (and shows it); ``wait=True`` returns when done
        (see :meth:`wait` for the session)."""
        with self._lock:
            if self._running:
                raise AcquisitionError("an acquisition is already running on this panel; wait for it")
            try:
                stations, frequency_hz, duration_s = self.request()
            except ConfigError as exc:
                self.validation.value = _message_html(str(exc), "#c62828")
                _mark_reported(exc)
                raise
            self.validation.value = ""
            self._running = True
            self._exc = None
            self.acquire_button.disabled = True
            self.events = []
            # the previous result goes: its table and session would read as this run's
            self.session = None
            self.results.value = ""
            self.rows = {s.id: StationProgress(s.id) for s in stations}
            self.progress_box.children = tuple(w for r in self.rows.values() for w in r.cells)
            self.status.value = _message_html(
                f"acquiring {len(stations)} station(s) at {frequency_hz / 1e3:.3f} kHz for {duration_s:g} s…")
            thread = threading.Thread(target=self._run, args=(stations, frequency_hz, duration_s),
                                      name="sdrlab-acquisition", daemon=True)
            self._thread = thread
            thread.start()
        if wait:
            thread.join()
        return thread

    def wait(self, timeout: float | None = None) -> Session:
        """The session of the latest acquisition once it is done; raises what the acquisition
        raised (a store failure does not raise: see ``session.store_error``), TimeoutError when
        it is still running after ``timeout`` seconds."""
        thread = self._thread
        if thread is None:
            raise AcquisitionError("no acquisition has been started on this panel")
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the acquisition is still running after {timeout} s")
        if self._exc is not None:
            raise self._exc
        assert self.session is not None
        return self.session

    # ---- the background thread -------------------------------------------------------------
    def _on_progress(self, event: dict[str, Any]) -> None:
        """Called by ``acquire`` from its threads."""
        with self._lock:
            self.events.append(dict(event))
            row = self.rows.get(str(event.get("station")))
            if row is not None:
                row.update(event)

    def _run(self, stations: list[Station], frequency_hz: float, duration_s: float) -> None:
        try:
            kw: dict[str, Any] = {"store": self.store, "index": self.index, **self.acquire_kwargs}
            session = run_acquisition(stations, frequency_hz, duration_s, settings=self.settings, progress=False,
                                      on_progress=self._on_progress, **kw)
            self._finish(session)
        except BaseException as exc:  # shown, kept for wait(); the thread never dies silently
            self._exc = exc
            self._report("acquisition failed", exc)
            with self._lock:
                for row in self.rows.values():
                    if not row.final:
                        row.update({"state": "failed", "message": f"{type(exc).__name__}: {exc}"})
            self.status.value = _message_html(f"acquisition failed: {type(exc).__name__}: {exc}", "#c62828")
        finally:
            with self._lock:
                self._running = False
                self.acquire_button.disabled = False

    def _finish(self, session: Session) -> None:
        with self._lock:
            self.session = session
            self.sessions.append(session)
            for sid, res in session.results.items():  # the final state even if its event was lost
                row = self.rows.get(sid)
                if row is not None and not row.final:
                    row.update(final_event(res, session.duration_s))
        self.results.value = session_table_html(session)
        sid = session.session_id
        for st, res in session.results.items():
            if res.status != "ok":
                kind = "failed" if res.status == "failed" else "partial (its data is kept)"
                self._log.add(f"{st} {kind} in session {sid}: {res.error_class}: {res.message}")
        if session.dataset is None:
            self._log.add(f"session {sid}: no station delivered data; nothing to store")
        if session.store_error:
            self._log.add(f"session {sid} NOT stored: {session.store_error} (the data is kept in "
                          f"panel.sessions[{len(self.sessions) - 1}].dataset; write it with "
                          "sdrlab.acquire.save(session, store))")
        if session.index_error:
            self._log.add(f"session {sid} stored but not indexed: {session.index_error} "
                          "(run `sdrlab index rebuild` later)")
        counts = {s: sum(r.status == s for r in session.results.values()) for s in ("ok", "partial", "failed")}
        where = (f"stored in {store_html(session.path, short_store_name(self.store_url))}" if session.path else
                 "NOT stored (see the errors below)" if session.store_error else "not stored")
        text = f"session {sid}: {counts['ok']} ok, {counts['partial']} partial, {counts['failed']} failed; "
        self.status.value = _message_html(
            "", "#2e7d32" if counts["ok"] == len(session.results) and not session.store_error else "#ef6c00",
            markup=html.escape(text) + where)

    @property
    def store_url(self) -> str:
        """The URL of the store sessions go to (the panel's ``store``, else the settings')."""
        if self.store is None:
            return str(self.settings.store)
        return str(getattr(self.store, "url", None) or self.store)


# ---- the store ------------------------------------------------------------------------------
def _listing_shown(df: pd.DataFrame) -> pd.DataFrame:
    """The listing as the browser shows it: a monitoring campaign's four keys as one short
    ``campaign`` column (``id #slot``), and only when some session belongs to one."""
    from .store import CAMPAIGN_KEYS

    shown = df.drop(columns=[c for c in CAMPAIGN_KEYS if c in df.columns])
    if "campaign_id" in df.columns and df["campaign_id"].notna().any():
        shown["campaign"] = [f"{c} #{int(k)}" if isinstance(c, str) else ""
                             for c, k in zip(df["campaign_id"], df["campaign_slot"])]
    return shown


class SessionBrowser(_Panel):
    """The sessions of a store (default: the settings' one): Refresh, pick, Open, Plot."""

    def __init__(self, store: Any = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.store = store if store is not None else self.settings.store_obj()
        self.table: pd.DataFrame | None = None
        self.dataset: xr.Dataset | None = None
        self.session_id: str | None = None
        self.figure: Figure | None = None
        self._log = _ErrorLog()

        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.selector = W.Dropdown(options=[], description="Session", style={"description_width": "4.5em"},
                                   layout=W.Layout(width="42em", max_width="100%"))
        self.open_button = W.Button(description="Open", icon="folder-open", disabled=True)
        self.plot_kind = W.ToggleButtons(options=[("PSD", "psd"), ("spectrogram", "spectrogram"),
                                                  ("map", "map"), ("metrics", "metrics")], value="psd")
        self.plot_button = W.Button(description="Plot", icon="line-chart", disabled=True)
        self.listing = W.HTML(value="")
        self.summary = W.HTML(value="")
        self.plot_output = W.Output()
        self.refresh_button.on_click(self._handler("refresh", self.refresh))
        self.open_button.on_click(self._handler("open", lambda: self.open()))
        self.plot_button.on_click(self._handler("plot", lambda: self.plot()))
        self.summary.layout = W.Layout(max_width="100%", overflow="auto")
        self.listing.layout = W.Layout(max_width="100%", overflow="auto", max_height="24em")
        wrap = W.Layout(flex_flow="row wrap")
        self.widget = W.VBox([
            W.HBox([self.refresh_button, self.selector, self.open_button], layout=wrap), self.listing,
            self.summary, W.HBox([self.plot_kind, self.plot_button], layout=wrap), self.plot_output, self.error_output,
        ])
        try:
            self.refresh()
        except Exception:  # reported in the error output; the panel still shows
            pass

    def refresh(self) -> pd.DataFrame:
        """List the store's sessions (newest first in the selector)."""
        df: pd.DataFrame = self._guard(f"listing the sessions of {self.store.where}", self.store.sessions)
        self.table = df
        ids = [str(s) for s in df.index][::-1]
        previous = self.selector.value
        self.selector.options = [(self._option(sid, df.loc[sid]), sid) for sid in ids]
        self.selector.value = previous if previous in ids else (ids[0] if ids else None)
        self.open_button.disabled = not ids
        self.plot_button.disabled = not ids
        where = store_html(self.store.where)
        if not ids:
            self.listing.value = _message_html("", markup=(
                f"no sessions in {where} yet: acquire one with sdrlab.widgets.AcquisitionPanel, "
                "sdrlab.acquire.acquire(...) or <code>sdrlab acquire --station ID --frequency HZ --duration S</code>"))
        else:
            self.listing.value = table_html(_listing_shown(df).iloc[::-1],
                                            caption_html=f"{len(ids)} session(s) in {where}", time_format=TIME_SECONDS)
        return df

    @staticmethod
    def _option(sid: str, row: pd.Series) -> str:
        f = row.get("center_frequency_hz")
        freq = f"{float(f) / 1e3:.3f} kHz" if f is not None and math.isfinite(float(f)) else "? kHz"
        return f"{sid} — {freq}, {row.get('stations')} station(s), {row.get('status')}"

    def open(self, session_id: str | None = None) -> xr.Dataset:
        """Open a session (default: the selected one) into ``dataset`` and show its summary."""
        sid = session_id if session_id is not None else self.selector.value
        if not sid:
            self._fail("open", ConfigError(f"no session selected (the store {self.store.where} lists none; "
                                           "press Refresh)"))
        ds: xr.Dataset = self._guard(f"opening session {sid}", lambda: self.store.open(str(sid)))
        self.dataset, self.session_id = ds, str(sid)
        if any(sid == v for _, v in self.selector.options):
            self.selector.value = sid
        self.plot_button.disabled = False
        self.summary.value = self._guard(f"summarising session {sid}", lambda: dataset_summary_html(ds))
        return ds

    def plot(self, kind: str | None = None) -> Figure:
        """Plot the open session (opening the selected one first if none is open):
        ``psd``, ``spectrogram``, ``map`` or ``metrics``; the figure goes into the plot output."""
        kind = kind or str(self.plot_kind.value)
        if kind not in PLOT_KINDS:
            self._fail("plot", ConfigError(f"unknown plot kind {kind!r} (known: {', '.join(PLOT_KINDS)})"))
        ds = self.dataset if self.dataset is not None and (
            self.selector.value in (None, self.session_id)) else self.open()
        makers: dict[str, Callable[[], Figure]] = {
            "psd": ds.sdr.plot_psd, "spectrogram": ds.sdr.plot_spectrogram, "map": ds.sdr.plot_map,
            "metrics": ds.sdr.plot_metrics,
        }
        fig: Figure = self._guard(f"plotting {kind} of session {self.session_id}", makers[kind])
        _show_figure(self.plot_output, fig)
        self.figure = fig
        return fig


def dataset_summary_html(ds: xr.Dataset) -> str:
    """Stations, frequency, duration, start and per-station metrics of a session."""
    from . import model

    n = int(ds.sizes.get("station", 0))
    status = model.station_status(ds) if "station_status" in ds.attrs else pd.DataFrame()
    failed = [str(s) for s in status.index if "status" in status and status.loc[s, "status"] == "failed"]
    freq = ds.attrs.get("center_frequency_hz")
    duration = ds.attrs.get("requested_duration_s")
    if duration is None and n:
        duration = float((ds["n_samples"] / ds["sample_rate"]).max())
    start = pd.Timestamp(ds["start_time"].min().values) if "start_time" in ds.coords and n else None
    facts = [f"<b>{html.escape(str(ds.attrs.get('session_id', '')))}</b>", f"{n} station(s) with data"]
    if failed:
        facts.append(f"failed: {html.escape(', '.join(failed))}")
    if freq is not None:
        facts.append(f"{float(freq) / 1e3:.3f} kHz")
    if duration is not None:
        facts.append(f"{float(duration):g} s")
    if start is not None:
        facts.append(f"start {format_value('start_time', start)} UTC")
    stored = [k for k in UNITS if k in ds.data_vars]
    if stored:
        table = pd.DataFrame({k: ds[k].values for k in stored}, index=pd.Index(
            [str(s) for s in ds["station"].values], name="station"))
    else:  # e.g. an imported session without metrics: compute them
        table = ds.sdr.metrics_table()
        table.columns = [str(c).split(" [")[0] for c in table.columns]
    everything = len(table.columns)
    table = table[[c for c in SUMMARY_METRICS if c in table.columns]]
    if "status" in ds.coords:
        table.insert(0, "status", [str(v) for v in ds["status"].values])
    more = (f"<div style='color:#555;font-size:12px'>{len(table.columns) - ('status' in table)} of the "
            f"{everything} metrics (all of them: <code>ds.sdr.metrics_table()</code> of the opened dataset)</div>"
            if everything > len(SUMMARY_METRICS) else "")
    return "<div>" + " · ".join(facts) + "</div>" + table_html(table) + more


# ---- the index ------------------------------------------------------------------------------
class HistoryPanel(_Panel):
    """A metric per station over time from the metrics index (default: the settings' engine)."""

    def __init__(self, engine: Any = None, *, settings: Settings | None = None) -> None:
        from .index import init_db
        from .index.models import METRIC_COLUMNS

        self.settings = settings or Settings.from_env()
        self.engine = engine if engine is not None else self.settings.engine()
        self.where = mask_url(self.engine.url.render_as_string(hide_password=True))
        self.data: pd.DataFrame | None = None
        self.figure: Figure | None = None
        self._log = _ErrorLog()

        self.metric = W.Dropdown(options=[(metric_label(k), k) for k in UNITS if k in METRIC_COLUMNS],
                                 value="snr_db", description="Metric")
        self.stations = W.SelectMultiple(options=[], description="Stations", rows=6)
        self.bucket = W.Dropdown(options=list(BUCKETS), value=3600, description="Bucket")
        self.range_mode = W.ToggleButtons(options=[("last N days", "days"), ("between dates", "dates")],
                                          value="days")
        self.days = W.BoundedIntText(value=7, min=1, max=36500, description="Days")
        self.start_date = W.DatePicker(description="From")
        self.end_date = W.DatePicker(description="To (incl.)")
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="reload the station list")
        self.plot_button = W.Button(description="Plot", icon="line-chart", button_style="primary")
        self.message = W.HTML(value="")
        self.plot_output = W.Output()
        self.table = W.HTML(value="", layout=W.Layout(max_width="100%", overflow="auto"))
        self.refresh_button.on_click(self._handler("refresh", self.refresh))
        self.plot_button.on_click(self._handler("plot", self.plot))
        wrap = W.Layout(flex_flow="row wrap")
        self.widget = W.VBox([
            W.HBox([W.VBox([self.metric, self.bucket, self.refresh_button]), self.stations], layout=wrap),
            W.HBox([self.range_mode, self.days], layout=wrap), W.HBox([self.start_date, self.end_date], layout=wrap),
            self.plot_button, self.message, self.plot_output, self.table, self.error_output,
        ])
        try:
            self._guard(f"setting up the index at {self.where}", lambda: init_db(self.engine))
            self.refresh()
        except Exception:  # reported in the error output
            pass

    def refresh(self) -> list[str]:
        """Reload the stations that have metrics in the index."""
        from sqlalchemy import select

        from .index.models import MetricRow

        def load() -> list[str]:
            with self.engine.connect() as c:
                rows = c.execute(select(MetricRow.station_id).distinct().order_by(MetricRow.station_id))
                return [str(r) for r in rows.scalars()]

        ids: list[str] = self._guard(f"reading the stations of the index at {self.where}", load)
        keep = tuple(s for s in self.stations.value if s in ids)
        self.stations.options = ids
        self.stations.value = keep
        self.message.value = "" if ids else _message_html("", markup=self._empty_html())
        return ids

    def _empty_html(self) -> str:
        return (f"no metrics in the index at {store_html(self.where)} yet: acquire a session "
                "(sdrlab.widgets.AcquisitionPanel or <code>sdrlab acquire</code>), or index the store's sessions "
                "with <code>sdrlab index rebuild</code>")

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """(start, end) in UTC from the range controls (end exclusive)."""
        if self.range_mode.value == "days":
            return datetime.now(timezone.utc) - timedelta(days=int(self.days.value)), None
        start = _day(self.start_date.value)
        end = _day(self.end_date.value)
        end = end + timedelta(days=1) if end is not None else None
        if start is not None and end is not None and end <= start:
            raise ConfigError(f"the range ends ({self.end_date.value}) before it starts ({self.start_date.value})")
        return start, end

    def query(self) -> pd.DataFrame:
        """``metric_over_time`` for the chosen metric, stations (none = all), bucket and range;
        the table shows it (one column per station)."""
        from .index import metric_over_time

        metric = str(self.metric.value)
        stations = [str(s) for s in self.stations.value] or None

        def run() -> pd.DataFrame:
            start, end = self.time_range()
            return metric_over_time(self.engine, metric, bucket_s=int(self.bucket.value), start=start, end=end,
                                    stations=stations)

        df: pd.DataFrame = self._guard(f"querying {metric} from the index at {self.where}", run)
        self.data = df
        if df.empty:
            self.table.value = ""
            self.message.value = _message_html("", markup=self._empty_html()) if not self.stations.options else \
                _message_html(f"no {metric_label(metric)} values for {', '.join(stations) if stations else 'any station'} "
                              "in this time range; widen the range or acquire a session")
        else:
            self.message.value = ""
            wide = df.pivot_table(index="bucket", columns="station_id", values="value").sort_index()
            wide.columns = [str(c) for c in wide.columns]
            self.table.value = _history_table_html(wide, metric, str(self.bucket.label))
        return df

    def plot(self) -> Figure:
        """Query, then one line per station; the figure goes into the plot output."""
        df = self.query()
        metric = str(self.metric.value)
        fig = history_figure(df, metric, str(self.bucket.label))
        _show_figure(self.plot_output, fig)
        self.figure = fig
        return fig


def _day(d: date | None) -> datetime | None:
    return None if d is None else datetime.combine(d, time.min, tzinfo=timezone.utc)


def _history_table_html(wide: pd.DataFrame, metric: str, bucket: str) -> str:
    """Buckets down, stations across, values rounded like the metric."""
    cells = wide.apply(lambda col: [format_value(metric, v) for v in col])
    cells.index = pd.Index([pd.Timestamp(b).strftime("%Y-%m-%d %H:%M") for b in wide.index], name="bucket")
    return table_html(cells, caption=f"{metric_label(metric)} per {bucket}")


def history_figure(df: pd.DataFrame, metric: str, bucket: str = "") -> Figure:
    """One line per station of a ``metric_over_time`` result (a note when it is empty)."""
    import matplotlib.dates as mdates

    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    if df.empty:
        ax.text(0.5, 0.5, f"no {metric_label(metric)} values in this range", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for sid, g in df.sort_values("bucket").groupby("station_id", sort=True):
        ax.plot(g["bucket"], g["value"], marker="o", label=str(sid))
    ax.set_ylabel(metric_label(metric))
    ax.set_xlabel("UTC")
    ax.set_title(f"{metric_label(metric)} per station" + (f", {bucket} buckets" if bucket else ""))
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


# ---- campaigns ------------------------------------------------------------------------------
class CampaignPanel(_Panel):
    """Start and Stop a monitoring campaign run in the background
    (:class:`sdrlab.monitor.CampaignRun`), and watch it: a bar of the sessions stored, its state,
    and ``metric`` of every station per 10 s interval, read from the index after each session.

    ``run_kw`` go to :class:`~sdrlab.monitor.CampaignRun` (``settings``, ``stations``, ``store``,
    ``index``, ``clock``, ``sleep``, ``attrs``...).  Stop ends the session being captured at
    once (what arrived is stored); a run starts once, and a new panel of the same campaign resumes it."""

    def __init__(self, campaign: Campaign, *, metric: str = "snr_db", **run_kw: Any) -> None:
        from .index.models import METRIC_COLUMNS

        if metric not in METRIC_COLUMNS:
            raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(METRIC_COLUMNS)})")
        self.metric = metric
        self.figure: Figure | None = None
        self._log = _ErrorLog()
        self.run = CampaignRun(campaign, on_session=self._on_session, on_done=self._on_done, **run_kw)
        total = self.run.total
        self.start_button = W.Button(description="Start", button_style="primary", icon="play",
                                     tooltip="run the campaign in the background")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    tooltip="end the session being captured now (what arrived is stored) and stop")
        self.bar = W.IntProgress(value=0, min=0, max=max(1, total or 1), bar_style="info",
                                 layout=W.Layout(width="18em", display="" if total else "none"))
        self.status = W.HTML(value="")
        self.plot_output = W.Output()
        self.start_button.on_click(self._handler("start", self.start))
        self.stop_button.on_click(self._handler("stop", self.stop))
        self.widget = W.VBox([
            W.HBox([self.start_button, self.stop_button, self.bar], layout=W.Layout(flex_flow="row wrap",
                                                                                    align_items="center")),
            self.status, self.plot_output, self.error_output,
        ])
        self._show_state()

    def start(self) -> CampaignRun:
        """Start the campaign in a background thread (the Start button does the same)."""
        run: CampaignRun = self._guard(f"starting campaign {self.run.campaign.id}", self.run.start)
        self.start_button.disabled = True
        self.stop_button.disabled = False
        self._show_state()
        return run

    def stop(self) -> None:
        """Stop now, without waiting for the run to end (the Stop button does the same)."""
        self.run.stop(timeout=0)
        self.stop_button.disabled = True
        self._show_state()

    def wait(self, timeout: float | None = None) -> CampaignReport:
        """The run's report once it has ended (see :meth:`sdrlab.monitor.CampaignRun.wait`)."""
        return self.run.wait(timeout)

    def refresh(self) -> Figure:
        """Read the campaign's metric from the index and draw it (done after every session)."""
        df: pd.DataFrame = self._guard("reading the campaign's metrics from the index",
                                       lambda: self.run.metrics(self.metric))
        fig = history_figure(df.rename(columns={"time": "bucket"}), self.metric)
        if fig.axes and fig.axes[0].get_title():
            fig.axes[0].set_title(f"{metric_label(self.metric)} per station and 10 s interval, "
                                  f"campaign {self.run.campaign.id}")
        _show_figure(self.plot_output, fig)
        self.figure = fig
        return fig

    def _show_state(self) -> None:
        run = self.run
        colour = "#c62828" if run.error is not None else "#2e7d32" if run.done else "#555"
        self.status.value = _message_html(run.progress(), colour)

    def _on_session(self, session: Session) -> None:
        """Called by the campaign's thread with each stored session."""
        self.bar.value = min(self.bar.max, len(self.run.sessions))
        sid = session.session_id
        for st, res in session.results.items():
            if res.status != "ok":
                self._log.add(f"{st} {res.status} in session {sid}: {res.error_class}: {res.message}")
        if session.store_error:
            self._log.add(f"session {sid} NOT stored: {session.store_error}")
        try:
            self.refresh()
        except Exception:  # shown in the error output; the campaign goes on
            pass
        self._show_state()

    def _on_done(self, run: CampaignRun) -> None:
        self.start_button.disabled = True  # a run starts once: a new panel resumes the campaign
        self.stop_button.disabled = True
        if run.error is not None:
            self._report("campaign failed", run.error)
        self.bar.bar_style = "danger" if run.error is not None else "success" if not run.stopping else "warning"
        self._show_state()
