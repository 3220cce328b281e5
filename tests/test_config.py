"""Settings: env parsing, validation, secrets masked."""

from __future__ import annotations

import pytest

from sdrlab.config import Settings
from sdrlab.errors import ConfigError
from sdrlab.redact import mask_url, mask_urls_in, scrub, secrets_in, split_credentials


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://user:s3cret@db:5432/x", "postgresql+psycopg://user:***@db:5432/x"),
        ("postgresql+psycopg://user:p@ss/w0rd@db:5432/x", "postgresql+psycopg://user:***@db:5432/x"),
        ("postgresql://user@db/x", "postgresql://user@db/x"),
        ("sqlite:///a/b.db", "sqlite:///a/b.db"),
        ("ftp://lab:hunter2@ftp.example.org/data", "ftp://lab:***@ftp.example.org/data"),
        ("https://AKIA123:wJalr/XUt+nFEMI@s3.example.org:8333", "https://AKIA123:***@s3.example.org:8333"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_from_env_and_validation():
    s = Settings.from_env({"SDRLAB_STORE": "file:///tmp/x", "SDRLAB_PROGRESS": "0", "SDRLAB_SCHEDULER": "",
                           "SDRLAB_GPS_UTC_OFFSET_S": "17"})
    assert s.store_obj().root == "/tmp/x" and s.progress is False and s.scheduler is None
    assert s.gps_utc_offset_s == 17
    with pytest.raises(ConfigError, match="SDRLAB_STORE"):
        Settings.from_env({"SDRLAB_STORE": "ftp://x"})
    with pytest.raises(ConfigError, match="SDRLAB_PROGRESS"):
        Settings.from_env({"SDRLAB_PROGRESS": "maybe"})
    with pytest.raises(ConfigError, match="SDRLAB_SCHEDULER"):
        Settings.from_env({"SDRLAB_SCHEDULER": "localhost"})


def test_db_password_never_shown():
    s = Settings(db="postgresql+psycopg://u:topsecret@h/db")
    assert "topsecret" not in repr(s)
    with pytest.raises(ConfigError) as ei:
        Settings(db="mysql://u:topsecret@h/db")
    assert "topsecret" not in str(ei.value)


def test_passwords_in_free_text_and_as_literals_are_masked():
    text = "failed: cannot open ftp://lab:hunter2@h/x and http://k:s%2Fcret@127.0.0.1:8333 (password s/cret)"
    assert mask_urls_in(text) == ("failed: cannot open ftp://lab:***@h/x and http://k:***@127.0.0.1:8333 "
                                  "(password s/cret)")
    secrets = secrets_in(["http://k:s%2Fcret@127.0.0.1:8333", "demo7", 3])
    assert secrets == ["s%2Fcret", "s/cret"]
    assert "cret" not in scrub(text, secrets).replace("***", "")
    assert secrets_in(["ftp://u:abc@h"]) == []  # too short to search for as a word; still masked in URLs


def test_credentials_in_the_s3_endpoint_go_to_the_client_not_the_url():
    assert split_credentials("http://AK:se%2Fcret@127.0.0.1:8333") == ("http://127.0.0.1:8333", "AK", "se/cret")
    assert split_credentials("http://127.0.0.1:8333") == ("http://127.0.0.1:8333", None, None)
    s = Settings(store="s3://b/p", s3_endpoint="http://AK:se%2Fcret@127.0.0.1:8333")
    opts = s.storage_options()
    assert opts["key"] == "AK" and opts["secret"] == "se/cret"
    assert opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:8333"}
    assert "se%2Fcret" not in s.store_obj().where and "se/cret" not in s.store_obj().where
    # SDRLAB_S3_KEY / SDRLAB_S3_SECRET win over the URL's
    opts = Settings(store="s3://b/p", s3_endpoint="http://AK:x@h:1", s3_key="K2", s3_secret="S2").storage_options()
    assert (opts["key"], opts["secret"]) == ("K2", "S2")
    with pytest.raises(ConfigError, match="SDRLAB_S3_ENDPOINT") as ei:
        Settings(s3_endpoint="ftp://AK:topsecret@h")
    assert "topsecret" not in str(ei.value)
    assert Settings.from_env({"SDRLAB_S3_ENDPOINT": ""}).storage_options("s3://b") == {
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}}


def test_an_sqlite_index_outside_the_local_store_needs_its_directory(tmp_path):
    from sdrlab.errors import IndexStoreError

    with pytest.raises(IndexStoreError, match=f"the directory {tmp_path}/nope does not exist"):
        Settings(store=f"file://{tmp_path}/data", db=f"sqlite:///{tmp_path}/nope/index.db").engine()
    assert not (tmp_path / "nope").exists()
    Settings(store=f"file://{tmp_path}/data", db=f"sqlite:///{tmp_path}/data/index.db").engine()
    assert (tmp_path / "data").is_dir()  # inside the store's own directory: made, as the store makes it


def test_the_local_cluster_runs_without_the_workers_profiler():
    """The LocalCluster's worker takes no stack samples: its profile tree grew the process by
    ~15 MB per hour of a seven-station capture task (benchmarks/memory.py)."""
    with Settings(progress=False).dask_client() as client:
        callbacks = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
    (names,) = callbacks.values()
    assert "profile" not in names and "profile-cycle" not in names and "heartbeat" in names
