"""Settings: env parsing, validation, secrets masked."""

from __future__ import annotations

import pytest

from sdrlab.config import Settings
from sdrlab.redact import mask_url
from sdrlab.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://user:s3cret@db:5432/x", "postgresql+psycopg://user:***@db:5432/x"),
        ("postgresql+psycopg://user:p@ss/w0rd@db:5432/x", "postgresql+psycopg://user:***@db:5432/x"),
        ("postgresql://user@db/x", "postgresql://user@db/x"),
        ("sqlite:///a/b.db", "sqlite:///a/b.db"),
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
