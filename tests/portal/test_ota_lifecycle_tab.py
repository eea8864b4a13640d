"""The OTA tab shows the update lifecycle: attempts, why a pending update waits, a failure's code in plain
words, and a Retry button that makes a linked assignment (operators only)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bota_ota.accounts.service import create_user
from bota_ota.core.database import session_scope
from bota_ota.core.settings import Settings
from bota_ota.ota.words import DEFERRALS, ERRORS
from tests.portal.pages import Element, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"retry_backoff_s": 3600, "max_attempts": 3})


@pytest.fixture
def setup(admin: ApiClient) -> dict[str, Any]:
    dev = admin.device(device_id="BP-LIFE-1")
    rel = admin.release("v1.0.1", bin=b"\x07" * 300)
    assignment = admin.assign(dev["id"], rel["id"]).json()
    return {"token": dev["token"], "id": assignment["id"]}


def flash(page: Element) -> tuple[str, bool] | None:
    for p in page.by_id("main").find_all("p"):
        classes = (p.attr("class") or "").split()
        if "flash" in classes:
            return p.text, "flash-error" in classes
    return None


def _status(client: TestClient) -> Any:
    r = client.get("/devices/BP-LIFE-1/ota-status", headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    return html(r)


def test_a_rolled_back_attempt_and_the_wait_before_the_next_are_shown(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], setup: dict[str, Any]
) -> None:
    sign_in(client, *portal_user)
    assert _status(client).find(class_="attempts") is None  # nothing failed yet
    heartbeat(admin.client, setup["token"])  # delivered
    heartbeat(admin.client, setup["token"], ota={"assignment_id": setup["id"], "state": "rebooting"})
    heartbeat(admin.client, setup["token"])  # back on v1.0.0: rolled back, pending until retry_at
    assert heartbeat(admin.client, setup["token"]).json()["ota_deferred"] == "retry_wait"

    status = _status(client)
    attempts = status.find(class_="attempts")
    assert attempts is not None and "Attempt 2 of 3" in attempts.text and "1 failed" in attempts.text
    waiting = status.find(class_="waiting")
    assert waiting is not None and waiting.attr("data-deferred") == "retry_wait"
    assert DEFERRALS["retry_wait"] in waiting.text
    history = client.get("/devices/BP-LIFE-1?tab=ota")
    assert "rolled_back (attempt 1)" in html(history).text


def test_a_deferral_by_the_delivery_policy_says_why(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], setup: dict[str, Any]
) -> None:
    assert heartbeat(admin.client, setup["token"], battery=5, charging=False).json()["ota_deferred"] == "battery_low"
    sign_in(client, *portal_user)
    waiting = _status(client).find(class_="waiting")
    assert waiting is not None and waiting.attr("data-deferred") == "battery_low"
    assert DEFERRALS["battery_low"] in waiting.text
    heartbeat(admin.client, setup["token"], battery=80)  # delivered: no longer waiting
    assert _status(client).find(class_="waiting") is None


def test_a_failure_is_explained_and_retried_from_the_tab(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], setup: dict[str, Any]
) -> None:
    heartbeat(admin.client, setup["token"])
    failed = {"assignment_id": setup["id"], "state": "failed", "error": "crc_mismatch"}
    heartbeat(admin.client, setup["token"], ota=failed)
    sign_in(client, *portal_user)
    status = _status(client)
    assert status.find("span", **{"data_status": "failed"}) is not None
    explain = status.find(class_="explain")
    assert explain is not None and explain.text == " ".join(ERRORS["crc_mismatch"].split())
    assert "Retry" in status.buttons()
    # After a reload the failure stays in "Current update", explained, with the Retry button beside it.
    page = html(client.get("/devices/BP-LIFE-1?tab=ota"))
    current = page.by_id("ota-status")
    assert current.by_id("ota-status-line").attr("data-announce") == "v1.0.1 failed: crc_mismatch"
    assert current.find(class_="explain") is not None
    assert page.by_id("ota-actions").buttons() == ["Retry"] and current.buttons() == []

    token = csrf(client, "/devices/BP-LIFE-1?tab=ota")
    r = client.post(f"/assignments/{setup['id']}/retry", data={"csrf_token": token}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/devices/BP-LIFE-1?tab=ota"), r.text
    message, is_error = flash(html(client.get(r.headers["location"]))) or ("", True)
    assert not is_error and message.startswith("Retrying v1.0.1")
    new = admin.get("/api/v1/assignments", params={"device_id": "BP-LIFE-1", "status": "pending"}).json()
    assert [a["retry_of"] for a in new] == [setup["id"]]
    audit = admin.get("/api/v1/audit", params={"action": "assignment.create"}).json()[0]
    assert audit["actor"] == "user:op@example.com" and audit["detail"].get("retry_of") == setup["id"], audit

    # Retrying the same failure again: the device has an active assignment now, said on the tab.
    r = client.post(f"/assignments/{setup['id']}/retry", data={"csrf_token": token})
    message, is_error = flash(html(r)) or ("", False)
    assert is_error and message.startswith("Not retried:") and "active assignment" in message


def test_a_viewer_sees_no_retry_and_cannot_post_one(
    client: TestClient, admin: ApiClient, sessions: Any, setup: dict[str, Any]
) -> None:
    with session_scope(sessions) as session:
        create_user(session, email="view@example.com", password="viewer-pw1", role="viewer", actor="test")
    heartbeat(admin.client, setup["token"])
    failed = {"assignment_id": setup["id"], "state": "failed", "error": "incompatible_image"}
    heartbeat(admin.client, setup["token"], ota=failed)
    sign_in(client, "view@example.com", "viewer-pw1")
    status = _status(client)
    assert "Retry" not in status.buttons()
    explain = status.find(class_="explain")
    assert explain is not None and explain.text == ERRORS["incompatible_image"]
    token = csrf(client, "/devices/BP-LIFE-1?tab=ota")
    assert client.post(f"/assignments/{setup['id']}/retry", data={"csrf_token": token}).status_code == 403


def test_the_device_list_says_which_updates_wait_and_why(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], setup: dict[str, Any]
) -> None:
    heartbeat(admin.client, setup["token"], network="cellular", battery=3)
    sign_in(client, *portal_user)
    row = next(tr for tr in html(client.get("/devices")).find_all("tr") if "BP-LIFE-1" in tr.text)
    waiting = row.find(class_="waiting")
    assert waiting is not None and waiting.text == "waiting: battery low"
    assert waiting.attr("title") == DEFERRALS["battery_low"]
