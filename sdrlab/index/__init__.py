"""The metrics index: SQLAlchemy models and queries on SQLite, PostgreSQL and TimescaleDB."""

from .ingest import bulk_insert_metrics, delete_session, index_session
from .queries import find_captures, latest_status, metric_over_time
from .schema import backend, init_db, make_engine

__all__ = [
    "backend", "bulk_insert_metrics", "delete_session", "find_captures", "index_session", "init_db",
    "latest_status", "make_engine", "metric_over_time",
]
