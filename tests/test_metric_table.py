"""The one table of metric names, units and labels (issue 14: they were spread over eight places)."""

from __future__ import annotations

from sdrlab import metric_table as MT
from sdrlab import metrics, plots, testing
from sdrlab.acquire import TABLE_METRICS
from sdrlab.index import models


def test_every_computed_metric_is_in_the_table_and_in_its_order():
    m = metrics.metrics(testing.synthetic_dataset(2, 2.0))
    assert list(m.data_vars) == [x.name for x in MT.METRICS if x.kind == "any"]
    for name, v in m.data_vars.items():
        assert v.attrs["units"] == MT.BY_NAME[str(name)].units


def test_the_metrics_plots_acquisition_and_index_read_the_same_table():
    assert metrics.UNITS is MT.UNITS and metrics.LONG_NAMES is MT.LONG_NAMES
    assert plots.LABELS is MT.LABELS and models.DB_METRICS is MT.DB_METRICS
    assert TABLE_METRICS is MT.TABLE_METRICS
    assert set(models.METRIC_COLUMNS) == {x.name for x in MT.METRICS if x.indexed}
    assert {c for c in models.IntervalMetricRow.__table__.columns.keys() if c in MT.BY_NAME} == set(
        models.METRIC_COLUMNS)


def test_levels_in_db_average_in_linear_power_and_labels_carry_units():
    levels = {x.name for x in MT.METRICS if x.units.startswith("dB") and (x.indexed or x.kind == "audio")}
    assert MT.DB_METRICS == levels - {"agc_gain_range_db"}  # a gain range is a difference, not a level
    assert MT.label("snr_db") == "SNR (dB)" and MT.label("clipped_fraction") == "Clipped"
    assert MT.label("not_a_metric") == "not_a_metric"
    assert plots.metric_label("noise_floor_dbfs_hz") == "Noise floor (dBFS/Hz)"
