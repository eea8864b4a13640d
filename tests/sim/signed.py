"""Signed releases on a real server for the simulator tests: an admin registers a signing key, releases are
uploaded with their signatures (made here with the simulator's own signed bytes, so the server's upload
check is a conformance check of them), and the log key is read as any app would."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bota_ota.sim.verify import load_public_key, signed_message
from tests.support.server import cli
from tests.support.sim import SimServer

SIGNER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bota-ota sim tests: release key").digest())
STRANGER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bota-ota sim tests: someone else").digest())


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signature_b64(data: bytes, *, model: str, version: str, security_version: int, key: Ed25519PrivateKey) -> str:
    message = signed_message(
        model=model,
        version=version,
        security_version=security_version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return base64.b64encode(key.sign(message)).decode()


def trust_key(server: SimServer, key: Ed25519PrivateKey = SIGNER, models: tuple[str, ...] = ("bota-pin",)) -> str:
    """Register ``key`` as a signing key for ``models`` (an admin's call); returns its key id."""
    created = cli(
        server.proc.env, "token", "create", "--name", "keys", "--role", "admin", "--data-dir", str(server.proc.data_dir)
    )
    admin = created.stdout.strip().splitlines()[-1]
    r = httpx.post(
        f"{server.url}/api/v1/signing-keys",
        json={"name": "sim-tests", "public_key": public_pem(key), "models": list(models)},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key_id"])


def signed_release(
    server: SimServer,
    version: str,
    *,
    security_version: int,
    bin: bytes | None = None,
    ufw: bytes | None = None,
    key: Ed25519PrivateKey = SIGNER,
    model: str = "bota-pin",
) -> dict[str, Any]:
    """Upload a release whose files are signed by ``key``."""
    files: dict[str, tuple[str, bytes]] = {}
    for kind, data in (("bin", bin), ("ufw", ufw)):
        if data is None:
            continue
        files[kind] = (f"{version}.{kind}", data)
        sig = signature_b64(data, model=model, version=version, security_version=security_version, key=key)
        files[f"{kind}_sig"] = (f"{version}.{kind}.sig", sig.encode() + b"\n")
    r = server.api.post(
        "/api/v1/firmware",
        data={"version": version, "model": model, "security_version": str(security_version)},
        files=files,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def random_image(size: int) -> bytes:
    return os.urandom(size)


def log_key(server: SimServer) -> Ed25519PublicKey:
    """The release log's public key, as the server publishes it."""
    r = httpx.get(f"{server.url}/.well-known/bota-ota-log-key.pem", timeout=30)
    assert r.status_code == 200, r.text
    return load_public_key(r.text)
