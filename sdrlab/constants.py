"""Physical and format constants, each defined once (other modules import them from here).

Imports nothing from sdrlab, so every layer may use it.
"""

from __future__ import annotations

#: speed of light in vacuum, m/s (exact, SI)
C_M_S = 299_792_458.0
#: nanoseconds per second
NS = 1_000_000_000
#: int16 IQ full scale: |z| = 1.0 is 0 dBFS = 32768 counts (samples clip at 32767)
FULL_SCALE = 32768.0
#: a KiwiSDR's nominal IQ rates: 12 kHz (3 and 4-channel configurations), 20.25 kHz (wide mode)
KIWI_RATES_HZ = (12000.0, 20250.0)
#: the usual one, when a receiver has not said yet
KIWI_RATE_HZ = KIWI_RATES_HZ[0]

__all__ = ["C_M_S", "FULL_SCALE", "KIWI_RATES_HZ", "KIWI_RATE_HZ", "NS"]
