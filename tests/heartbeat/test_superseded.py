"""Versions only move forward: a device that reports a version newer than its active assignment's has moved
past it, so the assignment ends as ``superseded`` and is never delivered again (by heartbeat or app relay).
A downgrade an admin allowed is delivered, and only a version past the one it started from supersedes it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.app_api import App, make_app_user, owned_device
from tests.support.factories import ApiClient, firmware_bytes, heartbeat
from tests.support.heartbeat_cache import listening_cache, outside_sql, settle, until


def _assignment(api: ApiClient, assignment_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/assignments/{assignment_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
def app_user(admin: ApiClient) -> App:
    return make_app_user(admin)


@pytest.fixture
def downgrade_scenario(admin: ApiClient, app_user: App) -> dict[str, Any]:
    """A device on v1.0.1 with a pending assignment to v1.0.2, which has no .ufw; v1.0.4 has one."""
    device = owned_device(admin, app_user, version="v1.0.1")
    v102 = admin.release("v1.0.2", bin=firmware_bytes(1000))
    v104 = admin.release("v1.0.4", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    r = admin.assign(device["id"], v102["id"])
    assert r.status_code == 201, r.text
    return {"device": device, "v102": v102, "v104": v104, "assignment": r.json()}


def _the_app_is_told_of_the_assignment_not_offered_v104(app_user: App, scenario: dict[str, Any]) -> None:
    offer = app_user.get(f"/devices/{scenario['device']['id']}/firmware-update").json()
    assert offer["update_available"] is False
    assert offer["release"] is None  # not v1.0.4 in the assignment's place
    assert (offer["reason"], offer["assignment_id"]) == ("assignment_http_only", scenario["assignment"]["id"])
    assert offer["assignment"] == {
        "id": scenario["assignment"]["id"],
        "version": "v1.0.2",
        "status": "pending",
        "over_ble": False,
    }
    assert "WiFi/4G" in offer["message"]


def test_the_downgrade_scenario_by_heartbeat(
    admin: ApiClient, app_user: App, downgrade_scenario: dict[str, Any]
) -> None:
    s = downgrade_scenario
    token, aid = s["device"]["token"], s["assignment"]["id"]
    _the_app_is_told_of_the_assignment_not_offered_v104(app_user, s)
    # The device gets v1.0.4 some other way nevertheless and reports it in its next heartbeat.
    reply = heartbeat(admin.client, token, firmware_version="v1.0.4").json()
    assert (reply["ota"], reply["ota_deferred"]) == (None, None)
    a = _assignment(admin, aid)
    assert a["status"] == "superseded"
    assert a["finished_at"] is not None and a["delivered_at"] is None
    assert [e["kind"] for e in a["events"]] == ["created", "superseded"]
    assert a["events"][-1]["detail"] == {"reported_version": "v1.0.4", "channel": "http"}
    assert a["events"][-1]["status"] == "superseded"
    # Never delivered again: the heartbeats after it get no manifest, whatever they say.
    for body in ({}, {"ota": {"assignment_id": aid, "state": "downloading", "progress": 5}}):
        assert heartbeat(admin.client, token, firmware_version="v1.0.4", **body).json()["ota"] is None
    heartbeat(admin.client, token, firmware_version="v1.0.2")  # even the assigned version: it is final
    assert _assignment(admin, aid)["status"] == "superseded"
    device = admin.get(f"/api/v1/devices/{s['device']['id']}").json()
    assert device["firmware_version"] == "v1.0.2" and device["active_assignment"] is None
    listed = admin.get("/api/v1/assignments", params={"status": "superseded"})
    assert [x["id"] for x in listed.json()] == [aid] and listed.headers["X-Total-Count"] == "1"
    # Nothing is assigned any more: the app may offer what is newer than the device's version again.
    heartbeat(admin.client, token, firmware_version="v1.0.1")
    offer = app_user.get(f"/devices/{s['device']['id']}/firmware-update").json()
    assert (offer["reason"], offer["release"]["version"], offer["assignment"]) == ("newer_release", "v1.0.4", None)


def test_the_downgrade_scenario_through_the_app_relay(
    admin: ApiClient, app_user: App, downgrade_scenario: dict[str, Any]
) -> None:
    s = downgrade_scenario
    device_id, aid = s["device"]["id"], s["assignment"]["id"]
    _the_app_is_told_of_the_assignment_not_offered_v104(app_user, s)
    # Relaying an older or the same version changes nothing (the relay never applies a pending assignment).
    for version in ("v1.0.1", "v1.0.2", "garbage"):
        assert app_user.post(f"/devices/{device_id}/relay", json={"firmware_version": version}).status_code == 200
        assert _assignment(admin, aid)["status"] == "pending"
    # The app installed v1.0.4 over Bluetooth (as a newer release, with no assignment) and relays the version.
    r = app_user.post(f"/devices/{device_id}/relay", json={"firmware_version": "v1.0.4", "battery": 80})
    assert r.status_code == 200, r.text
    assert r.json()["ota"] is None
    a = _assignment(admin, aid)
    assert a["status"] == "superseded"
    assert a["events"][-1]["kind"] == "superseded"
    assert a["events"][-1]["detail"] == {"reported_version": "v1.0.4", "channel": "ble"}
    assert a["events"][-1]["actor"] == "app:ana@example.com"
    # The device's own heartbeat afterwards gets no manifest.
    assert heartbeat(admin.client, s["device"]["token"], firmware_version="v1.0.4").json()["ota"] is None
    assert _assignment(admin, aid)["status"] == "superseded"
    offer = app_user.get(f"/devices/{device_id}/firmware-update").json()
    assert offer == {
        "update_available": False,
        "reason": None,
        "assignment_id": None,
        "release": None,
        "assignment": None,
        "message": None,
        "blocked": None,
    }


def test_a_delivered_assignment_is_superseded_mid_download(admin: ApiClient) -> None:
    device = admin.device()
    release = admin.release("v1.1.0")
    aid = admin.assign(device["id"], release["id"]).json()["id"]
    token = device["token"]
    assert heartbeat(admin.client, token, firmware_version="v1.0.0").json()["ota"]["assignment_id"] == aid
    progress = {"assignment_id": aid, "state": "downloading", "progress": 40}
    assert heartbeat(admin.client, token, firmware_version="v1.0.0", ota=progress).json()["ota"] is not None
    reply = heartbeat(admin.client, token, firmware_version="v1.2.0", ota={**progress, "progress": 60}).json()
    assert reply["ota"] is None
    a = _assignment(admin, aid)
    assert (a["status"], a["ota_state"]) == ("superseded", None)
    assert [e["kind"] for e in a["events"]] == ["created", "delivered", "progress", "superseded"]
    assert heartbeat(admin.client, token, firmware_version="v1.2.0").json()["ota"] is None
    # Final: cancelling it is refused, and a new assignment may be made.
    assert admin.post(f"/api/v1/assignments/{aid}/cancel").status_code == 409
    newer = admin.release("v1.3.0")
    assert admin.assign(device["id"], newer["id"]).status_code == 201


@pytest.mark.parametrize("reported", ["v1.0.9", "v1.1.0-rc.1", "garbage", "v1.2"])
def test_an_older_or_unparsable_version_does_not_supersede(admin: ApiClient, reported: str) -> None:
    device = admin.device()
    aid = admin.assign(device["id"], admin.release("v1.1.0")["id"]).json()["id"]
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    reply = heartbeat(admin.client, device["token"], firmware_version=reported).json()
    assert reply["ota"]["assignment_id"] == aid
    assert _assignment(admin, aid)["status"] == "delivered"


def test_an_admins_downgrade_is_delivered_and_applied(admin: ApiClient, app: Any) -> None:
    listening_cache(app)
    device = admin.device()
    token = device["token"]
    heartbeat(admin.client, token, firmware_version="v1.0.4")
    older = admin.release("v1.0.2")
    r = admin.post(
        f"/api/v1/devices/{device['id']}/assignments", json={"release_id": older["id"], "allow_downgrade": True}
    )
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    assert r.json()["downgrade_from"] == "v1.0.4"
    # Reporting the version it is being downgraded from is what the downgrade expects: delivered, not superseded,
    # also when the heartbeat is answered from this instance's cache.
    assert heartbeat(admin.client, token, firmware_version="v1.0.4").json()["ota"]["assignment_id"] == aid
    settle(app)
    assert heartbeat(admin.client, token, firmware_version="v1.0.4").json()["ota"]["assignment_id"] == aid
    assert app.state.heartbeat.cache.holds(device["id"])
    assert heartbeat(admin.client, token, firmware_version="v1.0.4").json()["ota"]["assignment_id"] == aid
    assert _assignment(admin, aid)["status"] == "delivered"
    heartbeat(admin.client, token, firmware_version="v1.0.2")
    assert _assignment(admin, aid)["status"] == "applied"


def test_an_admins_downgrade_is_superseded_by_a_version_past_the_one_it_left(admin: ApiClient) -> None:
    device = admin.device()
    heartbeat(admin.client, device["token"], firmware_version="v1.0.4")
    older = admin.release("v1.0.2")
    body = {"release_id": older["id"], "allow_downgrade": True}
    aid = admin.post(f"/api/v1/devices/{device['id']}/assignments", json=body).json()["id"]
    heartbeat(admin.client, device["token"], firmware_version="v1.0.3")
    assert _assignment(admin, aid)["status"] == "delivered"
    assert heartbeat(admin.client, device["token"], firmware_version="v1.0.5").json()["ota"] is None
    assert _assignment(admin, aid)["status"] == "superseded"


def test_an_older_assignment_of_a_cached_device_is_superseded_not_delivered(admin: ApiClient, app: Any) -> None:
    # An assignment older than the device's version can only appear by a race (made just as the device reported
    # a newer version) or by hand: here plain SQL from outside the application, while the device is cached.
    cache = listening_cache(app)
    device = admin.device()
    token = device["token"]
    heartbeat(admin.client, token, firmware_version="v1.0.4")
    settle(app)
    heartbeat(admin.client, token, firmware_version="v1.0.4")
    assert cache.holds(device["id"])
    release = admin.release("v1.0.2")
    with outside_sql(app) as conn:
        conn.execute(
            "INSERT INTO assignments (id, device_id, release_id, version, status, created_at, delivery_count, held) "
            f"VALUES ('by-hand', '{device['id']}', '{release['id']}', 'v1.0.2', 'pending', '2026-01-01 00:00:00', 0, "
            "false)"
        )
        conn.commit()
    until(lambda: not cache.holds(device["id"]), "the outside insert to reach the cache")
    assert heartbeat(admin.client, token, firmware_version="v1.0.4").json()["ota"] is None
    assert _assignment(admin, "by-hand")["status"] == "superseded"
