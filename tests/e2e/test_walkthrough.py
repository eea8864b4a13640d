"""The README walkthrough against a real server process, acting as the device like curl would."""

from __future__ import annotations

import zlib
from pathlib import Path

import httpx
import pytest

from tests.support.server import PASSWORD_RE, ServerProcess, cli, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    # SQLite: let the server create its own database under --data-dir, exactly as a new user would.
    env = server_env(None if database_url.startswith("sqlite") else database_url)
    if database_url.startswith("sqlite"):
        Path(database_url.removeprefix("sqlite:///")).unlink()
    proc = ServerProcess(data_dir=tmp_path / "srv", env=env)
    proc.start()
    yield proc
    proc.stop()
    assert "Application shutdown complete" in proc.output()


def test_first_start_prints_admin_once_and_walkthrough(server: ServerProcess, tmp_path: Path) -> None:
    token = server.admin_token_from_output()
    assert token and token.startswith("bota_at_"), server.output()
    assert PASSWORD_RE.search(server.output())
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert api.get("/api/v1/me").json()["role"] == "admin"

    # `token create` prints the token alone as its last line, and the token works.
    created = cli(
        server.env, "token", "create", "--name", "ci", "--role", "operator", "--data-dir", str(server.data_dir)
    )
    op_token = created.stdout.strip().splitlines()[-1]
    assert op_token.startswith("bota_at_")
    op = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {op_token}"}, timeout=10)
    assert op.get("/api/v1/me").json() == {"kind": "token", "name": "ci", "role": "operator"}

    image = bytes(range(256)) * 2000
    r = op.post(
        "/api/v1/firmware",
        data={"version": "v1.0.1", "model": "bota-pin", "notes": "fixes"},
        files={"bin": ("pin-1.0.1.bin", image), "ufw": ("pin-1.0.1.ufw", image[:1000])},
    )
    assert r.status_code == 201, r.text
    release = r.json()
    r = op.post("/api/v1/devices", json={"id": "BP-000123", "model": "bota-pin", "name": "Desk"})
    assert r.status_code == 201, r.text
    device_token = r.json()["token"]
    dev = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {device_token}"}, timeout=10)

    # happy path: pending → delivered → applied
    a = op.post("/api/v1/devices/BP-000123/assignments", json={"release_id": release["id"]}).json()
    assert a["status"] == "pending"
    reply = dev.post("/api/device/v1/heartbeat", json={"firmware_version": "v1.0.0"}).json()
    manifest = reply["ota"]
    assert manifest["assignment_id"] == a["id"]
    assert manifest["url"].startswith(server.url + "/dl/")
    downloaded = httpx.get(manifest["url"]).content
    assert zlib.crc32(downloaded) & 0xFFFFFFFF == manifest["crc32"] == zlib.crc32(image) & 0xFFFFFFFF
    dev.post("/api/device/v1/heartbeat", json={"firmware_version": "v1.0.1"})
    assert op.get(f"/api/v1/assignments/{a['id']}").json()["status"] == "applied"

    # failed path
    r2 = op.post(
        "/api/v1/firmware",
        data={"version": "v1.0.2", "model": "bota-pin"},
        files={"bin": ("pin-1.0.2.bin", image[::-1])},
    )
    a2 = op.post("/api/v1/devices/BP-000123/assignments", json={"release_id": r2.json()["id"]}).json()
    dev.post("/api/device/v1/heartbeat", json={"firmware_version": "v1.0.1"})
    dev.post(
        "/api/device/v1/heartbeat",
        json={
            "firmware_version": "v1.0.1",
            "ota": {"assignment_id": a2["id"], "state": "failed", "error": "crc_mismatch"},
        },
    )
    failed = op.get(f"/api/v1/assignments/{a2['id']}").json()
    assert (failed["status"], failed["error"]) == ("failed", "crc_mismatch")

    # cancelled path: never delivered afterwards
    a3 = op.post("/api/v1/devices/BP-000123/assignments", json={"release_id": r2.json()["id"]}).json()
    assert op.post(f"/api/v1/assignments/{a3['id']}/cancel").json()["status"] == "cancelled"
    assert dev.post("/api/device/v1/heartbeat", json={"firmware_version": "v1.0.1"}).json()["ota"] is None

    audit = api.get("/api/v1/audit").json()
    actions = {e["action"] for e in audit}
    assert {"firmware.upload", "device.register", "assignment.create", "assignment.cancel", "token.create"} <= actions

    # A restart does not bootstrap a second admin.
    server.stop()
    first_output = server.output()
    server.start()
    assert "Admin API token" not in server.output().replace(first_output, "")
    assert "Admin API token" not in server.output(), "second start must not print credentials"


def test_openapi_docs_served(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/api/device/v1/heartbeat" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/api/v1/firmware"]["post"]["requestBody"]["content"]
