"""The update lifecycle through the HTTP API: attempts and rollbacks, the delivery policy, abort after a
cancel, and retrying a failed assignment (docs/device-protocol.md, docs/architecture.md)."""

from __future__ import annotations

from typing import Any

import pytest

from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, assert_problem, heartbeat


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No wait between attempts: each attempt's next delivery comes on the next heartbeat.
    return settings.model_copy(update={"retry_backoff_s": 0, "max_attempts": 3})


@pytest.fixture
def setup(admin: ApiClient) -> dict[str, Any]:
    dev = admin.device()
    rel = admin.release("v1.0.1")
    assignment = admin.assign(dev["id"], rel["id"]).json()
    return {"token": dev["token"], "id": assignment["id"], "device": dev, "release": rel}


def _a(admin: ApiClient, aid: str) -> dict[str, Any]:
    return admin.get(f"/api/v1/assignments/{aid}").json()


def _boot_loop_once(admin: ApiClient, s: dict[str, Any]) -> dict[str, Any]:
    """Delivered, written, rebooted, and back on v1.0.0 with no word about it: one rolled-back attempt."""
    manifest = heartbeat(admin.client, s["token"]).json()["ota"]
    assert manifest is not None and manifest["assignment_id"] == s["id"]
    heartbeat(admin.client, s["token"], ota={"assignment_id": s["id"], "state": "writing", "progress": 50})
    heartbeat(admin.client, s["token"], ota={"assignment_id": s["id"], "state": "rebooting"})
    return heartbeat(admin.client, s["token"], firmware_version="v1.0.0").json()


def test_a_boot_loop_is_retried_max_attempts_times_then_fails_rolled_back(
    admin: ApiClient, setup: dict[str, Any]
) -> None:
    for attempt in (1, 2):
        _boot_loop_once(admin, setup)
        a = _a(admin, setup["id"])
        assert (a["status"], a["attempts"], a["error"]) == ("pending", attempt, "rolled_back")
    _boot_loop_once(admin, setup)
    a = _a(admin, setup["id"])
    assert (a["status"], a["attempts"], a["error"]) == ("failed", 3, "rolled_back")
    kinds = [e["kind"] for e in a["events"]]
    assert kinds.count("rolled_back") == 3  # one event per attempt
    assert kinds.count("delivered") == 3  # the image was sent three times, never a fourth
    assert heartbeat(admin.client, setup["token"]).json()["ota"] is None


def test_the_backoff_keeps_the_next_attempt_waiting(admin: ApiClient, app: Any, setup: dict[str, Any]) -> None:
    app.state.heartbeat.attempts = type(app.state.heartbeat.attempts)(max_attempts=3, backoff_s=3600)
    _boot_loop_once(admin, setup)
    reply = heartbeat(admin.client, setup["token"]).json()
    assert (reply["ota"], reply["ota_deferred"]) == (None, "retry_wait")
    a = _a(admin, setup["id"])
    assert a["status"] == "pending" and a["retry_at"] is not None and a["deferred"] == "retry_wait"


def test_a_final_error_is_not_retried(admin: ApiClient, setup: dict[str, Any]) -> None:
    heartbeat(admin.client, setup["token"])
    bad = {"assignment_id": setup["id"], "state": "failed", "error": "signature_invalid"}
    heartbeat(admin.client, setup["token"], ota=bad)
    assert _a(admin, setup["id"])["status"] == "failed"
    assert heartbeat(admin.client, setup["token"]).json()["ota"] is None


@pytest.mark.parametrize(
    ("condition", "reason", "cleared"),
    [
        ({"battery": 12, "charging": False}, "battery_low", {"battery": 12, "charging": True}),
        ({"storage_free_kb": 1}, "storage", {"storage_free_kb": 1_000_000}),
        ({"battery": 90, "recording": True}, "recording", {"battery": 90, "recording": False}),
    ],
)
def test_a_deferred_update_waits_and_is_delivered_once_the_condition_clears(
    admin: ApiClient, setup: dict[str, Any], condition: dict[str, Any], reason: str, cleared: dict[str, Any]
) -> None:
    for _ in range(2):
        reply = heartbeat(admin.client, setup["token"], **condition).json()
        assert (reply["ota"], reply["ota_deferred"]) == (None, reason)
    a = _a(admin, setup["id"])
    assert (a["status"], a["deferred"]) == ("pending", reason)
    assert [e["kind"] for e in a["events"]].count("deferred") == 1
    reply = heartbeat(admin.client, setup["token"], **cleared).json()
    assert reply["ota"]["assignment_id"] == setup["id"] and reply["ota_deferred"] is None
    assert (_a(admin, setup["id"])["status"], _a(admin, setup["id"])["deferred"]) == ("delivered", None)


def test_a_cancelled_download_is_told_to_abort(admin: ApiClient, setup: dict[str, Any]) -> None:
    heartbeat(admin.client, setup["token"])
    assert admin.post(f"/api/v1/assignments/{setup['id']}/cancel").status_code == 200
    downloading = {"assignment_id": setup["id"], "state": "downloading", "progress": 40}
    reply = heartbeat(admin.client, setup["token"], ota=downloading).json()
    assert (reply["ota"], reply["ota_abort"]) == (None, setup["id"])
    writing = {"assignment_id": setup["id"], "state": "writing", "progress": 10}
    assert heartbeat(admin.client, setup["token"], ota=writing).json()["ota_abort"] is None  # too late: it finishes
    assert _a(admin, setup["id"])["status"] == "cancelled"


def test_retry_makes_a_linked_assignment(admin: ApiClient, setup: dict[str, Any]) -> None:
    heartbeat(admin.client, setup["token"])
    heartbeat(
        admin.client, setup["token"], ota={"assignment_id": setup["id"], "state": "failed", "error": "crc_mismatch"}
    )
    r = admin.post(f"/api/v1/assignments/{setup['id']}/retry")
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["status"], new["retry_of"], new["release_id"]) == ("pending", setup["id"], setup["release"]["id"])
    assert heartbeat(admin.client, setup["token"]).json()["ota"]["assignment_id"] == new["id"]
    audit = admin.get("/api/v1/audit", params={"action": "assignment.create"}).json()
    assert any(row["target_id"] == new["id"] and row["detail"].get("retry_of") == setup["id"] for row in audit)


def test_retry_of_an_active_assignment_is_409(admin: ApiClient, setup: dict[str, Any]) -> None:
    assert_problem(admin.post(f"/api/v1/assignments/{setup['id']}/retry"), 409)


def test_retry_needs_an_operator(viewer: ApiClient, admin: ApiClient, setup: dict[str, Any]) -> None:
    assert viewer.post(f"/api/v1/assignments/{setup['id']}/retry").status_code == 403


def test_a_release_policy_keeps_its_new_assignments_off_cellular(admin: ApiClient) -> None:
    rel = admin.release("v1.0.1")
    r = admin.patch(f"/api/v1/firmware/{rel['id']}", json={"delivery_policy": {"networks": ["wifi"]}})
    assert r.status_code == 200 and r.json()["delivery_policy"] == {"networks": ["wifi"]}
    dev = admin.device()
    aid = admin.assign(dev["id"], rel["id"]).json()["id"]
    assert _a(admin, aid)["policy"] == {"networks": ["wifi"]}
    assert heartbeat(admin.client, dev["token"], network="cellular").json()["ota_deferred"] == "network"
    assert heartbeat(admin.client, dev["token"], network="wifi").json()["ota"]["assignment_id"] == aid


def test_a_bad_policy_is_422_naming_the_field(admin: ApiClient) -> None:
    rel = admin.release("v1.0.1")
    r = admin.patch(f"/api/v1/firmware/{rel['id']}", json={"delivery_policy": {"networks": ["5g"]}})
    assert_problem(r, 422)
    assert "networks" in r.text
