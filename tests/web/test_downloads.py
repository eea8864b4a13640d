"""Locally signed download URLs: full GET, Range, HEAD, and 403 for tampered, expired or escaping URLs."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

from bota_ota.core.settings import Settings
from bota_ota.storage.local import sign
from tests.support.factories import ApiClient, assert_problem, firmware_bytes, heartbeat


@pytest.fixture
def image() -> bytes:
    return firmware_bytes(150_000, seed=11)


@pytest.fixture
def manifest(admin: ApiClient, image: bytes) -> dict[str, Any]:
    rel = admin.release("v1.0.1", bin=image)
    dev = admin.device()
    admin.assign(dev["id"], rel["id"])
    m = heartbeat(admin.client, dev["token"]).json()["ota"]
    assert m is not None
    return dict(m)


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


def _url(path: str, query: dict[str, Any]) -> str:
    return f"{path}?{urlencode(query)}"


def _key(path: str) -> str:
    assert path.startswith("/dl/")
    return path[len("/dl/") :]


def test_full_get(client: TestClient, manifest: dict[str, Any], image: bytes) -> None:
    # No API token needed: the URL itself is the credential.
    r = client.get(manifest["url"])
    assert r.status_code == 200
    assert r.content == image
    assert r.headers["content-length"] == str(len(image))
    assert r.headers.get("accept-ranges") == "bytes"


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=0-0", 0, 0),
        ("bytes=149000-", 149_000, 149_999),
        ("bytes=-500", 149_500, 149_999),
    ],
)
def test_range_is_206_with_content_range(
    client: TestClient, manifest: dict[str, Any], image: bytes, range_header: str, start: int, end: int
) -> None:
    r = client.get(manifest["url"], headers={"Range": range_header})
    assert r.status_code == 206
    assert r.content == image[start : end + 1]
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(image)}"
    assert r.headers["content-length"] == str(end - start + 1)


def test_unsatisfiable_range_is_416_problem_json(client: TestClient, manifest: dict[str, Any], image: bytes) -> None:
    for first in (len(image), len(image) + 10):  # at the file's size too: a finished download asks for nothing
        r = client.get(manifest["url"], headers={"Range": f"bytes={first}-"})
        assert_problem(r, 416, field="header.range")
        assert r.headers["content-range"] == f"bytes */{len(image)}"
        assert str(len(image)) in r.json()["detail"]


@pytest.mark.parametrize("range_header", ["bytes=20-10", "items=0-10", "bytes=", "bytes=abc-"])
def test_malformed_range_is_400_problem_json(client: TestClient, manifest: dict[str, Any], range_header: str) -> None:
    assert_problem(client.get(manifest["url"], headers={"Range": range_header}), 400, field="header.range")


def test_head(client: TestClient, manifest: dict[str, Any], image: bytes) -> None:
    r = client.head(manifest["url"])
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(image))
    assert r.content == b""


def test_tampered_signature_is_403(client: TestClient, manifest: dict[str, Any]) -> None:
    path, q = _parts(manifest["url"])
    flipped = ("0" if q["sig"][0] != "0" else "1") + q["sig"][1:]
    for sig in (flipped, q["sig"][:-1], q["sig"].upper(), "", "x" * 64):
        assert_problem(client.get(_url(path, {**q, "sig": sig})), 403)
    r = client.head(_url(path, {**q, "sig": flipped}))
    assert r.status_code == 403


def test_tampered_expiry_is_403(client: TestClient, manifest: dict[str, Any]) -> None:
    path, q = _parts(manifest["url"])
    for expires in (int(q["expires"]) + 1, int(q["expires"]) + 86_400, int(q["expires"]) - 1):
        assert_problem(client.get(_url(path, {**q, "expires": expires})), 403)


def test_tampered_key_is_403(client: TestClient, admin: ApiClient, manifest: dict[str, Any]) -> None:
    # A valid signature for one file does not open another.
    other = admin.release("v1.0.2")
    dev = admin.device()
    admin.assign(dev["id"], other["id"])
    other_path, _ = _parts(heartbeat(admin.client, dev["token"]).json()["ota"]["url"])
    _, q = _parts(manifest["url"])
    assert_problem(client.get(_url(other_path, q)), 403)


def test_missing_or_mangled_signature_parameters_are_403(client: TestClient, manifest: dict[str, Any]) -> None:
    # A URL with its expiry or signature removed or mangled is a tampered URL: 403, as the device
    # protocol promises, never a 422 (the device only knows what to do with a 403).
    path, q = _parts(manifest["url"])
    for query in (
        {"expires": q["expires"]},
        {"sig": q["sig"]},
        {},
        {"expires": "soon", "sig": q["sig"]},
        {"expires": q["expires"] + ".0", "sig": q["sig"]},
        {"expires": "+" + q["expires"], "sig": q["sig"]},
        {"expires": " " + q["expires"], "sig": q["sig"]},
        {"expires": "9" * 400, "sig": q["sig"]},
        {"expires": q["expires"], "sig": q["sig"] + "0" * 200},
    ):
        assert_problem(client.get(_url(path, query)), 403)
    assert client.get(_url(path, q)).status_code == 200  # the untouched URL still works


def test_expired_url_is_403(client: TestClient, settings: Settings, manifest: dict[str, Any]) -> None:
    path, _ = _parts(manifest["url"])
    key = _key(path)
    past = int(time.time()) - 60
    url = _url(path, {"expires": past, "sig": sign(settings.secret_key or "", key, past)})
    assert_problem(client.get(url), 403)
    # The same construction with a future expiry works, so the 403 above is about the expiry alone.
    future = int(time.time()) + 600
    assert (
        client.get(_url(path, {"expires": future, "sig": sign(settings.secret_key or "", key, future)})).status_code
        == 200
    )


def test_signature_with_another_secret_is_403(client: TestClient, manifest: dict[str, Any]) -> None:
    path, q = _parts(manifest["url"])
    expires = int(q["expires"])
    assert_problem(client.get(_url(path, {"expires": expires, "sig": sign("other-secret", _key(path), expires)})), 403)


@pytest.mark.parametrize(
    "key",
    ["../bota-ota.db", "../../data/bota-ota.db", "firmware/../../bota-ota.db", "/etc/passwd", "..", "../secret_key"],
)
def test_path_traversal_with_a_valid_signature_is_refused(
    client: TestClient, settings: Settings, manifest: dict[str, Any], key: str
) -> None:
    # Even a correctly signed URL must not read outside the blob directory.
    (settings.data_dir / "secret_key").write_text("do not serve me\n")
    expires = int(time.time()) + 600
    # Percent-encode dots and slashes so that no client or router normalises the path before the handler.
    encoded = quote(key, safe="").replace(".", "%2E")
    url = f"/dl/{encoded}?{urlencode({'expires': expires, 'sig': sign(settings.secret_key or '', key, expires)})}"
    r = client.get(url)
    assert r.status_code in (403, 404), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert b"SQLite" not in r.content
    assert b"do not serve me" not in r.content


def test_deleted_file_is_404(client: TestClient, admin: ApiClient, settings: Settings) -> None:
    rel = admin.release("v1.0.5")
    art = rel["bin"]
    assert art is not None
    # Sign a URL for the stored key of a release, then delete the release (it is unreferenced).
    blobs = [p for p in settings.blob_dir.rglob("*") if p.is_file()]
    assert len(blobs) == 1
    key = blobs[0].relative_to(settings.blob_dir).as_posix()
    expires = int(time.time()) + 600
    url = _url(f"/dl/{quote(key)}", {"expires": expires, "sig": sign(settings.secret_key or "", key, expires)})
    assert client.get(url).status_code == 200
    assert admin.delete(f"/api/v1/firmware/{rel['id']}").status_code == 204
    assert_problem(client.get(url), 404)


def test_non_ascii_signature_is_403_not_500(client: TestClient, manifest: dict[str, Any]) -> None:
    path, q = _parts(manifest["url"])
    r = client.get(_url(path, {**q, "sig": "é" * 64}))
    assert_problem(r, 403)
