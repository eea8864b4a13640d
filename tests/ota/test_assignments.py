"""Assignments through the management API: create rules, one active per device, cancel, lists and history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support.factories import ApiClient, assert_problem, firmware_bytes, heartbeat, post_firmware

ASSIGNMENT_KEYS = {
    "id",
    "device_id",
    "release_id",
    "version",
    "status",
    "created_at",
    "delivered_at",
    "finished_at",
    "error",
}


def _ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def _detail(api: ApiClient, assignment_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/assignments/{assignment_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _cancel(api: ApiClient, assignment_id: str) -> Any:
    return api.post(f"/api/v1/assignments/{assignment_id}/cancel")


@pytest.fixture
def rel(admin: ApiClient) -> dict[str, Any]:
    return admin.release("v1.0.1")


@pytest.fixture
def dev(admin: ApiClient) -> dict[str, Any]:
    return admin.device()


# ---- create ------------------------------------------------------------------------------------


def test_create_reply_shape(operator: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    r = operator.assign(dev["id"], rel["id"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body.keys() >= ASSIGNMENT_KEYS
    assert body["device_id"] == dev["id"]
    assert body["release_id"] == rel["id"]
    assert body["version"] == "v1.0.1"
    assert body["status"] == "pending"
    _ts(body["created_at"])
    assert body["delivered_at"] is None
    assert body["finished_at"] is None
    assert body["error"] is None
    assert operator.get(f"/api/v1/assignments/{body['id']}").json().items() >= body.items()


def test_model_mismatch_is_422_naming_release_id(admin: ApiClient, dev: dict[str, Any]) -> None:
    pro = admin.release("v1.0.1", "bota-pin-pro")
    assert_problem(admin.assign(dev["id"], pro["id"]), 422, "release_id")
    assert admin.get(f"/api/v1/devices/{dev['id']}/assignments").json() == []


def test_release_without_bin_is_422(admin: ApiClient, dev: dict[str, Any]) -> None:
    r = post_firmware(admin, {"version": "v1.0.2", "model": "bota-pin"}, {"ufw": ("x.ufw", firmware_bytes(100), "a/b")})
    assert r.status_code == 201
    assert_problem(admin.assign(dev["id"], r.json()["id"]), 422, "release_id")
    assert admin.get(f"/api/v1/devices/{dev['id']}").json()["active_assignment"] is None


def test_unknown_release_is_404(admin: ApiClient, dev: dict[str, Any]) -> None:
    assert_problem(admin.assign(dev["id"], "0" * 32), 404)


def test_unknown_device_is_404(admin: ApiClient, rel: dict[str, Any]) -> None:
    assert_problem(admin.assign("BP-404", rel["id"]), 404)
    assert_problem(admin.get("/api/v1/devices/BP-404/assignments"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "release_id"),
        ({"release_id": ""}, "release_id"),
        ({"release_id": 5}, "release_id"),
        ({"release_id": "x", "force": True}, "force"),
    ],
)
def test_create_body_validation(admin: ApiClient, dev: dict[str, Any], body: dict[str, Any], field: str) -> None:
    assert_problem(admin.post(f"/api/v1/devices/{dev['id']}/assignments", json=body), 422, field)


def test_second_active_assignment_is_409(admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    first = admin.assign(dev["id"], rel["id"]).json()
    other = admin.release("v1.0.2")
    problem = assert_problem(admin.assign(dev["id"], other["id"]), 409, "release_id")
    assert problem["active_assignment_id"] == first["id"]
    # Also while the first is delivered.
    heartbeat(admin.client, dev["token"])
    assert _detail(admin, first["id"])["status"] == "delivered"
    assert_problem(admin.assign(dev["id"], other["id"]), 409, "release_id")
    assert [a["id"] for a in admin.get(f"/api/v1/devices/{dev['id']}/assignments").json()] == [first["id"]]


def test_active_assignments_on_different_devices_are_independent(admin: ApiClient, rel: dict[str, Any]) -> None:
    a, b = admin.device(), admin.device()
    assert admin.assign(a["id"], rel["id"]).status_code == 201
    assert admin.assign(b["id"], rel["id"]).status_code == 201


@pytest.mark.parametrize("final", ["cancelled", "applied", "failed"])
def test_new_assignment_after_the_previous_is_final(
    admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any], final: str
) -> None:
    first = admin.assign(dev["id"], rel["id"]).json()
    if final == "cancelled":
        assert _cancel(admin, first["id"]).status_code == 200
    else:
        heartbeat(admin.client, dev["token"])
        if final == "applied":
            heartbeat(admin.client, dev["token"], firmware_version="v1.0.1")
        else:
            heartbeat(
                admin.client,
                dev["token"],
                ota={"assignment_id": first["id"], "state": "failed", "error": "crc_mismatch"},
            )
    assert _detail(admin, first["id"])["status"] == final
    second = admin.assign(dev["id"], rel["id"])
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first["id"]
    assert admin.get(f"/api/v1/devices/{dev['id']}").json()["active_assignment"]["id"] == second.json()["id"]


# ---- cancel ------------------------------------------------------------------------------------


def test_cancel_pending(admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    a = admin.assign(dev["id"], rel["id"]).json()
    r = _cancel(admin, a["id"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert _ts(r.json()["finished_at"]) >= _ts(a["created_at"])
    assert admin.get(f"/api/v1/devices/{dev['id']}").json()["active_assignment"] is None


def test_cancel_delivered(admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    a = admin.assign(dev["id"], rel["id"]).json()
    assert heartbeat(admin.client, dev["token"]).json()["ota"] is not None
    r = _cancel(admin, a["id"])
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    detail = _detail(admin, a["id"])
    assert detail["events"][-1]["kind"] == "cancelled"
    assert detail["events"][-1]["detail"].get("previous") == "delivered"


@pytest.mark.parametrize("final", ["applied", "failed", "cancelled"])
def test_cancel_final_is_409_and_changes_nothing(
    admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any], final: str
) -> None:
    a = admin.assign(dev["id"], rel["id"]).json()
    heartbeat(admin.client, dev["token"])
    if final == "applied":
        heartbeat(admin.client, dev["token"], firmware_version="1.0.1")
    elif final == "failed":
        heartbeat(
            admin.client, dev["token"], ota={"assignment_id": a["id"], "state": "failed", "error": "crc_mismatch"}
        )
    else:
        _cancel(admin, a["id"])
    before = _detail(admin, a["id"])
    assert before["status"] == final
    assert_problem(_cancel(admin, a["id"]), 409)
    assert _detail(admin, a["id"]) == before


def test_cancel_unknown_is_404(admin: ApiClient) -> None:
    assert_problem(_cancel(admin, "nope"), 404)
    assert_problem(admin.get("/api/v1/assignments/nope"), 404)


# ---- lists -------------------------------------------------------------------------------------


def test_device_assignments_newest_first(admin: ApiClient, dev: dict[str, Any]) -> None:
    ids = []
    for n in range(4):
        rel = admin.release(f"v1.0.{n}")
        a = admin.assign(dev["id"], rel["id"]).json()
        ids.append(a["id"])
        if n < 3:
            _cancel(admin, a["id"])
    other = admin.device()
    admin.assign(other["id"], admin.release("v2.0.0")["id"])
    r = admin.get(f"/api/v1/devices/{dev['id']}/assignments")
    assert r.status_code == 200
    assert [a["id"] for a in r.json()] == ids[::-1]
    assert [a["status"] for a in r.json()] == ["pending", "cancelled", "cancelled", "cancelled"]
    assert r.headers["X-Total-Count"] == "4"
    page = admin.get(f"/api/v1/devices/{dev['id']}/assignments", params={"limit": 2, "offset": 1}).json()
    assert [a["id"] for a in page] == ids[::-1][1:3]


def test_fleet_list_filters_by_status(admin: ApiClient) -> None:
    rel = admin.release("v1.0.1")
    devices = [admin.device() for _ in range(5)]
    made = [admin.assign(d["id"], rel["id"]).json() for d in devices]
    # pending, delivered, applied, failed, cancelled
    heartbeat(admin.client, devices[1]["token"])
    heartbeat(admin.client, devices[2]["token"])
    heartbeat(admin.client, devices[2]["token"], firmware_version="v1.0.1")
    heartbeat(admin.client, devices[3]["token"])
    heartbeat(
        admin.client,
        devices[3]["token"],
        ota={"assignment_id": made[3]["id"], "state": "failed", "error": "crc_mismatch"},
    )
    _cancel(admin, made[4]["id"])
    expected = dict(zip(["pending", "delivered", "applied", "failed", "cancelled"], made, strict=True))
    for status, assignment in expected.items():
        r = admin.get("/api/v1/assignments", params={"status": status})
        assert r.status_code == 200
        assert [a["id"] for a in r.json()] == [assignment["id"]], status
        assert r.json()[0]["status"] == status
        assert r.headers["X-Total-Count"] == "1"
    everything = admin.get("/api/v1/assignments")
    assert sorted(a["id"] for a in everything.json()) == sorted(a["id"] for a in made)
    assert everything.headers["X-Total-Count"] == "5"
    assert [a["id"] for a in everything.json()] == [a["id"] for a in made][::-1]


@pytest.mark.parametrize("status", ["done", "PENDING", "active", "pending'--"])
def test_fleet_list_bad_status_is_422(admin: ApiClient, status: str) -> None:
    body = assert_problem(admin.get("/api/v1/assignments", params={"status": status}), 422)
    assert body["errors"][0]["field"] in ("query.status", "status")


def test_fleet_list_filters_by_release_alone_and_with_status(admin: ApiClient) -> None:
    old, new = admin.release("v1.0.1"), admin.release("v1.0.2")
    devices = [admin.device() for _ in range(5)]
    made = [admin.assign(d["id"], old["id"]).json() for d in devices[:3]]
    made += [admin.assign(d["id"], new["id"]).json() for d in devices[3:]]
    heartbeat(admin.client, devices[0]["token"])  # old: delivered
    heartbeat(admin.client, devices[3]["token"])  # new: delivered
    heartbeat(admin.client, devices[3]["token"], firmware_version="v1.0.2")  # ... then applied
    # old: delivered, pending, pending; new: applied, pending
    expected = {
        (old["id"], None): [made[0], made[1], made[2]],
        (old["id"], "pending"): [made[1], made[2]],
        (old["id"], "delivered"): [made[0]],
        (old["id"], "applied"): [],
        (new["id"], None): [made[3], made[4]],
        (new["id"], "pending"): [made[4]],
        (new["id"], "applied"): [made[3]],
        (new["id"], "delivered"): [],
        ("0" * 32, None): [],
        ("0" * 32, "pending"): [],
    }
    for (release_id, status), assignments in expected.items():
        params = {"release_id": release_id} | ({"status": status} if status else {})
        r = admin.get("/api/v1/assignments", params=params)
        assert r.status_code == 200, r.text
        assert sorted(a["id"] for a in r.json()) == sorted(a["id"] for a in assignments), params
        assert r.headers["X-Total-Count"] == str(len(assignments)), params
        assert all(a["release_id"] == release_id for a in r.json())
    one_by_one = {"release_id": old["id"], "limit": 1}
    pages = [admin.get("/api/v1/assignments", params=one_by_one | {"offset": i}) for i in range(3)]
    assert sorted(a["id"] for p in pages for a in p.json()) == sorted(a["id"] for a in made[:3])
    assert {p.headers["X-Total-Count"] for p in pages} == {"3"}
    assert admin.get("/api/v1/assignments").headers["X-Total-Count"] == "5"


@pytest.mark.parametrize("release_id", ["", "x" * 65])
def test_fleet_list_bad_release_id_is_422(admin: ApiClient, release_id: str) -> None:
    assert_problem(admin.get("/api/v1/assignments", params={"release_id": release_id}), 422, "query.release_id")


# ---- event history -----------------------------------------------------------------------------


def test_history_of_an_applied_assignment(admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    a = admin.assign(dev["id"], rel["id"]).json()
    token = dev["token"]
    heartbeat(admin.client, token)
    heartbeat(admin.client, token, ota={"assignment_id": a["id"], "state": "downloading", "progress": 10})
    heartbeat(admin.client, token, ota={"assignment_id": a["id"], "state": "writing", "progress": 90})
    heartbeat(admin.client, token, firmware_version="v1.0.1")
    detail = _detail(admin, a["id"])
    assert detail["status"] == "applied"
    events = detail["events"]
    assert [e["kind"] for e in events] == ["created", "delivered", "progress", "progress", "applied"]
    assert [e["status"] for e in events] == ["pending", "delivered", "delivered", "delivered", "applied"]
    times = [_ts(e["at"]) for e in events]
    assert times == sorted(times)
    assert times[0] >= _ts(a["created_at"])
    assert events[0]["actor"] == "token:test-admin"
    assert events[0]["detail"]["release_id"] == rel["id"]
    assert events[1]["detail"]["channel"] == "http"
    assert events[2]["detail"] == {"state": "downloading", "progress": 10}
    assert events[3]["detail"] == {"state": "writing", "progress": 90}
    assert events[4]["detail"]["reported_version"] == "v1.0.1"
    assert times[0] <= _ts(detail["delivered_at"]) <= times[1]
    assert _ts(detail["finished_at"]) >= _ts(detail["delivered_at"])
    assert detail["error"] is None


def test_history_of_a_failed_assignment(admin: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    a = admin.assign(dev["id"], rel["id"]).json()
    heartbeat(admin.client, dev["token"])
    heartbeat(admin.client, dev["token"], ota={"assignment_id": a["id"], "state": "failed", "error": "crc_mismatch"})
    detail = _detail(admin, a["id"])
    assert detail["status"] == "failed"
    assert detail["error"] == "crc_mismatch"
    assert [e["kind"] for e in detail["events"]] == ["created", "delivered", "failed"]
    assert detail["events"][-1]["detail"]["error"] == "crc_mismatch"
    assert detail["events"][-1]["status"] == "failed"
    assert _ts(detail["finished_at"]) >= _ts(detail["delivered_at"])


def test_history_of_a_cancelled_assignment(operator: ApiClient, dev: dict[str, Any], rel: dict[str, Any]) -> None:
    a = operator.assign(dev["id"], rel["id"]).json()
    _cancel(operator, a["id"])
    detail = _detail(operator, a["id"])
    assert [e["kind"] for e in detail["events"]] == ["created", "cancelled"]
    cancelled = detail["events"][-1]
    assert cancelled["actor"] == "token:test-operator"
    assert cancelled["status"] == "cancelled"
    assert cancelled["detail"]["previous"] == "pending"
    assert _ts(cancelled["at"]) >= _ts(detail["created_at"])
    assert _ts(detail["finished_at"]) >= _ts(detail["created_at"])
    assert detail["delivered_at"] is None
