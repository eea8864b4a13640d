"""Blob storage behind one interface, chosen by settings (local files or S3)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob as the store lists it: ``modified`` is when it was last written (UTC)."""

    key: str
    size: int
    modified: datetime


class BlobStore(Protocol):
    def put_file(self, key: str, source: Path, *, content_type: str = "application/octet-stream") -> None:
        """Store the file at ``source`` under ``key`` (streamed; never read whole into memory)."""

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def exists(self, key: str) -> bool: ...

    def signed_get_url(self, key: str, *, base_url: str, ttl_s: int, filename: str | None = None) -> SignedUrl:
        """A URL that lets anyone holding it GET ``key`` (with Range) until it expires."""

    def list_blobs(self, prefix: str) -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix``, half-written ones (a local ``.part``) included;
        in no particular order, read lazily (a store may hold millions)."""
