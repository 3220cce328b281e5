"""Each capture and session says what its times rest on (``timing``: gps or receipt), the session
also in one word (attribute ``timing``: gps, receipt, mixed); both survive the store and SigMF;
TDoA refuses receipt-timed data, naming the stations and the reason."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xarray as xr

from sdrlab import model, testing, timing
from sdrlab.capture import Capture, ReceiverInfo, build_receipt_segment
from sdrlab.errors import AnalysisRefused, SdrlabError
from sdrlab.store import Store
from sdrlab.tdoa import tdoa

FS = 12000.0
SID = "20261207T120000Z-tim001"


def receipt_capture(station: str, n_frames: int = 60, seed: int = 1) -> Capture:
    """A receipt-timed capture as a server without GPS stamps delivers it (frames of 512 samples,
    stamped on arrival by the host clock)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-2000, 2000, size=(n_frames * 512, 2), dtype=np.int16)
    arrival0 = 1_796_644_800 * timing.NS  # 2026-12-07T12:00:00Z, unix ns
    frames = [(k + 1, 0x80, 500, 512, arrival0 + round((k + 1) * 512 / FS * timing.NS)) for k in range(n_frames)]
    seg = build_receipt_segment(frames, data.astype("<i2").tobytes(), nominal_fs=FS)
    info = ReceiverInfo(host="127.0.0.1", port=1, version="1.0", rx_chans=4, audio_rate=12000, sample_rate=FS,
                        position=(45.0, 7.5), altitude=300.0)
    return Capture(station, 145_500_000.0, -5000.0, 5000.0, n_frames * 512 / FS, info=info, segments=[seg])


def mixed_session() -> xr.Dataset:
    """Four synthetic stations, the last one labelled receipt-timed (as an OpenWebRX or UberSDR
    station stored beside three KiwiSDRs is): TDoA reads the label, not the samples."""
    ds = testing.synthetic_dataset(n_stations=4, duration_s=2.0, seed=3)
    ds = ds.assign_coords(timing=("station", np.array(["gps", "gps", "gps", "receipt"], dtype=object)))
    ds.attrs["timing"] = "mixed"
    return ds


def test_capture_and_session_say_their_timing() -> None:
    cap = receipt_capture("owrx-a")
    assert cap.timing == "receipt" and cap.segments[0].timing == "receipt" and not cap.segments[0].fit.ok
    ds = model.build_dataset([cap, receipt_capture("owrx-b", seed=2)], {}, session_id=SID)
    assert ds.attrs["timing"] == "receipt" and ds["timing"].values.tolist() == ["receipt", "receipt"]
    gps = testing.synthetic_dataset(n_stations=2, duration_s=1.0)
    assert gps.attrs["timing"] == "gps" and gps["timing"].values.tolist() == ["gps", "gps"]
    assert "timing" in model.RESERVED_ATTRS  # acquire(attrs=...) cannot overwrite it


@pytest.mark.parametrize("kind", ["receipt", "gps"])
def test_timing_survives_the_store(tmp_path, kind: str) -> None:
    if kind == "receipt":
        ds = model.build_dataset([receipt_capture("owrx-a")], {}, session_id=SID)
    else:
        ds = testing.synthetic_dataset(n_stations=2, duration_s=1.0)
        ds.attrs["session_id"] = SID
    store = Store(f"file://{tmp_path}/store")
    store.write(ds)
    back = store.open(SID)
    assert back.attrs["timing"] == kind
    assert [str(t) for t in back["timing"].values] == [kind] * ds.sizes["station"]
    assert [str(t) for t in back["segment_timing"].values[:, 0]] == [kind] * ds.sizes["station"]


def test_timing_survives_sigmf(tmp_path) -> None:
    from sdrlab.interchange import export_sigmf, import_sigmf

    ds = model.build_dataset([receipt_capture("owrx-a"), receipt_capture("owrx-b", seed=2)], {}, session_id=SID)
    back = import_sigmf(export_sigmf(ds, tmp_path))
    assert back.attrs["timing"] == "receipt"
    assert [str(t) for t in back["timing"].values] == ["receipt", "receipt"]  # never promoted to GPS
    gps = testing.synthetic_dataset(n_stations=2, duration_s=1.0)
    assert import_sigmf(export_sigmf(gps, tmp_path / "gps")).attrs["timing"] == "gps"


def test_tdoa_refuses_receipt_timed_data_naming_stations_and_reason() -> None:
    ds = model.build_dataset([receipt_capture(s, seed=i) for i, s in enumerate(["owrx-a", "owrx-b", "owrx-c"])],
                             {}, session_id=SID)
    with pytest.raises(AnalysisRefused) as info:
        tdoa(ds, min_overlap_s=1.0, window_s=0.5)
    err = info.value
    assert err.stations == ["owrx-a", "owrx-b", "owrx-c"] and isinstance(err, SdrlabError)
    assert "owrx-a, owrx-b, owrx-c" in str(err) and "receipt times" in str(err) and "0 other stations" in str(err)
    again = pickle.loads(pickle.dumps(err))  # crosses dask process boundaries intact
    assert again.stations == err.stations and again.reason == err.reason and str(again) == str(err)
    with pytest.raises(AnalysisRefused, match="owrx-a"):
        ds.sdr.tdoa(min_overlap_s=1.0, window_s=0.5)  # the accessor too


def test_tdoa_refuses_a_receipt_timed_station_named_or_with_one_other() -> None:
    ds = mixed_session()
    with pytest.raises(AnalysisRefused, match=r"syn3 \(asked for by name\)"):
        tdoa(ds, stations=["syn0", "syn1", "syn3"], min_overlap_s=1.0, window_s=0.5)
    with pytest.raises(AnalysisRefused, match=r"syn3 \(1 other station left, 2 needed\)"):
        tdoa(ds.sel(station=["syn0", "syn3"]), min_overlap_s=1.0, window_s=0.5)
    # unnamed beside three GPS-timed stations: left out with its reason, the others go on to the
    # analysis (independent tones: nothing to locate, but none is dropped for its timing)
    r = tdoa(ds, min_overlap_s=1.0, window_s=0.5)
    assert "syn3" in r.stations_dropped and "not GPS" in r.stations_dropped["syn3"]
    assert not any("not GPS" in why for sid, why in r.stations_dropped.items() if sid != "syn3")
    assert sorted(r.timing) == ["syn0", "syn1", "syn2"]  # each got its GPS time base
