"""Rollouts and the update lifecycle: superseded devices count as a success, pending assignments that wait
(retrying, deferred by the delivery policy) are counted by reason, and a rollout's delivery policy is kept
on every assignment it makes, merged over the release's.

Through the HTTP API; the engine is driven by explicit ticks (tests/support/rollouts.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, assert_problem, heartbeat
from tests.support.rollouts import (
    URL,
    act,
    apply,
    assignments,
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


def assignment(api: ApiClient, assignment_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/assignments/{assignment_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def stage_counts(rollout: dict[str, Any]) -> dict[str, int]:
    """Every stage's counts added up (the number ones)."""
    total: dict[str, int] = {}
    for stage in rollout["stages"]:
        for key, value in stage["counts"].items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


# ---- superseded --------------------------------------------------------------------------------------------


def test_a_device_reporting_a_newer_version_is_superseded_and_the_stage_succeeds(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 4)
    rollout = create(admin, release["id"], stages=[100], include_new_devices=False)
    assert rollout["stages"][0]["counts"]["pending"] == 4
    first, second, third, fourth = devices
    apply(admin.client, first)
    apply(admin.client, second)
    # Two devices got newer firmware by other means (a beta, a Bluetooth update): they are up to date.
    assert heartbeat(admin.client, third["token"], firmware_version="v1.0.2").status_code == 200
    deliver(admin.client, fourth)
    assert heartbeat(admin.client, fourth["token"], firmware_version="v1.1.0").status_code == 200
    assert {a["status"] for a in assignments(admin, rollout["id"])} == {"applied", "superseded"}

    tick(sessions, settings)
    body = detail(admin, rollout["id"])
    stage = body["stages"][0]
    assert (stage["counts"]["applied"], stage["counts"]["superseded"], stage["counts"]["pending"]) == (2, 2, 0)
    # 2 applied of 4 is below the 95 % threshold: only counting the superseded ones as a success ends it.
    assert (stage["status"], stage["done_reason"]) == ("done", "success")
    assert body["status"] == "completed"
    assert (body["totals"]["applied"], body["totals"]["superseded"], body["totals"]["failed"]) == (2, 2, 0)
    assert body["totals"]["assigned"] == 4
    stage_done = next(e for e in body["events"] if e["kind"] == "stage_done")
    assert (stage_done["detail"]["applied"], stage_done["detail"]["superseded"]) == (2, 2)


def test_superseded_devices_do_not_count_towards_the_failure_gate(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 4)
    rollout = create(admin, release["id"], stages=[100], include_new_devices=False, failure_min_devices=1)
    for d in devices[:3]:
        assert heartbeat(admin.client, d["token"], firmware_version="v2.0.0").status_code == 200
    tick(sessions, settings)
    body = detail(admin, rollout["id"])
    assert body["status"] == "running" and body["paused_reason"] is None
    assert body["stages"][0]["counts"]["superseded"] == 3 and body["totals"]["failed"] == 0
    assert "paused" not in kinds(body)


# ---- waiting: retrying and deferred ---------------------------------------------------------------------------


def test_deferred_and_retrying_devices_are_counted_by_reason(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    low, cellular_only, retrying, fine = fleet(admin, 4)
    rollout = create(admin, release["id"], stages=[100], delivery_policy={"networks": ["wifi"]})
    assert detail(admin, rollout["id"])["stages"][0]["counts"]["deferred"] == 0  # nobody asked yet

    reply = heartbeat(admin.client, low["token"], battery=10, charging=False, network="wifi").json()
    assert reply["ota"] is None and reply["ota_deferred"] == "battery_low"
    reply = heartbeat(admin.client, cellular_only["token"], battery=90, network="cellular").json()
    assert reply["ota"] is None and reply["ota_deferred"] == "network"
    # A failure the device may get over: pending again, waiting before the next attempt.
    aid = deliver(admin.client, retrying)
    ota = {"assignment_id": aid, "state": "failed", "error": "download_failed"}
    assert heartbeat(admin.client, retrying["token"], ota=ota).status_code == 200
    assert assignment(admin, aid)["attempts"] == 1

    body = detail(admin, rollout["id"])
    counts = body["stages"][0]["counts"]
    assert (counts["pending"], counts["delivered"], counts["failed"]) == (4, 0, 0)
    assert (counts["retrying"], counts["deferred"]) == (1, 2)
    assert counts["deferred_by_reason"] == {"battery_low": 1, "network": 1}
    assert body["totals"]["deferred"] == 2
    assert body["deferred_by_reason"] == {"battery_low": 1, "network": 1}

    # Its next heartbeat is inside the backoff: deferred as retry_wait. Charging lifts the battery rule.
    assert heartbeat(admin.client, retrying["token"]).json()["ota_deferred"] == "retry_wait"
    reply = heartbeat(admin.client, low["token"], battery=10, charging=True, network="wifi").json()
    assert reply["ota"] is not None and reply["ota_deferred"] is None
    counts = detail(admin, rollout["id"])["stages"][0]["counts"]
    assert (counts["pending"], counts["delivered"], counts["retrying"], counts["deferred"]) == (3, 1, 1, 2)
    assert counts["deferred_by_reason"] == {"network": 1, "retry_wait": 1}
    assert fine["id"] in {a["device_id"] for a in assignments(admin, rollout["id"], "pending")}


def test_the_list_shows_the_same_counts(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    (device,) = fleet(admin, 1)
    rollout = create(admin, release["id"], stages=[100])
    assert heartbeat(admin.client, device["token"], battery=5).json()["ota_deferred"] == "battery_low"
    listed = admin.get(URL).json()
    assert [r["id"] for r in listed] == [rollout["id"]]
    assert listed[0]["totals"]["deferred"] == 1
    assert listed[0]["stages"][0]["counts"]["deferred_by_reason"] == {"battery_low": 1}


# ---- the rollout's delivery policy ------------------------------------------------------------------------------


def test_the_rollout_policy_is_kept_on_its_assignments_and_keeps_them_off_cellular(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 3)
    rollout = create_all(admin, release["id"], delivery_policy={"networks": ["wifi"]})
    assert rollout["delivery_policy"] == {"networks": ["wifi"]}
    made = assignments(admin, rollout["id"])
    assert {a["device_id"] for a in made} == {d["id"] for d in devices}
    for a in made:
        assert assignment(admin, a["id"])["policy"] == {"networks": ["wifi"]}

    device = devices[0]
    reply = heartbeat(admin.client, device["token"], network="cellular").json()
    assert reply["ota"] is None and reply["ota_deferred"] == "network"
    reply = heartbeat(admin.client, device["token"], network="wifi").json()
    assert reply["ota"] is not None and reply["ota_deferred"] is None
    created = detail(admin, rollout["id"])["events"][-1]
    assert created["kind"] == "created" and created["detail"]["delivery_policy"] == {"networks": ["wifi"]}


def test_the_rollout_policy_is_merged_over_the_release_policy(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    r = admin.patch(
        f"/api/v1/firmware/{release['id']}",
        json={"delivery_policy": {"min_battery": 50, "networks": ["wifi", "cellular"]}},
    )
    assert r.status_code == 200, r.text
    (device,) = fleet(admin, 1)
    rollout = create_all(admin, release["id"], delivery_policy={"networks": ["wifi"], "defer_while_unsynced": True})
    (made,) = assignments(admin, rollout["id"])
    policy = {"min_battery": 50, "networks": ["wifi"], "defer_while_unsynced": True}  # the rollout's win
    assert assignment(admin, made["id"])["policy"] == policy
    assert rollout["delivery_policy"] == {"networks": ["wifi"], "defer_while_unsynced": True}

    def deferred(**hb: Any) -> str | None:
        return heartbeat(admin.client, device["token"], **hb).json()["ota_deferred"]  # type: ignore[no-any-return]

    assert deferred(battery=40, network="wifi") == "battery_low"  # the release's 50 %
    assert deferred(battery=60, network="cellular") == "network"  # the rollout's wifi only
    assert deferred(battery=60, network="wifi", unsynced_recordings=2) == "unsynced_recordings"
    assert deferred(battery=60, network="wifi", unsynced_recordings=0) is None


def test_without_a_rollout_policy_the_assignments_keep_the_release_policy(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    admin.patch(f"/api/v1/firmware/{release['id']}", json={"delivery_policy": {"min_battery": 70}})
    other = admin.release("v1.0.2")
    fleet(admin, 2)
    with_release_policy = create_all(admin, release["id"], name="release policy")
    assert with_release_policy["delivery_policy"] is None
    for a in assignments(admin, with_release_policy["id"]):
        assert assignment(admin, a["id"])["policy"] == {"min_battery": 70}
    act(admin, with_release_policy["id"], "cancel")
    without = create_all(admin, other["id"], name="no policy", delivery_policy={})
    assert without["delivery_policy"] is None
    for a in assignments(admin, without["id"]):
        assert assignment(admin, a["id"])["policy"] is None


def test_devices_assigned_later_and_retried_get_the_policy_too(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    other = admin.release("v1.0.0")
    devices = by_id(fleet(admin, 2))
    busy, failing = devices
    manual = admin.assign(busy, other["id"])
    assert manual.status_code == 201, manual.text
    rollout = create_all(admin, release["id"], delivery_policy={"min_battery": 80})
    assert {a["device_id"] for a in assignments(admin, rollout["id"])} == {failing}

    # The busy device's other update ends: the engine assigns it, with the rollout's policy.
    assert admin.post(f"/api/v1/assignments/{manual.json()['id']}/cancel").status_code == 200
    tick(sessions, settings)
    # A final error fails at once; retrying the failed devices makes a new assignment, with the policy too.
    fail(admin.client, devices[failing])
    assert admin.post(f"{URL}/{rollout['id']}/retry-failed").json() == {"retried": 1}
    pending = assignments(admin, rollout["id"], "pending")
    assert {a["device_id"] for a in pending} == {busy, failing}
    for a in pending:
        assert assignment(admin, a["id"])["policy"] == {"min_battery": 80}
    assert heartbeat(admin.client, devices[busy]["token"], battery=70).json()["ota_deferred"] == "battery_low"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"min_battery": 101}, "delivery_policy.min_battery"),
        ({"min_battery": -1}, "delivery_policy.min_battery"),
        ({"min_battery": "lots"}, "delivery_policy.min_battery"),
        ({"networks": []}, "delivery_policy.networks"),
        ({"networks": ["5g"]}, "delivery_policy.networks.0"),
        ({"networks": "wifi"}, "delivery_policy.networks"),
        ({"defer_while_unsynced": "maybe"}, "delivery_policy.defer_while_unsynced"),
        ({"colour": "red"}, "delivery_policy.colour"),
        ("wifi only", "delivery_policy"),
    ],
    ids=str,
)
def test_a_bad_delivery_policy_is_422_naming_the_field(admin: ApiClient, policy: Any, field: str) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 1)
    body = {"name": "x", "release_id": release["id"], "target": {"filter": {}}, "delivery_policy": policy}
    assert_problem(admin.post(URL, json=body), 422, field=field)
    assert admin.get(URL).json() == []
    assert admin.get("/api/v1/assignments").json() == []
