"""Settings: the documented defaults, and every setting read from its BOTA_OTA_ environment variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bota_ota.core.settings import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No BOTA_OTA_ variables and no .env file: only the defaults."""
    for name in list(os.environ):
        if name.startswith("BOTA_OTA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.data_dir == Path("data")
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'bota-ota.db'}"
    assert s.storage_backend == "local"
    assert s.blob_dir == Path("data") / "blobs"
    assert s.signed_url_ttl_s == 15 * 60
    assert s.heartbeat_interval_s == 60
    assert s.max_upload_bytes == 64 * 1024 * 1024
    # No secret configured: one is generated on first use and kept in the data dir for the next start.
    assert s.secret_key is None
    key = s.resolved_secret_key
    assert len(key) >= 32
    assert (tmp_path / "data" / "secret_key").read_text().strip() == key
    assert Settings().resolved_secret_key == key


def test_every_setting_comes_from_its_environment_variable(clean_env: pytest.MonkeyPatch) -> None:
    values = {
        "BOTA_OTA_DATABASE_URL": "postgresql+psycopg://bota:pw@db:5432/bota",
        "BOTA_OTA_STORAGE_BACKEND": "s3",
        "BOTA_OTA_S3_ENDPOINT_URL": "http://minio:9000",
        "BOTA_OTA_S3_BUCKET": "firmware",
        "BOTA_OTA_S3_REGION": "eu-central-1",
        "BOTA_OTA_S3_ACCESS_KEY_ID": "AKID",
        "BOTA_OTA_S3_SECRET_ACCESS_KEY": "shh",
        "BOTA_OTA_SIGNED_URL_TTL_S": "300",
        "BOTA_OTA_HEARTBEAT_INTERVAL_S": "30",
        "BOTA_OTA_MAX_UPLOAD_BYTES": "1048576",
        "BOTA_OTA_SECRET_KEY": "a-shared-secret",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://bota:pw@db:5432/bota"
    assert (s.storage_backend, s.s3_endpoint_url, s.s3_bucket, s.s3_region) == (
        "s3",
        "http://minio:9000",
        "firmware",
        "eu-central-1",
    )
    assert (s.s3_access_key_id, s.s3_secret_access_key) == ("AKID", "shh")
    assert (s.signed_url_ttl_s, s.heartbeat_interval_s, s.max_upload_bytes) == (300, 30, 1024 * 1024)
    assert s.resolved_secret_key == "a-shared-secret"


def test_a_dotenv_file_in_the_working_directory_counts(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOTA_OTA_HEARTBEAT_INTERVAL_S=15\n")
    assert Settings().heartbeat_interval_s == 15
