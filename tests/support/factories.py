"""Test data builders, used through the public HTTP API wherever possible."""

from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.accounts.service import create_api_token
from bota_ota.core.database import session_scope

_serial = itertools.count(1)


def make_token(sessions: sessionmaker[Session], role: str) -> str:
    with session_scope(sessions) as session:
        _, secret = create_api_token(session, name=f"test-{role}", role=role, actor="test")
    return secret


def firmware_bytes(size: int = 64 * 1024, seed: int | None = None) -> bytes:
    return os.urandom(size) if seed is None else (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass
class ApiClient:
    """A TestClient bound to one API token."""

    client: TestClient
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.get(url, headers=self.headers, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.post(url, headers=self.headers, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.patch(url, headers=self.headers, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.delete(url, headers=self.headers, **kw)

    # --- builders -------------------------------------------------------------------------------
    def upload(
        self,
        version: str = "v1.0.1",
        model: str = "bota-pin",
        *,
        bin: bytes | None = b"",
        ufw: bytes | None = None,
        notes: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        data = {"version": version, "model": model}
        if notes is not None:
            data["notes"] = notes
        data.update(extra or {})
        files = {}
        if bin is not None:
            files["bin"] = (f"fw-{version}.bin", bin or firmware_bytes(), "application/octet-stream")
        if ufw is not None:
            files["ufw"] = (f"fw-{version}.ufw", ufw, "application/octet-stream")
        return self.post("/api/v1/firmware", data=data, files=files)

    def release(self, version: str = "v1.0.1", model: str = "bota-pin", **kw: Any) -> dict[str, Any]:
        r = self.upload(version, model, **kw)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def device(self, model: str = "bota-pin", device_id: str | None = None, name: str | None = None) -> dict[str, Any]:
        device_id = device_id or f"BP-{next(_serial):06d}-{os.urandom(2).hex()}"
        r = self.post("/api/v1/devices", json={"id": device_id, "model": model, "name": name})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def assign(self, device_id: str, release_id: str) -> httpx.Response:
        return self.post(f"/api/v1/devices/{device_id}/assignments", json={"release_id": release_id})


def heartbeat(client: TestClient, device_token: str, **body: Any) -> httpx.Response:
    body.setdefault("firmware_version", "v1.0.0")
    return client.post("/api/device/v1/heartbeat", json=body, headers={"Authorization": f"Bearer {device_token}"})


# ---- helpers for the API test suite (appended) ---------------------------------------------------

PROBLEM_KEYS = frozenset({"type", "title", "status", "detail", "instance"})


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem reply with this status (and, if given, this first offending field)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == response.request.url.path
    if field is not None:
        assert body.get("errors"), body
        assert body["errors"][0]["field"] == field, body
    return body


def files_in(root: os.PathLike[str]) -> list[os.PathLike[str]]:
    """Every regular file under root (empty when root does not exist)."""
    from pathlib import Path

    base = Path(root)
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


def post_firmware(api: ApiClient, data: dict[str, str], files: dict[str, Any] | None = None) -> httpx.Response:
    """A raw multipart upload: exactly these form fields and files, nothing filled in."""
    return api.post("/api/v1/firmware", data=data, files=files or {})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
