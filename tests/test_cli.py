"""The command line: real subprocesses and in-process ``main`` against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdrlab._version import __version__
from sdrlab.cli import main
from sdrlab.sim.networks import DEMO7_TUNE_HZ, demo7
from sdrlab.store import open_session

SDRLAB = str(Path(sys.executable).parent / "sdrlab")
ENV = {**os.environ, "SDRLAB_PROGRESS": "0"}


def test_version(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_sim_serve_prints_receivers_and_stops_on_sigint():
    p = subprocess.Popen([SDRLAB, "sim", "serve", "--port", "0", "--speed", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        lines = [p.stdout.readline().strip() for _ in range(7)]  # type: ignore[union-attr]
        scene = demo7()
        for line, rx in zip(lines, scene.receivers):
            sid, hostport, lat, lon = line.split()
            assert sid == rx.id
            host, port = hostport.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            assert float(lat) == pytest.approx(rx.latitude, abs=1e-4)
            assert float(lon) == pytest.approx(rx.longitude, abs=1e-4)
        p.send_signal(signal.SIGINT)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()


def _catalog(tmp_path: Path, ports: dict[str, int]) -> Path:
    lines = []
    for rx in demo7().receivers:
        lines += ["[[station]]", f'id = "{rx.id}"', 'host = "127.0.0.1"', f"port = {ports[rx.id]}",
                  f"latitude = {rx.latitude}", f"longitude = {rx.longitude}", "channels = 4", ""]
    p = tmp_path / "stations.toml"
    p.write_text("\n".join(lines))
    return p


def test_acquire_writes_session_and_prints_table(tmp_path, run_sim, capsys, monkeypatch):
    monkeypatch.setenv("SDRLAB_PROGRESS", "0")
    scene = demo7().with_faults(demo_paris=__import__("sdrlab.sim.scene", fromlist=["Faults"]).Faults(down=True))
    with run_sim(scene, speed=10) as sim:
        cat = _catalog(tmp_path, sim.ports)
        rc = main(["acquire", "--station", "demo-berlin", "--station", "demo-paris", "--frequency",
                   str(DEMO7_TUNE_HZ), "--duration", "1", "--out", str(tmp_path / "store"), "--catalog", str(cat)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "demo-berlin" in out and "ok" in out
    assert "ReceiverDown" in out
    [path] = (tmp_path / "store" / "sessions").iterdir()
    ds = open_session(path)
    assert list(ds["station"].values) == ["demo-berlin"]
    assert int(ds["n_samples"].sel(station="demo-berlin")) >= 12001
    assert str(path) in out


def test_acquire_exits_nonzero_when_no_station_succeeds(tmp_path, run_sim, capsys, monkeypatch):
    monkeypatch.setenv("SDRLAB_PROGRESS", "0")
    from sdrlab.sim.scene import Faults

    scene = demo7().with_faults(demo_berlin=Faults(badp=1))
    with run_sim(scene) as sim:
        cat = _catalog(tmp_path, sim.ports)
        rc = main(["acquire", "--station", "demo-berlin", "--frequency", "9749000", "--duration", "1",
                   "--out", str(tmp_path / "store"), "--catalog", str(cat)])
    assert rc == 1
    assert "ReceiverAuthError" in capsys.readouterr().out
    assert not (tmp_path / "store" / "sessions").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--station", "demo-atlantis", "--frequency", "9e6", "--duration", "1"], "unknown station"),
        (["--station", "demo-berlin", "--frequency", "45e6", "--duration", "1"], "outside 0-30 MHz"),
    ],
)
def test_bad_input_exit_2_with_clear_message(args, pattern, capsys):
    assert main(["acquire", *args]) == 2
    assert pattern in capsys.readouterr().err


def test_malformed_catalogue_names_every_problem(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[station]]\nid = "Bad Id"\nhost = "h"\nport = 70000\nlatitude = 95\nlongitude = 0\n'
                   '[[station]]\nid = "ok-one"\nhost = "127.0.0.1"\nport = 8073\nlatitude = 1\nlongitude = 2\n'
                   'protocol = "websdr"\n')
    assert main(["acquire", "--all", "--frequency", "9e6", "--duration", "1", "--catalog", str(bad)]) == 2
    err = capsys.readouterr().err
    for piece in ("id must be a slug", "port must be an integer", "latitude 95", "protocol 'websdr'"):
        assert piece in err


@pytest.mark.parametrize("content, message", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "is not UTF-8 text (byte 0xff on line 1, offset 0)"),
    (b"\x00" * 64, "is not valid TOML"),
    (('[[station]]\nid = "' + "x" * 10_000_000 + '"\nhost = "h"\nport = 1\nlatitude = 0\nlongitude = 0\n').encode(),
     "id must be a slug"),
])
def test_a_catalogue_that_is_binary_or_huge_exits_2_with_a_short_message(tmp_path, capsys, content, message):
    bad = tmp_path / "stations.toml"
    bad.write_bytes(content)
    assert main(["stations", "list", "--catalog", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err
    assert len(err) < 2_000


def test_demo_runs_end_to_end(tmp_path):
    env = {**ENV, "SDRLAB_DB": f"sqlite:///{tmp_path}/index.db"}  # never the working tree's index
    r = subprocess.run([SDRLAB, "demo", "--duration", "1", "--speed", "5", "--out", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for rx in demo7().receivers:
        assert rx.id in r.stdout
    assert "7 ok" in r.stdout
    [path] = (tmp_path / "sessions").iterdir()
    ds = open_session(path)
    assert ds.sizes["station"] == 7
    assert np.isfinite(ds["sample_rate"].values).all()


def test_unusable_store_is_named_before_acquiring(capsys, monkeypatch):
    from tests.support.servers import _free_ports

    endpoint = f"http://127.0.0.1:{_free_ports(1)[0]}"  # nothing listens here
    monkeypatch.setenv("SDRLAB_STORE", "s3://sdrlab-x/prefix")
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("SDRLAB_S3_KEY", "k")
    monkeypatch.setenv("SDRLAB_S3_SECRET", "very-secret-value")
    t = time.monotonic()
    # nothing listens for demo-berlin either: had it tried to acquire, it would retry for seconds
    assert main(["acquire", "--station", "demo-berlin", "--frequency", "9e6", "--duration", "1"]) == 1
    assert time.monotonic() - t < 20
    err = capsys.readouterr().err
    assert endpoint in err and "very-secret-value" not in err


def test_unwritable_store_fails_before_acquiring(tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store directory should be")
    rc = main(["acquire", "--station", "demo-berlin", "--frequency", "9749000", "--duration", "1",
               "--out", str(blocker)])
    assert rc == 1
    assert str(blocker) in capsys.readouterr().err


def test_a_session_the_store_refused_is_rescued_and_pushed_back(tmp_path, capsys):
    """The store refuses the write: the session goes to the rescue directory (SDRLAB_RESCUE),
    the CLI says where and how to move it back; `sdrlab store push` writes it to the store under
    its own id, indexes it and empties the rescue directory."""
    from sqlalchemy import func, select

    from sdrlab import testing
    from sdrlab.acquire import Session, save
    from sdrlab.cli import _save_or_rescue
    from sdrlab.config import Settings
    from sdrlab.index.models import CaptureRow
    from sdrlab.store import Store

    ds = testing.synthetic_dataset(n_stations=2, duration_s=1.0)
    sid = ds.attrs["session_id"] = "20261124T100000Z-5afe00"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store directory should be")
    settings = Settings.from_env()
    s = save(Session(sid, 9e6, 1.0, {}, ds), Store(f"file://{blocker}/store"), index=False,
             rescue=settings.rescue_obj())
    assert s.store_error and s.path is None
    assert s.rescued == f"file://{tmp_path}/rescue/sessions/{sid}"
    assert _save_or_rescue(s) == 1
    err = capsys.readouterr().err
    assert s.rescued in err and f"sdrlab store push {sid}" in err
    assert main(["store", "push"]) == 0
    assert f"pushed {sid} to {settings.store_obj().session_url(sid)}" in capsys.readouterr().out
    back = settings.store_obj().open(sid)
    np.testing.assert_array_equal(back["iq"].values, ds["iq"].values)
    assert settings.rescue_obj().sessions().empty
    with settings.engine().connect() as c:
        assert c.execute(select(func.count()).select_from(CaptureRow).where(CaptureRow.session_id == sid)).scalar() == 2
    assert main(["store", "push"]) == 0 and "nothing to push" in capsys.readouterr().out
    assert main(["store", "push", "20261124T100000Z-000000"]) == 2  # not rescued: a usage error
    assert "not in" in capsys.readouterr().err


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"a full disk is simulated with a small tmpfs, which needs root (CAP_SYS_ADMIN) to mount: "
                    f"{r.stderr.strip()}")


def test_a_full_disk_keeps_the_session_and_frees_the_failed_writes_space(tmp_path):
    """The store's disk fills mid-write (issue 13: the failed write's leftovers took the space the
    rescue copy needed, and the session was lost): the error names the full disk, what the
    failed write left is removed (the disk's free space is back), the session is in the rescue
    directory, and once space is freed `sdrlab store push` commits it."""
    import shutil

    from sdrlab import testing
    from sdrlab.acquire import Session, save
    from sdrlab.config import Settings
    from sdrlab.store import Store

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "2m")
    try:
        ds = testing.synthetic_dataset(n_stations=4, duration_s=3.0)  # ~600 kB of noisy IQ
        sid = ds.attrs["session_id"] = "20261207T050000Z-d15cf0"
        ballast = disk / "ballast"
        free = shutil.disk_usage(disk).free
        ballast.write_bytes(b"\0" * (free - 200_000))  # 200 kB left: the session does not fit
        before = shutil.disk_usage(disk).free
        store = Store(f"file://{disk}/store")
        settings = Settings.from_env()
        s = save(Session(sid, 9e6, 3.0, {}, ds), store, index=False, rescue=settings.rescue_obj())
        assert s.store_error is not None and "No space left" in s.store_error, s.store_error
        assert not list((disk / "store").rglob("*.json")) and shutil.disk_usage(disk).free >= before - 16_384
        assert s.rescued is not None
        np.testing.assert_array_equal(settings.rescue_obj().open(sid)["iq"].values, ds["iq"].values)
        ballast.unlink()  # space freed: push it to that store
        assert main(["store", "push", sid, "--store", f"file://{disk}/store"]) == 0
        np.testing.assert_array_equal(store.open(sid)["iq"].values, ds["iq"].values)
        assert settings.rescue_obj().sessions().empty
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["sim", "serve", "--port", "65533"], "beyond 65535"),
        (["sim", "serve", "--port", "0", "--host", "256.1.1.1"], "cannot serve on 256.1.1.1"),
        (["sim", "serve", "--speed", "0"], "--speed must be positive"),
        (["demo", "--speed", "0"], "speed must be positive"),
    ],
)
def test_bad_simulator_and_demo_options(args, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert pattern in capsys.readouterr().err


def test_sessions_and_store_commands_on_s3(s3_server, bucket, capsys, monkeypatch):
    from sdrlab import testing
    from sdrlab.store import Store

    monkeypatch.setenv("SDRLAB_STORE", f"s3://{bucket}/lab")
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("SDRLAB_S3_KEY", s3_server.storage_options["key"])
    monkeypatch.setenv("SDRLAB_S3_SECRET", s3_server.storage_options["secret"])
    ds = testing.synthetic_dataset(n_stations=3, duration_s=1.0)
    sid = ds.attrs["session_id"] = "20261124T110000Z-c1c1c1"
    store = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    store.write(ds)
    assert main(["index", "rebuild"]) == 0  # stored and indexed: fsck finds nothing else to report
    capsys.readouterr()
    # a leftover of an interrupted write
    leftover = "20261124T120000Z-1eff00"
    store.fs.pipe(f"{store.root}/sessions/{leftover}/zarr.json", b"{}")

    assert main(["store", "health"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok s3://") and s3_server.endpoint_url in out
    assert s3_server.storage_options["secret"] not in out
    assert main(["sessions", "list"]) == 0
    out = capsys.readouterr().out
    assert sid in out and leftover not in out
    assert main(["sessions", "show", sid]) == 0
    out = capsys.readouterr().out
    assert all(str(s) in out for s in ds["station"].values)
    assert main(["store", "fsck"]) == 1
    assert f"uncommitted {leftover}" in capsys.readouterr().out
    assert main(["store", "fsck", "--remove"]) == 0  # young: reported, spared
    assert main(["store", "fsck"]) == 1
    assert main(["store", "fsck", "--remove", "--min-age", "0"]) == 0
    assert main(["store", "fsck"]) == 0
    capsys.readouterr()
    assert main(["sessions", "delete", sid]) == 0
    assert "objects and its index rows removed" in capsys.readouterr().out
    assert store.objects(sid) == [] and store.sessions().empty
    assert main(["sessions", "show", sid]) == 1
    assert "no committed session" in capsys.readouterr().err


def test_export_and_import_round_trip_through_the_store(tmp_path, capsys):
    from sdrlab import testing
    from sdrlab.config import Settings

    store = Settings.from_env().store_obj()  # the per-test default store
    ds = testing.synthetic_dataset(n_stations=3, duration_s=2.0, seed=4)
    sid = ds.attrs["session_id"] = "20261124T130000Z-e0e0e0"
    store.write(ds)
    out = tmp_path / "sigmf"
    assert main(["export", "sigmf", sid, str(out)]) == 0
    files = capsys.readouterr().out.split()
    assert len(files) == 3 and all(f.endswith(".sigmf-meta") for f in files)
    assert main(["import", "sigmf", *files]) == 0
    msg = capsys.readouterr().out
    assert msg.startswith("imported 3 station(s) into session")
    new_id = msg.split("session ")[1].split()[0]
    from sdrlab.index import find_captures

    hits = find_captures(Settings.from_env().engine())
    assert set(hits["session_id"]) == {new_id} and len(hits) == 3  # imported sessions are indexed too
    back = store.open(new_id)
    np.testing.assert_array_equal(back["iq"].values, ds["iq"].values)
    np.testing.assert_array_equal(back["start_time"].values, ds["start_time"].values)
    assert main(["export", "sigmf", "20990101T000000Z-000000", str(out)]) == 1
    assert "no committed session" in capsys.readouterr().err


def test_import_kiwi_wav_files_with_positions(tmp_path, capsys):
    from sdrlab import timing
    from sdrlab.config import Settings
    from tests.interchange.kiwirecorder_files import record, write_gnss_pos

    t0 = timing.gps_now_ns() - 3600 * timing.NS
    truths = [record(tmp_path, st, t0_gps_ns=t0 + i * 1_000_000, fs=fs, seed=i)
              for i, (st, fs) in enumerate((("kiwi-a", 12001.15), ("kiwi-b", 12001.19)))]
    pos = tmp_path / "gnss_pos"
    pos.mkdir()
    write_gnss_pos(pos, "kiwi-a", 52.1, 5.2)
    write_gnss_pos(pos, "kiwi-b", 48.5, 9.9)
    assert main(["import", "kiwi-wav", *(str(t.path) for t in truths), "--positions", str(pos)]) == 0
    new_id = capsys.readouterr().out.split("session ")[1].split()[0]
    ds = Settings.from_env().store_obj().open(new_id)
    for t in truths:
        s = ds.sel(station=t.station.replace("-", "_")) if t.station.replace("-", "_") in ds["station"].values \
            else ds.sel(station=t.station)
        n = int(s["n_samples"])
        assert n == t.n_frames * 512
        np.testing.assert_array_equal(s["iq"].values[:n], t.samples)
        assert float(s["sample_rate"]) == pytest.approx(t.fs, abs=1e-4)
        assert abs(int((s["start_time"].values - t.start_utc) / np.timedelta64(1, "ns"))) < 1_000
    assert sorted(np.round(ds["latitude"].values, 3).tolist()) == [48.5, 52.1]


def test_db_index_and_query_commands(tmp_path, capsys):
    """Sessions in the store -> `index rebuild` -> queries; deleting a session removes its rows."""
    from sdrlab import testing
    from sdrlab.acquire import StationResult, attach_interval_metrics, attach_metrics
    from sdrlab.config import Settings
    from sdrlab.metrics import metrics

    store = Settings.from_env().store_obj()
    ds = testing.synthetic_dataset(n_stations=2, duration_s=2.0, seed=7)
    m = metrics(ds).compute()
    ds = attach_metrics(ds, [StationResult(str(s), "ok", None, metrics={k: float(m[k].sel(station=s))
                                                                        for k in m.data_vars})
                             for s in ds["station"].values])
    ds = attach_interval_metrics(ds, 1.0)  # two intervals per station
    sid = ds.attrs["session_id"] = "20261124T160000Z-abcdef"
    store.write(ds)
    assert main(["db", "init"]) == 0 and "index schema ready (sqlite)" in capsys.readouterr().out
    assert main(["index", "rebuild"]) == 0
    assert f"indexed {sid}: 2 metric rows" in capsys.readouterr().out
    assert main(["query", "metric", "--metric", "snr_db", "--bucket", "3600"]) == 0
    out = capsys.readouterr().out
    for s in ds["station"].values:
        assert str(s) in out
    assert main(["query", "metric", "--source", "intervals", "--bucket", "1"]) == 0
    out_iv = capsys.readouterr().out
    # one 1 s bucket holds both ~0.98 s intervals (whole frames) of the first station, the
    # second station (half as long) has one
    lines = {ln.split()[3]: ln.split()[-1] for ln in out_iv.splitlines()[1:]}
    assert lines == {"syn0": "2", "syn1": "1"}, out_iv
    assert main(["query", "captures", "--min-snr", "-100"]) == 0
    assert out.count("\n") >= 2 and store.session_url(sid) in capsys.readouterr().out
    assert main(["query", "metric", "--start", "yesterday-ish"]) == 2
    assert "--start must be a UTC time" in capsys.readouterr().err
    assert main(["sessions", "delete", sid]) == 0
    capsys.readouterr()
    assert main(["query", "captures"]) == 0
    assert "(none)" in capsys.readouterr().out


def test_store_option_s3_uses_the_configured_endpoint_and_credentials(s3_server, bucket, capsys, monkeypatch):
    """--store s3://... with the default file:// store in SDRLAB_STORE still gets the S3 settings."""
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("SDRLAB_S3_KEY", s3_server.storage_options["key"])
    monkeypatch.setenv("SDRLAB_S3_SECRET", s3_server.storage_options["secret"])
    assert main(["store", "health", "--store", f"s3://{bucket}/lab"]) == 0
    assert s3_server.endpoint_url in capsys.readouterr().out


@pytest.fixture(scope="module")
def tdoa_session(tmp_path_factory):
    """A 12 s demo7 session (simulator at 4x), stored: enough shared GPS time for TDoA."""
    from sdrlab.demo import run_demo

    root = tmp_path_factory.mktemp("tdoa")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDRLAB_DB", f"sqlite:///{root}/index.db")
        s = run_demo(duration_s=12.0, out=root / "store", speed=4.0, progress=False)
    return f"file://{root}/store", s.session_id


def test_tdoa_prints_position_lags_and_map(tdoa_session, tmp_path, capsys):
    from sdrlab.sim.networks import DEMO7_TX
    from sdrlab.tdoa import geodesic_distance

    store, sid = tdoa_session
    assert main(["tdoa", sid, "--store", store, "--map", str(tmp_path / "map.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"session {sid}"
    _, lat, lon = out[1].split()
    assert out[1].startswith("position ")
    # demo7's receivers differ by 8-45 us of processing delay: kilometres, inside the ellipse
    assert float(geodesic_distance(float(lat), float(lon), DEMO7_TX.latitude, DEMO7_TX.longitude)) < 5000.0
    assert out[2].startswith("uncertainty 95% ellipse")
    lags = [line for line in out if line.startswith("lag ")]
    assert len(lags) == 21 and all(" us +- " in line for line in lags)
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tdoa_json_is_one_object_with_the_same_answer(tdoa_session, capsys):
    store, sid = tdoa_session
    assert main(["tdoa", "latest", "--store", store, "--json", "--window", "2", "--min-overlap", "8"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["session_id"] == sid and d["error_km"] < 5.0
    assert d["parameters"]["window_s"] == 2.0 and d["parameters"]["min_overlap_s"] == 8.0
    assert len(d["stations_used"]) == 7 and d["stations_dropped"] == {}
    assert {p["a"] for p in d["pairs"]} | {p["b"] for p in d["pairs"]} == set(d["stations_used"])


def test_tdoa_with_two_stations_reports_lags_but_no_position(tdoa_session, capsys):
    store, sid = tdoa_session
    assert main(["tdoa", sid, "--store", store, "--station", "demo-berlin", "--station", "demo-paris"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("position none (")
    assert any(line.startswith("lag demo-berlin -> demo-paris:") for line in out)


def test_tdoa_of_unknown_session_exits_2(tdoa_session, capsys):
    store, _ = tdoa_session
    assert main(["tdoa", "20200101T000000Z-000000", "--store", store]) == 2
    assert "is not in the store" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--window", "0"], "window_s must be a finite positive number of seconds, got 0.0"),
    (["--window", "-1"], "window_s must be a finite positive number of seconds, got -1.0"),
    (["--min-overlap", "nan"], "min_overlap_s must be a finite positive number of seconds, got nan"),
    (["--window", "20"], "window_s (20 s) is longer than min_overlap_s (10 s)"),
    (["--station", "demo-nowhere"], "station(s) not in the session: demo-nowhere"),
    (["--map", "/nonexistent-dir/x.png"], "the directory /nonexistent-dir does not exist"),
    (["--map", "map.txt"], "give a .png, .svg or .pdf file"),
])
def test_tdoa_bad_options_exit_2_naming_the_problem(tdoa_session, args, message, capsys):
    store, sid = tdoa_session
    assert main(["tdoa", sid, "--store", store, *args]) == 2
    assert message in capsys.readouterr().err


def test_tdoa_map_with_a_station_without_position(tdoa_session):
    """A station with no position is dropped with the reason, and the map still draws."""
    from sdrlab.plots import plot_tdoa_map
    from sdrlab.store import Store
    from sdrlab.tdoa import tdoa

    store, sid = tdoa_session
    ds = Store(store).open(sid).load()
    ds["latitude"].values[0] = np.nan
    lost = str(ds["station"].values[0])
    result = tdoa(ds)
    assert lost in result.stations_dropped and "position" in result.stations_dropped[lost]
    assert result.position is not None and result.error_km() < 5.0
    assert plot_tdoa_map(result).axes


def test_tdoa_calibrate_then_locate_with_the_delays(tdoa_session, capsys):
    """--calibrate on the known transmitter prints each receiver's relative delay: demo7's truth."""
    from sdrlab.sim.networks import DEMO7_TX, demo7

    store, sid = tdoa_session
    where = f"{DEMO7_TX.latitude},{DEMO7_TX.longitude}"
    assert main(["tdoa", sid, "--store", store, "--calibrate", where, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    truth = {rx.id: rx.processing_delay_s * 1e6 for rx in demo7().receivers}
    mean = np.mean([truth[s] for s in d["delays_us"]])
    for sid_, us in d["delays_us"].items():
        assert abs(us - (truth[sid_] - mean)) < 1.5, sid_
    assert main(["tdoa", sid, "--store", store, "--calibrate", "91,0"]) == 2
    assert "not a latitude, longitude pair" in capsys.readouterr().err
    assert main(["tdoa", sid, "--store", store, "--station-delay-sigma", "-1"]) == 2


@pytest.mark.parametrize("db, problem", [
    ("postgresqlx://u@127.0.0.1:5/x", "index URL"),
    ("postgresql+psycopg2://u@127.0.0.1:5/x", "driver is not installed"),
    ("sqlite:///{tmp}/afile/index.db", "cannot use it"),
])
def test_acquire_with_an_index_url_that_cannot_work_exits_2_before_capturing(tmp_path, run_sim, capsys,
                                                                             monkeypatch, db, problem):
    """An index URL that cannot even make an engine is named before anything is acquired (issue
    13: it used to throw a finished acquisition away with a traceback)."""
    (tmp_path / "afile").write_text("not a directory")
    monkeypatch.setenv("SDRLAB_DB", db.format(tmp=tmp_path))
    monkeypatch.setenv("SDRLAB_PROGRESS", "0")
    with run_sim(demo7(), speed=10) as sim:
        cat = _catalog(tmp_path, sim.ports)
        rc = main(["acquire", "--station", "demo-berlin", "--frequency", str(DEMO7_TUNE_HZ), "--duration", "1",
                   "--out", str(tmp_path / "store"), "--catalog", str(cat)])
        arrivals = sim.connection_count("demo-berlin")
    err = capsys.readouterr().err
    assert rc == 2 and "metrics index" in err and problem in err and "Traceback" not in err
    assert arrivals == 0  # nothing was acquired, so nothing was thrown away


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_capture_at_once_and_keeps_what_arrived(tmp_path, run_sim, sig):
    """SIGTERM or Ctrl-C 4 s into a 60 s acquisition (issue 13: it captured on to the end, then
    threw everything away): the command ends within seconds and stores the ~4 s each station sent,
    the stations partial with the reason."""
    with run_sim(demo7(), speed=1.0) as sim:
        cat = _catalog(tmp_path, sim.ports)
        env = {**os.environ, "SDRLAB_PROGRESS": "0", "SDRLAB_DB": f"sqlite:///{tmp_path}/index.db"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdrlab.cli", "acquire", "--station", "demo-berlin", "--station", "demo-paris",
             "--frequency", str(DEMO7_TUNE_HZ), "--duration", "60", "--out", str(tmp_path / "store"),
             "--catalog", str(cat)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sim.connections("demo-paris") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(4.0)
        t = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t
    assert proc.returncode == 0, err
    assert stopped_in < 15.0
    assert "stopping, keeping what has arrived" in err
    [path] = (tmp_path / "store" / "sessions").iterdir()
    ds = open_session(path)
    for sid in ("demo-berlin", "demo-paris"):
        s = ds.sel(station=sid)
        assert 2.5 * 12000 < int(s["n_samples"]) < 20 * 12000
        assert str(s["status"].values) == "partial"
    assert "stopped by request" in out


# ---- usage errors exit 2 and say what is wrong (issue 14) ------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["sessions", "show", "bad id!"], "invalid session id 'bad id!'"),
    (["sessions", "delete", "../x"], "invalid session id '../x'"),
    (["export", "sigmf", "a/b", "out"], "invalid session id 'a/b'"),
    (["tdoa", "bad id!"], "invalid session id 'bad id!'"),
    (["tdoa", ""], "empty: give a session id, or 'latest'"),
    (["sessions", "show", "x" * 100_000], "more characters"),
    (["query", "metric", "--bucket", "nan"], "must be a whole number of seconds >= 1, got 'nan'"),
    (["query", "metric", "--bucket", "0"], "got '0'"),
    (["query", "metric", "--bucket", "1.5"], "got '1.5'"),
    (["query", "metric", "--bucket", "inf"], "got 'inf'"),
    (["acquire", "--all", "--frequency", "9e6", "--duration", "1e-9"], "must be at least 0.1 s"),
    (["acquire", "--all", "--frequency", "9e6", "--duration", "nan"], "must be at least 0.1 s"),
    (["acquire", "--station", "demo-berlin", "--frequency", "9e6", "--duration", "-2"], "must be at least 0.1 s"),
    (["demo", "--duration", "0.01"], "must be at least 0.1 s"),
    (["demo", "--duration", "-1"], "must be at least 0.1 s"),
])
def test_bad_arguments_are_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    err = capsys.readouterr().err
    assert ei.value.code == 2 and message in err and "Traceback" not in err
    assert len(err) < 2_000


def test_a_missing_session_with_a_valid_id_is_not_a_usage_error(capsys):
    assert main(["sessions", "show", "20200101T000000Z-000000"]) == 1
    assert "20200101T000000Z-000000" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_store_url_that_is_not_file_or_s3_is_exit_2_without_its_password(how, capsys, monkeypatch):
    url = "ftp://lab:hunter2-pw@ftp.example.org/data"
    if how == "env":
        monkeypatch.setenv("SDRLAB_STORE", url)
        argv = ["sessions", "list"]
    else:
        argv = ["sessions", "list", "--store", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ftp://lab:***@ftp.example.org/data" in err and "hunter2-pw" not in err


def test_a_missing_sqlite_directory_is_an_error_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDRLAB_DB", f"sqlite:///{tmp_path}/typo/index.db")
    assert main(["db", "init"]) == 1
    assert f"the directory {tmp_path}/typo does not exist" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    # the default layout, the index inside the local store's directory, is made as the store is
    monkeypatch.delenv("SDRLAB_STORE")
    monkeypatch.delenv("SDRLAB_DB")
    monkeypatch.chdir(tmp_path)
    assert main(["db", "init"]) == 0
    assert (tmp_path / "sdrlab-data" / "index.db").is_file()


def test_listing_a_missing_s3_bucket_is_an_error_naming_it(s3_server, capsys, monkeypatch):
    monkeypatch.setenv("SDRLAB_STORE", "s3://sdrlab-no-such-bucket/lab")
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("SDRLAB_S3_KEY", s3_server.storage_options["key"])
    monkeypatch.setenv("SDRLAB_S3_SECRET", s3_server.storage_options["secret"])
    for argv in (["sessions", "list"], ["sessions", "show", "20200101T000000Z-000000"], ["store", "fsck"],
                 ["index", "rebuild"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "the bucket 'sdrlab-no-such-bucket'" in err and "does not exist" in err, argv
        assert s3_server.storage_options["secret"] not in err


def test_credentials_in_the_s3_endpoint_url_are_used_and_never_shown(s3_server, bucket, capsys, monkeypatch):
    from urllib.parse import quote as urlquote

    key, secret = s3_server.storage_options["key"], s3_server.storage_options["secret"]
    host = s3_server.endpoint_url.split("://", 1)[1]
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", f"http://{urlquote(key, safe='')}:{urlquote(secret, safe='')}@{host}")
    monkeypatch.delenv("SDRLAB_S3_KEY", raising=False)
    monkeypatch.delenv("SDRLAB_S3_SECRET", raising=False)
    assert main(["store", "health", "--store", f"s3://{bucket}/lab"]) == 0
    out = capsys.readouterr().out
    assert s3_server.endpoint_url in out and secret not in out
    assert main(["sessions", "list", "--store", f"s3://{bucket}/lab"]) == 0
    assert "(none)" in capsys.readouterr().out  # the bucket exists and is empty
    # a refused login names the store, not the password
    monkeypatch.setenv("SDRLAB_S3_ENDPOINT", f"http://{key}:wrong-Secret-123@{host}")
    assert main(["sessions", "list", "--store", f"s3://{bucket}/lab"]) == 1
    err = capsys.readouterr().err
    assert s3_server.endpoint_url in err and "wrong-Secret-123" not in err and secret not in err


@pytest.mark.parametrize("argv", [["sessions", "list"], ["query", "latest"], ["db", "init"], ["store", "push"],
                                  ["index", "rebuild"]])
def test_settings_are_read_from_the_environment_once_per_command(argv, monkeypatch, capsys):
    """Issue 14: SDRLAB_* were resolved up to fifteen times in one command."""
    from sdrlab.config import Settings

    calls = []
    real = Settings.from_env.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: object, **kw: object) -> Settings:
        calls.append(argv)
        return real(cls, *args, **kw)

    monkeypatch.setattr(Settings, "from_env", classmethod(counting))
    assert main(argv) == 0
    assert len(calls) == 1, calls
