"""Signing in and out of the portal in a real browser."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import ADMIN_EMAIL, Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_sign_in_with_the_first_admin_and_sign_out(page: Page, portal: Portal) -> None:
    page.goto("/devices")
    expect(page).to_have_url(re.compile(r"/login"))  # anonymous visitors are sent to the sign-in page

    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#password-error")).to_have_text("Wrong e-mail or password.")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")

    sign_in(page, ADMIN_EMAIL, portal.admin_password)
    expect(page.get_by_text(f"{ADMIN_EMAIL} (admin)")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto("/devices")
    expect(page).to_have_url(re.compile(r"/login"))


def test_sign_in_brings_you_back_to_the_page_you_asked_for(page: Page, portal: Portal) -> None:
    portal.register_device("BP-000777")
    page.goto("/devices/BP-000777?tab=activity")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fdevices%2FBP-000777%3Ftab%3Dactivity$"))
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(portal.admin_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/devices/BP-000777\?tab=activity$"))
    expect(page.get_by_role("heading", name="BP-000777")).to_be_visible()
