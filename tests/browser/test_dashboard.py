"""The dashboard in a real browser: its numbers follow the fleet without a reload, and keyboard focus on one of
its links stays there while the regions around it re-render."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import ADMIN_EMAIL, Portal, sign_in, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_the_numbers_change_live_and_focus_stays_on_a_link(page: Page, portal: Portal) -> None:
    release_id = portal.upload_release("v1.0.1")
    token = portal.register_device("BP-DASH-1")
    r = portal.api.post("/api/v1/devices/BP-DASH-1/assignments", json={"release_id": release_id})
    assert r.status_code == 201, r.text
    sign_in(page, ADMIN_EMAIL, portal.admin_password)
    page.goto("/")

    online = page.locator("#tile-online")
    updating = page.locator("#tile-updating")
    expect(online).to_have_text("Online · 0 devices")
    expect(updating).to_have_text("Updating · 1 device (1 waiting for their first heartbeat)")

    # From here on the page must not load again: the regions change by polling alone.
    page.evaluate("window.__notReloaded = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    link = page.get_by_role("link", name="All rollouts")  # inside a polled region
    link.focus()
    polls = int(page.evaluate("Number(document.body.dataset.polls || 0)"))

    reply = portal.heartbeat(token, "v1.0.0")  # the device's first heartbeat: online, its update delivered
    assert isinstance(reply.get("ota"), dict), reply
    expect(online).to_have_text("Online · 1 device")
    expect(updating).to_have_text("Updating · 1 device")
    expect(page.locator("#chart-bota-pin")).to_contain_text("v1.0.0")

    # Polls kept coming while the link had focus; the region holding it waited, so focus never moved.
    wait_until(page, f"Number(document.body.dataset.polls || 0) >= {polls + 6}", what="six more polls")
    expect(link).to_be_focused()
    assert page.evaluate("window.__notReloaded === true")
    assert navigations == []
