"""The index's tables (SQLAlchemy 2.0 typed ORM), the same on SQLite, PostgreSQL and TimescaleDB.

Time-series tables (``capture_metrics``, ``interval_metrics``, ``availability``) have the time column in their primary
key, so they can become TimescaleDB hypertables (every unique key must include the time column).  The two
metric tables' keys are (station_id, time, session_id): the one btree that serves per-station time
ranges and keeps rows unique (plus one on session_id for deleting and re-indexing a session).
Times are ``timestamptz`` on PostgreSQL and UTC everywhere.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .. import metric_table

#: 2: the metric columns of issue 12 (C/N0, noise bandwidth, passband and its source, passband_filled,
#: AGC gain range and flag), added to an existing database by ``init_db`` (``sdrlab db upgrade``)
#: 3: the interval_metrics table (the metric time series of issue 13), created by ``init_db``
#: 4: the metric tables' primary keys (station_id, time, session_id) instead of (time, station_id,
#: session_id) plus an index (station_id, time), which they replace (index ingest, issue 13); rebuilt
#: in place by ``init_db`` on plain PostgreSQL, kept as they are on SQLite and TimescaleDB
#: 5: the two metrics of audio receivers (OpenWebRX: occupancy_fraction, channel_power_fft_dbfs) in
#: capture_metrics, interval_metrics and metric_hourly, added to an existing database by ``init_db``
#: (NULL in the rows already there, count 0 in the rollup); IQ captures leave them NULL
SCHEMA_VERSION = 5

#: the primary key of the metric tables (schema 4), and what it was before (schemas 1-3)
METRIC_KEY = ("station_id", "time", "session_id")
OLD_METRIC_KEY = ("time", "station_id", "session_id")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class SchemaVersion(Base):
    __tablename__ = "sdrlab_schema"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    applied_at: Mapped[datetime]


class StationRow(Base):
    """The configuration database: one row per catalogue station, kept in sync with the TOML."""

    __tablename__ = "stations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(32), default="kiwisdr")
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    altitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    channels: Mapped[int] = mapped_column(Integer, default=4)
    freq_min_hz: Mapped[float] = mapped_column(Float, default=0.0)
    freq_max_hz: Mapped[float] = mapped_column(Float, default=30e6)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    antenna: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[datetime]


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_time: Mapped[datetime | None] = mapped_column(nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(nullable=True)
    center_frequency_hz: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    parameters: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    store_url: Mapped[str] = mapped_column(Text)
    papermill_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    indexed_at: Mapped[datetime]


class CaptureRow(Base):
    """One per station per session."""

    __tablename__ = "captures"
    session_id: Mapped[str] = mapped_column(String(64), ForeignKey("sessions.id", ondelete="CASCADE"),
                                            primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store_key: Mapped[str] = mapped_column(Text)
    start_time: Mapped[datetime | None] = mapped_column(nullable=True)
    sample_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_captures_station_start", "station_id", "start_time"),)


class MetricRow(Base):
    """Capture metrics as a time series (time = the capture's GPS-derived UTC start)."""

    __tablename__ = "capture_metrics"
    time: Mapped[datetime] = mapped_column()
    station_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    frequency_hz: Mapped[float] = mapped_column(Float)
    snr_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_floor_dbfs_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    signal_power_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_power_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)
    frequency_offset_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    occupied_bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    rssi_mean_dbm: Mapped[float | None] = mapped_column(Float, nullable=True)
    clipped_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    overload_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    # schema 2
    cn0_dbhz: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_low_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_high_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_source: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_filled: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_range_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    # schema 5: audio receivers only (NULL for IQ captures)
    occupancy_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    channel_power_fft_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (PrimaryKeyConstraint(*METRIC_KEY, name="capture_metrics_pkey"),
                      Index("ix_metrics_session", "session_id"))


class IntervalMetricRow(Base):
    """Every metric of every station per interval of a session (default 10 s): the metric time
    series (:func:`sdrlab.metrics.interval_metrics`; time = the interval's first sample, UTC from
    the station's GPS time base).  A hypertable on TimescaleDB."""

    __tablename__ = "interval_metrics"
    time: Mapped[datetime] = mapped_column()
    station_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    interval_s: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    frequency_hz: Mapped[float] = mapped_column(Float)
    snr_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_floor_dbfs_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    signal_power_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_power_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)
    frequency_offset_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    occupied_bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    rssi_mean_dbm: Mapped[float | None] = mapped_column(Float, nullable=True)
    clipped_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    overload_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    cn0_dbhz: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_low_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_high_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_source: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_filled: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_range_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    # schema 5
    occupancy_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    channel_power_fft_dbfs: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (PrimaryKeyConstraint(*METRIC_KEY, name="interval_metrics_pkey"),
                      Index("ix_interval_session", "session_id"))


class AvailabilityRow(Base):
    """Receiver availability: up or down at a time, with latency and error."""

    __tablename__ = "availability"
    time: Mapped[datetime] = mapped_column(primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    up: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_availability_station_time", "station_id", "time"),)


class MetricHourlyRow(Base):
    """Hourly rollup of ``capture_metrics`` per station, kept exactly consistent by the ingest
    functions (an ordinary table, not a hypertable): per metric, the sum (in linear power
    ``10**(x/10)`` for the dB metrics of DB_METRICS, plain values otherwise) and the count of
    non-null values.  ``bucket`` is the hour floor of ``time`` (origin 2000-01-03 UTC)."""

    __tablename__ = "metric_hourly"
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    snr_db_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    snr_db_n: Mapped[int] = mapped_column(Integer, default=0)
    noise_floor_dbfs_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_floor_dbfs_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    signal_power_dbfs_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    signal_power_dbfs_n: Mapped[int] = mapped_column(Integer, default=0)
    total_power_dbfs_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_power_dbfs_n: Mapped[int] = mapped_column(Integer, default=0)
    frequency_offset_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    frequency_offset_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    occupied_bandwidth_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    occupied_bandwidth_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    rssi_mean_dbm_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    rssi_mean_dbm_n: Mapped[int] = mapped_column(Integer, default=0)
    clipped_fraction_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    clipped_fraction_n: Mapped[int] = mapped_column(Integer, default=0)
    overload_fraction_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    overload_fraction_n: Mapped[int] = mapped_column(Integer, default=0)
    # schema 2
    cn0_dbhz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    cn0_dbhz_n: Mapped[int] = mapped_column(Integer, default=0)
    noise_bandwidth_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_bandwidth_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    passband_low_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_low_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    passband_high_hz_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_high_hz_n: Mapped[int] = mapped_column(Integer, default=0)
    passband_source_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_source_n: Mapped[int] = mapped_column(Integer, default=0)
    passband_filled_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    passband_filled_n: Mapped[int] = mapped_column(Integer, default=0)
    agc_gain_range_db_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_range_db_n: Mapped[int] = mapped_column(Integer, default=0)
    agc_gain_changed_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    agc_gain_changed_n: Mapped[int] = mapped_column(Integer, default=0)
    # schema 5 (channel_power_fft_dbfs: a level in dB, summed in linear power)
    occupancy_fraction_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    occupancy_fraction_n: Mapped[int] = mapped_column(Integer, default=0)
    channel_power_fft_dbfs_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    channel_power_fft_dbfs_n: Mapped[int] = mapped_column(Integer, default=0)


#: metric columns: every per-capture metric of sdrlab.metrics.UNITS except the RSSI min/max (the
#: schema-1 columns first, then those schema 2 added, then those of schema 5, each group in the order
#: of UNITS).  Flags (passband_filled, agc_gain_changed: 0/1) average to the fraction of captures
#: flagged; occupancy_fraction averages to the mean fraction of the captures that have it (audio ones).
METRIC_COLUMNS = (
    "snr_db", "noise_floor_dbfs_hz", "signal_power_dbfs", "total_power_dbfs", "frequency_offset_hz",
    "occupied_bandwidth_hz", "rssi_mean_dbm", "clipped_fraction", "overload_fraction",
    "cn0_dbhz", "noise_bandwidth_hz", "passband_low_hz", "passband_high_hz", "passband_source",
    "passband_filled", "agc_gain_range_db", "agc_gain_changed",
    "occupancy_fraction", "channel_power_fft_dbfs",
)
#: the metric columns each schema version added (an index of an older version lacks them)
ADDED_IN = {
    2: ("cn0_dbhz", "noise_bandwidth_hz", "passband_low_hz", "passband_high_hz", "passband_source",
        "passband_filled", "agc_gain_range_db", "agc_gain_changed"),
    5: ("occupancy_fraction", "channel_power_fft_dbfs"),
}
#: metrics in dB: averaged in linear power over time buckets
DB_METRICS = metric_table.DB_METRICS
# the columns are the one metric table's indexed metrics (their order is the schema's)
assert set(METRIC_COLUMNS) == {m.name for m in metric_table.METRICS if m.indexed}
assert all(set(cols) <= set(METRIC_COLUMNS) for cols in ADDED_IN.values())


class RunRow(Base):
    """One batch run of a notebook (``sdrlab run``): what ran, with which parameters, how it
    ended, and the sessions it acquired or reported on."""

    __tablename__ = "notebook_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    notebook: Mapped[str] = mapped_column(Text)
    output_path: Mapped[str] = mapped_column(Text)
    html_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    parameters: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_cell: Mapped[int | None] = mapped_column(Integer, nullable=True)
    session_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_runs_started", "started_at"),)
