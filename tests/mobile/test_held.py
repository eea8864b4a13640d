"""A held assignment (its rollout is paused) in the app API: update discovery does not offer it (nor its
release, nor another one, in its place), and a BLE transfer of it cannot be started. A delivered assignment
that is held is still offered and may be retried: a transfer under way finishes.

``held`` has no API of its own yet (rollouts set it): these tests set it through the app's sessions.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.ota.models import Assignment
from tests.support.app_api import App, make_app_user, owned_device
from tests.support.factories import ApiClient, assert_problem, firmware_bytes

NOTHING = {
    "update_available": False,
    "reason": None,
    "assignment_id": None,
    "release": None,
    "assignment": None,
    "message": None,
    "blocked": None,
}


def _set_held(sessions: sessionmaker[Session], assignment_id: str, held: bool) -> None:
    with sessions() as session:
        row = session.get(Assignment, assignment_id)
        assert row is not None
        row.held = held
        session.commit()


@pytest.fixture
def app_user(admin: ApiClient) -> App:
    return make_app_user(admin)


@pytest.fixture
def setup(admin: ApiClient, app_user: App) -> dict[str, Any]:
    device = owned_device(admin, app_user, version="v1.0.0")
    release = admin.release("v1.0.1", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    assignment = admin.assign(device["id"], release["id"]).json()
    return {"device": device, "release": release, "assignment": assignment}


def _assignment(admin: ApiClient, assignment_id: str) -> tuple[str, list[str]]:
    body = admin.get(f"/api/v1/assignments/{assignment_id}").json()
    return body["status"], [e["kind"] for e in body["events"]]


def test_a_held_assignment_is_not_offered_and_nothing_else_is_instead(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    url = f"/devices/{setup['device']['id']}/firmware-update"
    assert app_user.get(url).json()["assignment_id"] == setup["assignment"]["id"]
    admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(3000))  # a newer released .ufw
    _set_held(sessions, setup["assignment"]["id"], True)
    # Neither the held assignment, nor its release (released, newer) without it, nor a newer one in its place.
    assert app_user.get(url).json() == NOTHING
    _set_held(sessions, setup["assignment"]["id"], False)
    offer = app_user.get(url).json()
    assert (offer["reason"], offer["assignment_id"], offer["release"]["id"]) == (
        "assignment",
        setup["assignment"]["id"],
        setup["release"]["id"],
    )


def test_a_ble_transfer_of_a_held_assignment_cannot_be_started(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    device_id, assignment_id = setup["device"]["id"], setup["assignment"]["id"]
    base = f"/devices/{device_id}/ble-ota"
    body = {"release_id": setup["release"]["id"], "assignment_id": assignment_id, "state": "started"}
    events_before = admin.get(f"/api/v1/devices/{device_id}/events").json()
    _set_held(sessions, assignment_id, True)

    problem = assert_problem(app_user.post(base, json=body), 409, field="assignment_id")
    assert "paused" in problem["detail"]
    # Nothing recorded: the assignment stays pending with its "created" event, no attempt in the history.
    assert _assignment(admin, assignment_id) == ("pending", ["created"])
    assert admin.get(f"/api/v1/devices/{device_id}/events").json() == events_before

    _set_held(sessions, assignment_id, False)
    r = app_user.post(base, json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"recorded": True, "assignment_id": assignment_id, "assignment_status": "delivered"}
    assert _assignment(admin, assignment_id) == ("delivered", ["created", "delivered"])


def test_a_delivered_assignment_that_is_held_is_still_offered_and_may_be_retried(
    admin: ApiClient, app_user: App, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    """Only pending assignments are held; should a delivered one be, it is treated as delivered."""
    device_id, assignment_id = setup["device"]["id"], setup["assignment"]["id"]
    base = f"/devices/{device_id}/ble-ota"
    body = {"release_id": setup["release"]["id"], "assignment_id": assignment_id}
    assert app_user.post(base, json={**body, "state": "started"}).json()["assignment_status"] == "delivered"
    _set_held(sessions, assignment_id, True)
    offer = app_user.get(f"/devices/{device_id}/firmware-update").json()
    assert (offer["reason"], offer["assignment_id"]) == ("assignment", assignment_id)
    assert app_user.post(base, json={**body, "state": "failed", "error": "link_lost"}).status_code == 200
    r = app_user.post(base, json={**body, "state": "started"})  # the retry
    assert r.status_code == 200, r.text
    assert r.json()["assignment_status"] == "delivered"
    assert _assignment(admin, assignment_id) == ("delivered", ["created", "delivered", "ble_failed", "ble_started"])
