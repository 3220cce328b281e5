"""The two metrics of audio receivers (OpenWebRX: ``occupancy_fraction``, ``channel_power_fft_dbfs``)
in the index (schema 5), on SQLite and a real PostgreSQL: a mixed session (a KiwiSDR IQ station and
an OpenWebRX audio station built from the waterfall rows of tests/test_metrics_spectrum, whose
known band gives occupancy 0.5) stores the audio station's measured values and NULL for the IQ
station; the hourly series averages occupancy plainly and the waterfall channel power in linear
power, from the rollup and from the raw rows alike, and through the CLI."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from sdrlab import model
from sdrlab.acquire import add_metrics
from sdrlab.cli import main
from sdrlab.index import index_session, metric_over_time
from sdrlab.index.ingest import rebuild_rollup
from sdrlab.index.models import (
    ADDED_IN,
    METRIC_COLUMNS,
    IntervalMetricRow,
    MetricHourlyRow,
    MetricRow,
)
from tests.test_metrics_spectrum import capture as owrx_capture
from tests.test_model_audio import kiwi_capture

AUDIO = ADDED_IN[5]
SID = "20261130T005000Z-a0d10a"


def owrx(rows: slice | None = None, shift_s: float = 0.0) -> Any:
    """The OpenWebRX capture of test_metrics_spectrum (40 waterfall rows, the wide signal keyed on
    in the odd ones: occupancy 0.5), or only its ``rows``, every receipt time ``shift_s`` later."""
    cap = owrx_capture()
    dt = int(shift_s * 1e9)
    sp = cap.spectrum
    pick = slice(None) if rows is None else rows
    spec = replace(sp, db=sp.db[pick], receipt_ns=sp.receipt_ns[pick] + dt, center_freq_hz=sp.center_freq_hz[pick],
                   samp_rate_hz=sp.samp_rate_hz[pick], fft_size=sp.fft_size[pick])
    audio = [replace(a, message_receipt_ns=a.message_receipt_ns + dt) for a in cap.audio]
    sm = replace(cap.smeter, receipt_ns=cap.smeter.receipt_ns + dt)
    return replace(cap, spectrum=spec, audio=audio, smeter=sm)


def session(session_id: str, *captures: Any) -> Any:
    ds = model.build_dataset(list(captures), {})
    ds.attrs["session_id"] = session_id
    return add_metrics(ds)


def _rows(engine: Engine, session_id: str) -> pd.DataFrame:
    with engine.connect() as c:
        df = pd.read_sql(select(MetricRow).where(MetricRow.session_id == session_id), c)
    return df.set_index("station_id")


def test_schema_5_indexes_the_two_audio_metrics() -> None:
    assert AUDIO == ("occupancy_fraction", "channel_power_fft_dbfs")
    assert set(AUDIO) <= set(METRIC_COLUMNS)
    for row in (MetricRow, IntervalMetricRow):
        assert set(AUDIO) <= set(row.__table__.columns.keys())
    assert {f"{m}_{p}" for m in AUDIO for p in ("sum", "n")} <= set(MetricHourlyRow.__table__.columns.keys())


def test_a_mixed_session_stores_the_audio_metrics_and_null_for_the_iq_station(engine: Engine) -> None:
    ds = session(SID, kiwi_capture(), owrx())
    assert list(ds["kind"].values) == ["iq", "audio"]
    occ = float(ds["occupancy_fraction"].sel(station="owrx"))
    power = float(ds["channel_power_fft_dbfs"].sel(station="owrx"))
    # the dataset's measured values (test_metrics_spectrum: the band's truth within 1 dB)
    assert occ == 0.5 and power == pytest.approx(-43.0177, abs=1e-3)
    assert index_session(engine, ds, "file:///s") == 2

    rows = _rows(engine, SID)
    assert rows.loc["owrx", "occupancy_fraction"] == occ  # stored as measured (a double)
    assert rows.loc["owrx", "channel_power_fft_dbfs"] == pytest.approx(power, rel=1e-15)
    # the IQ station has neither (NULL, not 0), but its own metrics
    assert rows.loc["kiwi", list(AUDIO)].isna().all()
    assert rows.loc["kiwi", "snr_db"] == pytest.approx(float(ds["snr_db"].sel(station="kiwi")), rel=1e-12)
    # the audio station's other measured metrics are stored too, its IQ-only ones NULL
    assert rows.loc["owrx", "noise_floor_dbfs_hz"] == pytest.approx(
        float(ds["noise_floor_dbfs_hz"].sel(station="owrx")), rel=1e-12)
    assert pd.isna(rows.loc["owrx", "cn0_dbhz"])

    # the interval time series: only the GPS-timed IQ station has rows, without the audio metrics
    with engine.connect() as c:
        iv = pd.read_sql(select(IntervalMetricRow).where(IntervalMetricRow.session_id == SID), c)
    assert set(iv["station_id"]) == {"kiwi"} and iv[list(AUDIO)].isna().all().all()

    # the rollup: one value for owrx, none for kiwi
    with engine.connect() as c:
        h = pd.read_sql(select(MetricHourlyRow), c).set_index("station_id")
    assert h.loc["owrx", "occupancy_fraction_n"] == 1 and h.loc["owrx", "occupancy_fraction_sum"] == 0.5
    assert h.loc["owrx", "channel_power_fft_dbfs_sum"] == pytest.approx(10 ** (power / 10), rel=1e-12)
    assert h.loc["kiwi", "occupancy_fraction_n"] == 0 and pd.isna(h.loc["kiwi", "occupancy_fraction_sum"])


def test_hourly_occupancy_and_waterfall_power_of_three_sessions(engine: Engine, capsys: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One station, three sessions in one hour: every other row keyed (0.5), only the keyed rows
    (1.0), only the quiet ones (0.0); then the first re-indexed and the second deleted."""
    parts = {"20261130T005000Z-000001": owrx(),
             "20261130T010000Z-000002": owrx(slice(1, None, 2), shift_s=60.0),
             "20261130T010500Z-000003": owrx(slice(0, None, 2), shift_s=180.0)}
    sets = {sid: session(sid, cap) for sid, cap in parts.items()}
    occ = {sid: float(ds["occupancy_fraction"].sel(station="owrx")) for sid, ds in sets.items()}
    power = {sid: float(ds["channel_power_fft_dbfs"].sel(station="owrx")) for sid, ds in sets.items()}
    assert list(occ.values()) == [0.5, 1.0, 0.0]
    assert power["20261130T010000Z-000002"] > power["20261130T010500Z-000003"] + 10  # the keyed rows: 10+ dB up
    for sid, ds in sets.items():
        index_session(engine, ds, f"file:///{sid}")
    times = _rows(engine, "20261130T005000Z-000001")
    assert times.loc["owrx", "time"].hour == 0  # receipt time 2026-11-30 00:53:19 UTC: one hour for all three

    def hourly(metric: str, **kw: Any) -> pd.DataFrame:
        return metric_over_time(engine, metric, bucket_s=3600, **kw)

    want_occ = np.mean(list(occ.values()))  # 0.5: a plain mean
    want_power = 10 * np.log10(np.mean([10 ** (p / 10) for p in power.values()]))  # in linear power
    assert want_power - np.mean(list(power.values())) > 3  # (the mean of the dB values would be wrong)
    for kw in ({}, {"_raw": True}):  # the rollup and the raw rows
        o, p = hourly("occupancy_fraction", **kw), hourly("channel_power_fft_dbfs", **kw)
        assert list(o["bucket"]) == [pd.Timestamp("2026-11-30 00:00")] and list(o["station_id"]) == ["owrx"]
        assert o["value"].iloc[0] == pytest.approx(0.5, abs=1e-12) and o["n"].iloc[0] == 3
        assert o["value"].iloc[0] == pytest.approx(want_occ, abs=1e-12)
        assert p["value"].iloc[0] == pytest.approx(want_power, abs=1e-9) and p["n"].iloc[0] == 3

    # the CLI prints the same series
    monkeypatch.setenv("SDRLAB_DB", engine.url.render_as_string(hide_password=False))
    capsys.readouterr()
    assert main(["query", "metric", "--metric", "occupancy_fraction"]) == 0
    out = capsys.readouterr().out
    assert "owrx" in out and "0.500" in out and " 3" in out

    # re-index one, delete another: the rollup follows (the exact recompute) and equals a rebuild
    index_session(engine, sets["20261130T005000Z-000001"], "file:///again")
    from sdrlab.index import delete_session

    delete_session(engine, "20261130T010000Z-000002")
    o = hourly("occupancy_fraction")
    assert o["value"].iloc[0] == pytest.approx(0.25, abs=1e-12) and o["n"].iloc[0] == 2
    p = hourly("channel_power_fft_dbfs")
    rest = [power["20261130T005000Z-000001"], power["20261130T010500Z-000003"]]
    assert p["value"].iloc[0] == pytest.approx(10 * np.log10(np.mean([10 ** (x / 10) for x in rest])), abs=1e-9)
    with engine.connect() as c:
        incremental = pd.read_sql(select(MetricHourlyRow), c)
    with engine.begin() as c:
        rebuild_rollup(c)
    with engine.connect() as c:
        rebuilt = pd.read_sql(select(MetricHourlyRow), c)
    pd.testing.assert_frame_equal(incremental, rebuilt, check_exact=False, rtol=1e-12)
