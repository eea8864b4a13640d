"""Fixtures for the blob-store tests: a real s3rver process and an S3BlobStore on a fresh bucket."""

from __future__ import annotations

import uuid

import pytest

from bota_ota.storage.s3 import S3BlobStore
from tests.support.s3rver import S3rverInfo


@pytest.fixture
def s3_store(s3rver: S3rverInfo) -> S3BlobStore:
    """A store on a bucket of its own (created on the fly), so tests never see each other's objects."""
    return S3BlobStore(
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        region="us-east-1",
        endpoint_url=s3rver.endpoint_url,
        access_key_id=s3rver.access_key_id,
        secret_access_key=s3rver.secret_access_key,
        create_bucket=True,
    )
