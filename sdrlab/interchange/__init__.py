"""Moving sessions in and out in the formats the SDR community already uses.

* :mod:`sdrlab.interchange.sigmf` - one SigMF recording per station (``.sigmf-meta`` +
  ``.sigmf-data``, or a ``.sigmf`` archive), export and import (needs the ``sigmf`` package);
* :mod:`sdrlab.interchange.kiwiwav` - IQ WAV files written by ``kiwirecorder.py -m iq --kiwi-wav``
  (GPS-stamped frames) and the ``gnss_pos/<station>.txt`` position files, import.

Imports go through the same assembly path as a live capture
(:func:`sdrlab.capture.build_segment`, then :func:`sdrlab.model.build_dataset`), so an
imported session carries the same model: measured sample rate and UTC start from the GPS fit.
"""

from __future__ import annotations

from .kiwiwav import import_kiwi_wav, parse_gnss_pos, read_kiwi_wav
from .sigmf import export_sigmf, import_sigmf

__all__ = ["export_sigmf", "import_kiwi_wav", "import_sigmf", "parse_gnss_pos", "read_kiwi_wav"]
