"""The device page: Overview, the OTA tab (assign, live status fragment, cancel) and Activity, with roles."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from bota_ota.accounts.service import create_user
from bota_ota.core.database import session_scope
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat

STATUS_RE = re.compile(r'data-status="([a-z]+)"')


def status_badge(client: TestClient, device_id: str) -> str | None:
    fragment = client.get(f"/devices/{device_id}/ota-status", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    match = STATUS_RE.search(fragment.text)
    return match.group(1) if match else None


def test_assign_from_the_ota_tab_and_watch_the_badge(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-OTA-1")
    release = admin.release("v1.0.1", bin=b"\x03" * 500)
    admin.release("v9.0.0", model="bota-note", bin=b"\x04" * 500)  # another model: not offered
    sign_in(client, *portal_user)
    page = client.get("/devices/BP-OTA-1?tab=ota")
    assert 'hx-trigger="every 2s"' in page.text
    assert "v1.0.1" in page.text and "v9.0.0" not in page.text
    r = client.post(
        "/devices/BP-OTA-1/assign",
        data={"release_id": release["id"], "csrf_token": csrf(client, "/devices/BP-OTA-1?tab=ota")},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert status_badge(client, "BP-OTA-1") == "pending"
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    assert status_badge(client, "BP-OTA-1") == "delivered"
    heartbeat(admin.client, device["token"], firmware_version="v1.0.1")
    assert status_badge(client, "BP-OTA-1") == "applied"
    history = client.get("/devices/BP-OTA-1?tab=ota").text
    assert "created" in history and "delivered" in history and "applied" in history
    assert (
        admin.get("/api/v1/audit", params={"action": "assignment.create"}).json()[0]["actor"] == "user:op@example.com"
    )


def test_assign_errors_are_shown_beside_the_dropdown(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-OTA-2")
    release = admin.release("v1.0.1", bin=b"\x05" * 500)
    sign_in(client, *portal_user)
    token = csrf(client, "/devices/BP-OTA-2?tab=ota")
    empty = client.post("/devices/BP-OTA-2/assign", data={"release_id": "", "csrf_token": token})
    assert empty.status_code == 422 and 'id="release-error"' in empty.text and "Choose a release." in empty.text
    client.post("/devices/BP-OTA-2/assign", data={"release_id": release["id"], "csrf_token": token})
    again = client.post("/devices/BP-OTA-2/assign", data={"release_id": release["id"], "csrf_token": token})
    assert again.status_code == 409 and "already has an active assignment" in again.text


def test_older_releases_are_not_offered_and_a_downgrade_is_refused_beside_the_dropdown(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-OTA-DOWN")
    heartbeat(admin.client, device["token"], firmware_version="v1.0.4")
    older = admin.release("v1.0.2", bin=b"\x07" * 500)
    admin.release("v1.0.4", bin=b"\x08" * 500)  # the same version: offered (applied on the next heartbeat)
    admin.release("v1.1.0", bin=b"\x09" * 500)
    sign_in(client, *portal_user)
    page = client.get("/devices/BP-OTA-DOWN?tab=ota").text
    options = re.findall(r'<option value="[0-9a-f]+">([^<]+)</option>', page)
    assert options == ["v1.1.0", "v1.0.4"]
    assert "1 older release than the device's v1.0.4 is not listed" in page
    assert 'aria-describedby="release-hint"' in page
    # A stale page or a forged form: refused with the reason beside the field, nothing assigned.
    r = client.post(
        "/devices/BP-OTA-DOWN/assign",
        data={"release_id": older["id"], "csrf_token": csrf(client, "/devices/BP-OTA-DOWN?tab=ota")},
    )
    assert r.status_code == 422
    error = re.search(r'<p class="error" id="release-error" role="alert">([^<]+)</p>', r.text)
    assert error is not None and "older than v1.0.4" in error.group(1) and "downgrade" in error.group(1)
    assert 'aria-invalid="true"' in r.text and 'aria-describedby="release-hint release-error"' in r.text
    assert admin.get("/api/v1/devices/BP-OTA-DOWN/assignments").json() == []


def test_a_superseded_assignment_in_the_history(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-OTA-SUP")
    release = admin.release("v1.0.2", bin=b"\x0a" * 500)
    admin.assign("BP-OTA-SUP", release["id"])
    heartbeat(admin.client, device["token"], firmware_version="v1.0.4")
    sign_in(client, *portal_user)
    assert status_badge(client, "BP-OTA-SUP") == "superseded"
    history = client.get("/devices/BP-OTA-SUP?tab=ota").text
    assert '<span class="badge status-superseded">superseded</span>' in history
    assert "superseded: the device reported v1.0.4" in history


def test_cancel_from_the_portal(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id="BP-OTA-3")
    release = admin.release("v1.0.1", bin=b"\x06" * 500)
    assignment = admin.assign("BP-OTA-3", release["id"]).json()
    sign_in(client, *portal_user)
    r = client.post(
        f"/assignments/{assignment['id']}/cancel",
        data={"csrf_token": csrf(client, "/devices/BP-OTA-3?tab=ota")},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "cancelled"


def test_a_viewer_sees_no_assign_button_and_a_forged_post_gets_403(
    client: TestClient, admin: ApiClient, sessions: object
) -> None:
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        create_user(session, email="view@example.com", password="viewer-pw1", role="viewer", actor="test")
    admin.device(device_id="BP-OTA-4")
    release = admin.release("v1.0.1", bin=b"\x07" * 500)
    assignment = admin.assign("BP-OTA-4", release["id"]).json()
    sign_in(client, "view@example.com", "viewer-pw1")
    page = client.get("/devices/BP-OTA-4?tab=ota").text
    assert ">Assign<" not in page and ">Cancel<" not in page
    token = csrf(client, "/devices/BP-OTA-4?tab=ota")
    assert (
        client.post("/devices/BP-OTA-4/assign", data={"release_id": release["id"], "csrf_token": token}).status_code
        == 403
    )
    assert client.post(f"/assignments/{assignment['id']}/cancel", data={"csrf_token": token}).status_code == 403
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "pending"


def test_post_without_csrf_is_refused(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id="BP-OTA-5")
    release = admin.release("v1.0.1", bin=b"\x08" * 500)
    sign_in(client, *portal_user)
    assert client.post("/devices/BP-OTA-5/assign", data={"release_id": release["id"]}).status_code == 403
    assert admin.get("/api/v1/devices/BP-OTA-5").json()["active_assignment"] is None


def test_overview_and_activity(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    device = admin.device(device_id="BP-OTA-6", name="Lab")
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0", battery=77, network="cellular")
    sign_in(client, *portal_user)
    overview = client.get("/devices/BP-OTA-6").text
    assert "77 %" in overview and "cellular" in overview and "online" in overview
    assert client.get("/devices/BP-OTA-6?tab=activity").status_code == 200
    assert client.get("/devices/NOPE").status_code == 404
    assert client.get("/devices/BP-OTA-6?tab=bogus").status_code == 422
