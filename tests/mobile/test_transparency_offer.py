"""The firmware offer's security fields: the .ufw's signature and key id, the security version, the
release's place in the transparency log (a proof the app verifies on its own), and releases that are never
offered (below the model's security floor, or signed by a revoked key)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import session_scope, utcnow
from bota_ota.firmware.models import Release, SigningKey
from tests.support.app_api import App, make_app_user, owned_device
from tests.support.factories import ApiClient, assert_problem, firmware_bytes, heartbeat
from tests.transparency.support import leaf_json, log_release, proof_verifies, public_key_of


@pytest.fixture
def app_user(admin: ApiClient) -> App:
    return make_app_user(admin)


def _offer(app_user: App, device: dict[str, Any]) -> dict[str, Any]:
    r = app_user.get(f"/devices/{device['id']}/firmware-update")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _edit_release(sessions: sessionmaker[Session], release_id: str, **changes: Any) -> None:
    with session_scope(sessions) as session:
        release = session.get(Release, release_id)
        assert release is not None
        for name, value in changes.items():
            if name in ("signature", "key_id"):
                ufw = release.artifact("ufw")
                assert ufw is not None
                setattr(ufw, name, value)
            else:
                setattr(release, name, value)


def _revoked_key(sessions: sessionmaker[Session], key_id: str) -> None:
    with session_scope(sessions) as session:
        session.add(
            SigningKey(
                key_id=key_id,
                name="leaked",
                public_key="-",
                models=["bota-pin"],
                revoked_at=utcnow(),
                revoked_by="admin@example.com",
            )
        )


def test_the_offer_carries_a_log_proof_the_app_can_verify(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session]
) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    ufw = firmware_bytes(3000, seed=7)
    release = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=ufw)
    _edit_release(sessions, release["id"], security_version=3, signature="c2ln" * 22, key_id="00112233aabbccdd")
    admin.release("v0.9.0", bin=firmware_bytes(1000))
    for other in admin.get("/api/v1/firmware").json():
        log_release(sessions, other["id"])  # as publishing does
    index = log_release(sessions, release["id"])

    offer = _offer(app_user, device)
    offered = offer["release"]
    assert (offered["id"], offered["security_version"]) == (release["id"], 3)
    assert (offered["signature"], offered["key_id"]) == ("c2ln" * 22, "00112233aabbccdd")
    proof = offered["transparency"]
    assert proof["leaf_index"] == index
    # What the app checks, with the log key it pinned (here: fetched from the well-known URL).
    key = public_key_of(admin.client)
    assert proof_verifies(proof["leaf"], proof["leaf_index"], proof["inclusion_proof"], proof["tree_head"], key)
    entry = leaf_json(proof["leaf"])
    assert (entry["kind"], entry["release_id"], entry["version"]) == ("release", release["id"], "v1.1.0")
    assert entry["ufw"] == {
        "size": 3000,
        "sha256": hashlib.sha256(ufw).hexdigest(),
        "signature": offered["signature"],
        "key_id": offered["key_id"],
    }
    assert entry["ufw"]["sha256"] == offered["sha256"] and entry["security_version"] == 3
    # The log tells the same story to anyone who asks.
    head = admin.client.get("/api/transparency/v1/tree-head").json()
    assert (head["tree_size"], head["root_hash"]) == (proof["tree_head"]["tree_size"], proof["tree_head"]["root_hash"])


def test_a_release_that_is_not_in_the_log_has_no_proof(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    draft = admin.upload("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000), extra={"draft": "true"})
    admin.assign(device["id"], draft.json()["id"])  # an operator's assignment of a draft: never published
    offer = _offer(app_user, device)
    assert offer["release"]["id"] == draft.json()["id"]
    assert offer["release"]["transparency"] is None
    assert (offer["release"]["signature"], offer["release"]["key_id"], offer["release"]["security_version"]) == (
        None,
        None,
        0,
    )


def test_releases_below_the_security_floor_or_signed_by_a_revoked_key_are_never_offered(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session]
) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    fit = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    old_security = admin.release("v1.2.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    revoked = admin.release("v1.3.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assert _offer(app_user, device)["release"]["id"] == revoked["id"]  # the newest, while all are fit

    _revoked_key(sessions, "deadbeefdeadbeef")
    _edit_release(sessions, revoked["id"], key_id="deadbeefdeadbeef", signature="c2ln" * 22)
    assert _offer(app_user, device)["release"]["id"] == old_security["id"]

    # v1.1.0 carries security version 2 and is marked as the floor: v1.2.0 (security version 1) falls below.
    _edit_release(sessions, old_security["id"], security_version=1)
    _edit_release(sessions, fit["id"], security_version=2, security_floor=True)
    offer = _offer(app_user, device)
    assert (offer["reason"], offer["release"]["id"], offer["blocked"]) == ("newer_release", fit["id"], None)

    heartbeat(admin.client, device["token"], firmware_version="v1.1.0")  # nothing fit is newer now
    assert _offer(app_user, device)["update_available"] is False


@pytest.mark.parametrize("why", ["floor", "revoked"])
def test_an_assignment_of_an_unfit_release_is_blocked_and_nothing_else_is_offered(
    why: str, admin: ApiClient, app_user: App, sessions: sessionmaker[Session]
) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    assigned = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    admin.release("v1.2.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))  # fit, newer: still not offered
    assignment = admin.assign(device["id"], assigned["id"])
    assert assignment.status_code == 201, assignment.text
    assert _offer(app_user, device)["release"]["id"] == assigned["id"]
    # After the assignment was made, its release became unfit.
    if why == "floor":
        floor = admin.release("v0.5.0", bin=firmware_bytes(1000))
        _edit_release(sessions, floor["id"], security_version=5, security_floor=True)
        expected = "below the bota-pin security floor 5"
    else:
        _revoked_key(sessions, "0badc0de0badc0de")
        _edit_release(sessions, assigned["id"], key_id="0badc0de0badc0de", signature="c2ln" * 22)
        expected = "signed by a revoked key (0badc0de0badc0de)"
    for _ in ("pending", "delivered"):
        offer = _offer(app_user, device)
        assert offer["update_available"] is False and offer["release"] is None
        assert (offer["reason"], offer["assignment_id"], offer["blocked"]) == (
            "assignment",
            assignment.json()["id"],
            "security",
        )
        assert offer["assignment"]["version"] == "v1.1.0"
        assert expected in offer["message"] and "cannot be installed" in offer["message"]
        heartbeat(admin.client, device["token"], firmware_version="v1.0.0")  # the device takes delivery


def test_a_bluetooth_update_of_an_unfit_release_cannot_start(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session]
) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    _revoked_key(sessions, "0badc0de0badc0df")
    _edit_release(sessions, release["id"], key_id="0badc0de0badc0df", signature="c2ln" * 22)
    body = {"release_id": release["id"], "assignment_id": assignment["id"], "state": "started"}
    problem = assert_problem(app_user.post(f"/devices/{device['id']}/ble-ota", json=body), 422, field="release_id")
    assert "revoked key" in problem["detail"]
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "pending"  # not delivered


@pytest.mark.parametrize("result", ["SIGNATURE_INVALID", "ROLLBACK_REFUSED"])
def test_an_image_the_device_refuses_over_bluetooth_ends_the_assignment(
    result: str, admin: ApiClient, app_user: App
) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    base = f"/devices/{device['id']}/ble-ota"
    body = {"release_id": release["id"], "assignment_id": assignment["id"]}
    assert app_user.post(base, json={**body, "state": "started"}).status_code == 200
    r = app_user.post(base, json={**body, "state": "failed", "error": result})
    assert r.json()["assignment_status"] == "failed", r.text
    a = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert (a["status"], a["error"]) == ("failed", result.lower())


def test_a_transfer_failure_over_bluetooth_leaves_the_assignment_to_retry(admin: ApiClient, app_user: App) -> None:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    body = {"release_id": release["id"], "assignment_id": assignment["id"]}
    app_user.post(f"/devices/{device['id']}/ble-ota", json={**body, "state": "started"})
    r = app_user.post(f"/devices/{device['id']}/ble-ota", json={**body, "state": "failed", "error": "CRC_MISMATCH"})
    assert r.json()["assignment_status"] == "delivered", r.text
