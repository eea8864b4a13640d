"""The device page's OTA tab: assign a release, watch the badge follow the device live, roles and CSRF."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import ADMIN_EMAIL, Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICE = "BP-000123"


def open_ota_tab(page: Page, device_id: str = DEVICE) -> None:
    page.goto(f"/devices/{device_id}?tab=ota")
    expect(page.get_by_role("heading", name=device_id)).to_be_visible()


def test_assign_from_the_ota_tab_and_the_badge_follows_the_device_without_reload(page: Page, portal: Portal) -> None:
    portal.upload_release("v1.0.1")
    device_token = portal.register_device(DEVICE, name="Front desk")
    operator = portal.create_user("op@example.com", "operator")
    sign_in(page, *operator)

    page.goto("/devices")
    page.get_by_role("link", name=DEVICE).click()
    page.get_by_role("navigation", name="Device").get_by_role("link", name="OTA").click()
    expect(page.locator("#ota-status")).to_contain_text("No update in progress.")

    page.get_by_label("Release").select_option(label="v1.0.1")
    page.get_by_role("button", name="Assign").click()
    badge = page.locator("#ota-status .badge")
    expect(badge).to_have_text("pending")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    # From here on the page must not load again: the badge changes by HTMX polling alone.
    page.evaluate("window.__notReloaded = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    reply = portal.heartbeat(device_token, "v1.0.0")
    assert isinstance(reply.get("ota"), dict), reply
    expect(badge).to_have_text("delivered")

    portal.heartbeat(device_token, "v1.0.1")
    expect(badge).to_have_text("applied")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)

    assert page.evaluate("window.__notReloaded === true")
    assert navigations == []
    [assignment] = portal.assignments(DEVICE)
    assert assignment["status"] == "applied"
    assert assignment["created_by"] == "user:op@example.com"


def test_cancel_from_the_ota_tab(page: Page, portal: Portal) -> None:
    portal.upload_release("v1.0.1")
    portal.register_device(DEVICE)
    sign_in(page, ADMIN_EMAIL, portal.admin_password)
    open_ota_tab(page)
    page.get_by_label("Release").select_option(label="v1.0.1")
    page.get_by_role("button", name="Assign").click()
    expect(page.locator("#ota-status .badge")).to_have_text("pending")

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#ota-status .badge")).to_have_text("cancelled")
    assert [a["status"] for a in portal.assignments(DEVICE)] == ["cancelled"]


def test_a_post_without_the_csrf_token_is_refused(page: Page, portal: Portal) -> None:
    release_id = portal.upload_release("v1.0.1")
    portal.register_device(DEVICE)
    sign_in(page, ADMIN_EMAIL, portal.admin_password)
    open_ota_tab(page)

    # The real form, with its hidden csrf_token field taken out before submitting.
    form = page.locator(f"form[action='/devices/{DEVICE}/assign']")
    form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_label("Release").select_option(label="v1.0.1")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Assign").click()
    response = navigation.value
    assert response is not None
    assert response.status == 403

    # Straight from the signed-in browser context: the session cookie alone is not enough, nor is a wrong token.
    forms: list[dict[str, str | float | bool]] = [
        {"release_id": release_id},
        {"release_id": release_id, "csrf_token": "forged"},
    ]
    for form_data in forms:
        r = page.request.post(f"/devices/{DEVICE}/assign", form=form_data, max_redirects=0)
        assert r.status == 403, r.text()
    assert portal.assignments(DEVICE) == []
