"""The Upload Firmware form in a real browser: the upload with its progress bar, ending on the firmware list with
the server's flash, and version errors beside the field, found by the page's own check (nothing sent) or by the
server (a duplicate version)."""

from __future__ import annotations

import hashlib
import re
import time
import zlib

import pytest
from playwright.sync_api import FilePayload, Page, Request, Route, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def payload(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def open_upload_form(page: Page, portal: Portal) -> None:
    sign_in(page, *portal.create_user("op@example.com", "operator"))
    page.goto("/firmware")
    page.get_by_role("link", name="Upload firmware").click()
    expect(page).to_have_url(re.compile(r"/firmware/upload$"))


def test_upload_a_release_with_a_progress_bar(page: Page, portal: Portal) -> None:
    image = bytes(range(256)) * 1200
    ufw = image[::-1][:100_000]
    open_upload_form(page, portal)

    page.get_by_label("Version", exact=True).fill("v1.2.0")
    page.get_by_label("Device model").select_option(label="Bota Pin")
    page.get_by_label(".bin file").set_input_files(payload("pin-1.2.0.bin", image))
    page.get_by_label(".ufw file").set_input_files(payload("pin-1.2.0.ufw", ufw))
    page.get_by_label("Notes").fill("Faster sync")
    page.get_by_label("Save as draft").check()

    # Hold the upload request until the progress bar has been seen, so the check does not race the upload.
    held: list[Route] = []
    page.route("**/firmware/upload", lambda route, request: _hold_posts(route, request, held))
    progress = page.locator("#upload-progress")
    expect(progress).to_be_hidden()
    page.get_by_role("button", name="Upload").click()
    expect(progress).to_be_visible()
    expect(page.get_by_role("button", name="Upload")).to_be_disabled()  # no second submit while uploading
    # The bar shows when the script starts the request; Playwright hands the request to the route handler
    # as it processes events, which may come a moment later: wait for it (Playwright's own wait, which
    # dispatches those events), up to a deadline.
    deadline = time.monotonic() + 15
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert len(held) == 1
    held[0].continue_()

    # The script follows the answer's Location to the firmware list, which shows the flash the upload set.
    expect(page).to_have_url(re.compile(r"/firmware#release-[0-9a-f]+$"))
    expect(page.locator(".flash")).to_have_text("Uploaded v1.2.0 for Bota Pin (407.2 kB).")
    [release] = [r for r in portal.api.get("/api/v1/firmware", params={"model": "bota-pin"}).json()]
    assert page.url.endswith(f"/firmware#release-{release['id']}")
    expect(page.locator(f"#release-{release['id']} th").first).to_contain_text("v1.2.0")

    assert release["version"] == "v1.2.0"
    assert release["notes"] == "Faster sync"
    assert release["released"] is False
    assert release["created_by"] == "user:op@example.com"
    assert release["bin"]["size"] == len(image)
    assert release["bin"]["crc32"] == zlib.crc32(image) & 0xFFFFFFFF
    assert release["bin"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert release["ufw"]["crc32"] == zlib.crc32(ufw) & 0xFFFFFFFF


def _hold_posts(route: Route, request: Request, held: list[Route]) -> None:
    if request.method == "POST":
        held.append(route)
    else:
        route.continue_()


def test_a_bad_version_shows_its_error_beside_the_field_without_submitting(page: Page, portal: Portal) -> None:
    open_upload_form(page, portal)
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)

    version = page.get_by_label("Version", exact=True)
    version.fill("version 2")
    page.get_by_label("Device model").select_option(label="Bota Pin")
    page.get_by_label(".bin file").set_input_files(payload("pin.bin", b"\x01" * 1000))
    page.get_by_role("button", name="Upload").click()

    error = page.locator("#version-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("version 2")
    expect(error).to_contain_text("semantic version")
    expect(version).to_have_attribute("aria-invalid", "true")
    expect(version).to_have_accessible_description(re.compile("semantic version"))
    expect(page).to_have_url(re.compile(r"/firmware/upload$"))
    assert posts == []
    assert portal.api.get("/api/v1/firmware").json() == []


def test_a_duplicate_version_shows_the_servers_error_beside_the_field(page: Page, portal: Portal) -> None:
    portal.upload_release("v1.0.1")
    open_upload_form(page, portal)

    version = page.get_by_label("Version", exact=True)
    version.fill("1.0.1")  # the same release as v1.0.1
    page.get_by_label("Device model").select_option(label="Bota Pin")
    page.get_by_label(".bin file").set_input_files(payload("pin.bin", b"\x02" * 1000))
    with page.expect_response(lambda r: r.request.method == "POST" and "/firmware/upload" in r.url) as answer:
        page.get_by_role("button", name="Upload").click()
    assert answer.value.status == 409

    error = page.locator("#version-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("already has a release")
    expect(version).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Upload")).to_be_enabled()  # the operator can fix it and retry
    expect(page).to_have_url(re.compile(r"/firmware/upload$"))
    assert [r["version"] for r in portal.api.get("/api/v1/firmware").json()] == ["v1.0.1"]
