from __future__ import annotations

from bota_ota.core.settings import Settings
from bota_ota.storage.base import BlobStore, SignedUrl
from bota_ota.storage.local import LocalBlobStore


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.storage_backend == "s3":
        from bota_ota.storage.s3 import S3BlobStore

        return S3BlobStore(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            create_bucket=settings.s3_create_bucket,
        )
    return LocalBlobStore(settings.blob_dir, settings.resolved_secret_key)


__all__ = ["BlobStore", "LocalBlobStore", "SignedUrl", "make_blob_store"]
