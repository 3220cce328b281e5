"""The one table of signal metrics: name (units in the name), units, short label, long name, how
it averages over time, and whether the index keeps it.  The metrics, plots, widgets, CLI
tables and the index all read it from here.

Imports nothing from sdrlab, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    units: str
    #: short label for axes and table headers (units added by :func:`label`)
    label: str
    long_name: str
    #: a level in dB: averaged in linear power over time buckets and intervals
    db: bool = False
    #: a column of the index (capture_metrics, interval_metrics)
    indexed: bool = True
    #: which stations have it: ``any`` kind, or ``audio`` receivers only (sdrlab.metrics_spectrum)
    kind: str = "any"


#: every metric, in the order the metrics Dataset has them
METRICS: tuple[Metric, ...] = (
    Metric("noise_floor_dbfs_hz", "dBFS/Hz", "Noise floor",
           "noise floor N0 (lowest cluster of the inner-passband PSD, bias-corrected)", db=True),
    Metric("frequency_offset_hz", "Hz", "Frequency offset", "peak frequency offset from the tuned frequency"),
    Metric("signal_power_dbfs", "dBFS", "Signal power", "noise-subtracted signal power in the passband", db=True),
    Metric("total_power_dbfs", "dBFS", "Total power", "mean power |z|^2 of the valid samples (time domain)", db=True),
    Metric("snr_db", "dB", "SNR", "signal-to-noise ratio S/N in the noise bandwidth", db=True),
    Metric("cn0_dbhz", "dB-Hz", "C/N0", "carrier-to-noise density S/N0", db=True),
    Metric("noise_bandwidth_hz", "Hz", "Noise bandwidth", "noise bandwidth B of snr_db"),
    Metric("occupied_bandwidth_hz", "Hz", "Occupied bandwidth", "occupied bandwidth"),
    Metric("passband_low_hz", "Hz", "Passband low", "passband low edge used by the metrics"),
    Metric("passband_high_hz", "Hz", "Passband high", "passband high edge used by the metrics"),
    Metric("passband_source", "1", "Passband source", "where the passband came from"),
    Metric("passband_filled", "1", "Passband filled",
           "no signal-free region in the passband (noise floor an upper bound)"),
    Metric("rssi_mean_dbm", "dBm", "RSSI", "mean S-meter RSSI (averaged in linear power)", db=True),
    Metric("rssi_min_dbm", "dBm", "RSSI min", "minimum S-meter RSSI", indexed=False),
    Metric("rssi_max_dbm", "dBm", "RSSI max", "maximum S-meter RSSI", indexed=False),
    Metric("agc_gain_range_db", "dB", "AGC gain range",
           "receiver gain variation over the capture (p95 - p5 of IQ dBFS - RSSI dBm per frame)"),
    Metric("agc_gain_changed", "1", "AGC gain changed", "receiver gain changed during the capture (AGC or gain steps)"),
    Metric("clipped_fraction", "1", "Clipped", "fraction of valid samples with |I| or |Q| at int16 full scale"),
    Metric("overload_fraction", "1", "ADC overload", "fraction of received frames with the ADC-overflow flag (0x02)"),
    # audio receivers (OpenWebRX): from the waterfall rows, uncalibrated (sdrlab.metrics_spectrum);
    # indexed since schema 5 (NULL for IQ captures)
    Metric("occupancy_fraction", "1", "Occupancy",
           "fraction of waterfall rows whose channel power exceeds the noise in the channel by the threshold",
           kind="audio"),
    Metric("channel_power_fft_dbfs", "dBFS", "Waterfall power",
           "mean power integrated over the channel's waterfall bins (signal plus noise)", db=True, kind="audio"),
)
BY_NAME = {m.name: m for m in METRICS}
UNITS = {m.name: m.units for m in METRICS}
LONG_NAMES = {m.name: m.long_name for m in METRICS}
LABELS = {m.name: m.label for m in METRICS}
#: metrics in dB: averaged in linear power over time buckets
DB_METRICS = frozenset(m.name for m in METRICS if m.db)
#: the metrics a station's summary table shows (acquire, CLI, widgets, notebooks)
TABLE_METRICS = ("snr_db", "cn0_dbhz", "signal_power_dbfs", "noise_floor_dbfs_hz", "frequency_offset_hz")


def label(name: str) -> str:
    """``"SNR (dB)"`` for ``"snr_db"`` (a unit of 1 is left out)."""
    m = BY_NAME.get(name)
    if m is None:
        return name
    return m.label if m.units == "1" else f"{m.label} ({m.units})"


__all__ = ["BY_NAME", "DB_METRICS", "LABELS", "LONG_NAMES", "METRICS", "Metric", "TABLE_METRICS", "UNITS", "label"]
