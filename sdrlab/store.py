"""Session store (local directory for now; S3, listing and atomic commits come with the store issue).

Layout: ``<root>/sessions/<session_id>`` is one zarr group (format and encoding from
:mod:`sdrlab.model`).  A session is written under a temporary name and renamed into place, so a
half-written session never appears under its id.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import xarray as xr

from . import model
from .errors import StorageError

log = logging.getLogger(__name__)


def session_path(root: str | Path, session_id: str) -> Path:
    return Path(root) / "sessions" / session_id


def write_session(ds: xr.Dataset, root: str | Path) -> Path:
    """Write a session Dataset to ``<root>/sessions/<session_id>``; returns the path."""
    sid = ds.attrs.get("session_id")
    if not sid:
        raise StorageError("the dataset has no session_id attribute")
    final = session_path(root, sid)
    tmp = final.with_name(f".{sid}.partial")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise StorageError(f"session {sid} already exists at {final}")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(tmp, mode="w", zarr_format=model.ZARR_FORMAT, consolidated=False, encoding=model.encoding(ds))
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"cannot write session {sid} under {root}: {exc}") from exc
    log.info("session %s written to %s", sid, final)
    return final


def open_session(path: str | Path) -> xr.Dataset:
    """Open a stored session lazily (dask-backed)."""
    p = Path(path)
    if not p.exists():
        raise StorageError(f"no session at {p}")
    ds: xr.Dataset = xr.open_zarr(p, consolidated=False, zarr_format=model.ZARR_FORMAT)
    return ds
