"""The device page's OTA tab in a real browser: assign with a flash, the status and the history follow the device
without a reload, keyboard focus stays on Cancel while the page polls, and the CSRF check."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import ADMIN_EMAIL, Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICE = "BP-000123"


def open_ota_tab(page: Page, device_id: str = DEVICE) -> None:
    page.goto(f"/devices/{device_id}?tab=ota")
    expect(page.get_by_role("heading", name=device_id)).to_be_visible()


def count_swaps(page: Page) -> None:
    """Count the live regions' swaps (portal.js says each with a ``bota:swapped`` event) in ``window.__swaps``."""
    page.evaluate("() => { window.__swaps = 0; document.addEventListener('bota:swapped', () => window.__swaps++); }")


def wait_for_swaps(page: Page, more: int) -> None:
    """Until ``more`` further swaps happened. Polled from here: page.evaluate is not subject to the page's
    Content-Security-Policy, whereas wait_for_function's predicate is (and the portal allows no eval)."""
    target = int(page.evaluate("window.__swaps")) + more
    deadline = time.monotonic() + 20
    while (done := int(page.evaluate("window.__swaps"))) < target:
        assert time.monotonic() < deadline, f"{done} swaps, not {target}"
        page.wait_for_timeout(100)


def test_assign_says_so_and_the_status_and_history_follow_the_device_without_reload(page: Page, portal: Portal) -> None:
    portal.upload_release("v1.0.1")
    device_token = portal.register_device(DEVICE, name="Front desk")
    sign_in(page, *portal.create_user("op@example.com", "operator"))

    page.goto("/devices")
    page.get_by_role("link", name=DEVICE).click()
    page.get_by_role("navigation", name="Device").get_by_role("link", name="OTA").click()
    expect(page.locator("#ota-status")).to_contain_text("No update in progress.")

    page.get_by_label("Release").select_option(label="v1.0.1")
    page.get_by_role("button", name="Assign").click()
    expect(page.get_by_role("status").filter(has_text="Assigned v1.0.1")).to_have_text(
        f"Assigned v1.0.1 to {DEVICE}; it is delivered at the device's next heartbeat."
    )
    badge = page.locator("#ota-status .badge")
    history_status = page.locator("#ota-history tbody tr").first.locator(".badge")
    expect(badge).to_have_text("pending")
    expect(history_status).to_have_text("pending")
    expect(page.locator("#assign-blocked")).to_contain_text("v1.0.1 is pending")
    expect(page.get_by_label("Release")).to_be_disabled()

    # From here on the page must not load again: the status and the history change by polling alone.
    page.evaluate("window.__notReloaded = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    reply = portal.heartbeat(device_token, "v1.0.0")
    assert isinstance(reply.get("ota"), dict), reply
    expect(badge).to_have_text("delivered")
    expect(history_status).to_have_text("delivered")

    portal.heartbeat(device_token, "v1.0.1")
    expect(badge).to_have_text("applied")
    expect(history_status).to_have_text("applied")
    expect(page.locator("#live-status")).to_have_text("v1.0.1 applied")  # said to screen readers
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_label("Release")).to_be_enabled()

    assert page.evaluate("window.__notReloaded === true")
    assert navigations == []
    [assignment] = portal.assignments(DEVICE)
    assert assignment["status"] == "applied"
    assert assignment["created_by"] == "user:op@example.com"


def test_focus_stays_on_cancel_while_the_page_polls_and_the_device_moves(page: Page, portal: Portal) -> None:
    release_id = portal.upload_release("v1.0.1")
    device_token = portal.register_device(DEVICE)
    r = portal.api.post(f"/api/v1/devices/{DEVICE}/assignments", json={"release_id": release_id})
    assert r.status_code == 201, r.text
    sign_in(page, ADMIN_EMAIL, portal.admin_password)
    open_ota_tab(page)
    count_swaps(page)
    cancel = page.get_by_role("button", name="Cancel")
    cancel.focus()
    is_cancel_focused = "document.activeElement && document.activeElement.id === 'cancel-button'"
    assert page.evaluate(is_cancel_focused)

    wait_for_swaps(page, 2)
    assert page.evaluate(is_cancel_focused)
    # The device takes the update: the status says so at once, and the button keeps the focus.
    portal.heartbeat(device_token, "v1.0.0")
    expect(page.locator("#ota-status .badge")).to_have_text("delivered")
    wait_for_swaps(page, 2)
    assert page.evaluate(is_cancel_focused)

    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Cancelled")).to_have_text(
        f"Cancelled the update of {DEVICE} to v1.0.1."
    )
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
