"""The index tests run every case on SQLite and on a real PostgreSQL 15 (``pg_server``)."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest

from sdrlab.index import init_db, make_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: Any, tmp_path: Any) -> Iterator[Any]:
    """A fresh, initialised index: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/index.db"
    else:
        url = request.getfixturevalue("pg_server").create_database(f"t_{uuid.uuid4().hex[:10]}")
    eng = make_engine(url)
    init_db(eng)
    yield eng
    eng.dispose()
