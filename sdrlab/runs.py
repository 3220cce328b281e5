"""Batch runs of the workbench notebooks (papermill) and their shareable HTML reports (nbconvert).

:func:`run_notebook` is a thin wrapper over :func:`papermill.execute_notebook`: parameters go
through unchanged (``-p`` values are typed exactly as ``papermill -p`` types them), the output path
is a template filled from the parameters, and the kernel gets ``SDRLAB_RUN_ID`` so that a session
acquired inside the run carries the run id into the store and the index.  Each run is recorded in
the index (``notebook_runs``), with the sessions the notebook published through
:func:`sdrlab.notebook.publish`.  A failing cell raises :class:`NotebookRunError` naming the cell;
the partial output notebook is kept.

:func:`render_report` turns an executed notebook into one self-contained HTML file: code hidden,
figures embedded as ``data:`` URIs, no script loaded from the internet (so it reads offline and in
a mail attachment).
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .config import workbench_settings
from .errors import ConfigError, IndexStoreError, NotebookRunError, SdrlabError
from .redact import mask_urls_in, public_parameters, scrub, scrub_tree, secrets_in

log = logging.getLogger(__name__)

#: the MIME type of the facts a notebook publishes for its run (session ids, ...)
PUBLISH_MIME = "application/vnd.sdrlab.run+json"
RUN_ID_ENV = "SDRLAB_RUN_ID"
DEFAULT_OUTPUT = "reports/{notebook}-{run_id}.ipynb"
TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass
class RunResult:
    run_id: str
    notebook: str
    output: str
    parameters: dict[str, Any]
    status: str = "running"  # running | ok | failed
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    #: facts the notebook published (sdrlab.notebook.publish): session ids and the like
    published: dict[str, Any] = field(default_factory=dict)
    html: str | None = None
    error: str | None = None
    failed_cell: int | None = None
    #: why the run is not in the index (None when recorded, or not asked to)
    index_error: str | None = None

    @property
    def session_ids(self) -> list[str]:
        """The sessions the run published, as ``ID@VERSION`` when it published the data version
        it read (``-p session ID@VERSION`` reruns it on exactly that data)."""
        ids = self.published.get("session_id")
        out = [ids] if isinstance(ids, str) else list(ids or [])
        version = self.published.get("data_version")
        if isinstance(version, str) and version and len(out) == 1:
            out = [f"{out[0]}@{version}"]
        return out


def new_run_id(now: datetime | None = None) -> str:
    import secrets

    now = now or datetime.now(timezone.utc)
    return f"run-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# ---- parameters -------------------------------------------------------------------------------
def parse_parameter(value: str) -> Any:
    """A ``-p NAME VALUE`` value typed exactly as ``papermill -p`` types it (bool, None, int,
    float, else the string)."""
    from papermill.cli import _resolve_type

    return _resolve_type(value)


def load_yaml_parameters(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read parameters file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameters file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"parameters file {p} must hold a mapping of names to values")
    return data


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """The names and default values (as source text) of the cell tagged ``parameters``, as
    papermill's inspection reads them."""
    from papermill import inspect_notebook

    return {name: p["default"] for name, p in inspect_notebook(str(notebook)).items()}


def output_path(template: str, parameters: Mapping[str, Any], notebook: str | Path, run_id: str) -> Path:
    """The output path: ``template`` with ``{name}`` fields filled from the parameters plus
    ``{notebook}`` (the input's stem), ``{run_id}`` and ``{date}`` (UTC, YYYYmmdd)."""
    fields = {
        "notebook": Path(notebook).stem, "run_id": run_id,
        "date": datetime.now(timezone.utc).strftime("%Y%m%d"),
        **{k: _path_safe(v) for k, v in public_parameters(parameters).items()},
    }
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise ConfigError(f"output path {template!r} is not a valid template: {exc}") from None
    unknown = sorted({n.split(".")[0].split("[")[0] for n in names} - fields.keys())
    if unknown:
        raise ConfigError(
            f"output path {template!r} names {', '.join(unknown)}, which is neither a parameter given "
            f"nor one of notebook, run_id, date"
        )
    try:
        return Path(template.format(**fields))
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"output path {template!r} is not a valid template: {exc}") from None


def _path_safe(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("_") or "_"


# ---- running ----------------------------------------------------------------------------------
@contextmanager
def _env(extra: Mapping[str, str]) -> Iterator[None]:
    """The kernel papermill starts inherits this process's environment."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(
    notebook: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    output: str | Path | None = None,
    html: str | Path | None = None,
    kernel: str = "python3",
    cwd: str | Path | None = None,
    record: bool = True,
    engine: Any = None,
    start_timeout: float = 60.0,
    execution_timeout: float | None = None,
    log_output: bool = False,
) -> RunResult:
    """Execute ``notebook`` with ``parameters`` through papermill; write the executed notebook to
    ``output`` (a template, see :func:`output_path`; default ``reports/{notebook}-{run_id}.ipynb``)
    and, with ``html``, the rendered report.  Records the run in the index (``engine``; default the
    one the notebook's ``db`` parameter names, else the settings' one; ``record=False`` skips it; an unreachable index is reported in
    ``index_error``, never fatal).  Raises :class:`NotebookRunError` when a cell fails (the partial
    output notebook, and the HTML if asked for, are still written)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = Path(notebook)
    if not src.is_file():
        raise ConfigError(f"notebook {src} does not exist")
    params = dict(parameters or {})
    declared = notebook_parameters(src)
    if not declared:
        raise ConfigError(f"{src} has no cell tagged 'parameters', so it cannot be run with parameters")
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(
            f"{src.name} has no parameter {', '.join(map(repr, unknown))} (its parameters: {', '.join(declared)})"
        )
    run_id = new_run_id()
    #: passwords in URL parameters (-p db postgresql://user:PASSWORD@...): never in what the run leaves
    secrets = secrets_in(params.values())
    out = output_path(str(output or DEFAULT_OUTPUT), params, src, run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = RunResult(run_id, str(src), str(out), params, started_at=_now())
    t0 = time.perf_counter()
    failure: PapermillExecutionError | None = None
    crash: Exception | None = None
    with _env({RUN_ID_ENV: run_id, "SDRLAB_PROGRESS": "0"}):
        try:
            papermill.execute_notebook(
                str(src), str(out), parameters=params, kernel_name=kernel, progress_bar=False,
                log_output=log_output, cwd=str(cwd) if cwd is not None else None, start_timeout=start_timeout,
                execution_timeout=execution_timeout,
            )
        except PapermillExecutionError as exc:
            failure = exc
        except Exception as exc:  # the kernel died, did not start, or a cell timed out
            crash = exc
    result.duration_s = time.perf_counter() - t0
    result.finished_at = _now()
    result.published = _published(out)
    if failure is not None:
        result.status = "failed"
        result.failed_cell, what = _failed_cell(out, failure)
        where = f"code cell {result.failed_cell}" if result.failed_cell else f"the cell run as In [{failure.exec_count}]"
        result.error = scrub(f"{where} ({what!r}) raised {failure.ename}: {failure.evalue}", secrets)
    elif crash is not None:
        result.status = "failed"
        result.failed_cell, what = _running_cell(out)
        where = f" in code cell {result.failed_cell} ({what!r})" if result.failed_cell else ""
        result.error = scrub(f"the run stopped{where}: {type(crash).__name__}: {_first_line(crash)}", secrets)
    else:
        result.status = "ok"
    if out.exists():
        _stamp(out, result, secrets)
        if html is not None:
            try:
                result.html = str(render_report(out, output_path(str(html), params, src, run_id)))
                _stamp(out, result, secrets)
            except (SdrlabError, OSError) as exc:  # the run and its notebook stand; say why there is no report
                log.error("run %s: no HTML report: %s", run_id, exc)
                result.status, result.error = "failed", (result.error or scrub(f"the HTML report failed: {exc}", secrets))
    if record:
        db = params.get("db")  # the workbench notebooks' convention: the index they write to
        _record(result, engine if engine is not None else (db if isinstance(db, str) else ""))
        if result.index_error:
            result.index_error = scrub(result.index_error, secrets)
    if result.status != "ok":
        kept = f"the partial output is in {out}" if out.exists() else "no output notebook was written"
        raise NotebookRunError(f"{src.name}: {result.error}; {kept}", result) from (crash or None)
    return result


def _published(out: Path) -> dict[str, Any]:
    try:
        return collect_published(out) if out.exists() else {}
    except Exception:  # a notebook cut short by a dying kernel
        return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def _running_cell(out: Path) -> tuple[int | None, str]:
    """The cell that was running when the kernel went away: the last one papermill started
    (``metadata.papermill.start_time``)."""
    import nbformat

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:
        return None, ""
    n = 0
    last: tuple[int | None, str] = (None, "")
    for cell in nb.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        n += 1
        if cell.get("metadata", {}).get("papermill", {}).get("start_time"):
            last = (n, _describe(cell.source))
    return last


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _failed_cell(out: Path, failure: Any) -> tuple[int | None, str]:
    """The failing cell as a reader finds it in the notebook: its 1-based number among the input
    notebook's code cells (the injected-parameters cell papermill adds is not counted), and its
    first line that says something (a comment naming the step, or the first statement)."""
    import nbformat

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:
        return None, ""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        n += 1
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return n, _describe(cell.source)
    return None, _describe(str(failure.source))


def _describe(source: str) -> str:
    for line in source.splitlines():
        text = line.strip()
        if text and not text.startswith(("# NBVAL", "%", "!")):
            return text.lstrip("# ").strip()[:80]
    return ""


def collect_published(executed: str | Path) -> dict[str, Any]:
    """The facts the executed notebook published (:func:`sdrlab.notebook.publish`): later values
    win, except ``session_id`` which collects every session named."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    facts: dict[str, Any] = {}
    sessions: list[str] = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {}) if o.get("output_type") in ("display_data", "execute_result") else {}
            if PUBLISH_MIME in data:
                payload = data[PUBLISH_MIME]
                payload = json.loads(payload) if isinstance(payload, str) else dict(payload)
                sid = payload.pop("session_id", None)
                if sid and sid not in sessions:
                    sessions.append(str(sid))
                facts.update(payload)
    if sessions:
        facts["session_id"] = sessions
    return facts


def _stamp(out: Path, result: RunResult, secrets: Sequence[str] = ()) -> None:
    """The run's facts in the output notebook's metadata (``metadata.sdrlab``): the report header
    shows them.  Every password of a URL parameter is masked throughout the notebook: the
    injected-parameters cell, papermill's metadata and every output."""
    import nbformat

    nb = nbformat.read(str(out), as_version=4)
    meta = {k: v for k, v in asdict(result).items() if k != "output"}
    meta["notebook"] = Path(result.notebook).name
    meta["parameters"] = public_parameters(result.parameters)
    nb.metadata["sdrlab"] = meta
    scrub_tree(nb, secrets)
    nbformat.write(nb, str(out))


def _record(result: RunResult, engine: Any) -> None:
    from .index.runs import record_run

    try:
        if engine is None or isinstance(engine, str):
            engine = workbench_settings(db=engine or "").engine()  # the index the notebook's kernel uses
        record_run(engine, result)
    except Exception as exc:  # a run that happened is never undone by its bookkeeping
        reason = exc if isinstance(exc, (IndexStoreError, ConfigError)) else f"{type(exc).__name__}: {exc}"
        result.index_error = mask_urls_in(str(reason))
        log.warning("run %s not recorded in the index: %s", result.run_id, result.index_error)


# ---- reports ----------------------------------------------------------------------------------
#: output MIME types a report never shows: live widgets (there is no kernel to talk to), the run
#: facts, and progress bars written to stderr
_DROP_MIME = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json", PUBLISH_MIME)


def _clean_for_report(nb: Any) -> Any:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "injected-parameters" in tags or "parameters" in tags:
            cell.metadata.setdefault("tags", []).append("remove-cell")
            continue
        outputs = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue
            if "data" in o:
                data = {k: v for k, v in o["data"].items() if k not in _DROP_MIME}
                if not data or (set(data) == {"text/plain"} and any(k in o["data"] for k in _DROP_MIME)):
                    continue  # a widget's or run fact's plain-text fallback alone says nothing
                o["data"] = data
            outputs.append(o)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return nb


def render_report(executed: str | Path, html: str | Path) -> Path:
    """One self-contained HTML file from an executed notebook: inputs and prompts hidden, cells
    tagged ``remove-cell`` (and the parameters cells) left out, figures embedded, no script from
    the internet."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    src = Path(executed)
    if not src.is_file():
        raise ConfigError(f"executed notebook {src} does not exist")
    try:
        nb = nbformat.read(str(src), as_version=4)
    except Exception as exc:
        raise ConfigError(f"{src} is not a readable notebook: {exc}") from None
    c = Config()
    c.TemplateExporter.exclude_input = True
    c.TemplateExporter.exclude_input_prompt = True
    c.TemplateExporter.exclude_output_prompt = True
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"remove-cell"}
    c.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    exporter = HTMLExporter(config=c, template_name="sdrlab_report", extra_template_basedirs=[str(TEMPLATE_DIR)])
    title = nb.metadata.get("sdrlab", {}).get("title") or _first_heading(nb) or src.stem
    body, _ = exporter.from_notebook_node(_clean_for_report(nb), resources={"metadata": {"name": title}})
    external = sorted(set(re.findall(r"""<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["'](https?:)?//([^"'/]+)""", body)))
    if external:
        raise SdrlabError(f"the report would load from the internet ({', '.join(h for _, h in external)})")
    out = Path(html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def _first_heading(nb: Any) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return str(line.lstrip("#").strip())
    return None


def format_result(result: RunResult) -> Sequence[str]:
    lines = [f"run {result.run_id}: {result.status} in {result.duration_s:.1f} s", f"notebook written to {result.output}"]
    if result.session_ids:
        lines.append(f"sessions: {', '.join(result.session_ids)}")
    if result.html:
        lines.append(f"report: {result.html}")
    if result.index_error:
        lines.append(f"not recorded in the index: {result.index_error}")
    return lines
