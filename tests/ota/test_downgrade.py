"""Assigning a release older than the device's reported version: refused (422) unless an admin sends
``"allow_downgrade": true``, which is audited; the same version is allowed as before."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.factories import ApiClient, assert_problem, heartbeat


def _assign(api: ApiClient, device_id: str, release_id: str, **extra: Any) -> Any:
    return api.post(f"/api/v1/devices/{device_id}/assignments", json={"release_id": release_id, **extra})


def _audit(api: ApiClient) -> list[dict[str, Any]]:
    return list(api.get("/api/v1/audit", params={"action": "assignment.create"}).json())


@pytest.fixture
def on_104(admin: ApiClient) -> dict[str, Any]:
    device = admin.device()
    assert heartbeat(admin.client, device["token"], firmware_version="v1.0.4").status_code == 200
    return device


@pytest.mark.parametrize("flag", [{}, {"allow_downgrade": False}])
def test_a_downgrade_without_the_flag_is_422_naming_release_id_and_creates_nothing(
    admin: ApiClient, on_104: dict[str, Any], flag: dict[str, Any]
) -> None:
    older = admin.release("v1.0.2")
    problem = assert_problem(_assign(admin, on_104["id"], older["id"], **flag), 422, field="release_id")
    assert "v1.0.2" in problem["detail"] and "v1.0.4" in problem["detail"]
    assert "downgrade" in problem["detail"] and "allow_downgrade" in problem["detail"]
    assert problem["device_version"] == "v1.0.4"
    assert admin.get(f"/api/v1/devices/{on_104['id']}/assignments").json() == []
    assert admin.get(f"/api/v1/devices/{on_104['id']}").json()["active_assignment"] is None
    assert _audit(admin) == []


def test_a_downgrade_by_an_admin_with_the_flag_is_created_and_audited(admin: ApiClient, on_104: dict[str, Any]) -> None:
    older = admin.release("v1.0.2")
    r = _assign(admin, on_104["id"], older["id"], allow_downgrade=True)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["version"], body["downgrade_from"]) == ("pending", "v1.0.2", "v1.0.4")
    [entry] = _audit(admin)
    assert entry["target_id"] == body["id"]
    assert entry["actor"] == "token:test-admin"
    assert entry["detail"]["downgrade"] == {"from": "v1.0.4", "to": "v1.0.2"}
    events = admin.get(f"/api/v1/assignments/{body['id']}").json()["events"]
    assert events[0]["kind"] == "created"
    assert events[0]["detail"]["downgrade"] == {"from": "v1.0.4", "to": "v1.0.2"}
    # It is delivered (the device still reports the version it is being downgraded from).
    assert heartbeat(admin.client, on_104["token"], firmware_version="v1.0.4").json()["ota"]["version"] == "v1.0.2"


def test_the_flag_is_for_admins_only(
    operator: ApiClient, viewer: ApiClient, admin: ApiClient, on_104: dict[str, Any]
) -> None:
    older, newer = admin.release("v1.0.2"), admin.release("v1.0.5")
    problem = assert_problem(_assign(operator, on_104["id"], older["id"], allow_downgrade=True), 403)
    assert "admin" in problem["detail"]
    # The flag itself needs the role, whether or not the release would be a downgrade.
    assert_problem(_assign(operator, on_104["id"], newer["id"], allow_downgrade=True), 403)
    assert_problem(_assign(viewer, on_104["id"], older["id"], allow_downgrade=True), 403)
    assert admin.get(f"/api/v1/devices/{on_104['id']}/assignments").json() == []
    assert _audit(admin) == []
    # Without it an operator assigns a newer release as always.
    assert _assign(operator, on_104["id"], newer["id"], allow_downgrade=False).status_code == 201


def test_the_same_version_is_assigned_and_applied_at_the_next_heartbeat(
    operator: ApiClient, admin: ApiClient, on_104: dict[str, Any]
) -> None:
    same = admin.release("1.0.4+build.7")  # semantically equal: not a downgrade
    r = operator.assign(on_104["id"], same["id"])
    assert r.status_code == 201, r.text
    assert r.json()["downgrade_from"] is None
    assert heartbeat(operator.client, on_104["token"], firmware_version="v1.0.4").json()["ota"] is None
    assert operator.get(f"/api/v1/assignments/{r.json()['id']}").json()["status"] == "applied"


def test_a_newer_release_with_the_flag_is_no_downgrade(admin: ApiClient, on_104: dict[str, Any]) -> None:
    newer = admin.release("v1.1.0")
    r = _assign(admin, on_104["id"], newer["id"], allow_downgrade=True)
    assert r.status_code == 201, r.text
    assert r.json()["downgrade_from"] is None
    assert "downgrade" not in _audit(admin)[0]["detail"]


@pytest.mark.parametrize("reported", [None, "garbage", "v1.2"])
def test_an_unknown_or_unparsable_device_version_is_no_downgrade(operator: ApiClient, reported: str | None) -> None:
    # Nothing to compare with: the release is assigned (and a newer version reported later supersedes it).
    device = operator.device()
    if reported is not None:
        heartbeat(operator.client, device["token"], firmware_version=reported)
    release = operator.release("v0.1.0")
    r = operator.assign(device["id"], release["id"])
    assert r.status_code == 201, r.text
    assert r.json()["downgrade_from"] is None


def test_allow_downgrade_must_be_a_boolean(admin: ApiClient, on_104: dict[str, Any]) -> None:
    older = admin.release("v1.0.2")
    assert_problem(_assign(admin, on_104["id"], older["id"], allow_downgrade="maybe"), 422, field="allow_downgrade")


def test_superseded_is_a_status_to_filter_by(admin: ApiClient, on_104: dict[str, Any]) -> None:
    device = admin.device()
    release = admin.release("v2.0.0")
    aid = admin.assign(device["id"], release["id"]).json()["id"]
    heartbeat(admin.client, device["token"], firmware_version="v2.1.0")
    listed = admin.get("/api/v1/assignments", params={"status": "superseded"})
    assert listed.status_code == 200 and [a["id"] for a in listed.json()] == [aid]
    devices = admin.get("/api/v1/devices", params={"assignment_status": "superseded"}).json()
    assert [d["id"] for d in devices] == [device["id"]]
