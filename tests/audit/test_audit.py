"""The audit log: every management action recorded with actor, time and target; rejected actions leave nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.factories import ApiClient, firmware_bytes


def _entries(api: ApiClient, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Total-Count"]) >= len(r.json())
    return list(r.json())


def _only(api: ApiClient, action: str) -> dict[str, Any]:
    entries = _entries(api, action=action)
    assert len(entries) == 1, entries
    return entries[0]


def _check(entry: dict[str, Any], *, actor: str, action: str, target_id: str, since: datetime) -> None:
    assert entry["actor"] == actor
    assert entry["action"] == action
    assert entry["target_id"] == target_id
    at = datetime.fromisoformat(entry["at"])
    assert at.tzinfo is not None
    assert since - timedelta(seconds=1) <= at <= datetime.now(UTC)


def test_each_management_action_is_recorded(admin: ApiClient) -> None:
    t0 = datetime.now(UTC)
    actor = "token:test-admin"
    rel = admin.release("v1.0.1")
    _check(_only(admin, "firmware.upload"), actor=actor, action="firmware.upload", target_id=rel["id"], since=t0)
    assert _only(admin, "firmware.upload")["detail"]["version"] == "v1.0.1"

    dev = admin.device(device_id="BP-AUDIT-1")
    _check(_only(admin, "device.register"), actor=actor, action="device.register", target_id=dev["id"], since=t0)

    rotated = admin.post(f"/api/v1/devices/{dev['id']}/token")
    assert rotated.status_code == 200
    _check(
        _only(admin, "device.rotate_token"), actor=actor, action="device.rotate_token", target_id=dev["id"], since=t0
    )

    a = admin.assign(dev["id"], rel["id"]).json()
    created = _only(admin, "assignment.create")
    _check(created, actor=actor, action="assignment.create", target_id=a["id"], since=t0)
    assert created["detail"]["device_id"] == dev["id"]

    assert admin.post(f"/api/v1/assignments/{a['id']}/cancel").status_code == 200
    _check(_only(admin, "assignment.cancel"), actor=actor, action="assignment.cancel", target_id=a["id"], since=t0)

    gone = admin.release("v1.0.2")
    assert admin.delete(f"/api/v1/firmware/{gone['id']}").status_code == 204
    _check(_only(admin, "firmware.delete"), actor=actor, action="firmware.delete", target_id=gone["id"], since=t0)

    tok = admin.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).json()
    api_created = [e for e in _entries(admin, action="token.create") if e["target_id"] == tok["id"]]
    assert len(api_created) == 1
    _check(api_created[0], actor=actor, action="token.create", target_id=tok["id"], since=t0)
    # No secret ends up in the log.
    log_text = admin.get("/api/v1/audit").text
    assert tok["token"] not in log_text
    assert dev["token"] not in log_text
    assert rotated.json()["token"] not in log_text

    # Newest first, across all actions.
    actions = [e["action"] for e in _entries(admin) if e["actor"] == actor]
    assert actions == [
        "token.create",
        "firmware.delete",
        "firmware.upload",
        "assignment.cancel",
        "assignment.create",
        "device.rotate_token",
        "device.register",
        "firmware.upload",
    ]


def test_release_update_is_recorded(admin: ApiClient) -> None:
    rel = admin.release("v1.0.1")
    assert admin.patch(f"/api/v1/firmware/{rel['id']}", json={"released": False}).status_code == 200
    entry = _only(admin, "firmware.update")
    assert entry["target_id"] == rel["id"]
    assert entry["detail"]["released"] is False


def test_actor_is_the_calling_token(operator: ApiClient, admin: ApiClient) -> None:
    dev = operator.device()
    entry = _only(admin, "device.register")
    assert entry["actor"] == "token:test-operator"
    assert entry["target_id"] == dev["id"]


def test_filters(admin: ApiClient, operator: ApiClient) -> None:
    admin.device(device_id="BP-F-1")
    operator.device(device_id="BP-F-2")
    admin.release("v1.0.0")
    assert [e["target_id"] for e in _entries(admin, action="device.register")] == ["BP-F-2", "BP-F-1"]
    assert all(e["action"] == "device.register" for e in _entries(admin, action="device.register"))
    assert [e["target_id"] for e in _entries(admin, actor="token:test-operator")] == ["BP-F-2"]
    assert [e["action"] for e in _entries(admin, target_id="BP-F-1")] == ["device.register"]
    assert _entries(admin, action="no.such.action") == []
    page = admin.get("/api/v1/audit", params={"limit": 1, "action": "device.register"})
    assert len(page.json()) == 1
    assert page.headers["X-Total-Count"] == "2"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _entries(admin, since=future) == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(_entries(admin, since=past, action="device.register")) == 2


def _audit_count(api: ApiClient) -> int:
    return int(api.get("/api/v1/audit").headers["X-Total-Count"])


@pytest.mark.parametrize(
    "rejected",
    [
        "duplicate upload",
        "bad upload",
        "oversized upload",
        "duplicate device",
        "second assignment",
        "cancel final",
        "delete referenced",
        "rotate unknown",
        "bad token role",
        "forbidden",
    ],
)
def test_rejected_actions_leave_no_audit_entry(admin: ApiClient, viewer: ApiClient, rejected: str) -> None:
    rel = admin.release("v1.0.1")
    dev = admin.device(device_id="BP-REJ-1")
    a = admin.assign(dev["id"], rel["id"]).json()
    other = admin.device(device_id="BP-REJ-2")
    b = admin.assign(other["id"], rel["id"]).json()
    admin.post(f"/api/v1/assignments/{b['id']}/cancel")
    before = admin.get("/api/v1/audit").json()

    attempts = {
        "duplicate upload": lambda: admin.upload("1.0.1"),
        "bad upload": lambda: admin.upload("latest"),
        "oversized upload": lambda: admin.upload("v2.0.0", bin=firmware_bytes(1024 * 1024 + 1, seed=1)),
        "duplicate device": lambda: admin.post("/api/v1/devices", json={"id": "BP-REJ-1", "model": "bota-pin"}),
        "second assignment": lambda: admin.assign(dev["id"], rel["id"]),
        "cancel final": lambda: admin.post(f"/api/v1/assignments/{b['id']}/cancel"),
        "delete referenced": lambda: admin.delete(f"/api/v1/firmware/{rel['id']}"),
        "rotate unknown": lambda: admin.post("/api/v1/devices/BP-NOPE/token"),
        "bad token role": lambda: admin.post("/api/v1/tokens", json={"name": "x", "role": "root"}),
        "forbidden": lambda: viewer.post(f"/api/v1/assignments/{a['id']}/cancel"),
    }
    r = attempts[rejected]()
    assert 400 <= r.status_code < 500, r.text
    assert admin.get("/api/v1/audit").json() == before


def test_since_without_timezone_is_not_a_server_error(admin: ApiClient) -> None:
    admin.device()
    r = admin.get("/api/v1/audit", params={"since": "2020-01-01T00:00:00"})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert [e["action"] for e in r.json()] == ["device.register", "token.create"]
