"""The device heartbeat: authentication, validation, delivery rules, progress, outcomes and telemetry."""

from __future__ import annotations

import time
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bota_ota.heartbeat import runtime
from bota_ota.storage import local
from tests.support.factories import ApiClient, assert_problem, crc32, firmware_bytes, heartbeat, sha256_hex

URL = "/api/device/v1/heartbeat"


def _assignment(api: ApiClient, assignment_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/assignments/{assignment_id}")
    assert r.status_code == 200
    return dict(r.json())


def _kinds(api: ApiClient, assignment_id: str) -> list[str]:
    return [e["kind"] for e in _assignment(api, assignment_id)["events"]]


@pytest.fixture
def image() -> bytes:
    return firmware_bytes(100_000, seed=42)


@pytest.fixture
def setup(admin: ApiClient, image: bytes) -> dict[str, Any]:
    rel = admin.release("v1.0.1", bin=image)
    dev = admin.device()
    a = admin.assign(dev["id"], rel["id"]).json()
    return {"release": rel, "device": dev, "token": dev["token"], "assignment": a}


# ---- authentication ----------------------------------------------------------------------------


def test_missing_token_is_401_problem(client: TestClient) -> None:
    r = client.post(URL, json={"firmware_version": "v1.0.0"})
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer bota_dt_wrong", "Bearer ", "Basic dXNlcjpwYXNz", "bota_dt_noscheme", "Bearer " + "x" * 5000],
)
def test_wrong_token_is_401_problem(client: TestClient, admin: ApiClient, authorization: str) -> None:
    admin.device()
    r = client.post(URL, json={"firmware_version": "v1.0.0"}, headers={"Authorization": authorization})
    assert_problem(r, 401)


def test_management_token_is_not_a_device_token(client: TestClient, admin: ApiClient) -> None:
    admin.device()
    assert_problem(heartbeat(client, admin.token), 401)


def test_device_token_is_not_a_management_token(client: TestClient, admin: ApiClient) -> None:
    dev = admin.device()
    assert_problem(client.get("/api/v1/devices", headers={"Authorization": f"Bearer {dev['token']}"}), 401)


# ---- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"firmware_version": "v1.0.0", "battery": 150}, "battery"),
        ({"firmware_version": "v1.0.0", "battery": -1}, "battery"),
        ({"firmware_version": "v1.0.0", "battery": "full"}, "battery"),
        ({"firmware_version": "v1.0.0", "network": "lte"}, "network"),
        ({"firmware_version": "v1.0.0", "rssi": 20}, "rssi"),
        ({"firmware_version": "v1.0.0", "recording": "sometimes"}, "recording"),
        ({}, "firmware_version"),
        ({"firmware_version": ""}, "firmware_version"),
        ({"firmware_version": None}, "firmware_version"),
        ({"firmware_version": "v" * 65}, "firmware_version"),
        ({"firmware_version": "v1.0.0", "ota": {"assignment_id": "x", "state": "flashing"}}, "ota.state"),
        (
            {"firmware_version": "v1.0.0", "ota": {"assignment_id": "x", "state": "downloading", "progress": 101}},
            "ota.progress",
        ),
        ({"firmware_version": "v1.0.0", "ota": {"state": "downloading"}}, "ota.assignment_id"),
        (
            {"firmware_version": "v1.0.0", "ota": {"assignment_id": "x", "state": "failed", "error": "e" * 501}},
            "ota.error",
        ),
    ],
)
def test_body_validation_is_422_naming_field(
    admin: ApiClient, setup: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    r = admin.client.post(URL, json=body, headers={"Authorization": f"Bearer {setup['token']}"})
    assert_problem(r, 422, field)
    # A rejected heartbeat changes nothing: not seen, nothing delivered.
    dev = admin.get(f"/api/v1/devices/{setup['device']['id']}").json()
    assert dev["last_seen_at"] is None
    assert _assignment(admin, setup["assignment"]["id"])["status"] == "pending"


def test_minimal_heartbeat_without_assignment(admin: ApiClient) -> None:
    dev = admin.device()
    r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0")
    assert r.status_code == 200
    assert r.json()["heartbeat_interval_s"] == 60
    assert r.json()["ota"] is None
    assert r.json().get("ota_deferred") is None


# ---- delivery ----------------------------------------------------------------------------------


def test_pending_is_delivered_with_a_complete_manifest(admin: ApiClient, setup: dict[str, Any], image: bytes) -> None:
    before = datetime.now(UTC)
    reply = heartbeat(admin.client, setup["token"], firmware_version="v1.0.0").json()
    manifest = reply["ota"]
    assert manifest["assignment_id"] == setup["assignment"]["id"]
    assert manifest["version"] == "v1.0.1"
    assert manifest["size"] == len(image)
    assert manifest["crc32"] == crc32(image)
    assert manifest["sha256"] == sha256_hex(image)
    expires = datetime.fromisoformat(manifest["expires_at"])
    # Default lifetime: 15 minutes.
    assert before + timedelta(minutes=14) <= expires <= datetime.now(UTC) + timedelta(minutes=15, seconds=1)
    assert admin.client.get(manifest["url"]).content == image
    a = _assignment(admin, setup["assignment"]["id"])
    assert a["status"] == "delivered"
    assert a["delivered_at"] is not None
    assert a["channel"] == "http"


def test_recording_defers_delivery_then_not_recording_delivers(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    for _ in range(2):
        reply = heartbeat(admin.client, setup["token"], recording=True).json()
        assert reply["ota"] is None
        assert reply["ota_deferred"] == "recording"
        assert _assignment(admin, aid)["status"] == "pending"
    assert _kinds(admin, aid) == ["created", "deferred"]  # the reason is recorded once, not per heartbeat
    assert _assignment(admin, aid)["deferred"] == "recording"
    assert admin.get(f"/api/v1/devices/{setup['device']['id']}").json()["recording"] is True

    reply = heartbeat(admin.client, setup["token"], recording=False).json()
    assert reply["ota"]["assignment_id"] == aid
    assert reply.get("ota_deferred") is None
    assert _assignment(admin, aid)["status"] == "delivered"
    assert _assignment(admin, aid)["deferred"] is None
    assert admin.get(f"/api/v1/devices/{setup['device']['id']}").json()["recording"] is False


def test_recording_omitted_counts_as_not_recording(admin: ApiClient, setup: dict[str, Any]) -> None:
    heartbeat(admin.client, setup["token"], recording=True)
    reply = heartbeat(admin.client, setup["token"]).json()
    assert reply["ota"] is not None


def test_recording_while_delivered_gets_no_manifest(admin: ApiClient, setup: dict[str, Any]) -> None:
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(admin.client, setup["token"], recording=True).json()
    assert reply["ota"] is None
    assert reply["ota_deferred"] == "recording"
    assert _assignment(admin, setup["assignment"]["id"])["status"] == "delivered"


def test_recording_without_assignment_defers_nothing(admin: ApiClient) -> None:
    dev = admin.device()
    reply = heartbeat(admin.client, dev["token"], recording=True).json()
    assert reply["ota"] is None
    assert reply.get("ota_deferred") is None


def _clock_moves_on(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the server's clocks (the URL signer's and the heartbeat's) forward by ``seconds``."""
    later = time.time() + seconds
    monkeypatch.setattr(local, "time", types.SimpleNamespace(time=lambda: later))
    monkeypatch.setattr(runtime, "utcnow", lambda: datetime.fromtimestamp(later, UTC))


def test_delivered_without_progress_is_redelivered_with_a_fresh_url(
    admin: ApiClient, setup: dict[str, Any], image: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    aid = setup["assignment"]["id"]
    first = heartbeat(admin.client, setup["token"]).json()["ota"]
    # An hour later the first URL has expired.
    _clock_moves_on(monkeypatch, 3600)
    assert_problem(admin.client.get(first["url"]), 403)
    second = heartbeat(admin.client, setup["token"]).json()["ota"]
    assert second is not None
    assert second["assignment_id"] == aid
    assert second["url"] != first["url"]
    assert datetime.fromisoformat(second["expires_at"]) > datetime.fromisoformat(first["expires_at"])
    assert {k: v for k, v in second.items() if k not in ("url", "expires_at")} == {
        k: v for k, v in first.items() if k not in ("url", "expires_at")
    }
    assert admin.client.get(second["url"]).content == image
    a = _assignment(admin, aid)
    assert a["status"] == "delivered"
    assert [e["kind"] for e in a["events"]] == ["created", "delivered", "redelivered"]
    assert a["events"][-1]["status"] == "delivered"
    assert datetime.fromisoformat(a["events"][-1]["detail"]["expires_at"]) == datetime.fromisoformat(
        second["expires_at"]
    )


def test_every_heartbeat_gets_a_fresh_url_but_redelivered_is_recorded_once_per_expired_url(
    admin: ApiClient, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A device that lost the reply (or is stuck) gets the manifest on every heartbeat; the history records a
    # redelivery only once the last recorded URL has expired, not once a minute for as long as it is stuck.
    for _ in range(3):
        manifest = heartbeat(admin.client, setup["token"]).json()["ota"]
        assert manifest["assignment_id"] == setup["assignment"]["id"]
    assert _kinds(admin, setup["assignment"]["id"]) == ["created", "delivered"]
    _clock_moves_on(monkeypatch, 901)  # past the 15-minute URL lifetime
    for _ in range(3):
        assert heartbeat(admin.client, setup["token"]).json()["ota"]["assignment_id"] == setup["assignment"]["id"]
    assert _kinds(admin, setup["assignment"]["id"]) == ["created", "delivered", "redelivered"]


def test_progress_is_recorded(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "downloading", "progress": 42})
    a = _assignment(admin, aid)
    assert (a["ota_state"], a["progress"]) == ("downloading", 42)
    heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "downloading", "progress": 77})
    # Only the percentage moved (same state): written behind with the telemetry, like last-seen.
    assert _assignment(admin, aid)["progress"] == 42
    admin.client.portal.call(admin.client.app.state.heartbeat.flush)  # type: ignore[attr-defined,union-attr]
    a = _assignment(admin, aid)
    assert (a["ota_state"], a["progress"]) == ("downloading", 77)
    assert a["status"] == "delivered"
    # A progress report is not a lost reply: no "redelivered" events.
    assert "redelivered" not in _kinds(admin, aid)
    dev = admin.get(f"/api/v1/devices/{setup['device']['id']}").json()
    assert dev["active_assignment"]["ota_state"] == "downloading"
    assert dev["active_assignment"]["progress"] == 77


@pytest.mark.parametrize("state", ["verifying", "writing", "rebooting"])
def test_no_manifest_while_verifying_writing_or_rebooting(admin: ApiClient, setup: dict[str, Any], state: str) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": state, "progress": 100}).json()
    assert reply["ota"] is None
    a = _assignment(admin, aid)
    assert a["status"] == "delivered"
    assert a["ota_state"] == state
    assert a["events"][-1]["kind"] == "progress"
    assert a["events"][-1]["detail"]["state"] == state


def test_failed_keeps_the_error(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(
        admin.client, setup["token"], ota={"assignment_id": aid, "state": "failed", "error": "crc_mismatch"}
    ).json()
    assert reply["ota"] is None
    a = _assignment(admin, aid)
    assert a["status"] == "failed"
    assert a["error"] == "crc_mismatch"
    assert a["finished_at"] is not None
    # Final: later heartbeats deliver nothing and change nothing.
    assert heartbeat(admin.client, setup["token"]).json()["ota"] is None
    assert heartbeat(admin.client, setup["token"], firmware_version="v1.0.1").json()["ota"] is None
    assert _assignment(admin, aid)["status"] == "failed"
    assert admin.get(f"/api/v1/devices/{setup['device']['id']}").json()["active_assignment"] is None


def test_failed_without_error_text_ends_an_attempt_as_unknown(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "failed"})
    a = _assignment(admin, aid)
    # docs/device-protocol.md: "unknown" is not a final error, so it ends one attempt of max_attempts.
    assert (a["status"], a["error"], a["attempts"]) == ("pending", "unknown", 1)
    assert a["retry_at"] is not None
    assert heartbeat(admin.client, setup["token"]).json()["ota_deferred"] == "retry_wait"


def test_a_final_error_fails_at_once(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "failed", "error": "crc_mismatch"})
    a = _assignment(admin, aid)
    assert (a["status"], a["error"], a["attempts"]) == ("failed", "crc_mismatch", 0)


def test_downloading_progress_gets_a_fresh_manifest(admin: ApiClient, setup: dict[str, Any]) -> None:
    # docs/device-protocol.md step 4: "In downloading it goes on to step 5 (a fresh URL)".
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "downloading", "progress": 3})
    assert reply.json()["ota"]["assignment_id"] == aid
    assert _assignment(admin, aid)["status"] == "delivered"


def test_version_report_applies_a_pending_assignment_directly(admin: ApiClient, setup: dict[str, Any]) -> None:
    # "becomes applied (whatever its state)": a device that got the update some other way.
    aid = setup["assignment"]["id"]
    reply = heartbeat(admin.client, setup["token"], firmware_version="v1.0.1", recording=True).json()
    assert reply["ota"] is None
    assert reply.get("ota_deferred") is None
    a = _assignment(admin, aid)
    assert a["status"] == "applied"
    assert [e["kind"] for e in a["events"]] == ["created", "applied"]


def test_unknown_fields_are_ignored(admin: ApiClient, setup: dict[str, Any]) -> None:
    r = heartbeat(
        admin.client,
        setup["token"],
        temperature_c=41,
        ota={"assignment_id": "x", "state": "downloading", "eta_s": 5},
    )
    assert r.status_code == 200, r.text
    assert r.json()["ota"]["assignment_id"] == setup["assignment"]["id"]


@pytest.mark.parametrize("reported", ["v1.0.1", "1.0.1", "V1.0.1", " v1.0.1 ", "1.0.1+build.9"])
def test_semantically_equal_version_means_applied(admin: ApiClient, setup: dict[str, Any], reported: str) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(admin.client, setup["token"], firmware_version=reported).json()
    assert reply["ota"] is None
    a = _assignment(admin, aid)
    assert a["status"] == "applied"
    assert a["finished_at"] is not None
    assert a["error"] is None


@pytest.mark.parametrize("reported", ["v1.0.0", "v1.0.1-rc.1", "garbage"])
def test_older_or_unparsable_versions_do_not_apply(admin: ApiClient, setup: dict[str, Any], reported: str) -> None:
    heartbeat(admin.client, setup["token"])
    heartbeat(admin.client, setup["token"], firmware_version=reported)
    assert _assignment(admin, setup["assignment"]["id"])["status"] == "delivered"


@pytest.mark.parametrize("reported", ["v1.0.2", "v1.0.10", "1.1.0"])
def test_newer_versions_supersede(admin: ApiClient, setup: dict[str, Any], reported: str) -> None:
    heartbeat(admin.client, setup["token"])
    assert heartbeat(admin.client, setup["token"], firmware_version=reported).json()["ota"] is None
    assert _assignment(admin, setup["assignment"]["id"])["status"] == "superseded"


def test_cancelled_pending_is_never_delivered(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    assert admin.post(f"/api/v1/assignments/{aid}/cancel").status_code == 200
    for body in ({}, {"recording": False}, {"ota": {"assignment_id": aid, "state": "downloading", "progress": 5}}):
        assert heartbeat(admin.client, setup["token"], **body).json()["ota"] is None
    a = _assignment(admin, aid)
    assert a["status"] == "cancelled"
    assert a["delivered_at"] is None
    assert _kinds(admin, aid) == ["created", "cancelled"]


def test_cancelled_delivered_is_not_delivered_again(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    admin.post(f"/api/v1/assignments/{aid}/cancel")
    assert heartbeat(admin.client, setup["token"]).json()["ota"] is None
    # A late report from the device about the cancelled assignment changes nothing.
    heartbeat(admin.client, setup["token"], ota={"assignment_id": aid, "state": "failed", "error": "late"})
    heartbeat(admin.client, setup["token"], firmware_version="v1.0.1")
    a = _assignment(admin, aid)
    assert a["status"] == "cancelled"
    assert a["error"] is None


def test_a_device_never_sees_another_devices_assignment(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    other = admin.device()
    assert heartbeat(admin.client, other["token"]).json()["ota"] is None
    # Reports about someone else's assignment are ignored.
    heartbeat(admin.client, other["token"], ota={"assignment_id": aid, "state": "failed", "error": "x"})
    heartbeat(admin.client, other["token"], firmware_version="v1.0.1")
    assert _assignment(admin, aid)["status"] == "pending"
    # The owner still gets it.
    assert heartbeat(admin.client, setup["token"]).json()["ota"]["assignment_id"] == aid
    heartbeat(admin.client, other["token"], ota={"assignment_id": aid, "state": "failed", "error": "x"})
    assert _assignment(admin, aid)["status"] == "delivered"


def test_two_devices_each_get_their_own(admin: ApiClient) -> None:
    r1, r2 = admin.release("v1.0.1"), admin.release("v1.0.2")
    d1, d2 = admin.device(), admin.device()
    a1 = admin.assign(d1["id"], r1["id"]).json()
    a2 = admin.assign(d2["id"], r2["id"]).json()
    m1 = heartbeat(admin.client, d1["token"]).json()["ota"]
    m2 = heartbeat(admin.client, d2["token"]).json()["ota"]
    assert (m1["assignment_id"], m1["version"]) == (a1["id"], "v1.0.1")
    assert (m2["assignment_id"], m2["version"]) == (a2["id"], "v1.0.2")


def test_report_for_a_stale_assignment_id_gets_the_current_manifest(admin: ApiClient, setup: dict[str, Any]) -> None:
    aid = setup["assignment"]["id"]
    heartbeat(admin.client, setup["token"])
    reply = heartbeat(
        admin.client, setup["token"], ota={"assignment_id": "old", "state": "failed", "error": "x"}
    ).json()
    assert reply["ota"]["assignment_id"] == aid
    assert _assignment(admin, aid)["status"] == "delivered"


# ---- telemetry ---------------------------------------------------------------------------------


def test_every_heartbeat_updates_telemetry(admin: ApiClient) -> None:
    dev = admin.device()
    path = f"/api/v1/devices/{dev['id']}"
    t0 = datetime.now(UTC)
    heartbeat(
        admin.client, dev["token"], firmware_version="v1.0.0", recording=True, battery=87, network="wifi", rssi=-61
    )
    d = admin.get(path).json()
    seen1 = datetime.fromisoformat(d["last_seen_at"])
    assert t0 <= seen1 <= datetime.now(UTC)
    assert (d["firmware_version"], d["recording"], d["battery"], d["network"], d["rssi"]) == (
        "v1.0.0",
        True,
        87,
        "wifi",
        -61,
    )
    assert d["online"] is True
    assert d["ble_connected"] is False

    heartbeat(admin.client, dev["token"], firmware_version="v1.0.3", recording=False, battery=12, network="cellular")
    d = admin.get(path).json()
    assert (d["firmware_version"], d["recording"], d["battery"], d["network"]) == ("v1.0.3", False, 12, "cellular")
    assert datetime.fromisoformat(d["last_seen_at"]) >= seen1
    # Omitted battery, network and rssi keep their last values (docs/device-protocol.md).
    heartbeat(admin.client, dev["token"], firmware_version="v1.0.3")
    d = admin.get(path).json()
    assert (d["battery"], d["network"], d["rssi"], d["recording"]) == (12, "cellular", -61, False)
    # Telemetry of one device does not leak to another.
    other = admin.get(f"/api/v1/devices/{admin.device()['id']}").json()
    assert (other["firmware_version"], other["battery"], other["last_seen_at"]) == (None, None, None)
