"""Registering a device in a real browser: the token and claim code are shown once, and the token works."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_register_a_device_and_its_token_works(page: Page, portal: Portal) -> None:
    sign_in(page, *portal.create_user("op@example.com", "operator"))
    page.goto("/devices")
    page.get_by_role("link", name="Register device").click()

    # Every field is checked at once, each named by its label beside it.
    page.get_by_label("Device id").fill("bad id!")
    page.get_by_role("button", name="Register device").click()
    expect(page.locator("#id-error")).to_have_text(re.compile(r"^Device id must be .*\.$"))
    expect(page.locator("#model-error")).to_have_text("Choose a model.")
    expect(page.get_by_label("Device id")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Device id").fill("BP-000777")
    page.get_by_label("Model").select_option(label="Bota Pin")
    page.get_by_label("Name").fill("Meeting room")
    page.get_by_role("button", name="Register device").click()

    token = page.locator("#device-token")
    expect(token).to_have_text(re.compile(r"^bota_dt_\S+$"))
    expect(page.locator("#claim-code")).to_have_text(re.compile(r"\S{6,}"))
    device_token = token.inner_text().strip()

    reply = portal.heartbeat(device_token, "v1.0.0", battery=80)  # the token authenticates the device
    assert reply.get("ota") is None
    device = portal.api.get("/api/v1/devices/BP-000777").json()
    assert (device["model"], device["name"]) == ("bota-pin", "Meeting room")

    # Shown once: the device's own page never shows the token again.
    page.goto("/devices/BP-000777")
    expect(page.get_by_role("heading", name="BP-000777")).to_be_visible()
    expect(page.locator("#device-token")).to_have_count(0)
    assert device_token not in page.content()
