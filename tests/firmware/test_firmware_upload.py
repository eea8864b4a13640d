"""POST /api/v1/firmware: streamed multipart uploads, checksums, validation, and nothing left behind on rejection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bota_ota.core.settings import Settings
from bota_ota.storage.local import LocalBlobStore
from tests.firmware.signing_support import assert_nothing_stored, row_counts
from tests.support.factories import (
    ApiClient,
    assert_problem,
    crc32,
    files_in,
    firmware_bytes,
    make_token,
    post_firmware,
    sha256_hex,
)

RELEASE_KEYS = {"id", "version", "model", "notes", "created_at", "released", "bin", "ufw"}
ARTIFACT_KEYS = {"size", "crc32", "sha256", "filename", "signature", "key_id", "signed"}


def _bin(data: bytes, name: str = "fw.bin") -> tuple[str, bytes, str]:
    return (name, data, "application/octet-stream")


# ---- accepted uploads --------------------------------------------------------------------------


def test_upload_bin_and_ufw_reply_shape_and_checksums(admin: ApiClient, settings: Settings) -> None:
    image = firmware_bytes(300_001, seed=1)  # odd size, several chunks
    ble = firmware_bytes(70_000, seed=2)
    r = post_firmware(
        admin,
        {"version": "v1.2.3", "model": "bota-pin-pro", "notes": "  Fixes the LED  "},
        {"bin": _bin(image, "pin-pro.bin"), "ufw": ("pin-pro.ufw", ble, "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body.keys() >= RELEASE_KEYS
    assert len(body["id"]) >= 16
    assert body["version"] == "v1.2.3"
    assert body["model"] == "bota-pin-pro"
    assert body["notes"] == "Fixes the LED"
    assert body["released"] is True
    assert body["created_by"] == "token:test-admin"
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    unsigned = {"signature": None, "key_id": None, "signed": False}
    assert body["bin"] == {
        "size": len(image),
        "crc32": crc32(image),
        "sha256": sha256_hex(image),
        "filename": "pin-pro.bin",
        **unsigned,
    }
    assert body["ufw"] == {
        "size": len(ble),
        "crc32": crc32(ble),
        "sha256": sha256_hex(ble),
        "filename": "pin-pro.ufw",
        **unsigned,
    }
    assert (body["security_version"], body["security_floor"]) == (0, False)
    assert (body["installable"], body["unfit_reason"]) == (True, None)
    # Both files are in storage with the exact bytes, and the temporary upload files are gone.
    stored = sorted(p.read_bytes() for p in files_in(settings.blob_dir))  # type: ignore[attr-defined]
    assert stored == sorted([image, ble])
    assert files_in(settings.upload_tmp_dir) == []
    # GET returns the same representation.
    assert admin.get(f"/api/v1/firmware/{body['id']}").json() == body


def test_crc32_is_unsigned_zlib_convention(admin: ApiClient) -> None:
    # Find bytes whose zlib CRC32 has the top bit set: a signed implementation would report a negative number.
    data = next(d for d in (firmware_bytes(4096, seed=s) for s in range(100)) if crc32(d) >= 2**31)
    body = admin.release("v2.0.0", bin=data)
    assert body["bin"]["crc32"] == crc32(data)
    assert body["bin"]["crc32"] >= 2**31


def test_bin_only_upload_has_null_ufw(admin: ApiClient) -> None:
    image = firmware_bytes(1000, seed=3)
    body = admin.release("v1.0.0", bin=image)
    assert body["ufw"] is None
    assert body["bin"]["size"] == 1000


def test_ufw_only_upload_has_null_bin(admin: ApiClient, settings: Settings) -> None:
    ble = firmware_bytes(5000, seed=4)
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-note"}, {"ufw": ("note.ufw", ble, "x/y")})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["bin"] is None
    assert body["ufw"]["crc32"] == crc32(ble)
    assert body["ufw"]["sha256"] == sha256_hex(ble)
    assert body["ufw"]["size"] == 5000
    assert len(files_in(settings.blob_dir)) == 1


def test_file_of_exactly_the_size_limit_is_accepted(admin: ApiClient, settings: Settings) -> None:
    image = firmware_bytes(settings.max_upload_bytes, seed=5)
    body = admin.release("v1.0.0", bin=image)
    assert body["bin"]["size"] == settings.max_upload_bytes
    assert body["bin"]["sha256"] == sha256_hex(image)


@pytest.mark.parametrize("version", ["v1.0.1", "1.0.1", "V1.0.1", "v2.0.0-rc.1", "1.2.3-beta.2+build.7", " v1.0.1 "])
def test_semantic_versions_are_accepted(admin: ApiClient, version: str) -> None:
    body = admin.release(version)
    assert body["version"] == version.strip()


def test_draft_upload_is_not_released(admin: ApiClient) -> None:
    body = admin.release("v1.0.0", extra={"draft": "true"})
    assert body["released"] is False
    assert admin.release("v1.0.1", extra={"draft": "false"})["released"] is True


# ---- rejected uploads: each leaves no row and no file ------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "latest", "v1.0.0.0", "v1", "1.0.x", "vv1.0.0", "01.0.0", "v" + "1" * 70])
def test_bad_version_is_422_naming_version(admin: ApiClient, settings: Settings, sessions: Any, version: str) -> None:
    r = post_firmware(admin, {"version": version, "model": "bota-pin"}, {"bin": _bin(firmware_bytes(100))})
    assert_problem(r, 422, "version")
    assert_nothing_stored(admin, settings, sessions)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"model": "bota-pin"}, "version"),
        ({"version": "", "model": "bota-pin"}, "version"),
        ({"version": "v1.0.0"}, "model"),
        ({"version": "v1.0.0", "model": "bota-watch"}, "model"),
        ({"version": "v1.0.0", "model": ""}, "model"),
        ({"version": "v1.0.0", "model": "Bota-Pin"}, "model"),
        ({"version": "v1.0.0", "model": "bota-pin", "draft": "maybe"}, "draft"),
        ({"version": "v1.0.0", "model": "bota-pin", "colour": "red"}, "colour"),
        ({"version": "v1.0.0", "model": "bota-pin", "notes": "n" * 10_001}, "notes"),
    ],
)
def test_bad_or_missing_form_fields_are_422(
    admin: ApiClient, settings: Settings, sessions: Any, data: dict[str, str], field: str
) -> None:
    r = post_firmware(admin, data, {"bin": _bin(firmware_bytes(100))})
    assert_problem(r, 422, field)
    assert_nothing_stored(admin, settings, sessions)


def test_no_file_is_422_naming_bin(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    # httpx only sends multipart when there are files; build the body by hand.
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\nv1.0.0\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbota-pin\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    r = admin.client.post(
        "/api/v1/firmware",
        content=body,
        headers={**admin.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    problem = assert_problem(r, 422, "bin")
    assert "ufw" in problem["detail"]
    assert_nothing_stored(admin, settings, sessions)


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ({"bin": ("x.txt", b"abc", "text/plain")}, "bin"),
        ({"bin": ("firmware.ufw", b"abc", "application/octet-stream")}, "bin"),
        ({"ufw": ("firmware.bin", b"abc", "application/octet-stream")}, "ufw"),
        ({"bin": ("fw.bin", b"", "application/octet-stream")}, "bin"),
        ({"ufw": ("fw.ufw", b"", "application/octet-stream")}, "ufw"),
        ({"bin": ("ok.bin", b"abc", "a/b"), "ufw": ("empty.ufw", b"", "a/b")}, "ufw"),
        ({"image": ("fw.bin", b"abc", "application/octet-stream")}, "image"),
    ],
)
def test_bad_files_are_422(
    admin: ApiClient, settings: Settings, sessions: Any, files: dict[str, Any], field: str
) -> None:
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-pin"}, files)
    assert_problem(r, 422, field)
    assert_nothing_stored(admin, settings, sessions)


def test_same_file_field_twice_is_422(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    files = [("bin", ("a.bin", b"aaa", "a/b")), ("bin", ("b.bin", b"bbb", "a/b"))]
    r = admin.post("/api/v1/firmware", data={"version": "v1.0.0", "model": "bota-pin"}, files=files)
    assert_problem(r, 422, "bin")
    assert_nothing_stored(admin, settings, sessions)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"version": "v1.0.0", "model": "bota-pin"}},
        {"data": {"version": "v1.0.0", "model": "bota-pin"}},  # application/x-www-form-urlencoded
        {"content": b"raw bytes", "headers": {"Content-Type": "application/octet-stream"}},
        {"content": b"--x--", "headers": {"Content-Type": "multipart/form-data"}},  # no boundary
        {"content": b""},
    ],
)
def test_non_multipart_body_is_415(admin: ApiClient, settings: Settings, sessions: Any, kwargs: dict[str, Any]) -> None:
    headers = {**admin.headers, **kwargs.pop("headers", {})}
    r = admin.client.post("/api/v1/firmware", headers=headers, **kwargs)
    assert_problem(r, 415)
    assert_nothing_stored(admin, settings, sessions)


def test_truncated_multipart_body_is_422_and_leaves_no_temp_file(
    admin: ApiClient, settings: Settings, sessions: Any
) -> None:
    boundary = "cut"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\nv1.0.0\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbota-pin\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="bin"; filename="fw.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + firmware_bytes(50_000, seed=9)  # the body stops in the middle of the file
    r = admin.client.post(
        "/api/v1/firmware",
        content=body,
        headers={**admin.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(r, 422)
    assert_nothing_stored(admin, settings, sessions)


def test_oversized_file_is_413_and_nothing_is_stored(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    too_big = firmware_bytes(settings.max_upload_bytes + 1, seed=6)
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-pin"}, {"bin": _bin(too_big)})
    assert_problem(r, 413, "bin")
    assert_nothing_stored(admin, settings, sessions)


def test_oversized_ufw_after_valid_bin_is_413_and_nothing_is_stored(
    admin: ApiClient, settings: Settings, sessions: Any
) -> None:
    files = {
        "bin": _bin(firmware_bytes(1000, seed=7)),
        "ufw": ("big.ufw", firmware_bytes(settings.max_upload_bytes + 10, seed=8), "a/b"),
    }
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-pin"}, files)
    assert_problem(r, 413, "ufw")
    assert_nothing_stored(admin, settings, sessions)


def test_body_larger_than_any_allowed_upload_is_413(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    # Larger than both files at the limit plus form overhead: refused on Content-Length, before parsing.
    huge = os.urandom(settings.max_upload_bytes * 3 + 2 * 1024 * 1024)
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-pin"}, {"bin": _bin(huge)})
    assert_problem(r, 413)
    assert_nothing_stored(admin, settings, sessions)


def test_unauthenticated_upload_is_401_and_stores_nothing(
    client: TestClient, admin: ApiClient, settings: Settings, sessions: Any
) -> None:
    r = client.post("/api/v1/firmware", data={"version": "v1.0.0", "model": "bota-pin"}, files={"bin": _bin(b"abc")})
    assert_problem(r, 401)
    assert_nothing_stored(admin, settings, sessions)


# ---- uniqueness per model ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [("v1.0.1", "v1.0.1"), ("1.0.1", "v1.0.1"), ("v1.0.1", "1.0.1"), ("V1.0.1", "v1.0.1"), ("v1.0.1+b1", "v1.0.1+b2")],
)
def test_duplicate_version_per_model_is_409(
    admin: ApiClient, settings: Settings, sessions: Any, first: str, second: str
) -> None:
    original = admin.release(first, bin=firmware_bytes(100, seed=1))
    blobs_before = files_in(settings.blob_dir)
    r = admin.upload(second, bin=firmware_bytes(200, seed=2))
    assert_problem(r, 409, "version")
    assert row_counts(sessions) == (1, 1)
    assert files_in(settings.blob_dir) == blobs_before
    assert files_in(settings.upload_tmp_dir) == []
    assert [rel["id"] for rel in admin.get("/api/v1/firmware").json()] == [original["id"]]
    # The first release's file is untouched.
    assert admin.get(f"/api/v1/firmware/{original['id']}").json()["bin"]["size"] == 100


def test_same_version_on_another_model_is_fine(admin: ApiClient) -> None:
    a = admin.release("v1.0.1", "bota-pin")
    b = admin.release("v1.0.1", "bota-pin-pro")
    c = admin.release("1.0.1", "bota-note")
    assert len({a["id"], b["id"], c["id"]}) == 3


def test_prerelease_is_a_different_version(admin: ApiClient) -> None:
    admin.release("v1.0.1")
    assert admin.upload("v1.0.1-rc.1").status_code == 201


def test_a_rejected_duplicate_does_not_block_later_uploads(admin: ApiClient) -> None:
    admin.release("v1.0.1")
    assert admin.upload("v1.0.1").status_code == 409
    assert admin.upload("v1.0.2").status_code == 201


def test_very_long_filename_is_not_a_server_error(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    r = post_firmware(admin, {"version": "v1.0.0", "model": "bota-pin"}, {"bin": _bin(b"abc", "a" * 300 + ".bin")})
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        assert_nothing_stored(admin, settings, sessions)


# ---- failures on the server side also leave nothing behind --------------------------------------


@pytest.fixture
def lenient_admin(app: Any, sessions: Any) -> Iterator[ApiClient]:
    """An admin client that returns 500 replies instead of raising the server's exception in the test."""
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c:
        yield ApiClient(c, make_token(sessions, "admin"))


def test_storage_failure_on_the_second_file_leaves_nothing(
    lenient_admin: ApiClient, settings: Settings, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = LocalBlobStore.put_file
    calls: list[str] = []

    def put_then_fail(self: LocalBlobStore, key: str, source: Any, **kw: Any) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        real_put(self, key, source, **kw)

    monkeypatch.setattr(LocalBlobStore, "put_file", put_then_fail)
    files = {"bin": _bin(firmware_bytes(1000, seed=1)), "ufw": ("a.ufw", firmware_bytes(1000, seed=2), "a/b")}
    r = post_firmware(lenient_admin, {"version": "v1.0.0", "model": "bota-pin"}, files)
    assert_problem(r, 500)
    assert len(calls) == 2
    assert_nothing_stored(lenient_admin, settings, sessions)


def test_commit_failure_removes_the_stored_files(
    lenient_admin: ApiClient, settings: Settings, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = Session.commit
    blobs_at_commit: list[int] = []

    def commit_fails_once(self: Session) -> None:
        if not blobs_at_commit:
            blobs_at_commit.append(len(files_in(settings.blob_dir)))
            raise OperationalError("COMMIT", {}, Exception("connection lost"))
        real_commit(self)

    monkeypatch.setattr(Session, "commit", commit_fails_once)
    files = {"bin": _bin(firmware_bytes(1000, seed=1)), "ufw": ("a.ufw", firmware_bytes(1000, seed=2), "a/b")}
    r = post_firmware(lenient_admin, {"version": "v1.0.0", "model": "bota-pin"}, files)
    assert blobs_at_commit == [2]  # both files were stored when the commit failed ...
    assert_problem(r, 503)  # a lost database is "retry later" ... and the files are gone (checked below)
    monkeypatch.undo()
    assert_nothing_stored(lenient_admin, settings, sessions)
