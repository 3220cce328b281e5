"""sdrlab: multi-receiver KiwiSDR IQ acquisition into labelled xarray Datasets.

Importing sdrlab registers the ``.sdr`` accessor on xarray Datasets and DataArrays.
"""

from . import accessor as _accessor  # noqa: F401  (registers ds.sdr / da.sdr)
from ._version import __version__

__all__ = ["__version__"]
