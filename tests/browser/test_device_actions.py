"""The device page's Overview actions in a real browser: rotating the token shows the new one once and the old
one stops working; decommissioning stops the token too and leaves only Recommission."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICE = "BP-000321"


def heartbeat_status(portal: Portal, token: str) -> int:
    r = httpx.post(
        f"{portal.url}/api/device/v1/heartbeat",
        headers={"Authorization": f"Bearer {token}"},
        json={"firmware_version": "v1.0.0"},
        timeout=30,
    )
    return r.status_code


def test_rotate_the_token_then_decommission(page: Page, portal: Portal) -> None:
    old_token = portal.register_device(DEVICE, name="Front desk")
    sign_in(page, *portal.create_user("op@example.com", "operator"))
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.goto(f"/devices/{DEVICE}")
    page.get_by_role("button", name="Rotate token").click()
    expect(page.get_by_role("heading", name=f"New token for {DEVICE}")).to_be_visible()
    new_token = page.locator("#device-token").inner_text().strip()
    assert new_token.startswith("bota_dt_") and new_token != old_token
    assert "stops working" in questions[-1]
    expect(page.get_by_role("button", name="Copy the device token")).to_be_visible()
    assert heartbeat_status(portal, old_token) == 401
    assert heartbeat_status(portal, new_token) == 200
    page.get_by_role("link", name=f"Back to {DEVICE}").click()
    expect(page.locator("#device-token")).to_have_count(0)
    assert new_token not in page.content()

    page.get_by_role("button", name="Decommission").click()
    expect(page.locator("#decommissioned-banner")).to_contain_text("Decommissioned on ")
    expect(page.get_by_role("status").filter(has_text=f"Decommissioned {DEVICE}")).to_be_visible()
    expect(page.get_by_role("button", name="Rotate token")).to_have_count(0)
    expect(page.get_by_role("button", name="Recommission")).to_be_visible()
    assert heartbeat_status(portal, new_token) == 401
    assert portal.api.get(f"/api/v1/devices/{DEVICE}").json()["decommissioned_at"]
