"""Signing keys and signed uploads for tests, through the public API as a release pipeline would."""

from __future__ import annotations

from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from bota_ota.core.settings import Settings
from bota_ota.firmware import signing
from bota_ota.firmware.models import Artifact, Release
from tests.support.factories import (
    ApiClient,
    files_in,
    firmware_bytes,
)

# The test vector's key (docs/security.md): seed 00 01 … 1f.
VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def new_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes((seed + i) % 256 for i in range(32)))


def key_id(key: Ed25519PrivateKey) -> str:
    return signing.key_id(key.public_key())


def public_pem(key: Ed25519PrivateKey) -> str:
    return signing.public_pem(key.public_key())


def register(
    admin: ApiClient, key: Ed25519PrivateKey, models: tuple[str, ...] = ("bota-pin",), name: str = "release-key"
) -> str:
    r = admin.post("/api/v1/signing-keys", json={"name": name, "public_key": public_pem(key), "models": list(models)})
    assert r.status_code == 201, r.text
    return str(r.json()["key_id"])


def sign(
    key: Ed25519PrivateKey, data: bytes, *, model: str = "bota-pin", version: str = "v1.0.1", security_version: int = 0
) -> str:
    return signing.sign(
        key, signing.fields_of_file(data, model=model, version=version, security_version=security_version)
    )


def upload(
    api: ApiClient,
    version: str = "v1.0.1",
    model: str = "bota-pin",
    *,
    bin: bytes | None = None,
    bin_sig: str | bytes | None = None,
    ufw: bytes | None = None,
    ufw_sig: str | bytes | None = None,
    security_version: int | str | None = None,
) -> httpx.Response:
    """A multipart upload with signature files (``.sig`` parts, as ``curl -F bin_sig=@fw.bin.sig`` sends)."""
    data: dict[str, str] = {"version": version, "model": model}
    if security_version is not None:
        data["security_version"] = str(security_version)
    files: dict[str, Any] = {}
    if bin is not None:
        files["bin"] = (f"fw-{version}.bin", bin, "application/octet-stream")
    if ufw is not None:
        files["ufw"] = (f"fw-{version}.ufw", ufw, "application/octet-stream")
    for name, sig in (("bin_sig", bin_sig), ("ufw_sig", ufw_sig)):
        if sig is not None:
            content = (sig + "\n").encode() if isinstance(sig, str) else sig
            files[name] = (f"fw-{version}.{name[:3]}.sig", content, "application/octet-stream")
    return api.post("/api/v1/firmware", data=data, files=files)


def signed_release(
    api: ApiClient,
    key: Ed25519PrivateKey,
    version: str = "v1.0.1",
    model: str = "bota-pin",
    *,
    security_version: int = 0,
    size: int = 4096,
    seed: int | None = None,
) -> dict[str, Any]:
    """A release whose .bin is signed by ``key`` (registered for the model beforehand)."""
    image = firmware_bytes(size, seed=seed)
    r = upload(
        api,
        version,
        model,
        bin=image,
        bin_sig=sign(key, image, model=model, version=version, security_version=security_version),
        security_version=security_version,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def row_counts(sessions: Any) -> tuple[int, int]:
    with sessions() as session:
        releases = session.scalar(select(func.count()).select_from(Release))
        artifacts = session.scalar(select(func.count()).select_from(Artifact))
    return releases, artifacts


def assert_nothing_stored(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    """No release row, no artifact row, no blob, no temporary upload file, and the API lists nothing."""
    assert row_counts(sessions) == (0, 0)
    assert files_in(settings.blob_dir) == []
    assert files_in(settings.upload_tmp_dir) == []
    listed = admin.get("/api/v1/firmware")
    assert listed.status_code == 200
    assert listed.json() == []
