"""The Overview tab's device actions: rename, owner, token rotation, decommissioning and recommissioning, with
messages beside the fields, flashes, secrets shown once and roles."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, field_error, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat

DEVICE = "BP-ACT-1"


def flash(page: Element) -> tuple[str, bool] | None:
    for p in page.by_id("main").find_all("p"):
        classes = (p.attr("class") or "").split()
        if "flash" in classes:
            return p.text, "flash-error" in classes
    return None


def act(client: TestClient, action: str, device_id: str = DEVICE, **form: str) -> httpx.Response:
    token = csrf(client, f"/devices/{device_id}")
    return client.post(f"/devices/{device_id}/{action}", data={"csrf_token": token, **form}, follow_redirects=False)


def followed(client: TestClient, r: httpx.Response) -> Element:
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"/devices/{DEVICE}"
    return html(client.get(r.headers["location"]))


def audit_actions(admin: ApiClient) -> list[str]:
    return [e["action"] for e in admin.get("/api/v1/audit", params={"target_id": DEVICE}).json()]


def test_rename_and_its_errors_beside_the_field(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id=DEVICE, name="Old")
    sign_in(client, *portal_user)
    page = followed(client, act(client, "name", name="  Front desk "))
    assert flash(page) == (f"Renamed {DEVICE} to “Front desk”.", False)
    assert page.by_id("name").attr("value") == "Front desk"
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["name"] == "Front desk"

    too_long = act(client, "name", name="x" * 201)
    assert too_long.status_code == 422
    page = html(too_long)
    assert field_error(page, "name") == "Name must be at most 200 characters (it has 201)."
    assert page.by_id("name").attr("aria-invalid") == "true" and page.by_id("name").attr("value") == "x" * 201
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["name"] == "Front desk"

    nul = html(act(client, "name", name="a\x00b"))
    assert field_error(nul, "name") == "The name must not contain NUL characters."

    page = followed(client, act(client, "name", name=""))
    assert flash(page) == (f"Removed the name of {DEVICE}.", False)
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["name"] is None


def test_set_and_clear_the_owner(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id=DEVICE)
    admin.post("/api/v1/app-users", json={"email": "owner@example.com", "password": "app-user-pw1"})
    sign_in(client, *portal_user)
    for typed, message in [
        ("not-an-address", "Owner's e-mail must be an e-mail address, e.g. name@example.com."),
        ("nobody@example.com", "No app user has the e-mail nobody@example.com."),
    ]:
        r = act(client, "owner", owner=typed)
        assert r.status_code == 422, typed
        page = html(r)
        assert field_error(page, "owner") == message
        assert page.by_id("owner").attr("value") == typed
        assert page.by_id("owner").attr("aria-invalid") == "true"
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["owner"] is None

    page = followed(client, act(client, "owner", owner="Owner@Example.com"))
    assert flash(page) == (f"{DEVICE} belongs to owner@example.com.", False)
    assert page.by_id("device-owner").text == "owner@example.com"
    page = followed(client, act(client, "owner", owner=""))
    assert flash(page) == (f"{DEVICE} has no owner now.", False)
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["owner"] is None
    assert audit_actions(admin).count("device.set_owner") == 2


def test_rotate_the_token_shows_the_new_one_once(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    old = admin.device(device_id=DEVICE)["token"]
    sign_in(client, *portal_user)
    form = html(client.get(f"/devices/{DEVICE}")).find("form", action=f"/devices/{DEVICE}/token")
    assert form is not None and "stops working" in (form.attr("data-confirm") or "")
    r = act(client, "token")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    page = html(r)
    new = page.by_id("device-token").text
    assert new.startswith("bota_dt_") and new != old
    assert [b.attr("data-copy") for b in page.find_all("button", class_="copy")] == [new]
    assert not page.has_id("claim-code")
    assert heartbeat(client, old).status_code == 401
    assert heartbeat(client, new).status_code == 200
    assert new not in client.get(f"/devices/{DEVICE}").text
    assert audit_actions(admin).count("device.rotate_token") == 1


def test_decommission_then_recommission(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    old = admin.device(device_id=DEVICE)["token"]
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    assignment = admin.assign(DEVICE, release["id"]).json()
    sign_in(client, *portal_user)
    form = html(client.get(f"/devices/{DEVICE}")).find("form", action=f"/devices/{DEVICE}/decommission")
    assert form is not None and form.attr("data-confirm")

    page = followed(client, act(client, "decommission"))
    message, is_error = flash(page) or ("", True)
    assert not is_error and message.startswith(f"Decommissioned {DEVICE}")
    assert page.by_id("decommissioned-banner").text.startswith("Decommissioned on ")
    assert [b for b in page.buttons() if b != "Sign out"] == ["Recommission"]
    assert heartbeat(client, old).status_code == 401
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "cancelled"
    ota = html(client.get(f"/devices/{DEVICE}?tab=ota"))
    assert "decommissioned" in ota.by_id("assign-blocked").text
    assert "disabled" in ota.by_id("ota-assign").find("fieldset").attrs  # type: ignore[union-attr]
    # A stale page: rotating or decommissioning again is refused with the reason.
    again = followed(client, act(client, "decommission"))
    assert flash(again) == (f"Not decommissioned: device {DEVICE} is already decommissioned.", True)
    rotated = followed(client, act(client, "token"))
    assert (flash(rotated) or ("", False))[1] is True and heartbeat(client, old).status_code == 401

    r = act(client, "recommission")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    page = html(r)
    token, claim_code = page.by_id("device-token").text, page.by_id("claim-code").text
    assert heartbeat(client, token).status_code == 200 and heartbeat(client, old).status_code == 401
    assert len(claim_code) == 9
    overview = client.get(f"/devices/{DEVICE}").text
    assert token not in overview and claim_code not in overview and 'id="decommissioned-banner"' not in overview
    assert audit_actions(admin)[:2] == ["device.recommission", "device.decommission"]
    # Recommissioning a device in service: refused, said.
    not_out = followed(client, act(client, "recommission"))
    assert flash(not_out) == (f"Not recommissioned: device {DEVICE} is not decommissioned.", True)


def test_a_viewer_sees_no_actions_and_every_forged_post_gets_403(
    client: TestClient, admin: ApiClient, sessions: Any
) -> None:
    old = admin.device(device_id=DEVICE, name="Kept")["token"]
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = html(client.get(f"/devices/{DEVICE}"))
    assert page.form_actions() == ["/logout"]
    token = csrf(client, f"/devices/{DEVICE}")
    for action, form in [
        ("name", {"name": "Mine"}),
        ("owner", {"owner": ""}),
        ("tags", {"tags": "x"}),
        ("token", {}),
        ("decommission", {}),
        ("recommission", {}),
    ]:
        r = client.post(f"/devices/{DEVICE}/{action}", data={"csrf_token": token, **form})
        assert r.status_code == 403, action
    assert admin.get(f"/api/v1/devices/{DEVICE}").json()["name"] == "Kept"
    assert heartbeat(client, old).status_code == 200
    assert audit_actions(admin) == ["device.register"]


def test_an_unknown_device_is_404_for_every_action(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    token = csrf(client, "/devices")
    for action in ("name", "owner", "tags", "token", "decommission", "recommission", "assign"):
        r = client.post(f"/devices/NOPE/{action}", data={"csrf_token": token})
        assert r.status_code == 404, action
