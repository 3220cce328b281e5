"""Proof that something meant to be lazy stays lazy: :func:`raise_if_dask_computes` (as cf-xarray's)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import dask

__all__ = ["CountingScheduler", "raise_if_dask_computes"]

_dask: Any = dask  # dask.get (the synchronous scheduler) is not re-exported for type checkers


class CountingScheduler:
    """A synchronous dask scheduler that counts computes and raises past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computes: {self.total_computes} > {self.max_computes} allowed"
            )
        return _dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Inside the block, any dask compute beyond ``max_computes`` raises :class:`RuntimeError`
    (as cf-xarray's helper): proves that something meant to be lazy stays lazy."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
