"""Transitional alias, not an API: the test servers moved to the checkout's ``tests/support/servers.py``
(issue 14: test tooling is not installed with the package), and this module works from a checkout only.

It remains only while ``tests/index/`` and ``benchmarks/index.py`` still import ``sdrlab.testservers``;
delete it once they import ``tests.support.servers``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if not (_CHECKOUT / "tests" / "support" / "servers.py").is_file():
    raise ImportError("sdrlab.testservers moved to tests/support/servers.py in the sdrlab checkout; "
                      "it is not part of the installed package")
if str(_CHECKOUT) not in sys.path:  # a benchmark run as a script has only benchmarks/ on sys.path
    sys.path.append(str(_CHECKOUT))

from tests.support.servers import KEY, SECRET, Postgres, SeaweedS3, _free_ports  # noqa: E402

__all__ = ["KEY", "SECRET", "Postgres", "SeaweedS3", "_free_ports"]
