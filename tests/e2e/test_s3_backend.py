"""The whole HTTP OTA path with S3 storage: uploads go to a real S3-protocol server (s3rver, which
checks SigV4 signatures and expiry) and devices download from it through presigned URLs."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient

from bota_ota.app import create_app
from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, firmware_bytes, heartbeat, make_token
from tests.support.s3rver import S3rverInfo

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_settings(tmp_path: Path, database_url: str, s3rver: S3rverInfo) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="k",
        max_upload_bytes=1024 * 1024,
        storage_backend="s3",
        s3_endpoint_url=s3rver.endpoint_url,
        s3_bucket=f"fw-{uuid.uuid4().hex[:12]}",
        s3_region="us-east-1",
        s3_access_key_id=s3rver.access_key_id,
        s3_secret_access_key=s3rver.secret_access_key,
        s3_create_bucket=True,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def s3_admin(s3_settings: Settings) -> Iterator[ApiClient]:
    app = create_app(s3_settings)
    with TestClient(app) as client:
        yield ApiClient(client, make_token(app.state.ctx.sessions, "admin"))


def bucket_keys(settings: Settings) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
    )
    return [o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])]


def test_device_downloads_from_s3_presigned_url(s3_admin: ApiClient, s3_settings: Settings) -> None:
    image = firmware_bytes(150_000)
    release = s3_admin.release("v2.0.0", bin=image, ufw=b"u" * 5000)
    assert sorted(k.rsplit(".", 1)[-1] for k in bucket_keys(s3_settings)) == ["bin", "ufw"]
    device = s3_admin.device()
    assignment = s3_admin.assign(device["id"], release["id"]).json()

    manifest = heartbeat(s3_admin.client, device["token"]).json()["ota"]
    assert manifest["assignment_id"] == assignment["id"]
    assert manifest["url"].startswith(s3_settings.s3_endpoint_url or "")
    assert "X-Amz-Signature=" in manifest["url"]

    full = httpx.get(manifest["url"])
    assert full.status_code == 200
    assert zlib.crc32(full.content) & 0xFFFFFFFF == manifest["crc32"]
    assert full.content == image
    part = httpx.get(manifest["url"], headers={"Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.content == image[1000:]
    sig_at = manifest["url"].index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if manifest["url"][sig_at] != "0" else "1"
    tampered = manifest["url"][:sig_at] + flipped + manifest["url"][sig_at + 1 :]
    assert httpx.get(tampered).status_code == 403

    heartbeat(s3_admin.client, device["token"], firmware_version="v2.0.0")
    assert s3_admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "applied"


def test_rejected_upload_and_delete_leave_nothing_in_the_bucket(s3_admin: ApiClient, s3_settings: Settings) -> None:
    release = s3_admin.release("v1.0.0", bin=firmware_bytes(10_000))
    keys = bucket_keys(s3_settings)
    assert len(keys) == 1
    assert s3_admin.upload("v1.0.0", bin=firmware_bytes(10_000)).status_code == 409
    too_big = s3_admin.upload("v1.0.1", bin=b"x" * (s3_settings.max_upload_bytes + 1))
    assert too_big.status_code == 413
    assert bucket_keys(s3_settings) == keys
    assert s3_admin.delete(f"/api/v1/firmware/{release['id']}").status_code == 204
    assert bucket_keys(s3_settings) == []
