"""Decommissioning a device: its token stops at once (cached or not), its active assignment is cancelled,
it leaves every rollout, lists, counts, groups and the app no longer see it, it cannot be assigned, and its
history stays. Recommissioning is the way back, with a new token and claim code."""

from __future__ import annotations

from typing import Any

from bota_ota.core.database import session_scope
from bota_ota.devices import service as device_service
from tests.support.app_api import make_app_user, owned_device
from tests.support.factories import ApiClient, assert_problem, heartbeat
from tests.support.heartbeat_cache import listening_cache, settle
from tests.support.rollouts import assigned_devices, create, deliver, tick

URL = "/api/v1/devices"


def _decommission(api: ApiClient, device_id: str) -> dict[str, Any]:
    r = api.post(f"{URL}/{device_id}/decommission")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ids(api: ApiClient, **params: Any) -> list[str]:
    r = api.get(URL, params=params)
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Total-Count"]) == len(r.json())
    return [d["id"] for d in r.json()]


def _audit(api: ApiClient, action: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/audit", params={"action": action})
    assert r.status_code == 200, r.text
    return list(r.json())


def test_the_token_stops_at_once_even_right_after_a_heartbeat_warmed_the_cache(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = admin.device()
    assignment = admin.assign(dev["id"], admin.release()["id"]).json()
    assert deliver(admin.client, dev) == assignment["id"]  # written at once: delivered
    settle(app)
    assert heartbeat(admin.client, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]  # cached
    assert cache.holds(dev["id"])

    out = _decommission(admin, dev["id"])
    assert out["decommissioned_at"] is not None
    assert out["active_assignment"] is None
    assert not cache.holds(dev["id"])
    # The routine heartbeat, a progress report and a failure report: all refused like a wrong token.
    assert_problem(heartbeat(admin.client, dev["token"]), 401)
    report = {"assignment_id": assignment["id"], "state": "downloading", "progress": 40}
    assert_problem(heartbeat(admin.client, dev["token"], ota=report), 401)
    failed = {"assignment_id": assignment["id"], "state": "failed", "error": "download_failed"}
    assert_problem(heartbeat(admin.client, dev["token"], ota=failed), 401)
    assert not cache.holds(dev["id"])


def test_the_active_assignment_is_cancelled_saying_why_and_the_history_stays(admin: ApiClient) -> None:
    dev = admin.device()
    assignment = admin.assign(dev["id"], admin.release()["id"]).json()
    _decommission(admin, dev["id"])

    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert detail["status"] == "cancelled"
    assert detail["events"][-1]["kind"] == "cancelled"
    assert detail["events"][-1]["detail"]["reason"] == "device decommissioned"
    # History: the device, its assignments and events, the audit trail.
    assert [a["id"] for a in admin.get(f"{URL}/{dev['id']}/assignments").json()] == [assignment["id"]]
    assert "decommissioned" in [e["kind"] for e in admin.get(f"{URL}/{dev['id']}/events").json()]
    assert [e["target_id"] for e in _audit(admin, "device.decommission")] == [dev["id"]]
    shown = admin.get(f"{URL}/{dev['id']}").json()
    assert shown["decommissioned_at"] is not None and shown["active_assignment"] is None


def test_it_cannot_be_assigned_rotated_or_decommissioned_twice(admin: ApiClient) -> None:
    dev = admin.device()
    release = admin.release()
    _decommission(admin, dev["id"])
    body = assert_problem(admin.assign(dev["id"], release["id"]), 409, field="device_id")
    assert dev["id"] in body["detail"]
    assert_problem(admin.post(f"{URL}/{dev['id']}/decommission"), 409)
    assert_problem(admin.post(f"{URL}/{dev['id']}/token"), 409)
    active = admin.device()
    assert_problem(admin.post(f"{URL}/{active['id']}/recommission"), 409)
    assert_problem(admin.post(f"{URL}/nope/decommission"), 404)
    assert_problem(admin.post(f"{URL}/nope/recommission"), 404)


def test_the_list_hides_it_unless_asked_and_counts_and_groups_leave_it_out(admin: ApiClient, sessions: Any) -> None:
    kept, gone = admin.device(device_id="BP-KEPT"), admin.device(device_id="BP-GONE")
    for dev in (kept, gone):
        r = admin.client.put(f"{URL}/{dev['id']}/tags", json={"tags": ["beta"]}, headers=admin.headers)
        assert r.status_code == 200, r.text
        assert heartbeat(admin.client, dev["token"]).status_code == 200
    group = admin.post("/api/v1/groups", json={"name": "beta", "filter": {"tags": ["beta"]}}).json()
    _decommission(admin, gone["id"])

    assert _ids(admin) == ["BP-KEPT"]
    assert _ids(admin, decommissioned="false") == ["BP-KEPT"]
    assert _ids(admin, decommissioned="true") == ["BP-GONE"]
    assert _ids(admin, decommissioned="any") == ["BP-GONE", "BP-KEPT"]
    assert_problem(admin.get(URL, params={"decommissioned": "maybe"}), 422, field="query.decommissioned")
    assert admin.get(f"/api/v1/groups/{group['id']}").json()["device_count"] == 1
    assert [d["id"] for d in admin.get(f"/api/v1/groups/{group['id']}/devices").json()] == ["BP-KEPT"]
    r = admin.post(f"{URL}/tags", json={"filter": {"tags": ["beta"]}, "add": ["eu"]})
    assert r.json() == {"matched": 1, "changed": 1}
    with session_scope(sessions) as session:
        assert device_service.fleet_counts(session, online_window_s=130) == (1, 1)
        assert sum(n for _, n in device_service.firmware_distribution(session)["bota-pin"]) == 1


def test_recommission_gives_a_working_new_token_and_claim_code_and_the_old_token_stays_dead(
    admin: ApiClient, app: Any
) -> None:
    listening_cache(app)
    dev = admin.device()
    assert heartbeat(admin.client, dev["token"]).status_code == 200
    _decommission(admin, dev["id"])
    r = admin.post(f"{URL}/{dev['id']}/recommission")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    back = r.json()
    assert back["decommissioned_at"] is None
    assert back["token"].startswith("bota_dt_") and back["token"] != dev["token"]
    assert back["claim_code"] and back["claim_code"] != dev["claim_code"]
    assert_problem(heartbeat(admin.client, dev["token"]), 401)
    assert heartbeat(admin.client, back["token"]).status_code == 200
    assert_problem(heartbeat(admin.client, dev["token"]), 401)
    assert _ids(admin) == [dev["id"]]
    assert [e["target_id"] for e in _audit(admin, "device.recommission")] == [dev["id"]]
    # It can be assigned again, and the new claim code claims it.
    assert admin.assign(dev["id"], admin.release()["id"]).status_code == 201
    app_user = make_app_user(admin)
    claim = app_user.post("/devices/claim", json={"id": dev["id"], "claim_code": back["claim_code"]})
    assert claim.status_code == 200, claim.text


def test_the_app_no_longer_lists_or_offers_it(admin: ApiClient) -> None:
    app_user = make_app_user(admin)
    dev = owned_device(admin, app_user)
    admin.release(version="v1.0.1", ufw=b"u" * 1024)
    assert [d["id"] for d in app_user.get("/devices").json()] == [dev["id"]]
    assert app_user.get(f"/devices/{dev['id']}/firmware-update").json()["update_available"] is True
    _decommission(admin, dev["id"])
    assert app_user.get("/devices").json() == []
    assert_problem(app_user.get(f"/devices/{dev['id']}"), 404)
    assert_problem(app_user.get(f"/devices/{dev['id']}/firmware-update"), 404)
    relay = app_user.post(f"/devices/{dev['id']}/relay", json={"firmware_version": "v1.0.0"})
    assert_problem(relay, 404)
    # The old claim code no longer claims it.
    other = make_app_user(admin, email="bo@example.com")
    assert_problem(other.post("/devices/claim", json={"id": dev["id"], "claim_code": dev["claim_code"]}), 404)


def test_it_leaves_a_running_rollout_which_assigns_it_nothing_more(
    admin: ApiClient, sessions: Any, settings: Any
) -> None:
    devices = [admin.device() for _ in range(12)]
    for d in devices:
        assert heartbeat(admin.client, d["token"], firmware_version="v1.0.0").status_code == 200
    release = admin.release(version="v1.0.1")
    rollout = create(admin, release["id"], stages=[50, 100], advance="manual")  # stage 0 starts at once
    first = assigned_devices(admin, rollout["id"])
    assert 0 < len(first) < len(devices)
    in_first = next(d for d in devices if d["id"] in first)
    not_yet = next(d for d in devices if d["id"] not in first)
    _decommission(admin, in_first["id"])
    _decommission(admin, not_yet["id"])

    assert assigned_devices(admin, rollout["id"], status="cancelled") == {in_first["id"]}
    r = admin.post(f"/api/v1/rollouts/{rollout['id']}/advance")
    assert r.status_code == 200, r.text
    tick(sessions, settings)
    tick(sessions, settings)
    everyone = assigned_devices(admin, rollout["id"])
    assert not_yet["id"] not in everyone
    assert everyone == {d["id"] for d in devices} - {not_yet["id"]}
    assert assigned_devices(admin, rollout["id"], status="pending") == {d["id"] for d in devices} - {
        in_first["id"],
        not_yet["id"],
    }
    detail = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
    assert detail["totals"]["targeted"] == len(devices) - 2
    left = [e for e in detail["events"] if e["kind"] == "device_left"]
    assert sorted(e["detail"]["device_id"] for e in left) == [in_first["id"]]
