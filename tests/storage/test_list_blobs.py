"""``BlobStore.list_blobs(prefix)``: every blob under a prefix with its size and last-write time, on local
files (half-written ``.part`` files included) and on the real S3-protocol server (past one page of keys)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bota_ota.storage.local import LocalBlobStore
from bota_ota.storage.s3 import S3BlobStore
from tests.support.s3rver import running_s3rver


def _put(store: LocalBlobStore | S3BlobStore, tmp_path: Path, key: str, data: bytes) -> None:
    source = tmp_path / "source"
    source.write_bytes(data)
    store.put_file(key, source)


def test_local_lists_keys_sizes_and_times_under_the_prefix(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", "secret")
    _put(store, tmp_path, "firmware/bota-pin/r1/bota-pin-1.0.0.bin", b"a" * 10)
    _put(store, tmp_path, "firmware/bota-note/r2/bota-note-2.0.0.ufw", b"b" * 3)
    _put(store, tmp_path, "other/thing.bin", b"c")
    # A copy cut short by a crash (LocalBlobStore.put_file writes <key>.part, then renames it).
    part = store.path_for("firmware/bota-pin/r3/bota-pin-3.0.0.bin.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"d" * 7)
    long_ago = time.time() - 86400
    os.utime(part, (long_ago, long_ago))

    found = {b.key: b for b in store.list_blobs("firmware/")}
    assert {k: b.size for k, b in found.items()} == {
        "firmware/bota-pin/r1/bota-pin-1.0.0.bin": 10,
        "firmware/bota-note/r2/bota-note-2.0.0.ufw": 3,
        "firmware/bota-pin/r3/bota-pin-3.0.0.bin.part": 7,
    }
    part_modified = found["firmware/bota-pin/r3/bota-pin-3.0.0.bin.part"].modified
    assert part_modified.tzinfo is not None
    assert abs(part_modified - datetime.fromtimestamp(long_ago, UTC)) < timedelta(seconds=1)
    fresh = found["firmware/bota-pin/r1/bota-pin-1.0.0.bin"].modified
    assert datetime.now(UTC) - fresh < timedelta(minutes=1)

    # A prefix inside a folder name matches key prefixes, as S3 does.
    assert [b.key for b in store.list_blobs("firmware/bota-n")] == ["firmware/bota-note/r2/bota-note-2.0.0.ufw"]
    assert list(store.list_blobs("nothing-here/")) == []


def test_local_listing_skips_a_blob_deleted_while_listing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", "secret")
    for n in range(3):
        _put(store, tmp_path, f"firmware/m/r{n}/f.bin", b"x" * n)
    listing = store.list_blobs("firmware/")
    first = next(listing)
    for n in range(3):
        store.delete(f"firmware/m/r{n}/f.bin")
    assert first.key.startswith("firmware/m/")
    assert list(listing) == []  # the rest vanished under the walk: no error


@pytest.mark.s3
def test_s3_lists_every_key_under_the_prefix(s3_store: S3BlobStore, tmp_path: Path) -> None:
    for n in range(12):
        _put(s3_store, tmp_path, f"firmware/m/{n:05d}.bin", b"z" * (n % 7))
    _put(s3_store, tmp_path, "elsewhere/not-listed.bin", b"q")
    before = datetime.now(UTC) - timedelta(minutes=5)

    found = list(s3_store.list_blobs("firmware/"))
    assert {b.key: b.size for b in found} == {f"firmware/m/{n:05d}.bin": n % 7 for n in range(12)}
    assert len(found) == 12
    assert all(b.modified.tzinfo is not None and before < b.modified <= datetime.now(UTC) for b in found)
    assert [b.key for b in s3_store.list_blobs("elsewhere/")] == ["elsewhere/not-listed.bin"]


@pytest.mark.s3
def test_s3_follows_continuation_tokens_across_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # s3rver encrypts its ListObjectsV2 continuation tokens with DES, which Node's OpenSSL 3 only offers
    # through the legacy provider: without it, any truncated listing is a 500. So this test runs a server
    # of its own with that provider loaded (S3 itself needs nothing of the kind).
    monkeypatch.setenv("NODE_OPTIONS", "--openssl-legacy-provider")
    with running_s3rver(tmp_path / "s3rver") as info:
        store = S3BlobStore(
            bucket="paged",
            region=info.region,
            endpoint_url=info.endpoint_url,
            access_key_id=info.access_key_id,
            secret_access_key=info.secret_access_key,
            create_bucket=True,
        )
        store.list_page_size = 5  # 12 keys: three requests, two continuation tokens
        for n in range(12):
            store.client.put_object(Bucket="paged", Key=f"firmware/m/{n:05d}.bin", Body=b"z" * n)
        found = list(store.list_blobs("firmware/"))
    assert [(b.key, b.size) for b in found] == [(f"firmware/m/{n:05d}.bin", n) for n in range(12)]
