"""Notebook batch runs in the index: recorded by ``sdrlab run``, listed by ``sdrlab query runs``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import Engine, delete, insert, select

from ..errors import IndexStoreError
from .models import RunRow, SessionRow
from ..redact import public_parameters
from .schema import init_db


class RunRecord(Protocol):
    """What the index keeps of a notebook run (:class:`sdrlab.runs.RunResult` is one): the index
    reads runs, it does not depend on the code that makes them."""

    run_id: str
    notebook: str
    output: str
    html: str | None
    parameters: dict[str, Any]
    status: str
    error: str | None
    failed_cell: int | None
    started_at: str
    finished_at: str
    duration_s: float

    @property
    def session_ids(self) -> list[str]: ...


def record_run(engine: Engine, result: RunRecord) -> None:
    """Insert (or replace) the run with the sessions it published (acquired in the run, or
    reported on).  Sessions acquired inside the run carry its id themselves (``papermill_run_id``)."""
    init_db(engine)
    row = {
        "id": result.run_id, "notebook": result.notebook, "output_path": result.output, "html_path": result.html,
        "parameters": public_parameters(result.parameters),
        "status": result.status, "error": result.error, "failed_cell": result.failed_cell,
        "session_ids": result.session_ids,
        "started_at": datetime.fromisoformat(result.started_at),
        "finished_at": datetime.fromisoformat(result.finished_at) if result.finished_at else None,
        "duration_s": result.duration_s,
    }
    try:
        with engine.begin() as c:
            c.execute(delete(RunRow).where(RunRow.id == result.run_id))
            c.execute(insert(RunRow), [row])
    except Exception as exc:
        raise IndexStoreError(f"recording run {result.run_id} failed: {type(exc).__name__}: {exc}"[:500]) from None


def list_runs(engine: Engine, limit: int = 50) -> pd.DataFrame:
    """The latest runs, newest first, with the sessions each acquired (``papermill_run_id``)."""
    init_db(engine)
    try:
        with engine.connect() as c:
            runs = c.execute(select(*RunRow.__table__.columns).order_by(RunRow.started_at.desc())
                             .limit(limit)).all()
            made = c.execute(select(SessionRow.id, SessionRow.papermill_run_id)
                             .where(SessionRow.papermill_run_id.in_([r.id for r in runs]))).all()
    except Exception as exc:
        raise IndexStoreError(f"listing runs failed: {type(exc).__name__}: {exc}"[:500]) from None
    acquired: dict[str, list[str]] = {}
    for sid, rid in made:
        acquired.setdefault(str(rid), []).append(str(sid))
    rows: list[dict[str, Any]] = [{
        "run_id": r.id, "notebook": r.notebook, "status": r.status, "started_at": r.started_at,
        "duration_s": r.duration_s, "sessions": ",".join(r.session_ids or []),
        "acquired": ",".join(sorted(acquired.get(r.id, []))), "html": r.html_path or "",
        "error": r.error or "",
    } for r in runs]
    cols = ["run_id", "notebook", "status", "started_at", "duration_s", "sessions", "acquired", "html", "error"]
    return pd.DataFrame(rows, columns=cols).set_index("run_id")
