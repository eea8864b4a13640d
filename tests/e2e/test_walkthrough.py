"""The README walkthrough against a real server process, acting as the device like curl would."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

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


# ---- the README's curl walkthrough, run as printed -----------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
_PLACEHOLDERS = ("release id", "release 2 id", "assignment id", "assignment 2 id", "assignment 3 id")
_PLACEHOLDER_RE = re.compile("<({})>".format("|".join([*_PLACEHOLDERS, "the url from the manifest"])))
_EXPECTED_PAIR_RE = re.compile(r'"(\w+)": "([^"…]+)"')


def _readme_curl_commands() -> list[tuple[str, str]]:
    """The shell commands of the README's curl walkthrough, each with the `# →` reply comment after it."""
    text = README.read_text()
    section = text[text.index("## Walkthrough: the HTTP OTA path with curl") : text.index("## Documentation")]
    commands: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        current = ""
        for line in block.splitlines():
            if not current and line.lstrip().startswith("#    →") and commands:
                commands[-1] = (commands[-1][0], line)
                continue
            if not current and (line.lstrip().startswith("#") or not line.strip()):
                continue
            current = f"{current}\n{line}" if current else line
            if not current.endswith("\\"):
                commands.append((current, ""))
                current = ""
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README walkthrough uses curl")
def test_readme_curl_walkthrough_works_as_printed(server: ServerProcess, tmp_path: Path) -> None:
    """Every command of the README's curl walkthrough, as printed, with only its placeholders filled in from the
    replies before it: pending → delivered → applied, then failed, then cancelled."""
    token = server.admin_token_from_output()
    assert token
    commands = _readme_curl_commands()
    assert len(commands) >= 15, commands
    workdir = tmp_path / "walk"
    workdir.mkdir()
    filled: dict[str, str] = {}
    exports: list[str] = []
    replies: list[Any] = []
    assignments: list[str] = []
    for printed, expected in commands:
        command = printed.replace("URL=http://127.0.0.1:8000", f"URL={server.url}").replace(
            "TOKEN=bota_at_...", f"TOKEN={token}"
        )
        if "DEVICE_TOKEN=bota_dt_..." in command:
            command = command.replace("bota_dt_...", filled["device token"])
        command = _PLACEHOLDER_RE.sub(lambda m: filled[m.group(1)], command)
        run = subprocess.run(
            ["bash", "-euc", "\n".join([*exports, command])], cwd=workdir, capture_output=True, text=True, timeout=60
        )
        assert (run.returncode, run.stderr) == (0, ""), (printed, run)
        if command.startswith(("export ", "AUTH=")):
            exports.append(command)
        reply = json.loads(run.stdout) if run.stdout.startswith("{") else None
        replies.append(reply)
        for key, value in _EXPECTED_PAIR_RE.findall(expected):  # e.g. → 201 {"status": "pending", …}
            if value.startswith("<") or value.endswith("..."):  # a placeholder, not a value
                continue
            assert reply is not None and str(reply.get(key)) == value, (printed, expected, run.stdout)
        if not isinstance(reply, dict):
            continue
        if "bin" in reply and reply.get("version") == "v1.0.1":
            filled["release id"] = reply["id"]
        elif "bin" in reply and reply.get("version") == "v1.0.2":
            filled["release 2 id"] = reply["id"]
        elif str(reply.get("token", "")).startswith("bota_dt_"):
            filled["device token"] = reply["token"]
        elif reply.get("status") == "pending":
            assignments.append(reply["id"])
            filled[["assignment id", "assignment 2 id", "assignment 3 id"][len(assignments) - 1]] = reply["id"]
        elif reply.get("ota") and "the url from the manifest" not in filled:
            filled["the url from the manifest"] = reply["ota"]["url"]

    assert len(assignments) == 3
    assert (workdir / "fw.bin").read_bytes() == (workdir / "pin-1.0.1.bin").read_bytes()
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    applied, failed, cancelled = (api.get(f"/api/v1/assignments/{a}").json() for a in assignments)
    assert [e["kind"] for e in applied["events"]] == ["created", "delivered", "applied"]
    assert (failed["status"], failed["error"]) == ("failed", "crc_mismatch")
    assert [e["kind"] for e in failed["events"]] == ["created", "delivered", "failed"]
    assert cancelled["status"] == "cancelled"
    assert [e["kind"] for e in cancelled["events"]] == ["created", "cancelled"]
    assert replies[-1] == {"heartbeat_interval_s": 60, "ota": None, "ota_deferred": None, "ota_abort": None}
