"""The device list's CSV export, imported on another server's import page: the same devices come out."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.support import LAPTOP, Portal, sign_in
from tests.support.server import ServerProcess, server_env

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICES = [
    ("BN-000002", "bota-note", "Meeting room", ["eu"]),
    ("BP-000001", "bota-pin", "Front desk", ["beta", "eu"]),
    ("BP-000003", "bota-pin-pro", "", []),
]


@pytest.fixture
def second(tmp_path: Path) -> Iterator[Portal]:
    """Another server with a database of its own (SQLite in its data dir)."""
    server = ServerProcess(data_dir=tmp_path / "second", env=server_env(None))
    portal = Portal.start(server)
    try:
        yield portal
    finally:
        portal.close()
        server.stop()


def fleet(portal: Portal) -> list[tuple[str, str, str, list[str]]]:
    devices = portal.api.get("/api/v1/devices").json()
    return [(d["id"], d["model"], d["name"] or "", d["tags"]) for d in devices]


def test_export_then_import_on_another_server(
    page: Page, portal: Portal, second: Portal, browser: Browser, tmp_path: Path
) -> None:
    for device_id, model, name, tags in DEVICES:
        portal.register_device(device_id, model=model, name=name or None)
        if tags:
            assert portal.api.put(f"/api/v1/devices/{device_id}/tags", json={"tags": tags}).is_success
    sign_in(page, *portal.create_user("op@example.com", "operator"))
    page.goto("/devices")
    expect(page.locator("#devices-live tbody tr")).to_have_count(3)
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    exported = tmp_path / "devices.csv"
    info.value.save_as(exported)
    with exported.open(newline="") as f:
        assert [row["id"] for row in csv.DictReader(f)] == [d[0] for d in DEVICES]

    context = browser.new_context(base_url=second.url, viewport=LAPTOP)
    try:
        other = context.new_page()
        sign_in(other, *second.create_user("op@example.com", "operator"))
        other.goto("/devices")
        other.get_by_role("link", name="Import CSV").click()
        other.get_by_label("CSV file").set_input_files(exported)
        other.get_by_role("button", name="Check the file").click()
        expect(other.locator("#import-summary")).to_have_text("3 devices will be registered.")
        assert second.api.get("/api/v1/devices").json() == []  # the check registers nothing
        other.get_by_role("button", name="Register 3 devices").click()
        expect(other.get_by_role("heading", name="Registered 3 devices")).to_be_visible()
        with other.expect_download() as info:
            other.get_by_role("button", name="Download CSV of the tokens").click()
        tokens = tmp_path / "tokens.csv"
        info.value.save_as(tokens)
        with tokens.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["id"] for r in rows] == [d[0] for d in DEVICES]
        assert second.heartbeat(rows[0]["token"], "v1.0.0").get("ota") is None  # the tokens work
    finally:
        context.close()
    assert fleet(second) == fleet(portal) == [(i, m, n, t) for i, m, n, t in DEVICES]
