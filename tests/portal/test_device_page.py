"""The device page's OTA tab (assign with feedback, the live current update and history, cancel), the Activity
tab, and roles."""

from __future__ import annotations

import re

import httpx
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, html, table_rows
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat

STATUS_RE = re.compile(r'data-status="([a-z]+)"')


def flash(page: Element) -> tuple[str, bool] | None:
    """The one-time message of a page (``p.flash`` in main) and whether it is an error."""
    for p in page.by_id("main").find_all("p"):
        classes = (p.attr("class") or "").split()
        if "flash" in classes:
            return p.text, "flash-error" in classes
    return None


def status_badge(client: TestClient, device_id: str) -> str | None:
    fragment = client.get(f"/devices/{device_id}/ota-status", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    match = STATUS_RE.search(fragment.text)
    return match.group(1) if match else None


def ota_tab(client: TestClient, device_id: str, query: str = "") -> Element:
    r = client.get(f"/devices/{device_id}?tab=ota{query}")
    assert r.status_code == 200, r.text
    return html(r)


def poll(client: TestClient, device_id: str, seen: str) -> httpx.Response:
    """What the status region's poll sends: HTMX headers and the state it shows."""
    return client.get(f"/devices/{device_id}?tab=ota", headers={"HX-Request": "true", "X-Ota-Seen": seen})


def seen_key(page: Element) -> str:
    headers = page.by_id("ota-live").attr("hx-headers") or ""
    match = re.search(r'"X-Ota-Seen": "([^"]*)"', headers)
    assert match, headers
    return match.group(1)


def history_statuses(page: Element) -> list[str]:
    return [row[1].split()[0] for row in table_rows(page, page.by_id("ota-history"))]


def assign(client: TestClient, device_id: str, release_id: str) -> httpx.Response:
    token = csrf(client, f"/devices/{device_id}?tab=ota")
    return client.post(
        f"/devices/{device_id}/assign", data={"release_id": release_id, "csrf_token": token}, follow_redirects=False
    )


def test_assign_says_so_and_the_status_and_history_change_together(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-OTA-1")
    release = admin.release("v1.0.1", bin=b"\x03" * 500)
    admin.release("v9.0.0", model="bota-note", bin=b"\x04" * 500)  # another model: not offered
    sign_in(client, *portal_user)
    page = ota_tab(client, "BP-OTA-1")
    status = page.by_id("ota-status")
    assert (status.attr("hx-trigger"), status.attr("hx-select")) == ("every 2s", "#ota-status")
    # Buttons, the assign form and the history re-render when the poll says the state changed (not every poll).
    live = page.by_id("ota-live")
    assert (live.attr("hx-trigger"), live.attr("hx-select")) == ("ota-changed from:body", "#ota-live")
    assert live.find(id="ota-history") is not None and status.find(id="ota-actions") is None
    assert page.by_id("ota-status-line").text == "No update in progress."
    assert [o.text for o in page.by_id("release_id").find_all("option")][1:] == ["v1.0.1"]

    r = assign(client, "BP-OTA-1", release["id"])
    assert (r.status_code, r.headers["location"]) == (303, "/devices/BP-OTA-1?tab=ota"), r.text
    page = html(client.get(r.headers["location"]))
    assert flash(page) == ("Assigned v1.0.1 to BP-OTA-1; it is delivered at the device's next heartbeat.", False)
    assert page.by_id("ota-status-line").attr("data-announce") == "v1.0.1 pending"
    assert history_statuses(page) == ["pending"]
    # The poll: nothing changed, nothing else refreshes; after the heartbeat it tells the page to.
    key = seen_key(page)
    assert "HX-Trigger" not in poll(client, "BP-OTA-1", key).headers
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    polled = poll(client, "BP-OTA-1", key)
    assert polled.headers["HX-Trigger"] == "ota-changed"
    page = html(polled)
    assert page.by_id("ota-status").find(class_="badge status-delivered") is not None
    assert history_statuses(page) == ["delivered"]
    assert seen_key(page) != key

    heartbeat(admin.client, device["token"], firmware_version="v1.0.1")
    page = ota_tab(client, "BP-OTA-1")  # a reload: the latest assignment, though none is active
    line = page.by_id("ota-status-line")
    assert line.attr("data-announce") == "v1.0.1 applied" and "applied" in line.text
    assert "Applied: the device runs v1.0.1." in page.by_id("ota-status").text
    assert history_statuses(page) == ["applied"]
    assert page.by_id("ota-actions").buttons() == []
    timeline = page.by_id("ota-history").text
    assert "created" in timeline and "delivered" in timeline and "applied" in timeline
    audit = admin.get("/api/v1/audit", params={"action": "assignment.create"}).json()
    assert audit[0]["actor"] == "user:op@example.com"


def test_a_refused_assignment_goes_back_to_the_tab_with_the_reason_beside_the_dropdown(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-OTA-2")
    release = admin.release("v1.0.1", bin=b"\x05" * 500)
    sign_in(client, *portal_user)

    empty = assign(client, "BP-OTA-2", "")
    assert (empty.status_code, empty.headers["location"]) == (303, "/devices/BP-OTA-2?tab=ota")
    page = html(client.get(empty.headers["location"]))
    assert page.by_id("release-error").text == "Choose a release."
    assert page.by_id("release_id").attr("aria-invalid") == "true"
    assert (flash(page) or ("", False))[1] is True
    # Said once: a reload does not say it again.
    assert not ota_tab(client, "BP-OTA-2").has_id("release-error")

    assert assign(client, "BP-OTA-2", release["id"]).status_code == 303
    again = assign(client, "BP-OTA-2", release["id"])  # a stale page: the device has an active assignment now
    assert again.headers["location"] == f"/devices/BP-OTA-2?tab=ota&release_id={release['id']}"
    page = html(client.get(again.headers["location"]))
    error = page.by_id("release-error").text
    assert error.startswith("Device BP-OTA-2 already has an active assignment") and error.endswith(".")
    assert page.by_id("release_id").find("option", value=release["id"], selected=None) is not None

    unknown = assign(client, "BP-OTA-2", "0" * 32)
    page = html(client.get(unknown.headers["location"]))
    assert page.by_id("release-error").text.endswith("not found.")


def test_while_an_update_is_active_the_assign_form_is_disabled_and_says_why(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-OTA-ACT")
    release = admin.release("v1.0.1", bin=b"\x05" * 500)
    admin.release("v1.0.2", bin=b"\x06" * 500)
    admin.assign("BP-OTA-ACT", release["id"])
    sign_in(client, *portal_user)
    form = ota_tab(client, "BP-OTA-ACT").by_id("ota-assign")
    assert "disabled" in form.find("fieldset").attrs  # type: ignore[union-attr]
    why = form.by_id("assign-blocked")
    assert "v1.0.1 is pending" in why.text and "cancel it" in why.text
    assert "#ota-actions" in why.links()


def test_only_releases_newer_than_the_device_are_offered_and_a_downgrade_is_refused(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-OTA-DOWN")
    heartbeat(admin.client, device["token"], firmware_version="v1.0.4")
    older = admin.release("v1.0.2", bin=b"\x07" * 500)
    admin.release("v1.0.4", bin=b"\x08" * 500)  # the same version: nothing to update
    admin.release("v1.1.0", bin=b"\x09" * 500)
    admin.release("v1.2.0", bin=b"\x0b" * 500)
    sign_in(client, *portal_user)
    page = ota_tab(client, "BP-OTA-DOWN")
    assert [o.text for o in page.by_id("release_id").find_all("option")][1:] == ["v1.2.0", "v1.1.0"]
    assert "2 releases not newer than the device's v1.0.4 are not listed" in page.by_id("release-hint").text
    assert page.by_id("release_id").attr("aria-describedby") == "release-hint"
    # A stale page or a forged form: refused with the reason beside the field, nothing assigned.
    r = assign(client, "BP-OTA-DOWN", older["id"])
    page = html(client.get(r.headers["location"]))
    error = page.by_id("release-error").text
    assert error[0].isupper() and "older than v1.0.4" in error and "downgrade" in error
    assert page.by_id("release_id").attr("aria-describedby") == "release-error release-hint"
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
    history = ota_tab(client, "BP-OTA-SUP").by_id("ota-history")
    assert history.find("span", class_="badge status-superseded") is not None
    assert "superseded: the device reported v1.0.4" in history.text


def test_cancel_from_the_portal_says_so(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id="BP-OTA-3")
    release = admin.release("v1.0.1", bin=b"\x06" * 500)
    assignment = admin.assign("BP-OTA-3", release["id"]).json()
    sign_in(client, *portal_user)
    actions = ota_tab(client, "BP-OTA-3").by_id("ota-actions")
    assert actions.form_actions() == [f"/assignments/{assignment['id']}/cancel"]
    token = csrf(client, "/devices/BP-OTA-3?tab=ota")
    r = client.post(f"/assignments/{assignment['id']}/cancel", data={"csrf_token": token}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/devices/BP-OTA-3?tab=ota")
    page = html(client.get(r.headers["location"]))
    assert flash(page) == ("Cancelled the update of BP-OTA-3 to v1.0.1.", False)
    assert page.by_id("ota-status-line").attr("data-announce") == "v1.0.1 cancelled"
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "cancelled"
    # Twice (a stale page): said, nothing changes.
    r = client.post(f"/assignments/{assignment['id']}/cancel", data={"csrf_token": token})
    message, is_error = flash(html(r)) or ("", False)
    assert is_error and message.startswith("Not cancelled: assignment is already cancelled")


def test_a_viewer_sees_no_forms_and_a_forged_post_gets_403(
    client: TestClient, admin: ApiClient, sessions: object
) -> None:
    add_user(sessions, "view@example.com", "viewer")  # type: ignore[arg-type]
    admin.device(device_id="BP-OTA-4")
    release = admin.release("v1.0.1", bin=b"\x07" * 500)
    assignment = admin.assign("BP-OTA-4", release["id"]).json()
    sign_in(client, "view@example.com", "correct-horse")
    for tab in ("overview", "ota", "activity"):
        page = html(client.get(f"/devices/BP-OTA-4?tab={tab}"))
        assert page.form_actions() == ["/logout"], tab
    token = csrf(client, "/devices/BP-OTA-4?tab=ota")
    r = client.post("/devices/BP-OTA-4/assign", data={"release_id": release["id"], "csrf_token": token})
    assert r.status_code == 403
    assert client.post(f"/assignments/{assignment['id']}/cancel", data={"csrf_token": token}).status_code == 403
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "pending"


def test_post_without_csrf_is_refused(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id="BP-OTA-5")
    release = admin.release("v1.0.1", bin=b"\x08" * 500)
    sign_in(client, *portal_user)
    assert client.post("/devices/BP-OTA-5/assign", data={"release_id": release["id"]}).status_code == 403
    assert admin.get("/api/v1/devices/BP-OTA-5").json()["active_assignment"] is None


def test_overview(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    device = admin.device(device_id="BP-OTA-6", name="Lab")
    admin.device(device_id="BP-OTA-7")
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0", battery=77, network="cellular")
    sign_in(client, *portal_user)
    overview = html(client.get("/devices/BP-OTA-6"))
    assert "77 %" in overview.text and "cellular" in overview.text and "online" in overview.text
    assert overview.find("time", **{"data_relative": None}) is not None  # last seen, kept fresh by portal.js
    assert "never reported" in html(client.get("/devices/BP-OTA-7")).text
    assert client.get("/devices/NOPE").status_code == 404
    assert client.get("/devices/BP-OTA-6?tab=bogus").status_code == 422


def test_activity_lists_the_update_events_with_the_device_events_newest_first(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-ACT-1")
    release = admin.release("v1.0.1", bin=b"\x09" * 500)
    sign_in(client, *portal_user)
    empty = html(client.get("/devices/BP-ACT-1?tab=activity")).by_id("activity")
    assert "Nothing yet." in empty.text and empty.attr("hx-select") == "#activity"
    assignment = admin.assign("BP-ACT-1", release["id"]).json()
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0")
    downloading = {"assignment_id": assignment["id"], "state": "downloading", "progress": 10}
    heartbeat(admin.client, device["token"], firmware_version="v1.0.0", ota=downloading)
    heartbeat(admin.client, device["token"], firmware_version="v1.0.1")
    admin.post("/api/v1/app-users", json={"email": "owner@example.com", "password": "app-user-pw1"})
    assert admin.client.put(
        "/api/v1/devices/BP-ACT-1/owner", json={"email": "owner@example.com"}, headers=admin.headers
    ).is_success

    activity = html(client.get("/devices/BP-ACT-1?tab=activity")).by_id("activity")
    kinds = [li.find("strong").text for li in activity.find_all("li")]  # type: ignore[union-attr]
    assert kinds[0] == "owner.set"
    assert kinds[1:] == ["applied", "progress", "delivered", "created"], kinds
    assert "v1.0.1" in activity.find_all("li")[1].text
    assert "Nothing yet." not in activity.text
