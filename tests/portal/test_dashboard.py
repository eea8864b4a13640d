"""The dashboard: online/offline, assignments by status, firmware versions per model, recent failures."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, html, table_rows
from tests.portal.support import sign_in
from tests.support.factories import ApiClient, heartbeat


def chart(page: Element, chart_id: str) -> tuple[str, list[tuple[str, str, float]]]:
    """A bar chart (a table with a bar drawn in each row): its caption and, per bar, the label, the number
    and the bar's width in percent."""
    table = page.by_id(chart_id)
    caption = table.find("caption")
    bars = []
    for tr in table.find_all("tr"):
        label, value, bar = tr.find("th"), tr.find("td", class_="value"), tr.find("rect")
        assert label is not None and value is not None and bar is not None
        width = re.fullmatch(r"([0-9.]+)%", bar.attrs.get("width") or "")
        assert width, bar.attrs
        bars.append((label.text, value.text, float(width.group(1))))
    return (caption.text if caption else ""), bars


def tiles(page: Element) -> list[str]:
    return [a.text for a in page.find_all("a", class_="tile")]


def tile(page: Element, name: str) -> tuple[str, str]:
    """A tile's text and where its link goes."""
    a = page.by_id(f"tile-{name}")
    return a.text, a.attrs.get("href") or ""


def fail_update(client: TestClient, admin: ApiClient, device: dict[str, Any], release_id: str) -> None:
    """Assign, deliver, and have the device report a final failure."""
    assignment = admin.assign(device["id"], release_id).json()
    manifest = heartbeat(client, device["token"], firmware_version="v1.0.0").json()["ota"]
    assert manifest["assignment_id"] == assignment["id"]
    ota = {"assignment_id": assignment["id"], "state": "failed", "error": "crc_mismatch"}
    assert heartbeat(client, device["token"], firmware_version="v1.0.0", ota=ota).status_code == 200


def test_counts_charts_and_recent_failures(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    pins = [admin.device(device_id=f"BP-D{i}") for i in range(1, 5)]
    admin.device(model="bota-note", device_id="BN-D5")  # never seen: offline, version unknown
    for device, version in zip(pins, ["v1.0.0", "v1.0.0", "1.0.0", "v1.0.0"], strict=True):
        assert heartbeat(client, device["token"], firmware_version=version).status_code == 200
    release = admin.release("v1.1.0", bin=b"\x01" * 256)

    fail_update(client, admin, pins[0], release["id"])  # BP-D1: delivered, then a failed update
    # BP-D2: pending. BP-D3: cancelled. BP-D4: applied (it now runs 1.1.0, spelled without the v).
    admin.assign("BP-D2", release["id"])
    cancelled = admin.assign("BP-D3", release["id"]).json()
    admin.post(f"/api/v1/assignments/{cancelled['id']}/cancel")
    admin.assign("BP-D4", release["id"])
    heartbeat(client, pins[3]["token"], firmware_version="1.1.0")

    sign_in(client, *portal_user)
    page = html(client.get("/"))
    assert tiles(page) == [
        "Online · 4 devices",
        "Offline · 1 device",
        "Updating · 1 device",
        "Failing · 1 device (latest update failed)",
    ]
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
        "Bota Pin devices per reported firmware version",
        [("1.1.0", "1", 33.3), ("v1.0.0", "3", 100.0)],
    )
    # A device that never reported a version is a line of its own, never a bar.
    assert not page.has_id("chart-bota-note")
    assert page.by_id("unreported-bota-note").text == "1 Bota Note device has not reported a version yet."
    assert not page.has_id("chart-bota-pin-pro") and "No Bota Pin Pro devices." in page.text

    failures = page.by_id("recent-failures")
    [failure] = table_rows(page, failures)
    assert failure[:2] == ["BP-D1", "v1.1.0"]
    assert failure[2].startswith("crc_mismatch The downloaded image did not match its checksum")
    when = failures.find("time")
    assert when is not None and (when.attrs.get("title") or "").endswith(" UTC")  # the absolute time on hover
    assert failure[3] == when.text and failure[3].endswith(("now", "ago"))
    assert "/devices/BP-D1?tab=ota" in failures.links()


def test_unknown_versions_never_dwarf_the_reported_ones(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    """Many never-reported devices beside one that reported: the one version is the only bar, at full width."""
    for i in range(12):
        admin.device(device_id=f"BP-SILENT-{i:02d}")
    talker = admin.device(device_id="BP-TALKER")
    heartbeat(client, talker["token"], firmware_version="v2.0.0")
    sign_in(client, *portal_user)
    page = html(client.get("/"))
    assert chart(page, "chart-bota-pin")[1] == [("v2.0.0", "1", 100.0)]
    assert page.by_id("unreported-bota-pin").text == "12 Bota Pin devices have not reported a version yet."


def test_updating_counts_exactly_the_devices_its_link_lists(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    """A device assigned before it ever connected is updating (waiting for its first heartbeat), and the
    tile's link lists the same assignments the tile counts: pending and delivered ones."""
    release = admin.release("v1.1.0", bin=b"\x01" * 256)
    admin.device(device_id="BP-NEW")  # never connected
    admin.assign("BP-NEW", release["id"])
    seen = admin.device(device_id="BP-SEEN")
    admin.assign("BP-SEEN", release["id"])
    heartbeat(client, seen["token"], firmware_version="v1.0.0")  # delivered
    done = admin.device(device_id="BP-DONE")
    admin.assign("BP-DONE", release["id"])
    heartbeat(client, done["token"], firmware_version="v1.1.0")  # applied: not updating

    sign_in(client, *portal_user)
    text, href = tile(html(client.get("/")), "updating")
    assert text == "Updating · 2 devices (1 waiting for their first heartbeat)"
    listed = html(client.get(href))
    statuses = {cells[0]: cells[2].split()[0] for cells in table_rows(listed, listed.by_id("assignments"))}
    assert statuses == {"BP-NEW": "pending", "BP-SEEN": "delivered"}


def test_failing_counts_devices_whose_latest_update_failed(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    """Failing counts devices, not failed assignments in the history: a device that failed and then applied
    a later update is not failing, one that failed twice counts once; the link lists those devices."""
    broken = admin.release("v1.1.0", bin=b"\x01" * 256)
    fixed = admin.release("v1.1.1", bin=b"\x02" * 256)
    recovered = admin.device(device_id="BP-RECOVERED")
    heartbeat(client, recovered["token"], firmware_version="v1.0.0")
    fail_update(client, admin, recovered, broken["id"])
    admin.assign("BP-RECOVERED", fixed["id"])
    heartbeat(client, recovered["token"], firmware_version="v1.1.1")  # applied
    stuck = admin.device(device_id="BP-STUCK")
    heartbeat(client, stuck["token"], firmware_version="v1.0.0")
    fail_update(client, admin, stuck, broken["id"])
    fail_update(client, admin, stuck, fixed["id"])

    sign_in(client, *portal_user)
    page = html(client.get("/"))
    text, href = tile(page, "failing")
    assert (text, href) == ("Failing · 1 device (latest update failed)", "/devices?status=failed")
    assert chart(page, "chart-status")[1][3] == ("failed", "3", 100.0)  # the history still shows all three
    listed = html(client.get(href)).links()
    assert any(link.startswith("/devices/BP-STUCK") for link in listed)
    assert not any(link.startswith("/devices/BP-RECOVERED") for link in listed)


def test_the_regions_refresh_themselves(client: TestClient, portal_user: tuple[str, str]) -> None:
    """The tiles, the running rollouts and the charts with the failures each re-render from the page's URL."""
    sign_in(client, *portal_user)
    page = html(client.get("/"))
    for region in ("dashboard-tiles", "running-rollouts", "dashboard-fleet"):
        element = page.by_id(region)
        assert element.attrs.get("hx-get") == "/" and element.attrs.get("hx-select") == f"#{region}"
        assert "every 5s" in (element.attrs.get("hx-trigger") or "")


def test_an_empty_fleet(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    page = html(client.get("/"))
    assert tiles(page) == [
        "Online · 0 devices",
        "Offline · 0 devices",
        "Updating · 0 devices",
        "Failing · 0 devices (latest update failed)",
    ]
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
