"""The rollouts management API: creating (and what it refuses), reading, roles, and the operator's actions
(pause, resume, cancel, advance, retry failed), each recorded in the rollout's events and the audit log.

The engine is driven by explicit ticks (``engine.tick`` with a chosen ``now``), never by sleeping; the
helpers shared with test_engine.py live in tests/support/rollouts.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, assert_problem, heartbeat
from tests.support.rollouts import (
    URL,
    act,
    apply,
    assigned_devices,
    assignments,
    at,
    by_id,
    create,
    create_all,
    deliver,
    detail,
    fail,
    fleet,
    kinds,
    tick,
)

ACTIONS = ("pause", "resume", "cancel", "advance", "retry-failed")


# ---- helpers -----------------------------------------------------------------------------------------------


def counts(**nonzero: int) -> dict[str, Any]:
    """A stage's counts: zero but for those given."""
    zero = dict.fromkeys(("pending", "delivered", "applied", "failed", "cancelled", "superseded"), 0)
    return {**zero, "retrying": 0, "deferred": 0, "deferred_by_reason": {}, **nonzero}


def audit(api: ApiClient, rollout_id: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/audit", params={"target_id": rollout_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json())


# ---- create -------------------------------------------------------------------------------------------------


def test_create_answers_a_running_rollout_with_its_stages_and_totals(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 4)
    r = admin.post(
        URL,
        json={"name": " to the pins ", "release_id": release["id"], "target": {"filter": {}}, "stages": [50, 100]},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "to the pins"
    assert body["release"] == {"id": release["id"], "version": "v1.0.1", "model": "bota-pin"}
    assert body["status"] == "running" and body["paused_reason"] is None
    assert body["created_by"] == "token:test-admin"
    assert body["started_at"] is not None and body["finished_at"] is None and body["start_at"] is None
    assert body["target"] == {"filter": {}}
    assert (body["advance"], body["success_threshold_pct"], body["failure_threshold_pct"]) == ("auto", 95, 5)
    assert (body["failure_min_devices"], body["stage_window_s"], body["include_new_devices"]) == (3, 86400, True)
    assert body["current_stage"] == 0
    first, second = body["stages"]
    assert (first["index"], first["percent"], first["status"]) == (0, 50, "running")
    assert first["started_at"] is not None and first["done_reason"] is None
    assert (second["index"], second["percent"], second["status"], second["devices"]) == (1, 100, "waiting", 0)
    assert second["started_at"] is None
    assert second["counts"] == counts()
    # The first stage was started in the request: its devices are assigned, pending.
    placed = first["devices"]
    assert first["counts"] == counts(pending=placed)
    assert body["totals"] == {
        "targeted": placed,
        "assigned": placed,
        "applied": 0,
        "superseded": 0,
        "failed": 0,
        "deferred": 0,
        "waiting_offline": 0,
        "skipped": {"up_to_date": 0, "busy": 0},
    }
    assert body["failures_by_error"] == {} and body["deferred_by_reason"] == {}
    assert body["delivery_policy"] is None
    assert len(assigned_devices(admin, body["id"], "pending")) == placed
    assert assigned_devices(admin, body["id"]) <= {d["id"] for d in devices}


def test_create_answers_with_its_created_started_and_stage_started_events(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    body = create(admin, release["id"], stages=[50, 100])
    assert kinds(body) == ["stage_started", "started", "created"], body["events"]
    created = body["events"][-1]
    assert created["actor"] == "token:test-admin"
    assert created["detail"]["release_id"] == release["id"]


def test_the_created_rollout_reads_back_with_its_events(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 6, version=None)
    body = create(admin, release["id"], stages=[50, 100])
    again = detail(admin, body["id"])
    assert kinds(again) == ["stage_started", "started", "created"]
    assert [e["actor"] for e in again["events"]] == ["system", "system", "token:test-admin"]
    stage_started = again["events"][0]["detail"]
    assert (stage_started["stage"], stage_started["percent"]) == (0, 50)
    assert stage_started["placed"] == stage_started["assigned"] == again["stages"][0]["devices"]
    assert again["totals"]["assigned"] == again["stages"][0]["devices"]


def test_a_single_stage_rollout_assigns_every_device(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 3, version=None)
    r = admin.post(URL, json={"name": "all", "release_id": release["id"], "target": {"filter": {}}, "stages": [100]})
    assert r.status_code == 201, r.text
    assert r.json()["stages"][0]["devices"] == 3
    assert assigned_devices(admin, r.json()["id"], "pending") == {d["id"] for d in devices}


def test_assignments_made_by_a_rollout_name_it(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    (device,) = fleet(admin, 1, version=None)
    body = create_all(admin, release["id"], name="pins")
    (a,) = assignments(admin, body["id"])
    assert (a["device_id"], a["release_id"], a["status"]) == (device["id"], release["id"], "pending")
    assert (a["rollout_id"], a["held"], a["created_by"]) == (body["id"], False, "rollout:pins")
    events = admin.get(f"/api/v1/assignments/{a['id']}").json()["events"]
    assert [e["kind"] for e in events] == ["created"]
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["active_assignment"]["id"] == a["id"]


@pytest.mark.parametrize(
    ("stages", "why"),
    [
        ([50, 10, 100], "increase"),
        ([10, 10, 100], "increase"),
        ([10, 50], "last stage must be 100"),
        ([0, 100], "above 0"),
        ([10, 150], "at most 100"),
        ([-5, 100], "above 0"),
        ([], None),
        ([float(k) for k in range(1, 11)] + [100], None),  # 11 stages: at most 10
    ],
)
def test_bad_stages_are_422_naming_stages(admin: ApiClient, stages: list[float], why: str | None) -> None:
    release = admin.release("v1.0.1")
    r = admin.post(URL, json={"name": "x", "release_id": release["id"], "target": {"filter": {}}, "stages": stages})
    body = assert_problem(r, 422, field="stages")
    if why is not None:
        assert why in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stage_window_s", 59),
        ("stage_window_s", 90 * 24 * 3600 + 1),
        ("success_threshold_pct", 0),
        ("success_threshold_pct", 100.5),
        ("failure_threshold_pct", -1),
        ("failure_threshold_pct", 101),
        ("failure_min_devices", 0),
        ("advance", "sometimes"),
        ("name", "   "),
        ("start_at", "2030-01-01T08:00:00"),  # no time zone
    ],
)
def test_bad_fields_are_422_naming_the_field(admin: ApiClient, field: str, value: Any) -> None:
    release = admin.release("v1.0.1")
    body = {"name": "x", "release_id": release["id"], "target": {"filter": {}}, field: value}
    problem = assert_problem(admin.post(URL, json=body), 422, field=field)
    if field == "start_at":
        assert "time zone" in problem["errors"][0]["message"]


def test_unknown_release_is_404_naming_release_id(admin: ApiClient) -> None:
    r = admin.post(URL, json={"name": "x", "release_id": "nope", "target": {"filter": {}}})
    assert_problem(r, 404, field="release_id")


def test_release_without_a_bin_is_422_naming_release_id(admin: ApiClient) -> None:
    release = admin.release("v1.0.1", bin=None, ufw=b"\x01" * 256)
    r = admin.post(URL, json={"name": "x", "release_id": release["id"], "target": {"filter": {}}})
    body = assert_problem(r, 422, field="release_id")
    assert ".bin" in body["detail"]


def test_unknown_group_is_404_naming_target_group_id(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    r = admin.post(URL, json={"name": "x", "release_id": release["id"], "target": {"group_id": "nope"}})
    assert_problem(r, 404, field="target.group_id")


@pytest.mark.parametrize("target", [{"group_id": "g", "filter": {}}, {}, {"group": "g"}, None, "everyone"], ids=str)
def test_target_needs_exactly_one_of_group_id_or_filter(admin: ApiClient, target: Any) -> None:
    release = admin.release("v1.0.1")
    r = admin.post(URL, json={"name": "x", "release_id": release["id"], "target": target})
    body = assert_problem(r, 422)
    assert body["errors"] and all(e["field"].startswith("target") for e in body["errors"]), body


@pytest.mark.parametrize(
    ("filter_", "key"),
    [({"colour": "red"}, "colour"), ({"firmware_below": "latest"}, "firmware_below"), ({"tags": ["Bad Tag"]}, "tags")],
)
def test_bad_filter_is_422_naming_the_filter_key(admin: ApiClient, filter_: dict[str, Any], key: str) -> None:
    release = admin.release("v1.0.1")
    r = admin.post(URL, json={"name": "x", "release_id": release["id"], "target": {"filter": filter_}})
    body = assert_problem(r, 422)
    fields = [e["field"] for e in body["errors"]]
    name = f"target.filter.{key}"
    assert any(f == name or f.startswith(name + ".") for f in fields), fields


def test_a_refused_create_leaves_no_rollout_and_no_audit_entry(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 3, version=None)
    before = int(admin.get("/api/v1/audit").headers["X-Total-Count"])
    for body in (
        {"name": "x", "release_id": release["id"], "target": {"filter": {}}, "stages": [10, 50]},
        {"name": "x", "release_id": release["id"], "target": {"group_id": "nope"}},
        {"name": "x", "release_id": "nope", "target": {"filter": {}}},
    ):
        assert admin.post(URL, json=body).status_code in (404, 422)
    assert admin.get(URL).json() == []
    assert admin.get("/api/v1/assignments").json() == []
    assert int(admin.get("/api/v1/audit").headers["X-Total-Count"]) == before


# ---- roles --------------------------------------------------------------------------------------------------


def test_viewer_may_read_but_not_create(admin: ApiClient, viewer: ApiClient) -> None:
    release = admin.release("v1.0.1")
    assert_problem(viewer.post(URL, json={"name": "x", "release_id": release["id"], "target": {"filter": {}}}), 403)
    assert viewer.get(URL).json() == []
    rollout = create(admin, release["id"])
    assert viewer.get(f"{URL}/{rollout['id']}").status_code == 200
    assert [r["id"] for r in viewer.get(URL).json()] == [rollout["id"]]


def test_viewer_is_403_on_every_action_and_changes_nothing(admin: ApiClient, viewer: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual")
    before = detail(admin, rollout["id"])
    for action in ACTIONS:
        assert_problem(viewer.post(f"{URL}/{rollout['id']}/{action}"), 403)
    after = detail(admin, rollout["id"])
    assert (after["status"], after["current_stage"], kinds(after)) == (
        before["status"],
        before["current_stage"],
        kinds(before),
    )
    assert len(assignments(admin, rollout["id"])) == before["totals"]["assigned"]


def test_operator_may_create_and_act(operator: ApiClient, admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    rollout = create(operator, release["id"])
    assert rollout["created_by"] == "token:test-operator"
    assert act(operator, rollout["id"], "pause")["status"] == "paused"
    assert act(operator, rollout["id"], "resume")["status"] == "running"
    assert act(operator, rollout["id"], "cancel")["status"] == "cancelled"


# ---- reading ------------------------------------------------------------------------------------------------


def test_list_filters_by_status_and_release_newest_first(admin: ApiClient) -> None:
    a = admin.release("v1.0.1")
    b = admin.release("v1.0.2")
    first = create(admin, a["id"], name="first")
    second = create(admin, a["id"], name="second")
    third = create(admin, b["id"], name="third")
    act(admin, first["id"], "cancel")

    r = admin.get(URL)
    assert r.headers["X-Total-Count"] == "3"
    assert [x["id"] for x in r.json()] == [third["id"], second["id"], first["id"]]
    assert "events" not in r.json()[0]

    r = admin.get(URL, params={"status": "cancelled"})
    assert [x["id"] for x in r.json()] == [first["id"]] and r.headers["X-Total-Count"] == "1"
    r = admin.get(URL, params={"status": "running"})
    assert {x["id"] for x in r.json()} == {second["id"], third["id"]} and r.headers["X-Total-Count"] == "2"
    r = admin.get(URL, params={"release_id": a["id"]})
    assert [x["id"] for x in r.json()] == [second["id"], first["id"]] and r.headers["X-Total-Count"] == "2"
    r = admin.get(URL, params={"release_id": a["id"], "status": "running"})
    assert [x["id"] for x in r.json()] == [second["id"]]
    r = admin.get(URL, params={"release_id": "nope"})
    assert r.json() == [] and r.headers["X-Total-Count"] == "0"
    r = admin.get(URL, params={"limit": 1, "offset": 1})
    assert [x["id"] for x in r.json()] == [second["id"]] and r.headers["X-Total-Count"] == "3"


def test_list_rejects_an_unknown_status(admin: ApiClient) -> None:
    assert_problem(admin.get(URL, params={"status": "finished"}), 422, field="query.status")


def test_unknown_rollout_is_404(admin: ApiClient) -> None:
    assert_problem(admin.get(f"{URL}/nope"), 404)


def test_actions_on_an_unknown_rollout_are_404(admin: ApiClient) -> None:
    for action in ACTIONS:
        assert_problem(admin.post(f"{URL}/nope/{action}"), 404)


# ---- actions ------------------------------------------------------------------------------------------------


def test_pause_holds_pending_assignments_and_resume_releases_them(admin: ApiClient, client: TestClient) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 3))
    rollout = create_all(admin, release["id"], include_new_devices=False)
    delivered_id = sorted(devices)[0]
    deliver(client, devices[delivered_id])

    paused = act(admin, rollout["id"], "pause")
    assert paused["status"] == "paused"
    assert paused["paused_reason"] == "paused by token:test-admin"
    rows = {a["device_id"]: a for a in assignments(admin, rollout["id"])}
    assert len(rows) == 3
    assert rows[delivered_id]["status"] == "delivered" and rows[delivered_id]["held"] is False  # it goes on
    pending = [d for d in rows if d != delivered_id]
    assert all(rows[d]["status"] == "pending" and rows[d]["held"] is True for d in pending)

    # Paused: nothing new is delivered (the held-delivery rule of the heartbeat).
    for d in pending:
        reply = heartbeat(client, devices[d]["token"], firmware_version="v1.0.0").json()
        assert reply["ota"] is None, f"a held assignment was delivered: {reply}"
    assert assigned_devices(admin, rollout["id"], "pending") == set(pending)

    resumed = act(admin, rollout["id"], "resume")
    assert resumed["status"] == "running" and resumed["paused_reason"] is None
    assert not any(a["held"] for a in assignments(admin, rollout["id"]))
    for d in pending:
        assert deliver(client, devices[d]) == rows[d]["id"]


def test_cancel_leaves_no_active_assignment_of_the_rollout(admin: ApiClient, client: TestClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 6)
    rollout = create_all(admin, release["id"], include_new_devices=False)
    deliver(client, devices[0])
    deliver(client, devices[1])
    apply(client, devices[2])
    assert len(assignments(admin, rollout["id"], "delivered")) == 2

    cancelled = act(admin, rollout["id"], "cancel")
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["stages"][0]["status"] == "done"
    assert assignments(admin, rollout["id"], "pending") == []
    assert assignments(admin, rollout["id"], "delivered") == []
    assert len(assignments(admin, rollout["id"], "cancelled")) == 5
    assert len(assignments(admin, rollout["id"], "applied")) == 1  # finished ones stay as they are
    assert not any(a["held"] for a in assignments(admin, rollout["id"]))
    event = detail(admin, rollout["id"])["events"][0]
    assert (event["kind"], event["actor"], event["detail"]["assignments_cancelled"]) == (
        "cancelled",
        "token:test-admin",
        5,
    )
    for d in devices[:2] + devices[3:]:
        assert heartbeat(client, d["token"], firmware_version="v1.0.0").json()["ota"] is None
        assert admin.get(f"/api/v1/devices/{d['id']}").json()["active_assignment"] is None


def test_every_action_on_a_cancelled_rollout_is_409(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    rollout = create(admin, release["id"], stages=[50, 100])
    act(admin, rollout["id"], "cancel")
    before = detail(admin, rollout["id"])
    for action in ACTIONS:
        body = assert_problem(admin.post(f"{URL}/{rollout['id']}/{action}"), 409, field="status")
        assert "cancelled" in body["detail"], action
    tick(sessions, settings, datetime.now(UTC) + timedelta(days=30))  # the engine leaves it alone too
    after = detail(admin, rollout["id"])
    assert after["status"] == "cancelled"
    assert kinds(after) == kinds(before)
    assert assignments(admin, rollout["id"], "pending") == []


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("running", "resume"),
        ("paused", "pause"),
        ("paused", "advance"),
        ("completed", "pause"),
        ("completed", "cancel"),
        ("completed", "advance"),
        ("completed", "retry-failed"),
        ("scheduled", "advance"),
        ("scheduled", "retry-failed"),
    ],
)
def test_an_action_the_status_does_not_allow_is_409(admin: ApiClient, status: str, action: str) -> None:
    release = admin.release("v1.0.1")
    start_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat() if status == "scheduled" else None
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual", start_at=start_at)
    if status == "paused":
        act(admin, rollout["id"], "pause")
    if status == "completed":
        act(admin, rollout["id"], "advance")
        act(admin, rollout["id"], "advance")
    assert detail(admin, rollout["id"])["status"] == status
    assert_problem(admin.post(f"{URL}/{rollout['id']}/{action}"), 409, field="status")
    assert detail(admin, rollout["id"])["status"] == status


def test_retry_failed_without_failures_retries_nothing(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    rollout = create_all(admin, release["id"])
    r = admin.post(f"{URL}/{rollout['id']}/retry-failed")
    assert r.status_code == 200 and r.json() == {"retried": 0}
    assert len(assignments(admin, rollout["id"])) == 2


def test_pausing_a_scheduled_rollout_and_resuming_keeps_it_scheduled(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 6, version=None)
    start = datetime.now(UTC) + timedelta(hours=1)
    rollout = create(admin, release["id"], stages=[50, 100], start_at=start.isoformat())
    assert act(admin, rollout["id"], "pause")["status"] == "paused"
    tick(sessions, settings, start + timedelta(seconds=1))
    assert detail(admin, rollout["id"])["status"] == "paused", "a paused rollout does not start at start_at"
    resumed = act(admin, rollout["id"], "resume")
    assert (resumed["status"], resumed["current_stage"]) == ("scheduled", -1)
    assert assignments(admin, rollout["id"]) == []
    tick(sessions, settings, start + timedelta(seconds=2))
    started = detail(admin, rollout["id"])
    assert (started["status"], started["current_stage"]) == ("running", 0)
    assert len(assignments(admin, rollout["id"], "pending")) == started["stages"][0]["devices"]


# ---- history: events and the audit log -------------------------------------------------------------------------


def test_every_action_is_in_the_events_and_the_audit_log_with_its_actor(
    admin: ApiClient, operator: ApiClient, client: TestClient
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 6))
    rollout = create(operator, release["id"], name="audited", stages=[50, 100], advance="manual")
    rid = rollout["id"]
    act(operator, rid, "pause")
    act(operator, rid, "resume")
    act(operator, rid, "advance")
    for device_id in sorted(assigned_devices(admin, rid))[:1]:
        fail(client, devices[device_id])
    assert admin.post(f"{URL}/{rid}/retry-failed").json() == {"retried": 1}
    act(admin, rid, "cancel")

    op, adm = "token:test-operator", "token:test-admin"
    expected = [
        ("cancelled", adm),
        ("retried_failed", adm),
        ("stage_started", op),  # the advance
        ("resumed", op),
        ("paused", op),
        ("stage_started", "system"),
        ("started", "system"),
        ("created", op),
    ]
    events = detail(admin, rid)["events"]
    assert [(e["kind"], e["actor"]) for e in events] == expected
    times = [at(e["at"]) for e in events]
    assert times == sorted(times, reverse=True)
    assert events[2]["detail"]["stage"] == 1
    assert events[1]["detail"]["assignments"] == 1
    assert events[4]["detail"]["reason"] == f"paused by {op}"

    entries = audit(admin, rid)
    assert [(e["action"], e["actor"]) for e in entries] == [(f"rollout.{k}", who) for k, who in expected]
    assert all(e["target_type"] == "rollout" and e["detail"]["name"] == "audited" for e in entries)
    only_ops = admin.get("/api/v1/audit", params={"actor": op, "action": "rollout.paused"}).json()
    assert [e["target_id"] for e in only_ops] == [rid]


def test_action_responses_include_the_event_they_recorded(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual")
    assert kinds(act(admin, rollout["id"], "pause"))[0] == "paused"
    assert kinds(act(admin, rollout["id"], "resume"))[0] == "resumed"
    assert kinds(act(admin, rollout["id"], "advance"))[0] == "stage_started"
    assert kinds(act(admin, rollout["id"], "cancel"))[0] == "cancelled"
