"""The mobile-app API: accounts, ownership, update discovery, BLE relay and BLE transfer records."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.app_api import App, make_app_user, owned_device
from tests.support.factories import ApiClient, assert_problem, firmware_bytes, heartbeat


@pytest.fixture
def app_user(admin: ApiClient) -> App:
    return make_app_user(admin)


def test_login_refuses_wrong_password_and_unknown_user(admin: ApiClient, app_user: App) -> None:
    for body in ({"email": "ana@example.com", "password": "nope"}, {"email": "bob@example.com", "password": "x"}):
        r = admin.client.post("/api/app/v1/auth/login", json=body)
        assert_problem(r, 401)
    assert_problem(admin.client.get("/api/app/v1/devices"), 401)
    assert_problem(admin.client.get("/api/app/v1/devices", headers={"Authorization": "Bearer bota_ap_x"}), 401)


def test_an_expired_app_token_is_refused(admin: ApiClient, app_user: App, sessions: Any) -> None:
    from datetime import timedelta

    from bota_ota.accounts.models import AppToken
    from bota_ota.core.database import utcnow

    assert app_user.get("/devices").status_code == 200
    with sessions() as session:
        for token in session.query(AppToken).all():
            token.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert_problem(app_user.get("/devices"), 401)


def test_app_users_are_created_by_operators_only(admin: ApiClient, viewer: ApiClient) -> None:
    assert_problem(viewer.post("/api/v1/app-users", json={"email": "v@example.com", "password": "12345678"}), 403)
    make_app_user(admin, "x@example.com")
    dup = admin.post("/api/v1/app-users", json={"email": "X@example.com", "password": "12345678"})
    assert_problem(dup, 409, field="email")
    short = admin.post("/api/v1/app-users", json={"email": "y@example.com", "password": "short"})
    assert_problem(short, 422, field="password")
    users = viewer.get("/api/v1/app-users").json()
    assert [u["email"] for u in users] == ["x@example.com"]


def test_the_app_only_sees_its_own_devices(admin: ApiClient, app_user: App) -> None:
    mine = owned_device(admin, app_user)
    make_app_user(admin, "bob@example.com")
    theirs = owned_device(admin, app_user, email="bob@example.com")
    unowned = admin.device()
    assert [d["id"] for d in app_user.get("/devices").json()] == [mine["id"]]
    for device_id in (theirs["id"], unowned["id"], "no-such-device"):
        assert_problem(app_user.get(f"/devices/{device_id}"), 404)
        assert_problem(app_user.get(f"/devices/{device_id}/firmware-update"), 404)
        assert_problem(app_user.post(f"/devices/{device_id}/relay", json={"firmware_version": "v1.0.0"}), 404)
        assert_problem(app_user.post(f"/devices/{device_id}/ble", json={"connected": False}), 404)
        assert_problem(
            app_user.post(f"/devices/{device_id}/ble-ota", json={"release_id": "x", "state": "started"}), 404
        )


def test_claim_with_the_code_from_registration(admin: ApiClient, app_user: App) -> None:
    device = admin.device()
    code = device["claim_code"]
    assert len(code) == 9 and code[4] == "-"
    assert_problem(app_user.post("/devices/claim", json={"id": device["id"], "claim_code": "AAAA-AAAA"}), 404)
    r = app_user.post("/devices/claim", json={"id": device["id"], "claim_code": code.lower().replace("-", "")})
    assert r.status_code == 200, r.text
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["owner"] == "ana@example.com"
    other = make_app_user(admin, "bob@example.com")
    assert_problem(other.post("/devices/claim", json={"id": device["id"], "claim_code": code}), 409)


def test_newer_released_ufw_is_offered_drafts_and_bin_only_are_not(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json() == {
        "update_available": False,
        "reason": None,
        "assignment_id": None,
        "release": None,
        "assignment": None,
        "message": None,
        "blocked": None,
    }
    admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(3000))
    admin.release("v1.0.2", bin=firmware_bytes(1000))  # no .ufw: cannot go over BLE
    draft = admin.upload("v1.1.0", ufw=firmware_bytes(3000), extra={"draft": "true"}).json()
    admin.release("v1.0.5", model="bota-note", ufw=firmware_bytes(3000))  # another model
    offer = app_user.get(f"/devices/{device['id']}/firmware-update").json()
    assert offer["update_available"] is True
    assert offer["reason"] == "newer_release"
    assert offer["release"]["version"] == "v1.0.1"
    assert offer["release"]["size"] == 3000
    assert admin.client.get(offer["release"]["url"]).content  # the signed .ufw URL works
    admin.patch(f"/api/v1/firmware/{draft['id']}", json={"released": True})
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json()["release"]["version"] == "v1.1.0"
    admin.patch(f"/api/v1/firmware/{draft['id']}", json={"released": False})  # back to draft: withdrawn
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json()["release"]["version"] == "v1.0.1"
    admin.patch(f"/api/v1/firmware/{draft['id']}", json={"released": True})
    heartbeat(admin.client, device["token"], firmware_version="v1.1.0")
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json()["update_available"] is False


def test_an_admins_downgrade_wins_over_a_newer_release(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    older = admin.release("v0.9.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    admin.release("v2.0.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    body = {"release_id": older["id"], "allow_downgrade": True}
    assignment = admin.post(f"/api/v1/devices/{device['id']}/assignments", json=body).json()
    offer = app_user.get(f"/devices/{device['id']}/firmware-update").json()
    assert (offer["reason"], offer["assignment_id"], offer["release"]["id"]) == (
        "assignment",
        assignment["id"],
        older["id"],
    )
    assert offer["assignment"] == {"id": assignment["id"], "version": "v0.9.0", "status": "pending", "over_ble": True}
    assert offer["message"] is None


def test_an_assignment_without_ufw_is_told_of_and_nothing_else_is_offered(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    bin_only = admin.release("v1.1.0", bin=firmware_bytes(1000))
    admin.release("v1.2.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))  # newer, with a .ufw
    assignment = admin.assign(device["id"], bin_only["id"]).json()
    url = f"/devices/{device['id']}/firmware-update"
    for status in ("pending", "delivered"):  # delivered over HTTP: the device is downloading it itself
        offer = app_user.get(url).json()
        assert offer["update_available"] is False and offer["release"] is None
        assert (offer["reason"], offer["assignment_id"]) == ("assignment_http_only", assignment["id"])
        assert offer["assignment"] == {"id": assignment["id"], "version": "v1.1.0", "status": status, "over_ble": False}
        assert "v1.1.0" in offer["message"] and "WiFi/4G" in offer["message"]
        heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    # Applied: nothing is assigned any more, and the newer release is offered.
    heartbeat(admin.client, device["token"], firmware_version="v1.1.0")
    offer = app_user.get(url).json()
    assert (offer["reason"], offer["release"]["version"], offer["assignment"]) == ("newer_release", "v1.2.0", None)


def test_a_relayed_newer_version_supersedes_a_delivered_assignment(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    body = {"release_id": release["id"], "assignment_id": assignment["id"], "state": "started"}
    assert app_user.post(f"/devices/{device['id']}/ble-ota", json=body).json()["assignment_status"] == "delivered"
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.0"})
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "delivered"
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.1.0"})
    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert (detail["status"], detail["channel"]) == ("superseded", "ble")
    assert detail["events"][-1]["detail"] == {"reported_version": "v1.1.0", "channel": "ble"}
    # A late attempt on it is refused: it is final.
    late = app_user.post(f"/devices/{device['id']}/ble-ota", json={**body, "state": "completed"})
    assert_problem(late, 409, field="assignment_id")


def test_relay_never_delivers_and_never_moves_a_pending_assignment(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    for _ in range(3):
        r = app_user.post(
            f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.0", "battery": 55, "recording": False}
        )
        assert r.status_code == 200, r.text
        assert r.json()["ota"] is None
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "pending"
    dev = admin.get(f"/api/v1/devices/{device['id']}").json()
    assert (dev["ble_connected"], dev["battery"]) == (True, 55)
    # Even the assigned version relayed does not move a pending assignment (only a BLE transfer does).
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.1"})
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "pending"


def test_ble_mode_ends_by_the_app_or_the_devices_own_heartbeat(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.0"})
    assert app_user.post(f"/devices/{device['id']}/ble", json={"connected": False}).json()["ble_connected"] is False
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.0"})
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["ble_connected"] is True
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["ble_connected"] is False


def test_ble_mode_times_out_without_relays(admin: ApiClient, app_user: App, sessions: Any) -> None:
    from datetime import timedelta

    from bota_ota.core.database import utcnow
    from bota_ota.devices.models import Device

    device = owned_device(admin, app_user)
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.0"})
    with sessions() as session:
        row = session.get(Device, device["id"])
        row.ble_last_relay_at = utcnow() - timedelta(seconds=181)
        session.commit()
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["ble_connected"] is False


def test_ble_transfer_of_a_pending_assignment(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    base = f"/devices/{device['id']}/ble-ota"
    body = {"release_id": release["id"], "assignment_id": assignment["id"]}
    r = app_user.post(base, json={**body, "state": "started"})
    assert r.json() == {"recorded": True, "assignment_id": assignment["id"], "assignment_status": "delivered"}
    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert (detail["status"], detail["channel"]) == ("delivered", "ble")
    # A failed attempt is recorded, and the assignment stays active for a retry.
    r = app_user.post(base, json={**body, "state": "failed", "error": "link_lost"})
    assert r.json()["assignment_status"] == "delivered"
    app_user.post(base, json={**body, "state": "started"})
    app_user.post(base, json={**body, "state": "completed"})
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "delivered"
    # Applied only once the device reports the assigned version (here relayed by the app).
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.1"})
    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert detail["status"] == "applied"
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds == ["created", "delivered", "ble_failed", "ble_started", "ble_completed", "applied"]
    failed = next(e for e in detail["events"] if e["kind"] == "ble_failed")
    assert failed["detail"]["error"] == "link_lost"


def test_ble_ota_refuses_mismatches(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    pin = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    bin_only = admin.release("v1.0.2", bin=firmware_bytes(1000))
    note = admin.release("v1.0.3", model="bota-note", ufw=firmware_bytes(2000))
    other = admin.release("v1.0.4", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], pin["id"]).json()
    base = f"/devices/{device['id']}/ble-ota"
    assert_problem(app_user.post(base, json={"release_id": "nope", "state": "started"}), 404, field="release_id")
    assert_problem(
        app_user.post(base, json={"release_id": bin_only["id"], "state": "started"}), 422, field="release_id"
    )
    assert_problem(app_user.post(base, json={"release_id": note["id"], "state": "started"}), 422, field="release_id")
    assert_problem(
        app_user.post(base, json={"release_id": other["id"], "assignment_id": assignment["id"], "state": "started"}),
        422,
        field="assignment_id",
    )
    for unknown in ("no-such-assignment", other_devices_assignment(admin, app_user, pin)):
        assert_problem(
            app_user.post(base, json={"release_id": pin["id"], "assignment_id": unknown, "state": "started"}),
            404,
            field="assignment_id",
        )
    assert_problem(app_user.post(base, json={"release_id": pin["id"], "state": "paused"}), 422, field="state")
    # An attempt without an assignment (a newer release) is recorded in the device's history.
    r = app_user.post(base, json={"release_id": other["id"], "state": "started"})
    assert r.json() == {"recorded": True, "assignment_id": None, "assignment_status": None}
    events = admin.get(f"/api/v1/devices/{device['id']}/events").json()
    assert events[0]["kind"] == "ble_ota.started"
    assert events[0]["detail"]["version"] == "v1.0.4"
    # A failure without an error is recorded as "unknown".
    app_user.post(base, json={"release_id": other["id"], "state": "failed"})
    events = admin.get(f"/api/v1/devices/{device['id']}/events").json()
    assert (events[0]["kind"], events[0]["detail"]["error"]) == ("ble_ota.failed", "unknown")


def other_devices_assignment(admin: ApiClient, app: App, release: dict[str, Any]) -> str:
    """An assignment of another device of the same user: as unknown to this device's calls as a made-up id."""
    sibling = owned_device(admin, app)
    return str(admin.assign(sibling["id"], release["id"]).json()["id"])


def test_an_assignment_delivered_over_http_is_applied_by_a_relayed_version(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    assert heartbeat(admin.client, device["token"], firmware_version="v1.0.0").json()["ota"] is not None
    # The device installed it, then the phone connected before its next own heartbeat.
    app_user.post(f"/devices/{device['id']}/relay", json={"firmware_version": "v1.0.1"})
    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert (detail["status"], detail["channel"]) == ("applied", "http")  # the channel it was delivered on
    assert detail["events"][-1]["detail"] == {"reported_version": "v1.0.1", "channel": "ble"}  # how it was told


def test_relay_records_recording_and_omitted_counts_as_false(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    relay = f"/devices/{device['id']}/relay"
    app_user.post(relay, json={"firmware_version": "v1.0.0", "recording": True, "battery": 40})
    assert app_user.get(f"/devices/{device['id']}").json()["recording"] is True
    app_user.post(relay, json={"firmware_version": "v1.0.0"})  # as in the device protocol
    dev = app_user.get(f"/devices/{device['id']}").json()
    assert (dev["recording"], dev["battery"], dev["ble_connected"]) == (False, 40, True)


def test_an_operators_assignment_of_a_draft_is_offered_drafts_alone_are_not(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user)
    draft = admin.upload("v1.1.0-rc.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000), extra={"draft": "true"})
    draft_id = draft.json()["id"]
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json()["update_available"] is False
    assignment = admin.assign(device["id"], draft_id).json()
    offer = app_user.get(f"/devices/{device['id']}/firmware-update").json()
    assert (offer["reason"], offer["assignment_id"], offer["release"]["id"]) == (
        "assignment",
        assignment["id"],
        draft_id,
    )


def test_a_bluetooth_update_cannot_start_while_the_device_records(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    relay = f"/devices/{device['id']}/relay"
    app_user.post(relay, json={"firmware_version": "v1.0.0", "recording": True})
    started = {"release_id": release["id"], "state": "started"}
    offer = app_user.get(f"/devices/{device['id']}/firmware-update").json()
    assert (offer["update_available"], offer["blocked"]) == (True, "recording")
    assert "recording" in offer["message"]
    refused = app_user.post(f"/devices/{device['id']}/ble-ota", json=started)
    assert_problem(refused, 409, field="state")
    assert refused.json()["reason"] == "recording"
    app_user.post(relay, json={"firmware_version": "v1.0.0", "recording": False})
    assert app_user.get(f"/devices/{device['id']}/firmware-update").json()["blocked"] is None
    assert app_user.post(f"/devices/{device['id']}/ble-ota", json=started).status_code == 200
