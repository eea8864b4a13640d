"""The rollout engine's rules (src/bota_ota/rollouts/engine.py, docs/rollouts.md), driven through the API and
explicit ``engine.tick`` calls at chosen times: targeting, stage placement, skipped devices, advancing,
new devices joining, the failure gate, the stage window and scheduled starts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import stable_bucket
from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, heartbeat
from tests.support.rollouts import (
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


def now() -> datetime:
    return datetime.now(UTC)


def put_tags(api: ApiClient, device_id: str, tags: list[str]) -> None:
    r = api.client.put(f"/api/v1/devices/{device_id}/tags", json={"tags": tags}, headers=api.headers)
    assert r.status_code == 200, r.text


def group(api: ApiClient, name: str, filter_: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/api/v1/groups", json={"name": name, "filter": filter_})
    assert r.status_code == 201, r.text
    return dict(r.json())


def first_stage(rollout_id: str, device_ids: list[str], percent: float) -> set[str]:
    return {d for d in device_ids if stable_bucket(rollout_id, d) < round(percent * 100)}


# ---- the target ---------------------------------------------------------------------------------------------


def test_the_target_is_narrowed_to_the_releases_model(admin: ApiClient) -> None:
    release = admin.release("v1.0.1", model="bota-pin")
    pins = fleet(admin, 4, version=None)
    notes = fleet(admin, 3, model="bota-note", version=None)
    pros = fleet(admin, 2, model="bota-pin-pro", version=None)
    rollout = create_all(admin, release["id"], target={"filter": {}})
    assert assigned_devices(admin, rollout["id"]) == {d["id"] for d in pins}
    assert rollout["totals"]["targeted"] == 4
    assert sum(s["devices"] for s in rollout["stages"]) == 4
    for d in notes + pros:
        assert admin.get(f"/api/v1/devices/{d['id']}").json()["active_assignment"] is None

    # A filter naming another model matches nothing of the release's.
    other = create_all(admin, release["id"], target={"filter": {"model": "bota-note"}}, name="notes")
    assert other["totals"]["targeted"] == 0 and assignments(admin, other["id"]) == []


def test_a_filter_target_picks_only_matching_devices(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 5, version=None)
    chosen = [devices[1]["id"], devices[3]["id"]]
    rollout = create_all(admin, release["id"], target={"filter": {"ids": chosen}})
    assert rollout["target"] == {"filter": {"ids": chosen}}
    assert assigned_devices(admin, rollout["id"]) == set(chosen)


def test_a_group_target_assigns_the_groups_devices(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 6, version=None)
    beta = group(admin, "Beta testers", {"tags": ["beta"]})
    for d in devices[:3]:
        put_tags(admin, d["id"], ["beta"])
    put_tags(admin, devices[3]["id"], ["eu"])
    rollout = create_all(admin, release["id"], target={"group_id": beta["id"]})
    assert rollout["target"] == {"group_id": beta["id"], "group_name": "Beta testers"}
    assert assigned_devices(admin, rollout["id"]) == {d["id"] for d in devices[:3]}
    assert rollout["totals"]["targeted"] == 3


def test_a_group_is_read_again_so_a_device_tagged_later_joins(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 3, version=None)
    beta = group(admin, "beta", {"tags": ["beta"]})
    put_tags(admin, devices[0]["id"], ["beta"])
    rollout = create_all(admin, release["id"], target={"group_id": beta["id"]})
    assert assigned_devices(admin, rollout["id"]) == {devices[0]["id"]}
    put_tags(admin, devices[1]["id"], ["beta"])
    checked = at(rollout["stages"][1]["started_at"])  # the advance looked for members last
    tick(sessions, settings, checked + timedelta(seconds=settings.rollout_membership_interval_s))
    assert assigned_devices(admin, rollout["id"]) == {devices[0]["id"], devices[1]["id"]}
    assert "devices_joined" in kinds(detail(admin, rollout["id"]))


def test_a_deleted_target_group_pauses_the_rollout(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 4, version=None)
    g = group(admin, "all", {})
    rollout = create(admin, release["id"], target={"group_id": g["id"]}, stages=[50, 100])
    assert admin.delete(f"/api/v1/groups/{g['id']}").status_code == 204
    tick(sessions, settings, at(rollout["started_at"]) + timedelta(seconds=settings.rollout_membership_interval_s))
    paused = detail(admin, rollout["id"])
    assert paused["status"] == "paused"
    assert "group" in paused["paused_reason"] and "deleted" in paused["paused_reason"]
    assert all(a["held"] for a in assignments(admin, rollout["id"], "pending"))
    assert assigned_devices(admin, rollout["id"]) <= {d["id"] for d in devices}


# ---- stage placement ----------------------------------------------------------------------------------------


@pytest.mark.slow  # 200 devices registered through the API: seconds before the rollout starts
def test_the_first_stage_holds_about_its_share_by_a_stable_hash(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    ids = [d["id"] for d in fleet(admin, 200, version=None)]
    rollout = create(admin, release["id"], stages=[5, 50, 100], advance="manual", include_new_devices=False)
    first = rollout["stages"][0]
    assert 1 <= first["devices"] <= 25, first
    expected = first_stage(rollout["id"], ids, 5)
    assert first["devices"] == len(expected)
    assert assigned_devices(admin, rollout["id"]) == expected
    assert [s["devices"] for s in rollout["stages"][1:]] == [0, 0]  # later stages are not placed yet


@pytest.mark.slow  # 200 devices registered through the API: seconds before the rollout starts
def test_later_stages_add_the_next_buckets_and_keep_the_earlier_devices(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    ids = [d["id"] for d in fleet(admin, 200, version=None)]
    rollout = create(admin, release["id"], stages=[5, 50, 100], advance="manual", include_new_devices=False)
    stage0 = assigned_devices(admin, rollout["id"])
    second = act(admin, rollout["id"], "advance")
    upto_50 = first_stage(rollout["id"], ids, 50)
    assert assigned_devices(admin, rollout["id"]) == upto_50
    assert stage0 <= upto_50
    assert second["stages"][1]["devices"] == len(upto_50) - len(stage0)
    assert second["stages"][0]["devices"] == len(stage0)
    assert len(assignments(admin, rollout["id"])) == len(upto_50), "no device assigned twice"
    third = act(admin, rollout["id"], "advance")
    assert assigned_devices(admin, rollout["id"]) == set(ids)
    assert [s["devices"] for s in third["stages"]] == [len(stage0), len(upto_50) - len(stage0), 200 - len(upto_50)]
    assert third["totals"]["targeted"] == 200


@pytest.mark.slow  # 200 devices registered through the API: seconds before the rollout starts
def test_different_rollouts_pick_different_first_stages(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    ids = [d["id"] for d in fleet(admin, 200, version=None)]
    one = create(admin, release["id"], stages=[5, 50, 100], name="one")
    first_one = assigned_devices(admin, one["id"])
    act(admin, one["id"], "cancel")
    two = create(admin, release["id"], stages=[5, 50, 100], name="two")
    first_two = assigned_devices(admin, two["id"])
    assert first_one == first_stage(one["id"], ids, 5)
    assert first_two == first_stage(two["id"], ids, 5)
    assert first_one != first_two


# ---- skipped devices ----------------------------------------------------------------------------------------


def test_devices_on_the_version_or_newer_are_skipped(admin: ApiClient, client: TestClient) -> None:
    release = admin.release("v1.0.1")
    old = fleet(admin, 3, version="v1.0.0")
    same = fleet(admin, 1, version="v1.0.1")
    newer = fleet(admin, 2, version="v1.0.2")
    rollout = create_all(admin, release["id"])
    assert rollout["totals"]["skipped"]["up_to_date"] == 3
    assert rollout["totals"]["targeted"] == 6 and rollout["totals"]["assigned"] == 3
    assert assigned_devices(admin, rollout["id"]) == {d["id"] for d in old}
    for d in same + newer:
        assert admin.get(f"/api/v1/devices/{d['id']}").json()["active_assignment"] is None
        assert heartbeat(client, d["token"], firmware_version="v1.0.2").json()["ota"] is None


def test_a_busy_device_joins_when_its_other_assignment_ends(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    other = admin.release("v1.0.0")
    release = admin.release("v1.0.1")
    devices = fleet(admin, 3, version="v0.9.0")
    manual = admin.assign(devices[0]["id"], other["id"])
    assert manual.status_code == 201, manual.text
    # include_new_devices keeps it running once its stages are done (were every device in the first stage, the
    # empty last stage would complete it at the first tick, and a completed rollout assigns nobody).
    rollout = create_all(admin, release["id"], include_new_devices=True)
    assert rollout["totals"]["skipped"]["busy"] == 1
    assert assigned_devices(admin, rollout["id"]) == {devices[1]["id"], devices[2]["id"]}

    tick(sessions, settings)
    assert detail(admin, rollout["id"])["totals"]["skipped"]["busy"] == 1, "busy while the other is active"
    assert admin.post(f"/api/v1/assignments/{manual.json()['id']}/cancel").status_code == 200
    tick(sessions, settings)
    after = detail(admin, rollout["id"])
    assert after["totals"]["skipped"]["busy"] == 0
    assert after["totals"]["assigned"] == 3
    assert assigned_devices(admin, rollout["id"]) == {d["id"] for d in devices}
    active = admin.get(f"/api/v1/devices/{devices[0]['id']}").json()["active_assignment"]
    assert active["release_id"] == release["id"]


# ---- advancing ----------------------------------------------------------------------------------------------


def test_auto_advance_runs_every_stage_to_completion(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 20))
    rollout = create(admin, release["id"], stages=[10, 50, 100], include_new_devices=False)
    rid = rollout["id"]
    done: set[str] = set()
    seen_stage = 0
    for _ in range(6):
        for device_id in assigned_devices(admin, rid, "pending") - done:
            apply(client, devices[device_id])
            done.add(device_id)
        tick(sessions, settings)
        rollout = detail(admin, rid)
        assert rollout["current_stage"] <= seen_stage + 1, "at most one stage starts per tick"
        seen_stage = rollout["current_stage"]
        if rollout["status"] == "completed":
            break
    assert rollout["status"] == "completed", rollout
    assert rollout["finished_at"] is not None
    assert [(s["status"], s["done_reason"]) for s in rollout["stages"]] == [("done", "success")] * 3
    assert rollout["totals"]["applied"] == 20 and rollout["totals"]["targeted"] == 20
    assert kinds(rollout)[0] == "completed" and kinds(rollout).count("stage_done") == 3
    assert kinds(rollout).count("stage_started") == 3
    assert all(e["actor"] == "system" for e in rollout["events"] if e["kind"] != "created")


def test_a_stage_with_devices_still_updating_does_not_advance(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 20))
    rollout = create(admin, release["id"], stages=[50, 100], include_new_devices=False)
    stage0 = sorted(assigned_devices(admin, rollout["id"]))
    for device_id in stage0[1:]:
        apply(client, devices[device_id])
    deliver(client, devices[stage0[0]])  # one still downloading: below 95 % applied
    tick(sessions, settings)
    after = detail(admin, rollout["id"])
    assert (after["current_stage"], after["stages"][0]["status"], after["stages"][1]["status"]) == (
        0,
        "running",
        "waiting",
    )
    assert after["stages"][0]["counts"]["applied"] == len(stage0) - 1
    assert after["stages"][0]["counts"]["delivered"] == 1


def test_manual_advance_waits_for_the_operator(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 10))
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual", include_new_devices=False)
    rid = rollout["id"]
    stage0 = assigned_devices(admin, rid)
    for device_id in stage0:
        apply(client, devices[device_id])
    tick(sessions, settings)
    tick(sessions, settings, now() + timedelta(days=2))  # however long it waits
    waiting = detail(admin, rid)
    assert waiting["status"] == "running" and waiting["current_stage"] == 0
    assert [s["status"] for s in waiting["stages"]] == ["done", "waiting"]
    assert waiting["stages"][0]["done_reason"] == "success"
    assert assigned_devices(admin, rid) == stage0, "nothing of the next stage is assigned"

    advanced = act(admin, rid, "advance")
    assert advanced["current_stage"] == 1 and advanced["stages"][1]["status"] == "running"
    rest = set(devices) - stage0
    assert assigned_devices(admin, rid, "pending") == rest
    for device_id in rest:
        apply(client, devices[device_id])
    tick(sessions, settings)
    assert detail(admin, rid)["status"] == "completed"


def test_advance_on_the_last_stage_completes(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 4, version=None)
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual", include_new_devices=True)
    second = act(admin, rollout["id"], "advance")
    assert second["stages"][0]["status"] == "done" and second["stages"][0]["done_reason"] == "advanced"
    finished = act(admin, rollout["id"], "advance")
    assert finished["status"] == "completed" and finished["finished_at"] is not None
    assert finished["stages"][1]["status"] == "done" and finished["stages"][1]["done_reason"] == "advanced"
    latest = detail(admin, rollout["id"])["events"][0]
    assert (latest["kind"], latest["actor"]) == ("completed", "token:test-admin")
    # Completing does not cancel what is still on its way.
    assert len(assignments(admin, rollout["id"], "pending")) == 4


def test_with_include_new_devices_a_later_device_joins_after_the_membership_interval(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 4))
    rollout = create(admin, release["id"], stages=[50, 100], include_new_devices=True)
    rid = rollout["id"]
    for device_id in assigned_devices(admin, rid):
        apply(client, devices[device_id])
    tick(sessions, settings)  # stage 0 done: stage 1 starts (and looks for members)
    rollout = detail(admin, rid)
    assert rollout["current_stage"] == 1
    checked = at(rollout["stages"][1]["started_at"])
    for device_id in assigned_devices(admin, rid, "pending"):
        apply(client, devices[device_id])
    tick(sessions, settings, checked + timedelta(seconds=1))
    rollout = detail(admin, rid)
    assert [s["status"] for s in rollout["stages"]] == ["done", "done"]
    assert rollout["status"] == "running", "keeps going for devices that come to match"
    assert rollout["finished_at"] is None

    late = admin.device()
    interval = timedelta(seconds=settings.rollout_membership_interval_s)
    tick(sessions, settings, checked + interval - timedelta(seconds=1))
    assert late["id"] not in assigned_devices(admin, rid), "not before the membership interval"
    tick(sessions, settings, checked + interval)
    assert late["id"] in assigned_devices(admin, rid, "pending")
    rollout = detail(admin, rid)
    assert rollout["events"][0]["kind"] == "devices_joined" and rollout["events"][0]["detail"]["devices"] == 1
    assert rollout["totals"]["targeted"] == 5 and rollout["status"] == "running"


def test_without_include_new_devices_a_later_device_is_left_alone(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 4))
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual", include_new_devices=False)
    late = admin.device()  # after the first stage was placed
    tick(sessions, settings, now() + timedelta(hours=1))
    assert late["id"] not in assigned_devices(admin, rollout["id"]), "not looked for after the stage started"
    devices[late["id"]] = late
    act(admin, rollout["id"], "advance")  # a stage starting places whatever of its buckets matches now
    for device_id in assigned_devices(admin, rollout["id"], "pending"):
        apply(client, devices[device_id])
    tick(sessions, settings)
    finished = detail(admin, rollout["id"])
    assert finished["status"] == "completed"
    later = admin.device()
    tick(sessions, settings, now() + timedelta(hours=2))
    assert later["id"] not in assigned_devices(admin, rollout["id"])


# ---- the failure gate ---------------------------------------------------------------------------------------


def _gate_setup(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings, failures: int = 3
) -> dict[str, Any]:
    """30 devices (20 would leave the first half-stage under 4 devices about once in 800 runs), stages [50, 100],
    failure gate 5 % with at least 3 devices; ``failures`` of the first stage fail with crc_mismatch; one tick."""
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 30))
    rollout = create(
        admin,
        release["id"],
        stages=[50, 100],
        failure_threshold_pct=5,
        failure_min_devices=3,
        include_new_devices=False,
    )
    stage0 = sorted(assigned_devices(admin, rollout["id"]))
    assert len(stage0) > failures, "the hash put too few devices in the first stage for this test"
    failed = stage0[:failures]
    for device_id in failed:
        fail(client, devices[device_id])
    tick(sessions, settings)
    return {"id": rollout["id"], "devices": devices, "stage0": stage0, "failed": failed, "release": release}


def test_failures_above_the_threshold_pause_the_rollout(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings)
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "paused"
    reason = rollout["paused_reason"]
    assert "crc_mismatch" in reason and f"3 of {len(s['stage0'])}" in reason, reason
    assert rollout["failures_by_error"] == {"crc_mismatch": 3}
    assert rollout["stages"][0]["counts"]["failed"] == 3 and rollout["totals"]["failed"] == 3
    assert rollout["stages"][1]["status"] == "waiting"
    paused = rollout["events"][0]
    assert (paused["kind"], paused["actor"], paused["detail"]["reason"]) == ("paused", "system", reason)
    entry = admin.get("/api/v1/audit", params={"target_id": s["id"], "action": "rollout.paused"}).json()
    assert [(e["actor"], e["detail"]["reason"]) for e in entry] == [("system", reason)]


def test_a_paused_rollout_holds_its_pending_assignments(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings)
    rows = assignments(admin, s["id"])
    assert rows and all(a["rollout_id"] == s["id"] for a in rows)
    pending = [a for a in rows if a["status"] == "pending"]
    assert len(pending) == len(s["stage0"]) - 3
    assert all(a["held"] is True for a in pending)
    assert all(a["held"] is False for a in rows if a["status"] == "failed")


def test_a_held_assignment_is_not_delivered(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Pause delivers nothing new (needs the heartbeat's held rule, src/bota_ota/heartbeat/rules.py)."""
    s = _gate_setup(admin, client, sessions, settings)
    pending = assignments(admin, s["id"], "pending")
    for a in pending:
        reply = heartbeat(client, s["devices"][a["device_id"]]["token"], firmware_version="v1.0.0").json()
        assert reply["ota"] is None, f"the held assignment {a['id']} was delivered: {reply}"
    assert {a["id"] for a in assignments(admin, s["id"], "pending")} == {a["id"] for a in pending}
    assert assignments(admin, s["id"], "delivered") == []


def test_a_paused_rollout_starts_no_stage(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings)
    for device_id in set(s["stage0"]) - set(s["failed"]):  # even if the rest of the stage applies
        heartbeat(client, s["devices"][device_id]["token"], firmware_version="v1.0.1")
    before = len(assignments(admin, s["id"]))
    tick(sessions, settings, now() + timedelta(days=3))
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "paused" and rollout["current_stage"] == 0
    assert rollout["stages"][1]["status"] == "waiting"
    assert len(assignments(admin, s["id"])) == before


def test_resume_releases_the_held_assignments_and_goes_on(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings)
    held = {a["device_id"]: a["id"] for a in assignments(admin, s["id"], "pending")}
    resumed = act(admin, s["id"], "resume")
    assert resumed["status"] == "running" and resumed["paused_reason"] is None
    assert not any(a["held"] for a in assignments(admin, s["id"]))
    tick(sessions, settings)
    assert detail(admin, s["id"])["status"] == "running", "the failures already seen do not pause it again"
    for device_id, assignment_id in held.items():
        assert deliver(client, s["devices"][device_id]) == assignment_id
        heartbeat(client, s["devices"][device_id]["token"], firmware_version="v1.0.1")
    # Three of the stage failed: it is not done (below 95 % applied) until they are retried and apply.
    assert admin.post(f"/api/v1/rollouts/{s['id']}/retry-failed").json() == {"retried": 3}
    for device_id in s["failed"]:
        apply(client, s["devices"][device_id])
    tick(sessions, settings)
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "running"
    assert (rollout["stages"][0]["status"], rollout["stages"][0]["done_reason"]) == ("done", "success")
    assert rollout["current_stage"] == 1 and rollout["stages"][1]["status"] == "running"
    assert assigned_devices(admin, s["id"], "pending") == set(s["devices"]) - set(s["stage0"])


def test_failures_after_a_resume_pause_it_again(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings, failures=3)
    act(admin, s["id"], "resume")
    more = [d for d in s["stage0"] if d not in s["failed"]][:3]
    assert len(more) == 3, "the hash put too few devices in the first stage for this test"
    for device_id in more:
        fail(client, s["devices"][device_id], error="signature_invalid")
    tick(sessions, settings)
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "paused"
    assert "signature_invalid 3" in rollout["paused_reason"]


def test_failures_below_the_minimum_do_not_pause(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings, failures=2)
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "running" and rollout["paused_reason"] is None
    assert rollout["failures_by_error"] == {"crc_mismatch": 2}
    assert not any(a["held"] for a in assignments(admin, s["id"]))


def test_failures_within_the_threshold_do_not_pause(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 30))
    rollout = create(
        admin,
        release["id"],
        stages=[50, 100],
        failure_threshold_pct=50,
        failure_min_devices=1,
        include_new_devices=False,
    )
    stage0 = sorted(assigned_devices(admin, rollout["id"]))
    failing = stage0[: len(stage0) // 2]  # at most 50 %: not above the threshold
    for device_id in failing:
        fail(client, devices[device_id])
    tick(sessions, settings)
    assert detail(admin, rollout["id"])["status"] == "running"
    fail(client, devices[stage0[len(stage0) // 2]])  # one more: above 50 %
    tick(sessions, settings)
    assert detail(admin, rollout["id"])["status"] == "paused"


def test_retry_failed_assigns_the_failed_devices_again(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    s = _gate_setup(admin, client, sessions, settings)
    r = admin.post(f"/api/v1/rollouts/{s['id']}/retry-failed")
    assert r.status_code == 200 and r.json() == {"retried": 3}
    held_retries = [a for a in assignments(admin, s["id"], "pending") if a["device_id"] in s["failed"]]
    assert {a["device_id"] for a in held_retries} == set(s["failed"])
    assert all(a["held"] for a in held_retries), "made while paused: held like the rest"
    assert len(assignments(admin, s["id"], "failed")) == 3, "the failed assignments stay in the history"
    rollout = detail(admin, s["id"])
    assert rollout["status"] == "paused"
    assert (rollout["events"][0]["kind"], rollout["events"][0]["detail"]["assignments"]) == ("retried_failed", 3)

    act(admin, s["id"], "resume")
    for device_id in s["failed"]:
        apply(client, s["devices"][device_id])
    assert assigned_devices(admin, s["id"], "applied") == set(s["failed"])
    assert admin.post(f"/api/v1/rollouts/{s['id']}/retry-failed").json() == {"retried": 0}


# ---- the stage window -----------------------------------------------------------------------------------------


def test_a_stage_of_offline_devices_is_done_after_its_window(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = fleet(admin, 10, version=None)  # registered, never heard from
    rollout = create(admin, release["id"], stages=[50, 100], stage_window_s=60, include_new_devices=False)
    rid = rollout["id"]
    offline = rollout["stages"][0]["devices"]
    started = at(rollout["stages"][0]["started_at"])

    tick(sessions, settings, started + timedelta(seconds=59))
    waiting = detail(admin, rid)
    assert waiting["stages"][0]["status"] == "running" and waiting["totals"]["waiting_offline"] == 0

    tick(sessions, settings, started + timedelta(seconds=61))
    after = detail(admin, rid)
    first = after["stages"][0]
    assert (first["status"], first["done_reason"]) == ("done", "window")
    assert after["totals"]["waiting_offline"] == offline
    assert first["counts"]["pending"] == offline, "they stay assigned"
    assert after["current_stage"] == 1 and after["stages"][1]["status"] == "running"
    assert assigned_devices(admin, rid) == {d["id"] for d in devices}
    stage_done = next(e for e in after["events"] if e["kind"] == "stage_done")
    assert (stage_done["detail"]["reason"], stage_done["detail"]["waiting_offline"]) == ("window", offline)


def test_after_the_window_a_stage_is_done_when_the_devices_it_reached_applied(
    admin: ApiClient, client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    devices = by_id(fleet(admin, 20))
    rollout = create(admin, release["id"], stages=[50, 100], stage_window_s=3600, include_new_devices=False)
    stage0 = sorted(assigned_devices(admin, rollout["id"]))
    reached, offline = stage0[:-1], stage0[-1]
    for device_id in reached:
        apply(client, devices[device_id])
    started = at(rollout["stages"][0]["started_at"])
    tick(sessions, settings, started + timedelta(seconds=600))
    assert detail(admin, rollout["id"])["stages"][0]["status"] == "running", "one pending: below 95 %"
    tick(sessions, settings, started + timedelta(seconds=3601))
    after = detail(admin, rollout["id"])
    assert (after["stages"][0]["status"], after["stages"][0]["done_reason"]) == ("done", "window")
    assert after["current_stage"] == 1
    assert after["totals"]["waiting_offline"] == 1
    assert offline in assigned_devices(admin, rollout["id"], "pending")


# ---- scheduled --------------------------------------------------------------------------------------------------


def test_a_scheduled_rollout_starts_at_start_at(
    admin: ApiClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 6, version=None)
    start = now() + timedelta(hours=2)
    rollout = create(admin, release["id"], stages=[50, 100], start_at=start.isoformat())
    rid = rollout["id"]
    assert rollout["status"] == "scheduled"
    assert (rollout["current_stage"], rollout["started_at"]) == (-1, None)
    assert at(rollout["start_at"]) == start
    assert [s["status"] for s in rollout["stages"]] == ["waiting", "waiting"]
    assert rollout["totals"]["targeted"] == 0
    assert assignments(admin, rid) == []

    assert tick(sessions, settings) == 0
    assert tick(sessions, settings, start - timedelta(seconds=1)) == 0
    assert detail(admin, rid)["status"] == "scheduled" and assignments(admin, rid) == []
    assert kinds(detail(admin, rid)) == ["created"]

    began = start + timedelta(seconds=1)
    assert tick(sessions, settings, began) == 1
    started = detail(admin, rid)
    assert (started["status"], started["current_stage"]) == ("running", 0)
    assert at(started["started_at"]) == began
    assert started["stages"][0]["status"] == "running"
    assert len(assignments(admin, rid, "pending")) == started["stages"][0]["devices"]
    assert kinds(started) == ["stage_started", "started", "created"]
    assert [e["actor"] for e in started["events"][:2]] == ["system", "system"]


def test_a_start_at_in_the_past_starts_at_once(admin: ApiClient) -> None:
    release = admin.release("v1.0.1")
    fleet(admin, 2, version=None)
    rollout = create(admin, release["id"], start_at=(now() - timedelta(minutes=5)).isoformat())
    assert rollout["status"] == "running" and rollout["current_stage"] == 0
