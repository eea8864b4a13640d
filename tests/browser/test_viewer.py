"""A viewer can look at everything and change nothing: no Upload, Register or Assign controls, and the
server refuses the requests behind them with 403 (a page with the navigation and a way back), even a
hand-built form carrying a valid CSRF token."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICE = "BP-000123"

SUBMIT_HAND_BUILT_FORM = """([action, fields]) => {
    const form = document.createElement("form");
    form.method = "post";
    form.action = action;
    for (const [name, value] of Object.entries(fields)) {
        const input = document.createElement("input");
        input.type = "hidden"; input.name = name; input.value = value;
        form.append(input);
    }
    document.body.append(form);
    form.submit();
}"""


def test_a_viewer_sees_no_controls_and_a_forged_post_gets_403(page: Page, portal: Portal) -> None:
    release_id = portal.upload_release("v1.0.1")
    portal.register_device(DEVICE)
    sign_in(page, *portal.create_user("viewer@example.com", "viewer"))

    page.goto("/firmware")
    expect(page.get_by_role("heading", name="Firmware", exact=True)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="v1.0.1").first).to_be_visible()
    expect(page.get_by_role("link", name="Upload firmware")).to_have_count(0)
    page.goto("/devices")
    expect(page.get_by_role("heading", name=re.compile("^Devices"))).to_be_visible()
    expect(page.get_by_role("link", name="Register device")).to_have_count(0)
    for path in ("/firmware/upload", "/devices/new", "/users"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 403, path
        # A page to leave, not a dead end: the heading in plain words, the reason, the navigation, a way back.
        expect(page.get_by_role("heading", name="You do not have permission")).to_be_visible()
        expect(page.locator("#error-detail")).to_contain_text("you are viewer")
        expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Devices")).to_be_visible()
        expect(
            page.get_by_role("navigation", name="Where to go from here").get_by_role("link", name="Dashboard")
        ).to_be_visible()
    page.get_by_role("navigation", name="Where to go from here").get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(re.compile(r"/$"))

    page.goto(f"/devices/{DEVICE}?tab=ota")
    expect(page.get_by_role("heading", name=DEVICE)).to_be_visible()
    expect(page.locator("#ota-status")).to_contain_text("No update in progress.")
    expect(page.get_by_role("button", name="Assign")).to_have_count(0)
    expect(page.get_by_label("Release")).to_have_count(0)

    # The viewer builds the assign form by hand, with the session's valid CSRF token, and submits it.
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    assert csrf
    with page.expect_navigation() as navigation:
        fields = {"csrf_token": csrf, "release_id": release_id}
        page.evaluate(SUBMIT_HAND_BUILT_FORM, [f"/devices/{DEVICE}/assign", fields])
    response = navigation.value
    assert response is not None
    assert response.status == 403
    assert portal.assignments(DEVICE) == []
