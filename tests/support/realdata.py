"""Real receiver recordings for tests (``../shared/data/real`` from the project root, or
``SDRLAB_REALDATA``).  Tests that need them skip, naming the folder and where the files come from,
when the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: where CI keeps the recordings, relative to the project root
DEFAULT = ROOT.parent / "shared" / "data" / "real"
SOURCES = {
    "dcf77-20200813": "three KiwiSDR --kiwi-wav IQ recordings of DCF77 from the public repository hcab14/TDoA "
                      "(GPL-3.0, commit 2bb9dc2: iq/20200813T065220Z_77500_*_iq.wav and gnss_pos/)",
}


def realdata_dir() -> Path:
    return Path(os.environ.get("SDRLAB_REALDATA", str(DEFAULT)))


def realdata(name: str) -> Path:
    """The folder of one real-data set, or a pytest skip that names it and its source."""
    folder = realdata_dir() / name
    if not folder.is_dir():
        pytest.skip(f"real recordings not found at {folder} (set SDRLAB_REALDATA to the folder holding "
                    f"{name}/; source: {SOURCES.get(name, 'see ../shared/data/real/README.md')})")
    return folder
