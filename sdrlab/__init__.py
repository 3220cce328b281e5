"""sdrlab: multi-receiver KiwiSDR IQ acquisition into labelled xarray Datasets.

Importing sdrlab registers the ``.sdr`` accessor on xarray Datasets and DataArrays.
"""

from typing import Any

from . import accessor as _accessor  # noqa: F401  (registers ds.sdr / da.sdr)
from ._version import __version__


def open_captures(captures: Any, store: Any = None) -> Any:
    """Open the captures of an index query as one lazy Dataset (see :mod:`sdrlab.captures`)."""
    from .captures import open_captures as _open

    return _open(captures, store)


__all__ = ["__version__", "open_captures"]
