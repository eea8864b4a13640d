"""The assignments list in a real browser: a status changes in the table without a reload."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_a_status_changes_live(page: Page, portal: Portal) -> None:
    release_id = portal.upload_release("v1.0.1")
    token = portal.register_device("BP-LIST-1")
    r = portal.api.post("/api/v1/devices/BP-LIST-1/assignments", json={"release_id": release_id})
    assert r.status_code == 201, r.text
    assignment_id = r.json()["id"]
    sign_in(page, *portal.create_user("view@example.com", "viewer"))
    page.goto("/assignments?sort=device")

    status = page.locator(f"#assignment-{assignment_id} [data-status]")
    expect(status).to_have_text("pending")
    page.evaluate("window.__notReloaded = true")

    portal.heartbeat(token, "v1.0.0")  # delivered
    expect(status).to_have_text("delivered")
    portal.heartbeat(token, "v1.0.1")  # applied
    expect(status).to_have_text("applied")
    assert page.evaluate("window.__notReloaded === true")
    assert page.url.endswith("/assignments?sort=device")  # the poll keeps the page's own order
