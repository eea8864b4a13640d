"""Unfit releases: a revoked signing key or a security version below the floor. They cannot be assigned,
retried or deployed (not even as an admin's downgrade), and what is under way is withdrawn: active
assignments cancelled with the reason, rollouts paused. The manifest carries the signature."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bota_ota.firmware import signing
from tests.firmware.signing_support import key_id, new_key, register, signed_release
from tests.support.factories import ApiClient, assert_problem, heartbeat
from tests.support.rollouts import create, create_all

KEY = new_key(40)


def _assign(api: ApiClient, device_id: str, release_id: str, **body: Any) -> Any:
    return api.post(f"/api/v1/devices/{device_id}/assignments", json={"release_id": release_id, **body})


def _events(api: ApiClient, assignment_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v1/assignments/{assignment_id}").json()["events"])


@pytest.fixture
def kid(admin: ApiClient) -> str:
    return register(admin, KEY, ("bota-pin",))


# ---- revoked keys ------------------------------------------------------------------------------------------


def test_a_release_signed_by_a_revoked_key_cannot_be_assigned_or_deployed(admin: ApiClient, kid: str) -> None:
    release = signed_release(admin, KEY, "v1.0.1")
    device = admin.device()
    admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    shown = admin.get(f"/api/v1/firmware/{release['id']}").json()
    assert shown["installable"] is False
    assert shown["unfit_reason"] == f"release v1.0.1 is signed by a revoked key ({kid})"
    assert admin.get("/api/v1/firmware").json()[0]["installable"] is False
    for body in ({}, {"allow_downgrade": True}):
        problem = assert_problem(_assign(admin, device["id"], release["id"], **body), 422, "release_id")
        assert "signed by a revoked key" in problem["detail"] and "cannot be assigned" in problem["detail"]
    rollout = admin.post(
        "/api/v1/rollouts", json={"name": "r", "release_id": release["id"], "target": {"filter": {"model": "bota-pin"}}}
    )
    assert_problem(rollout, 422, "release_id")
    assert admin.get("/api/v1/assignments").json() == []
    assert admin.get("/api/v1/rollouts").json() == []


def test_revoking_cancels_active_assignments_and_pauses_rollouts(admin: ApiClient, kid: str) -> None:
    release = signed_release(admin, KEY, "v1.0.1", security_version=1)
    other = signed_release(admin, KEY, "v1.0.2", security_version=1)
    unsigned = admin.release("v1.0.3")
    pending, delivered, on_other, on_unsigned = (admin.device() for _ in range(4))
    a_pending = _assign(admin, pending["id"], release["id"]).json()
    a_delivered = _assign(admin, delivered["id"], release["id"]).json()
    a_other = _assign(admin, on_other["id"], other["id"]).json()
    a_unsigned = _assign(admin, on_unsigned["id"], unsigned["id"]).json()
    manifest = heartbeat(admin.client, delivered["token"]).json()["ota"]
    assert manifest["assignment_id"] == a_delivered["id"]
    # Rollouts of the release: one running (its assignments held by the pause, then cancelled), one scheduled.
    for n in range(2):
        admin.device(device_id=f"BP-ROLL-{n}")
    running = create_all(admin, release["id"], target={"filter": {"ids": ["BP-ROLL-0", "BP-ROLL-1"]}})
    scheduled = create(admin, release["id"], start_at="2099-01-01T00:00:00Z")
    assert (running["status"], scheduled["status"]) == ("running", "scheduled")
    assert running["totals"]["assigned"] == 2

    r = admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    assert r.status_code == 200, r.text
    assert (r.json()["assignments_cancelled"], r.json()["rollouts_paused"]) == (5, 2)

    for a in (a_pending, a_delivered, a_other):
        a_now = admin.get(f"/api/v1/assignments/{a['id']}").json()
        assert a_now["status"] == "cancelled" and a_now["held"] is False
        last = a_now["events"][-1]
        assert last["kind"] == "cancelled"
        assert last["detail"]["reason"] == "signing key revoked"
        assert last["detail"]["key_id"] == kid
        assert last["actor"] == "token:test-admin"
    assert _events(admin, a_delivered["id"])[-1]["detail"]["previous"] == "delivered"
    assert _events(admin, a_pending["id"])[-1]["detail"]["previous"] == "pending"
    assert admin.get(f"/api/v1/assignments/{a_unsigned['id']}").json()["status"] == "pending"
    # The device downloading it is told to stop.
    reply = heartbeat(
        admin.client,
        delivered["token"],
        ota={"assignment_id": a_delivered["id"], "state": "downloading", "progress": 10},
    ).json()
    assert (reply["ota"], reply["ota_abort"]) == (None, a_delivered["id"])
    for rollout in (running, scheduled):
        now = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
        assert now["status"] == "paused"
        assert now["paused_reason"] == f"signing key revoked (key_id {kid})"
        assert_problem(admin.post(f"/api/v1/rollouts/{rollout['id']}/resume"), 422, "release_id")
        assert admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["status"] == "paused"
    assert (
        admin.get("/api/v1/assignments", params={"rollout_id": running["id"], "status": "cancelled"}).headers[
            "X-Total-Count"
        ]
        == "2"
    )
    assert_problem(admin.post(f"/api/v1/rollouts/{running['id']}/retry-failed"), 422, "release_id")
    # Cancelling a paused rollout still works.
    assert admin.post(f"/api/v1/rollouts/{running['id']}/cancel").json()["status"] == "cancelled"
    [entry] = admin.get("/api/v1/audit", params={"action": "signing_key.revoke"}).json()
    assert entry["detail"] == {
        "name": "release-key",
        "releases": 2,
        "assignments_cancelled": 5,
        "rollouts_paused": 2,
    }


def test_a_failed_assignment_of_a_revoked_release_cannot_be_retried(admin: ApiClient, kid: str) -> None:
    release = signed_release(admin, KEY, "v1.0.1")
    device = admin.device()
    assignment = _assign(admin, device["id"], release["id"]).json()
    heartbeat(admin.client, device["token"])
    heartbeat(
        admin.client,
        device["token"],
        ota={"assignment_id": assignment["id"], "state": "failed", "error": "crc_mismatch"},
    )
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "failed"
    admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    assert_problem(admin.post(f"/api/v1/assignments/{assignment['id']}/retry"), 422, "release_id")


def test_a_release_signed_by_another_trusted_key_is_unaffected(admin: ApiClient, kid: str) -> None:
    second = new_key(41)
    register(admin, second, ("bota-pin",), name="second")
    release = signed_release(admin, second, "v1.0.1")
    device = admin.device()
    admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    assert admin.get(f"/api/v1/firmware/{release['id']}").json()["installable"] is True
    assert _assign(admin, device["id"], release["id"]).status_code == 201


# ---- the security floor ----------------------------------------------------------------------------------


@pytest.fixture
def releases(admin: ApiClient, kid: str) -> dict[str, dict[str, Any]]:
    return {
        "v1.0.1": signed_release(admin, KEY, "v1.0.1", security_version=1),
        "v1.0.2": signed_release(admin, KEY, "v1.0.2", security_version=2),
        "v1.0.3": admin.release("v1.0.3"),  # unsigned, security version 0
    }


def test_the_floor_refuses_older_security_versions_even_as_a_downgrade(
    admin: ApiClient, releases: dict[str, dict[str, Any]]
) -> None:
    device = admin.device()
    heartbeat(admin.client, device["token"], firmware_version="v1.0.4")
    r = admin.patch(f"/api/v1/firmware/{releases['v1.0.2']['id']}", json={"security_floor": True})
    assert r.status_code == 200, r.text
    assert (r.json()["security_floor"], r.json()["installable"]) == (True, True)
    assert {m["model"]: m["security_floor"] for m in admin.get("/api/v1/models").json()}["bota-pin"] == 2
    problem = assert_problem(
        _assign(admin, device["id"], releases["v1.0.1"]["id"], allow_downgrade=True), 422, "release_id"
    )
    assert problem["detail"] == (
        "release v1.0.1 has security version 1, below the bota-pin security floor 2; it cannot be assigned or deployed"
    )
    assert_problem(_assign(admin, device["id"], releases["v1.0.3"]["id"], allow_downgrade=True), 422, "release_id")
    listed = {r["version"]: r for r in admin.get("/api/v1/firmware").json()}
    assert [listed[v]["installable"] for v in ("v1.0.1", "v1.0.2", "v1.0.3")] == [False, True, False]
    assert "below the bota-pin security floor 2" in listed["v1.0.1"]["unfit_reason"]
    # The floor release itself, and newer ones, may be assigned (here as an admin's downgrade).
    assert _assign(admin, device["id"], releases["v1.0.2"]["id"], allow_downgrade=True).status_code == 201
    # Another model has its own floor.
    pro = admin.release("v1.0.1", "bota-pin-pro")
    assert admin.get(f"/api/v1/firmware/{pro['id']}").json()["installable"] is True


def test_raising_the_floor_cancels_assignments_below_it_and_is_audited(
    admin: ApiClient, releases: dict[str, dict[str, Any]]
) -> None:
    below, at_floor = admin.device(), admin.device()
    a_below = _assign(admin, below["id"], releases["v1.0.1"]["id"]).json()
    a_floor = _assign(admin, at_floor["id"], releases["v1.0.2"]["id"]).json()
    r = admin.patch(f"/api/v1/firmware/{releases['v1.0.2']['id']}", json={"security_floor": True})
    assert r.status_code == 200, r.text
    cancelled = admin.get(f"/api/v1/assignments/{a_below['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["events"][-1]["detail"] == {
        "previous": "pending",
        "reason": "below the security floor",
        "model": "bota-pin",
        "security_floor": 2,
    }
    assert admin.get(f"/api/v1/assignments/{a_floor['id']}").json()["status"] == "pending"
    [entry] = admin.get("/api/v1/audit", params={"action": "firmware.update"}).json()
    assert entry["detail"] == {
        "security_floor": True,
        "floor": {"from": 0, "to": 2},
        "assignments_cancelled": 1,
        "rollouts_paused": 0,
    }
    # Marking a lower release as floor as well changes nothing; unmarking the top one lowers the floor.
    admin.patch(f"/api/v1/firmware/{releases['v1.0.1']['id']}", json={"security_floor": True})
    assert admin.get("/api/v1/models").json()[0]["security_floor"] == 2
    admin.patch(f"/api/v1/firmware/{releases['v1.0.2']['id']}", json={"security_floor": False})
    assert admin.get("/api/v1/models").json()[0]["security_floor"] == 1
    assert admin.get(f"/api/v1/assignments/{a_below['id']}").json()["status"] == "cancelled"  # nothing comes back
    assert _assign(admin, below["id"], releases["v1.0.1"]["id"]).status_code == 201


def test_only_an_admin_marks_the_floor(
    admin: ApiClient, operator: ApiClient, releases: dict[str, dict[str, Any]]
) -> None:
    url = f"/api/v1/firmware/{releases['v1.0.2']['id']}"
    for flag in (True, False):
        assert_problem(operator.patch(url, json={"security_floor": flag}), 403, "security_floor")
    assert operator.patch(url, json={"notes": "fixed"}).status_code == 200  # the rest stays an operator's
    assert admin.get(url).json()["security_floor"] is False
    assert_problem(admin.patch(url, json={"security_floor": "yes please"}), 422, "security_floor")


def test_a_running_rollout_below_the_floor_is_paused(admin: ApiClient, releases: dict[str, dict[str, Any]]) -> None:
    for n in range(2):
        admin.device(device_id=f"BP-FLOOR-{n}")
    rollout = create_all(admin, releases["v1.0.1"]["id"], target={"filter": {"ids": ["BP-FLOOR-0", "BP-FLOOR-1"]}})
    admin.patch(f"/api/v1/firmware/{releases['v1.0.2']['id']}", json={"security_floor": True})
    now = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
    assert now["status"] == "paused"
    assert now["paused_reason"] == "below the security floor (model bota-pin, security_floor 2)"
    assert now["totals"]["assigned"] == 2
    statuses = {a["status"] for a in admin.get("/api/v1/assignments", params={"rollout_id": rollout["id"]}).json()}
    assert statuses == {"cancelled"}


# ---- the manifest ---------------------------------------------------------------------------------------


def test_the_manifest_carries_signature_key_id_and_security_version(admin: ApiClient, kid: str) -> None:
    release = signed_release(admin, KEY, "v1.0.1", security_version=7)
    device = admin.device()
    assignment = _assign(admin, device["id"], release["id"]).json()
    first = heartbeat(admin.client, device["token"]).json()["ota"]  # delivered: the write step
    again = heartbeat(admin.client, device["token"]).json()["ota"]  # delivered: a routine reply from the cache
    for manifest in (first, again):
        assert manifest["assignment_id"] == assignment["id"]
        assert manifest["signature"] == release["bin"]["signature"]
        assert manifest["key_id"] == kid == key_id(KEY)
        assert manifest["security_version"] == 7
    # What a device does with it: verify the downloaded image under its built-in key.
    image = admin.client.get(first["url"]).content
    fields = signing.fields_of_file(image, model="bota-pin", version=first["version"], security_version=7)
    assert signing.verify(KEY.public_key(), base64.b64decode(first["signature"]), fields)


def test_an_unsigned_release_has_a_null_signature_in_the_manifest(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    device = admin.device()
    _assign(admin, device["id"], release["id"])
    manifest = heartbeat(admin.client, device["token"]).json()["ota"]
    assert (manifest["signature"], manifest["key_id"], manifest["security_version"]) == (None, None, 0)
