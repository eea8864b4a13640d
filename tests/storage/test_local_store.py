"""LocalBlobStore and its HMAC URL signing (no server needed)."""

from __future__ import annotations

import errno
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bota_ota.storage.local import DOWNLOAD_PREFIX, LocalBlobStore, sign, verify

SECRET = "test-secret-key"
KEY = "firmware/bota-rec/1.2.3/image.bin"


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", SECRET)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "upload.part"
    path.write_bytes(os.urandom(4096))
    return path


# --- sign / verify -------------------------------------------------------------------------------


def test_sign_is_deterministic_hex_sha256() -> None:
    signature = sign(SECRET, KEY, 1_900_000_000)

    assert signature == sign(SECRET, KEY, 1_900_000_000)
    assert len(signature) == 64
    int(signature, 16)


def test_sign_verify_roundtrip() -> None:
    expires = int(time.time()) + 60

    assert verify(SECRET, KEY, expires, sign(SECRET, KEY, expires)) is True


def test_verify_rejects_tampered_signature() -> None:
    expires = int(time.time()) + 60
    signature = sign(SECRET, KEY, expires)
    tampered = signature[:-1] + ("0" if signature[-1] != "0" else "1")

    assert verify(SECRET, KEY, expires, tampered) is False
    assert verify(SECRET, KEY, expires, "") is False


def test_verify_rejects_tampered_key() -> None:
    expires = int(time.time()) + 60
    signature = sign(SECRET, KEY, expires)

    assert verify(SECRET, KEY.replace("1.2.3", "1.2.4"), expires, signature) is False


def test_verify_rejects_extended_expiry() -> None:
    expires = int(time.time()) + 60
    signature = sign(SECRET, KEY, expires)

    assert verify(SECRET, KEY, expires + 3600, signature) is False


def test_verify_rejects_other_secret() -> None:
    expires = int(time.time()) + 60

    assert verify("another-secret", KEY, expires, sign(SECRET, KEY, expires)) is False


def test_verify_rejects_expired() -> None:
    expires = 1_900_000_000
    signature = sign(SECRET, KEY, expires)

    assert verify(SECRET, KEY, expires, signature, now=expires - 1) is True
    assert verify(SECRET, KEY, expires, signature, now=expires) is True  # valid through its last second
    assert verify(SECRET, KEY, expires, signature, now=expires + 0.001) is False
    past = int(time.time()) - 1
    assert verify(SECRET, KEY, past, sign(SECRET, KEY, past)) is False  # default now: the clock


# --- keys and paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x", "firmware/../../x", "/etc/passwd", ".."])
def test_path_traversal_key_raises(store: LocalBlobStore, source: Path, key: str) -> None:
    with pytest.raises(ValueError, match="escapes the blob directory"):
        store.path_for(key)
    with pytest.raises(ValueError):
        store.put_file(key, source)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert source.exists()


def test_symlink_out_of_root_raises(store: LocalBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)

    with pytest.raises(ValueError):
        store.path_for("link/x.bin")


def test_path_for_stays_under_root(store: LocalBlobStore) -> None:
    assert store.path_for(KEY) == store.root / "firmware" / "bota-rec" / "1.2.3" / "image.bin"
    assert store.path_for("a/./b/../c.bin") == store.root / "a" / "c.bin"


# --- put_file / exists / delete ------------------------------------------------------------------


def test_put_file_moves_the_file_into_place(store: LocalBlobStore, source: Path) -> None:
    content = source.read_bytes()

    store.put_file(KEY, source)

    dest = store.root / KEY
    assert dest.read_bytes() == content
    assert not source.exists()  # moved (same filesystem), not copied
    assert not dest.with_name(dest.name + ".part").exists()
    assert store.exists(KEY) is True


def test_put_file_overwrites(store: LocalBlobStore, source: Path, tmp_path: Path) -> None:
    store.put_file(KEY, source)
    newer = tmp_path / "newer.bin"
    newer.write_bytes(b"newer")

    store.put_file(KEY, newer)

    assert (store.root / KEY).read_bytes() == b"newer"


def test_put_file_copies_across_filesystems(
    store: LocalBlobStore, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rename fails (other filesystem: EXDEV) the file is copied instead."""
    content = source.read_bytes()
    real_replace = os.replace

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the os module local.py uses

    store.put_file(KEY, source)

    assert (store.root / KEY).read_bytes() == content
    assert not (store.root / (KEY + ".part")).exists()


def test_exists(store: LocalBlobStore, source: Path) -> None:
    assert store.exists(KEY) is False
    store.put_file(KEY, source)

    assert store.exists(KEY) is True
    assert store.exists("firmware/bota-rec") is False  # a folder is not a blob


def test_delete_removes_file_and_tidies_empty_folders(store: LocalBlobStore, source: Path, tmp_path: Path) -> None:
    store.put_file(KEY, source)
    sibling = tmp_path / "sibling.bin"
    sibling.write_bytes(b"x")
    store.put_file("firmware/other/1.0.0/image.bin", sibling)

    store.delete(KEY)

    assert not (store.root / KEY).exists()
    assert not (store.root / "firmware" / "bota-rec").exists()  # emptied folders removed ...
    assert (store.root / "firmware" / "other" / "1.0.0" / "image.bin").exists()  # ... others kept
    assert store.exists(KEY) is False

    store.delete("firmware/other/1.0.0/image.bin")

    assert store.root.is_dir()  # the root itself stays
    assert list(store.root.iterdir()) == []


def test_delete_missing_key_is_not_an_error(store: LocalBlobStore) -> None:
    store.delete(KEY)
    store.delete("never/was/here.bin")

    assert store.root.is_dir()


# --- signed URLs ---------------------------------------------------------------------------------


def test_signed_get_url_shape(store: LocalBlobStore) -> None:
    before = int(time.time())

    signed = store.signed_get_url(KEY, base_url="https://ota.example.com:8443/", ttl_s=600)

    parts = urlsplit(signed.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == "https://ota.example.com:8443"
    assert parts.path == f"{DOWNLOAD_PREFIX}{KEY}"
    assert "/dl/" in signed.url and "expires=" in signed.url and "sig=" in signed.url
    assert set(query) == {"expires", "sig"}
    expires = int(query["expires"])
    assert before + 600 <= expires <= int(time.time()) + 600
    assert verify(SECRET, KEY, expires, query["sig"]) is True
    assert signed.expires_at == datetime.fromtimestamp(expires, UTC)


def test_signed_get_url_quotes_the_key(store: LocalBlobStore) -> None:
    key = "firmware/with space/ä+b.bin"

    signed = store.signed_get_url(key, base_url="http://ota.local", ttl_s=60)

    parts = urlsplit(signed.url)
    assert " " not in signed.url
    assert unquote(parts.path) == f"{DOWNLOAD_PREFIX}{key}"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert verify(SECRET, key, int(query["expires"]), query["sig"]) is True
