"""The dashboard: online/offline, assignments by status, firmware versions per model, recent failures."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, html, table_rows
from tests.portal.support import sign_in
from tests.support.factories import ApiClient, heartbeat


def chart(page: Element, chart_id: str) -> tuple[str, list[tuple[str, str, float]]]:
    """A bar chart (a table with CSS bars): its caption and, per bar, the label, the number and the bar's
    width in percent."""
    table = page.by_id(chart_id)
    caption = table.find("caption")
    bars = []
    for tr in table.find_all("tr"):
        label, value, bar = tr.find("th"), tr.find("td", class_="value"), tr.find("span")
        assert label is not None and value is not None and bar is not None
        width = re.fullmatch(r"width: ([0-9.]+)%", bar.attrs.get("style") or "")
        assert width, bar.attrs
        bars.append((label.text, value.text, float(width.group(1))))
    return (caption.text if caption else ""), bars


def tiles(page: Element) -> list[str]:
    return [a.text for a in page.find_all("a", class_="tile")]


def test_counts_charts_and_recent_failures(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    pins = [admin.device(device_id=f"BP-D{i}") for i in range(1, 5)]
    admin.device(model="bota-note", device_id="BN-D5")  # never seen: offline, version unknown
    for device, version in zip(pins, ["v1.0.0", "v1.0.0", "1.0.0", "v1.0.0"], strict=True):
        assert heartbeat(client, device["token"], firmware_version=version).status_code == 200
    release = admin.release("v1.1.0", bin=b"\x01" * 256)

    # BP-D1: delivered, then the device reports a failed update.
    failing = admin.assign("BP-D1", release["id"]).json()
    manifest = heartbeat(client, pins[0]["token"], firmware_version="v1.0.0").json()["ota"]
    assert manifest["assignment_id"] == failing["id"]
    failed = heartbeat(
        client,
        pins[0]["token"],
        firmware_version="v1.0.0",
        ota={"assignment_id": failing["id"], "state": "failed", "error": "crc_mismatch"},
    )
    assert failed.status_code == 200 and failed.json()["ota"] is None
    # BP-D2: pending. BP-D3: cancelled. BP-D4: applied (it now runs 1.1.0, spelled without the v).
    admin.assign("BP-D2", release["id"])
    cancelled = admin.assign("BP-D3", release["id"]).json()
    admin.post(f"/api/v1/assignments/{cancelled['id']}/cancel")
    admin.assign("BP-D4", release["id"])
    heartbeat(client, pins[3]["token"], firmware_version="1.1.0")

    sign_in(client, *portal_user)
    page = html(client.get("/"))
    assert tiles(page) == ["4 online", "1 offline", "1 updates in progress", "1 failed"]
    assert chart(page, "chart-online") == (
        "Devices online and offline",
        [("online", "4", 100.0), ("offline", "1", 25.0)],
    )
    assert chart(page, "chart-status")[1] == [
        ("pending", "1", 100.0),
        ("delivered", "0", 0.0),
        ("applied", "1", 100.0),
        ("failed", "1", 100.0),
        ("cancelled", "1", 100.0),
        ("superseded", "0", 0.0),
    ]

    # 1.0.0 and v1.0.0 are one version (shown as most devices spell it); newest version first.
    assert chart(page, "chart-bota-pin") == (
        "Bota Pin devices per firmware version",
        [("1.1.0", "1", 33.3), ("v1.0.0", "3", 100.0)],
    )
    assert chart(page, "chart-bota-note")[1] == [("unknown", "1", 100.0)]
    assert not page.has_id("chart-bota-pin-pro") and "No Bota Pin Pro devices." in page.text

    failures = _section(page, "Recent failures")
    [failure] = table_rows(page, failures)
    assert failure[:3] == ["BP-D1", "v1.1.0", "crc_mismatch"]
    assert "/devices/BP-D1?tab=ota" in failures.links()


def test_an_empty_fleet(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    page = html(client.get("/"))
    assert tiles(page) == ["0 online", "0 offline", "0 updates in progress", "0 failed"]
    assert not page.has_id("chart-online") and "No devices registered yet." in page.text
    assert [(label, value) for label, value, _ in chart(page, "chart-status")[1]] == [
        ("pending", "0"),
        ("delivered", "0"),
        ("applied", "0"),
        ("failed", "0"),
        ("cancelled", "0"),
        ("superseded", "0"),
    ]
    assert "No failed updates." in _section(page, "Recent failures").text


def test_a_viewer_is_not_offered_to_register_a_device(client: TestClient, sessions: Any) -> None:
    """The empty dashboard invites operators to register a device; a viewer may not, so sees no link."""
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = html(client.get("/"))
    assert "No devices registered yet." in page.text
    assert "/devices/new" not in page.links()


def _section(page: Element, heading: str) -> Element:
    for section in page.find_all("section"):
        h2 = section.find("h2")
        if h2 is not None and h2.text == heading:
            return section
    raise AssertionError(f"no section {heading!r}")
