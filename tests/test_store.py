"""The session store against a local directory and a real S3 server (SeaweedFS), same cases."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sdrlab import testing
from sdrlab.errors import StorageError
from sdrlab.store import Store


def assert_same_data(opened: xr.Dataset, want: xr.Dataset) -> None:
    """``opened`` holds exactly ``want``, and names the data version it was read at."""
    back = opened.load()
    assert len(back.attrs.pop("data_version")) == 16
    xr.testing.assert_identical(back, want)


@pytest.fixture(scope="module")
def session() -> xr.Dataset:
    ds = testing.synthetic_dataset(n_stations=7, duration_s=10.0, seed=11)
    ds.attrs["session_id"] = "20261124T060000Z-abc123"
    return ds


@pytest.fixture(params=["file", "s3"])
def store(request: Any, tmp_path: Any) -> Store:
    if request.param == "file":
        return Store(f"file://{tmp_path}/store")
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("bucket")
    return Store(f"s3://{bucket}/lab", s3.storage_options)


def test_round_trip_is_bit_exact_and_lazy(store, session):
    ref = store.write(session)
    assert ref.session_id == session.attrs["session_id"]
    back = store.open(ref.session_id)
    assert back["iq"].chunks is not None  # dask-backed: nothing read yet
    assert back["iq"].dtype == np.int16
    assert_same_data(back, session)


def test_list_show_and_captures(store, session):
    store.write(session)
    table = store.sessions()
    sid = session.attrs["session_id"]
    assert list(table.index) == [sid]
    row = table.loc[sid]
    assert row["stations"] == 7 and row["status"] == "ok"
    assert row["center_frequency_hz"] == session.attrs["center_frequency_hz"]
    assert row["start_time"] == session["start_time"].min().values
    caps = store.captures(sid)
    assert list(caps.index) == list(session["station"].values)
    assert (caps["samples"].values == session["n_samples"].values).all()
    np.testing.assert_allclose(caps["sample_rate_hz"], session["sample_rate"])


def test_interrupted_write_is_not_a_session_and_rerun_is_idempotent(store, session):
    sid = session.attrs["session_id"]
    # data written, marker never: what a crash between the two leaves
    session.isel(station=slice(0, 2)).to_zarr(store._zarr_url(sid), mode="w", zarr_format=3, consolidated=False,
                                              storage_options=store._zarr_options())
    assert store.sessions().empty
    with pytest.raises(StorageError, match="no committed session"):
        store.open(sid)
    assert store.fsck() == [sid]
    store.write(session)  # removes the leftovers, writes, commits
    assert list(store.sessions().index) == [sid]
    assert store.fsck() == []
    n = len(store.objects(sid))
    store.write(session)  # committed already: nothing changes
    assert len(store.objects(sid)) == n
    assert_same_data(store.open(sid), session)


def test_fsck_remove(store, session):
    sid = "20261124T070000Z-dead00"
    session.attrs["session_id"], keep = sid, session.attrs["session_id"]
    try:
        session.to_zarr(store._zarr_url(sid), mode="w", zarr_format=3, consolidated=False,
                        storage_options=store._zarr_options())
    finally:
        session.attrs["session_id"] = keep
    assert store.fsck(remove=True, min_age_s=0) == [sid]
    assert store.fsck() == [] and store.objects(sid) == []


def test_delete_leaves_no_objects(store, session):
    sid = session.attrs["session_id"]
    store.write(session)
    objects = store.objects(sid)
    assert f"commits/{sid}.json" in objects and len(objects) >= 3
    assert store.delete(sid) == len(objects)
    assert store.objects(sid) == []
    assert store.sessions().empty
    with pytest.raises(StorageError, match=sid):
        store.delete(sid)


def test_health(store):
    h = store.health()
    assert h["ok"] is True
    assert all(h[k] >= 0 for k in ("write_ms", "read_ms", "delete_ms"))


def test_chunks_are_large_objects_and_lossless_codec(store):
    """~80 s x 7 stations of int16 IQ: objects of 10-100 MB raw, Blosc lz4; on S3 the session is
    packed: its chunk bytes in one object, everything else inline in its references."""
    import zarr

    big = testing.synthetic_dataset(n_stations=7, duration_s=80.0, seed=2)
    sid = big.attrs["session_id"] = "20261124T080000Z-b16b16"
    store.write(big)
    if store.protocol == "s3":
        assert store.summary(sid)["layout"] == "packed"
        assert sorted(k.rsplit("/", 1)[1] for k in store.objects(sid)) == [f"{sid}.json", "pack", "refs.json"]
        pack = store.fs.size(f"{store.root}/sessions/{sid}/pack")
        assert 5e6 <= pack <= 100e6  # ~0.6 of 31 MB raw
        g = zarr.open_group(store._zarr_store(sid), mode="r", zarr_format=3)
        arr = g["iq"]
        assert arr.shards is None  # the pack is the shard: each chunk one ranged GET
    else:
        g = zarr.open_group(store._zarr_url(sid), mode="r", zarr_format=3)
        arr = g["iq"]
        raw_shard = int(np.prod(arr.shards)) * 2  # one object per shard
        assert 10e6 <= raw_shard <= 100e6 or raw_shard == arr.nbytes
    assert arr.chunks[0] == 1  # inner chunks: one station each
    assert "lz4" in str(arr.compressors).lower()
    lazy = store.open(sid)
    assert lazy["iq"].chunks[0] == (1,) * 7  # dask reads a station at a time


def test_sessions_of_the_previous_layout_still_open(store, session, monkeypatch):
    """A plain zarr group under the session's prefix (every session written before the packed
    layout, and S3 sessions too big to stage in memory) opens, lists, checks and deletes as before."""
    import sdrlab.store

    monkeypatch.setattr(sdrlab.store, "STAGE_IN_MEMORY_BYTES", 0)  # the plain path, on S3 too
    sid = session.attrs["session_id"]
    store.write(session)
    assert "layout" not in store.summary(sid)
    assert any("/iq/c/" in k for k in store.objects(sid))
    assert_same_data(store.open(sid), session)
    assert list(store.sessions().index) == [sid] and store.fsck() == []
    store.fs.rm(f"{store.root}/{[k for k in store.objects(sid) if '/iq/c/' in k][0]}")
    with pytest.raises(StorageError, match="damaged"):
        store.open(sid)
    assert store.delete(sid) > 10


def test_a_packed_session_opens_with_its_small_records_in_memory(s3_server, bucket, session):
    """Only the IQ is left lazy (dask, one chunk per station): the small per-station and per-frame
    records came with the references and are decoded at once."""
    st = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    st.write(session)
    back = st.open(session.attrs["session_id"])
    assert back["iq"].chunks is not None
    assert all(back[v].chunks is None for v in back.variables if v != "iq")
    assert set(back.data_vars) == set(session.data_vars) and set(back.coords) == set(session.coords)
    assert_same_data(back, session)


@pytest.mark.parametrize("block", [32 * 1024 * 1024, 1_000_003, 4096])
def test_a_packed_session_reads_through_blocks_of_any_size(s3_server, bucket, session, monkeypatch, block):
    """The pack is read in whole blocks (one GET each, shared by the stations in it): chunks inside
    a block, across blocks and over many blocks read back bit-exact, one station or all."""
    import sdrlab.packing

    monkeypatch.setattr(sdrlab.packing, "PACK_BLOCK_BYTES", block)
    st = Store(f"s3://{bucket}/lab", s3_server.storage_options)
    st.write(session)
    sid = session.attrs["session_id"]
    np.testing.assert_array_equal(st.open(sid)["iq"].isel(station=3).values, session["iq"].isel(station=3).values)
    assert_same_data(st.open(sid), session)


def test_listing_many_sessions_skips_unreadable_records(store, session):
    """The commit records are fetched together (one batch, not one round trip each)."""
    ids = [f"20261124T0{i:05d}Z-{i:06x}" for i in range(40)]
    tiny = testing.synthetic_dataset(n_stations=1, duration_s=0.5, seed=3)
    for sid in ids[:5]:
        tiny.attrs["session_id"] = sid
        store.write(tiny)
    record = store.fs.cat(store._commit_key(ids[0]))
    for sid in ids[5:]:  # the same record under other ids: listing reads records only
        store.fs.pipe(store._commit_key(sid), record)
    store.fs.pipe(store._commit_key(ids[7]), b"{trunc")
    table = store.sessions()
    assert list(table.index) == [i for i in ids if i != ids[7]]
    assert (table["stations"] == 1).all()


# ---- S3 failure modes ------------------------------------------------------------------------
def test_wrong_credentials_name_the_endpoint_not_the_secret(s3_server, bucket, session):
    opts = {**s3_server.storage_options, "secret": "wrong-secret-value"}
    st = Store(f"s3://{bucket}/lab", opts)
    with pytest.raises(StorageError) as ei:
        st.write(session)
    msg = str(ei.value)
    assert s3_server.endpoint_url in msg
    assert "wrong-secret-value" not in msg and s3_server.storage_options["secret"] not in msg


def test_unreachable_endpoint_is_clear_and_quick(session):
    from tests.support.servers import _free_ports

    port = _free_ports(1)[0]
    st = Store("s3://sdrlab-nowhere/lab", {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{port}"}, "config_kwargs": {"connect_timeout": 1,
                                                                      "retries": {"max_attempts": 1}}})
    t = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        st.sessions()
    assert time.monotonic() - t < 20


def test_server_killed_mid_write_then_rerun_after_restart(tmp_path):
    """Kill the S3 server while a session is being written: nothing lists as a session; after a
    restart (same data) the same write succeeds."""
    from tests.support.servers import SeaweedS3

    big = testing.synthetic_dataset(n_stations=7, duration_s=300.0, seed=9)
    big.attrs["session_id"] = "20261124T090000Z-c0ffee"
    sid = big.attrs["session_id"]
    srv = SeaweedS3(str(tmp_path / "s3")).start()
    try:
        st = Store("s3://sdrlab-crash/lab", srv.storage_options)
        st.health()  # creates the bucket
        errors: list[BaseException] = []

        def write() -> None:
            try:
                st.write(big)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        # the packed layout's data is one PUT: kill the server while it is in flight
        pipe = st.fs.pipe

        def pipe_then_kill(path: Any, value: Any = None, **kw: Any) -> Any:
            if isinstance(path, str) and path.endswith("/pack"):
                threading.Timer(0.05, srv.kill).start()
            return pipe(path, value, **kw)

        st.fs.pipe = pipe_then_kill
        t = threading.Thread(target=write)
        t.start()
        t.join(120)
        assert errors and isinstance(errors[0], StorageError), errors
        assert srv.endpoint_url in str(errors[0])
        srv.start()
        st2 = Store("s3://sdrlab-crash/lab", srv.storage_options)
        assert st2.sessions().empty
        st2.write(big)
        assert list(st2.sessions().index) == [sid]
        back = st2.open(sid)
        np.testing.assert_array_equal(back["iq"].values, big["iq"].values)
    finally:
        srv.cleanup()


def test_an_opened_session_can_be_written_to_another_store(store, session, tmp_path):
    """Copy between stores (e.g. laptop -> team S3): the lazy dataset is rechunked onto the zarr grid."""
    src = Store(f"file://{tmp_path}/src")
    src.write(session)
    lazy = src.open(session.attrs["session_id"])
    store.write(lazy)
    assert_same_data(store.open(session.attrs["session_id"]), session)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "x y", None])
def test_bad_session_ids_never_reach_the_store(store, session, bad):
    """An empty or '..' id must not delete (or write over) the store: every operation refuses it."""
    store.write(session)
    before = store.objects(session.attrs["session_id"])
    for op in (store.delete, store.open, store.objects, store.summary):
        with pytest.raises(StorageError, match="invalid session id"):
            op(bad)
    other = session.copy()
    other.attrs = {**session.attrs, "session_id": bad}
    with pytest.raises(StorageError, match="invalid session id"):
        store.write(other)
    assert store.objects(session.attrs["session_id"]) == before


def test_rewriting_an_id_with_different_content_is_refused(store, session):
    store.write(session)
    changed = session.isel(station=slice(0, 3))
    changed.attrs = dict(session.attrs)
    with pytest.raises(StorageError, match="different content"):
        store.write(changed)
    assert_same_data(store.open(session.attrs["session_id"]), session)


def test_fsck_spares_young_leftovers_and_reports_unreadable_records(store, session):
    sid = session.attrs["session_id"]
    young = "20261124T170000Z-0a0a0a"
    store.fs.pipe(f"{store.root}/sessions/{young}/zarr.json", b"{}")
    assert store.fsck(remove=True) == [young]  # reported, but a write may be in progress: kept
    assert store.objects(young)
    assert store.fsck(remove=True, min_age_s=0) == [young]
    assert store.objects(young) == []
    store.write(session)
    store.fs.pipe(store._commit_key(sid), b'{"session_id": "trunc')  # what a full disk could leave
    assert store.sessions().empty  # not listed, and listing still works
    assert store.fsck() == [sid]
    store.write(session)  # rewrites the unreadable record
    assert list(store.sessions().index) == [sid]


def test_metrics_of_a_stored_session_are_lazy_per_station(tmp_path):
    """A stored 7-station, 60 s session opens with one dask chunk per station; its metrics build
    without computing anything and then agree with the in-memory ones."""
    from sdrlab.metrics import metrics

    ds = testing.synthetic_dataset(n_stations=7, duration_s=60.0, seed=12)
    ds.attrs["session_id"] = "20261124T180000Z-1a2b3c"
    st = Store(f"file://{tmp_path}/s")
    st.write(ds)
    lazy = st.open(ds.attrs["session_id"])
    assert lazy["iq"].data.numblocks[0] == 7
    with testing.raise_if_dask_computes():
        m = metrics(lazy)
    got = m.compute()
    want = metrics(ds).compute()
    for v in ("snr_db", "noise_floor_dbfs_hz", "frequency_offset_hz"):
        np.testing.assert_allclose(got[v].values, want[v].values, rtol=1e-6, atol=1e-6)


def test_a_session_with_missing_chunk_objects_is_damaged_not_zeros(store, session, tmp_path, monkeypatch, capsys):
    """A committed session loses chunk objects (issue 13: it opened and read as zeros, fsck said 0
    problems, and `index rebuild` indexed none of the store's sessions): open names the missing
    objects, fsck reports it (and keeps it), and `index rebuild` skips it and indexes the rest."""
    from sdrlab.cli import main

    good = session.copy()
    good.attrs = {**session.attrs, "session_id": "20261124T080000Z-aaa111"}
    bad = session.copy()
    bad.attrs = {**session.attrs, "session_id": "20261124T090000Z-bbb222"}
    store.write(good)
    store.write(bad)
    chunks = [k for k in store.objects("20261124T090000Z-bbb222") if "/iq/c/" in k or k.endswith("/pack")]
    assert chunks
    store.fs.rm(f"{store.root}/{chunks[0]}")
    with pytest.raises(StorageError, match=r"damaged: 1 object\(s\) missing"):
        store.open("20261124T090000Z-bbb222")
    assert_same_data(store.open("20261124T080000Z-aaa111"), good)
    assert store.fsck() == ["20261124T090000Z-bbb222"]
    assert store.fsck(remove=True, min_age_s=0) == ["20261124T090000Z-bbb222"]
    assert "20261124T090000Z-bbb222" in store.sessions().index  # kept: what is left may be read
    if store.protocol == "file":
        monkeypatch.setenv("SDRLAB_DB", f"sqlite:///{tmp_path}/index.db")
        assert main(["index", "rebuild", "--store", store.url]) == 1
        out = capsys.readouterr()
        assert "indexed 20261124T080000Z-aaa111" in out.out and "1 skipped" in out.out
        assert "skipped 20261124T090000Z-bbb222" in out.err and "damaged" in out.err


def test_a_frozen_server_ends_in_a_timeout_error_with_the_data_kept(tmp_path):
    """The S3 server stops answering mid-session (SIGSTOP; issue 13: `sdrlab acquire` hung for
    good): the write fails within the store's timeout naming the server, the Dataset is untouched,
    and after the server resumes the same write succeeds."""
    import os
    import signal

    from tests.support.servers import SeaweedS3

    ds = testing.synthetic_dataset(n_stations=3, duration_s=5.0, seed=4)
    ds.attrs["session_id"] = "20261124T100000Z-f00f00"
    srv = SeaweedS3(str(tmp_path / "s3")).start()
    try:
        # the server up and its bucket made first (a fresh SeaweedFS on a loaded machine can take
        # longer than the 3 s deadline for its first answers)
        Store("s3://sdrlab-frozen/lab", srv.storage_options, timeout_s=60.0).health()
        st = Store("s3://sdrlab-frozen/lab", srv.storage_options, timeout_s=3.0)
        st.health()
        assert srv.proc is not None
        os.killpg(os.getpgid(srv.proc.pid), signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(StorageError, match=r"no answer within 3 s"):
                st.write(ds)
            assert time.monotonic() - t < 10
        finally:
            os.killpg(os.getpgid(srv.proc.pid), signal.SIGCONT)
        assert ds["iq"].values.any()  # what was acquired is still here to rescue or retry
        st2 = Store("s3://sdrlab-frozen/lab", srv.storage_options, timeout_s=60.0)
        deadline = time.time() + 60
        while True:  # the abandoned write may still be finishing: retry until it commits cleanly
            try:
                st2.write(ds)
                break
            except StorageError:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
        assert_same_data(st2.open(ds.attrs["session_id"]), ds)
    finally:
        srv.cleanup()


def test_the_listing_cache_never_gives_a_wrong_row(store, session):
    """The rows come from a cache checked against one LIST of the commit records: deleted,
    rewritten and new sessions, a damaged cache and rows it invents all list as the records say."""
    import json

    from sdrlab.store import LISTING_CACHE, LISTING_CACHE_VERSION

    sid = session.attrs["session_id"]
    store.write(session)
    assert list(store.sessions().index) == [sid]
    cache = f"{store.root}/{LISTING_CACHE}"
    assert sid in json.loads(store.fs.cat(cache))["rows"]
    store.delete(sid)
    assert store.sessions().empty
    other = session.isel(station=slice(0, 2))
    other.attrs = dict(session.attrs)
    store.write(other)  # same id, other content: a new record
    assert store.sessions().loc[sid, "stations"] == 2
    store.fs.pipe(cache, json.dumps({"version": LISTING_CACHE_VERSION, "rows": {
        sid: {"tag": "stale", "stations": 99, "status": "ok"},
        "20991231T000000Z-ghost0": {"tag": "x", "stations": 1, "status": "ok"}}}).encode())
    table = store.sessions()
    assert list(table.index) == [sid] and table.loc[sid, "stations"] == 2
    store.fs.pipe(cache, b"{not json")
    assert list(store.sessions().index) == [sid]


# ---- messages: no secret, no megabytes -------------------------------------------------------
@pytest.mark.parametrize("url", ["ftp://user:pa55word@host/data", "s3://KEY:pa55word@bucket/lab",
                                 "file://user:pa55word@host/tmp/x", "http://u:pa55word@h/" + "x" * 5000])
def test_a_store_url_never_shows_its_password(url):
    with pytest.raises(StorageError) as ei:
        Store(url)
    msg = str(ei.value)
    assert "pa55word" not in msg and "***" in msg
    assert len(msg) < 500


def test_a_long_session_id_gives_a_short_message(store):
    with pytest.raises(StorageError, match="invalid session id") as ei:
        store.open("x/" * 50_000)
    assert len(str(ei.value)) < 300 and "more characters" in str(ei.value)


def test_listing_a_missing_bucket_names_it_within_the_deadline(s3_server):
    import uuid

    name = f"sdrlab-missing-{uuid.uuid4().hex[:8]}"
    st = Store(f"s3://{name}/lab", s3_server.storage_options, timeout_s=20.0)
    t = time.monotonic()
    with pytest.raises(StorageError, match=f"bucket '{name}' does not exist") as ei:
        st.sessions()
    assert s3_server.endpoint_url in str(ei.value)
    assert time.monotonic() - t < 20
    with pytest.raises(StorageError, match=f"bucket '{name}' does not exist"):
        st.fsck()


def test_listing_a_frozen_server_ends_at_the_deadline(tmp_path):
    """sessions() runs under the store's deadline like every other operation."""
    import os
    import signal

    from tests.support.servers import SeaweedS3

    srv = SeaweedS3(str(tmp_path / "s3")).start()
    try:
        Store("s3://sdrlab-frozen-list/lab", srv.storage_options).health()  # the bucket (slow when first)
        st = Store("s3://sdrlab-frozen-list/lab", srv.storage_options, timeout_s=2.0)
        assert srv.proc is not None
        os.killpg(os.getpgid(srv.proc.pid), signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(StorageError, match=r"listing sessions .* no answer within 2 s"):
                st.sessions()
            assert time.monotonic() - t < 6
        finally:
            os.killpg(os.getpgid(srv.proc.pid), signal.SIGCONT)
    finally:
        srv.cleanup()


def test_every_open_names_the_exact_data_version_and_can_insist_on_it(store, session):
    """The version of an opened session is the digest of its commit record: the same on every
    open and in what write returns; a rewrite under the same id (new content) is a new version,
    and opening with the old one fails naming both; a copy written elsewhere gets its own."""
    sid = session.attrs["session_id"]
    ref = store.write(session)
    assert len(ref.version) == 16 and int(ref.version, 16) >= 0
    first = store.open(sid)
    assert first.attrs["data_version"] == ref.version == store.open(sid).attrs["data_version"]
    assert store.write(session).version == ref.version  # idempotent rewrite: the same data
    assert store.open(sid, version=ref.version).attrs["data_version"] == ref.version
    store.delete(sid)
    changed = session.copy()
    changed["n_samples"] = changed["n_samples"] - 1
    second = store.write(changed).version
    assert second != ref.version
    with pytest.raises(StorageError, match=f"data version {second}, not {ref.version}"):
        store.open(sid, version=ref.version)
    # what is written is the data, never the version it was read at
    assert "data_version" not in store.summary(sid).get("attrs", {})
    back = store.open(sid).load()
    back.attrs["session_id"] = "20261124T060000Z-copy01"
    other = store.write(back)
    assert other.version not in (second, ref.version)
    assert store.open("20261124T060000Z-copy01").attrs["data_version"] == other.version


def test_the_listing_names_each_sessions_campaign_without_opening_it(store, session):
    """A campaign's keys go into the commit record, so the listing (cached or not) has them."""
    plain = session.copy()
    tagged = session.copy()
    tagged.attrs = {**session.attrs, "session_id": "20261124T070000Z-camp01", "campaign_id": "beacon",
                    "campaign_slot": 3, "campaign_frequency_hz": 9749000.0, "campaign_start": 1.5e9}
    store.write(plain)
    store.write(tagged)
    for _ in range(2):  # records read, then from the listing cache
        table = store.sessions()
        row = table.loc["20261124T070000Z-camp01"]
        assert (row["campaign_id"], row["campaign_slot"], row["campaign_frequency_hz"], row["campaign_start"]) == (
            "beacon", 3, 9749000.0, 1.5e9)
        assert pd.isna(table.loc[session.attrs["session_id"], "campaign_id"])


def test_a_session_recording_before_its_first_chunk_lists_beside_finished_ones(store, session):
    """A recording begun (its record written, no chunk yet: a continuous campaign's next session
    waiting for its window) lists with no start time; the other sessions list as ever."""
    store.write(session)
    store.begin_recording("20261124T090000Z-rec001", {"stations": ["a", "b"], "chunk_samples": 240128,
                                                      "center_frequency_hz": 1e7, "duration_s": 60.0})
    table = store.sessions()
    assert list(table.index) == [session.attrs["session_id"], "20261124T090000Z-rec001"]
    assert pd.isna(table.loc["20261124T090000Z-rec001", "start_time"])
    assert table.loc["20261124T090000Z-rec001", "status"] == "recording"
    assert table.loc[session.attrs["session_id"], "start_time"] == session["start_time"].min().values
