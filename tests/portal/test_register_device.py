"""Registering a device from the portal: token and claim code shown once, errors beside the field, roles."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.portal.pages import add_user, field_error, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat


def register(client: TestClient, token: str, **form: str) -> httpx.Response:
    return client.post("/devices/new", data={"csrf_token": token, **form})


def test_register_shows_the_token_and_claim_code_once(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    r = register(client, csrf(client, "/devices/new"), id="BP-NEW-1", model="bota-pin-pro", name="Front desk")
    assert r.status_code == 201, r.text
    page = html(r)
    device_token = page.by_id("device-token").text
    claim_code = page.by_id("claim-code").text
    assert device_token.startswith("bota_dt_") and len(claim_code) == 9
    assert r.headers["cache-control"] == "no-store"
    assert {b.attr("data-copy") for b in page.find_all("button", class_="copy")} == {device_token, claim_code}

    device = admin.get("/api/v1/devices/BP-NEW-1").json()
    assert (device["model"], device["name"]) == ("bota-pin-pro", "Front desk")
    reply = heartbeat(client, device_token, firmware_version="v1.0.0")
    assert reply.status_code == 200, reply.text
    assert heartbeat(client, "bota_dt_not-the-token").status_code == 401
    assert admin.get("/api/v1/devices/BP-NEW-1").json()["firmware_version"] == "v1.0.0"

    for path in ("/devices/BP-NEW-1", "/devices/BP-NEW-1?tab=ota", "/devices/BP-NEW-1?tab=activity", "/devices"):
        text = client.get(path).text
        assert claim_code not in text and claim_code.replace("-", "") not in text, path
        assert device_token not in text, path
    [entry] = admin.get("/api/v1/audit", params={"action": "device.register"}).json()
    assert (entry["actor"], entry["target_id"]) == ("user:op@example.com", "BP-NEW-1")


def test_a_bad_serial_is_shown_beside_the_field(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    token = csrf(client, "/devices/new")
    for serial in ("bad serial!", "", "-BP-1", "x" * 65):
        r = register(client, token, id=serial, model="bota-pin", name="Lab")
        assert r.status_code == 422, serial
        page = html(r)
        assert field_error(page, "id"), serial
        assert page.by_id("id").attr("aria-invalid") == "true"
        assert field_error(page, "model") == ""
        # What was typed is kept.
        assert page.by_id("name").attr("value") == "Lab"
        assert page.by_id("model").find("option", value="bota-pin", selected=None) is not None
        assert not page.has_id("device-token")
    assert admin.get("/api/v1/devices").json() == []


def test_a_duplicate_serial_is_a_409_beside_the_field(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    first = admin.device(device_id="BP-DUP-1")
    sign_in(client, *portal_user)
    r = register(client, csrf(client, "/devices/new"), id="BP-DUP-1", model="bota-pin")
    assert r.status_code == 409
    page = html(r)
    assert field_error(page, "id") == "A device with the id BP-DUP-1 is already registered."
    assert not page.has_id("device-token")
    # The first registration's token still works: nothing was replaced.
    assert heartbeat(client, first["token"]).status_code == 200


def test_a_missing_model_is_shown_beside_the_model(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    token = csrf(client, "/devices/new")
    for model, message in (
        ("", "Choose a model."),
        ("toaster", "Model must be one of Bota Pin, Bota Pin Pro, Bota Note."),
    ):
        r = register(client, token, id="BP-NM-1", model=model)
        assert r.status_code == 422
        page = html(r)
        assert field_error(page, "model") == message
        assert page.by_id("model").attr("aria-invalid") == "true"
        assert field_error(page, "id") == ""
        assert page.by_id("id").attr("value") == "BP-NM-1"
    assert admin.get("/api/v1/devices").json() == []


def test_every_field_is_checked_at_once_and_named_by_its_label(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    r = register(client, csrf(client, "/devices/new"), id="bad serial!", model="toaster", name="n" * 201)
    assert r.status_code == 422
    page = html(r)
    assert field_error(page, "id").startswith("Device id must be 1 to 64 letters")
    assert field_error(page, "model").startswith("Model must be one of")
    assert field_error(page, "name") == "Name must be at most 200 characters (it has 201)."
    for name in ("id", "model", "name"):
        assert page.by_id(name).attr("aria-invalid") == "true", name
        assert field_error(page, name).endswith("."), name
    assert page.find("label", **{"for": "id"}).text == "Device id"  # type: ignore[union-attr]
    empty = html(register(client, csrf(client, "/devices/new"), id="", model="", name=""))
    assert (field_error(empty, "id"), field_error(empty, "model")) == (
        "Device id is required, e.g. BP-000123.",
        "Choose a model.",
    )
    assert admin.get("/api/v1/devices").json() == []


def test_a_viewer_gets_no_register_link_and_a_forged_post_gets_403(
    client: TestClient, admin: ApiClient, sessions: Any
) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = html(client.get("/devices"))
    assert "/devices/new" not in page.links() and "Register device" not in page.text
    assert client.get("/devices/new").status_code == 403
    r = register(client, csrf(client, "/devices"), id="BP-V-1", model="bota-pin")
    assert r.status_code == 403
    assert admin.get("/api/v1/devices/BP-V-1").status_code == 404
