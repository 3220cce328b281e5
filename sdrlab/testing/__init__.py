"""Synthetic signals and sessions with known truth, and test helpers, for sdrlab's tests and yours.

Every generator is seeded and documents its truth exactly, so tests (and notebooks) can assert
measured values against it:

* :func:`tone` - a complex exponential in complex Gaussian noise, SNR over the full sample bandwidth;
* :func:`am` - a full-carrier AM signal whose modulation has a flat spectrum up to ``bandwidth_hz``,
  with the 99 % occupied bandwidth given by :func:`am_occupied_bandwidth`;
* :func:`synthetic_dataset` - a session Dataset in the :mod:`sdrlab.model` schema (int16, per-station
  measured sample rates, padding past ``n_samples``, frame records with S-meter RSSI and flags),
  with its truth as JSON in ``attrs['truth']`` (:func:`truth` parses it);
* :func:`raise_if_dask_computes` - a dask scheduler that raises when anything computes.

Noise convention (as the simulator's scene): ``noise_dbfs`` is the total noise power per complex
sample over the full sample bandwidth ``fs``; its density is ``noise_dbfs - 10 log10 fs`` dBFS/Hz,
and ``snr_db`` is the signal power over that total noise power.

Modules: :mod:`~sdrlab.testing.signals` (tone, AM), :mod:`~sdrlab.testing.session` (a whole
session), :mod:`~sdrlab.testing.lazy` (dask).  The test servers and the browser driver sdrlab's own
suite uses are not installed with the package: they live in the checkout's ``tests/support/``.
"""

from __future__ import annotations

from .lazy import CountingScheduler, raise_if_dask_computes
from .session import PASSBAND_WIDTH_HZ, synthetic_dataset, truth
from .signals import am, am_occupied_bandwidth, noise_density_dbfs_hz, tone

__all__ = [
    "PASSBAND_WIDTH_HZ",
    "CountingScheduler",
    "am",
    "am_occupied_bandwidth",
    "noise_density_dbfs_hz",
    "raise_if_dask_computes",
    "synthetic_dataset",
    "tone",
    "truth",
]
