"""S3 storage: uploads with boto3's managed transfer, downloads through SigV4 presigned GET URLs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bota_ota.storage.base import BlobInfo, SignedUrl


class S3BlobStore:
    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
    ) -> None:
        self.bucket = bucket
        self.list_page_size = 1000  # keys per ListObjectsV2 request (S3's maximum)
        # Path-style addressing works with every S3-protocol server (MinIO, s3rver, Ceph) and with AWS.
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3})
        self.client: Any = boto3.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        if create_bucket:
            self._ensure_bucket(region)

    def _ensure_bucket(self, region: str) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(**kwargs)
            except ClientError:
                # Several instances starting at once all find it missing and one creates it first: fine if it
                # is there (and ours to use) now.
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except ClientError:
                    pass
                else:
                    return
                raise

    def put_file(self, key: str, source: Path, *, content_type: str = "application/octet-stream") -> None:
        self.client.upload_file(str(source), self.bucket, key, ExtraArgs={"ContentType": content_type})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_blobs(self, prefix: str) -> Iterator[BlobInfo]:
        # The paginator follows continuation tokens, a page a request, read as the caller iterates.
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
        )
        for page in pages:
            for obj in page.get("Contents", []):
                modified: datetime = obj["LastModified"]
                yield BlobInfo(key=obj["Key"], size=int(obj["Size"]), modified=modified.astimezone(UTC))

    def signed_get_url(self, key: str, *, base_url: str, ttl_s: int, filename: str | None = None) -> SignedUrl:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)
        return SignedUrl(url=url, expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s))
