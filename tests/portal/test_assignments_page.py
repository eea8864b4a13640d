"""Assignments across the fleet: the status chips with their counts, the status filter, pagination, page size,
sorting and the CSV export of the current filter and order."""

from __future__ import annotations

import csv
import io
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

from tests.portal.pages import Element, html, table_rows
from tests.portal.support import sign_in
from tests.support.factories import ApiClient, heartbeat


def rows(client: TestClient, query: str = "") -> tuple[Element, list[tuple[str, str]]]:
    """The page and its rows as (device, status)."""
    r = client.get("/assignments" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    page = html(r)
    return page, [(cells[0], cells[2].split()[0]) for cells in table_rows(page)]


def next_link(page: Element) -> dict[str, list[str]]:
    """The query of the pager's Next link."""
    a = page.find("a", rel="next")
    assert a is not None
    return parse_qs(urlsplit(a.attrs.get("href") or "").query)


def total(page: Element) -> str:
    return page.by_id("assignments-total").text


def chips(page: Element) -> dict[str, tuple[str, bool]]:
    """Each status chip: its text and whether it is the current filter."""
    nav = page.find("nav", class_="chips")
    assert nav is not None
    return {a.text.split()[0]: (a.text, a.attrs.get("aria-current") == "page") for a in nav.find_all("a")}


def test_filter_counts_and_pages(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 128)
    admin.device(device_id="BP-MANY")
    for _ in range(51):
        assignment = admin.assign("BP-MANY", release["id"]).json()
        assert admin.post(f"/api/v1/assignments/{assignment['id']}/cancel").status_code == 200
    admin.device(device_id="BP-PENDING")
    admin.assign("BP-PENDING", release["id"])
    delivered = admin.device(device_id="BP-DELIVERED")
    admin.assign("BP-DELIVERED", release["id"])
    heartbeat(client, delivered["token"], firmware_version="v1.0.0")
    applied = admin.device(device_id="BP-APPLIED")
    admin.assign("BP-APPLIED", release["id"])
    heartbeat(client, applied["token"], firmware_version="v1.0.1")
    failed = admin.device(device_id="BP-FAILED")
    failing = admin.assign("BP-FAILED", release["id"]).json()
    heartbeat(client, failed["token"], firmware_version="v1.0.0")
    heartbeat(
        client,
        failed["token"],
        firmware_version="v1.0.0",
        ota={"assignment_id": failing["id"], "state": "failed", "error": "signature_invalid"},
    )
    superseded = admin.device(device_id="BP-SUPERSEDED")
    admin.assign("BP-SUPERSEDED", release["id"])
    heartbeat(client, superseded["token"], firmware_version="v1.0.2")  # newer than the assignment's
    sign_in(client, *portal_user)

    page, first = rows(client)
    assert total(page) == "56 assignments"
    assert chips(page) == {
        "All": ("All", True),
        "active": ("active 2", False),
        "pending": ("pending 1", False),
        "delivered": ("delivered 1", False),
        "applied": ("applied 1", False),
        "failed": ("failed 1", False),
        "cancelled": ("cancelled 51", False),
        "superseded": ("superseded 1", False),
    }
    assert len(first) == 50 and "Page 1 of 2" in page.text
    assert next_link(page) == {"sort": ["-created"], "page": ["2"]}
    page2, second = rows(client, "page=2")
    assert len(second) == 6 and "Page 2 of 2" in page2.text
    assert Counter(first + second) == Counter(
        [("BP-MANY", "cancelled")] * 51
        + [
            ("BP-PENDING", "pending"),
            ("BP-DELIVERED", "delivered"),
            ("BP-APPLIED", "applied"),
            ("BP-FAILED", "failed"),
            ("BP-SUPERSEDED", "superseded"),
        ]
    )

    for status, device in [
        ("pending", "BP-PENDING"),
        ("delivered", "BP-DELIVERED"),
        ("applied", "BP-APPLIED"),
        ("failed", "BP-FAILED"),
        ("superseded", "BP-SUPERSEDED"),
    ]:
        page, only = rows(client, f"status={status}")
        assert only == [(device, status)], status
        assert chips(page)[status][1] and not chips(page)["All"][1]
        assert chips(page)["cancelled"] == ("cancelled 51", False)  # the chips count everything
    page, _ = rows(client, "status=failed")
    assert "signature_invalid" in page.text

    page, active = rows(client, "status=active")  # the dashboard's Updating tile links here
    assert sorted(active) == [("BP-DELIVERED", "delivered"), ("BP-PENDING", "pending")]
    assert total(page) == "2 assignments pending or delivered"

    page, cancelled = rows(client, "status=cancelled")
    assert len(cancelled) == 50 and set(cancelled) == {("BP-MANY", "cancelled")}
    assert total(page) == "51 assignments cancelled"
    assert next_link(page) == {"status": ["cancelled"], "sort": ["-created"], "page": ["2"]}  # the filter is kept
    page, last = rows(client, "status=cancelled&page=2")
    assert last == [("BP-MANY", "cancelled")] and "Page 2 of 2" in page.text
    _, past_the_end = rows(client, "status=cancelled&page=9")
    assert past_the_end == [("BP-MANY", "cancelled")]  # a page past the end shows the last one


def test_an_empty_status_and_an_unknown_one(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 128)
    admin.device(device_id="BP-ONE")
    admin.assign("BP-ONE", release["id"])
    sign_in(client, *portal_user)
    page, none = rows(client, "status=failed")
    assert none == [] and "No assignments with status failed." in page.text
    _, everything = rows(client, "status=bogus")  # not a status: no filter
    assert everything == [("BP-ONE", "pending")]
    for junk in ("page=0", "page=abc", "per_page=7", "sort=nonsense"):  # lenient: the defaults, never an error
        _, listed = rows(client, junk)
        assert listed == [("BP-ONE", "pending")], junk


def _fleet(client: TestClient, admin: ApiClient) -> None:
    """Four assignments, made in this order: BP-C pending (never seen), BP-A applied v1.0.1, BP-D failed
    v1.0.2 with an error, BP-B delivered v1.0.1."""
    old = admin.release("v1.0.1", bin=b"\x01" * 128)
    new = admin.release("v1.0.2", bin=b"\x02" * 128)
    admin.device(device_id="BP-C")
    admin.assign("BP-C", old["id"])
    a = admin.device(device_id="BP-A")
    admin.assign("BP-A", old["id"])
    heartbeat(client, a["token"], firmware_version="v1.0.1")
    d = admin.device(device_id="BP-D")
    failing = admin.assign("BP-D", new["id"]).json()
    heartbeat(client, d["token"], firmware_version="v1.0.0")
    ota = {"assignment_id": failing["id"], "state": "failed", "error": "crc_mismatch"}
    heartbeat(client, d["token"], firmware_version="v1.0.0", ota=ota)
    b = admin.device(device_id="BP-B")
    admin.assign("BP-B", old["id"])
    heartbeat(client, b["token"], firmware_version="v1.0.0")


def devices_in_order(client: TestClient, query: str) -> list[str]:
    _, listed = rows(client, query)
    return [device for device, _ in listed]


def test_sorting(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    _fleet(client, admin)
    sign_in(client, *portal_user)
    assert devices_in_order(client, "") == ["BP-B", "BP-D", "BP-A", "BP-C"]  # newest first
    assert devices_in_order(client, "sort=created") == ["BP-C", "BP-A", "BP-D", "BP-B"]
    assert devices_in_order(client, "sort=device") == ["BP-A", "BP-B", "BP-C", "BP-D"]
    assert devices_in_order(client, "sort=-device") == ["BP-D", "BP-C", "BP-B", "BP-A"]
    assert devices_in_order(client, "sort=status") == ["BP-A", "BP-B", "BP-D", "BP-C"]  # applied … pending
    assert devices_in_order(client, "sort=-version") == ["BP-D", "BP-B", "BP-A", "BP-C"]
    # Updated: the latest change (applied, failed and delivered after BP-C was made), newest first.
    assert devices_in_order(client, "sort=-updated") == ["BP-B", "BP-D", "BP-A", "BP-C"]

    page, _ = rows(client, "status=active&sort=device")
    headers = {th.text.split(" (")[0].strip(" ▲▼"): th for th in page.find_all("th", scope="col")}
    assert headers["Device"].attrs.get("aria-sort") == "ascending"
    assert "aria-sort" not in headers["Created"].attrs
    toggle = headers["Device"].find("a")
    assert toggle is not None
    assert parse_qs(urlsplit(toggle.attrs.get("href") or "").query) == {"status": ["active"], "sort": ["-device"]}
    for label in ("Created", "Updated", "Device", "Version", "Status"):
        assert headers[label].find("a") is not None, label


def test_page_size_and_page_jump(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 128)
    admin.device(device_id="BP-MANY")
    for _ in range(30):
        assignment = admin.assign("BP-MANY", release["id"]).json()
        admin.post(f"/api/v1/assignments/{assignment['id']}/cancel")
    sign_in(client, *portal_user)
    page, listed = rows(client, "per_page=25")
    assert len(listed) == 25 and "Page 1 of 2" in page.text
    assert next_link(page) == {"sort": ["-created"], "per_page": ["25"], "page": ["2"]}
    page, listed = rows(client, "per_page=25&page=2")
    assert len(listed) == 5 and "Page 2 of 2" in page.text
    jump = page.find("form", class_="pager-form")
    assert jump is not None and jump.find("input", name="page") is not None
    size = jump.find("select", name="per_page")
    assert size is not None and [o.text for o in size.find_all("option")] == ["25", "50", "100", "200"]


def export(client: TestClient, query: str = "") -> list[dict[str, str]]:
    r = client.get("/assignments/export.csv" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="assignments.csv"'
    reader = csv.DictReader(io.StringIO(r.text))
    assert reader.fieldnames == [
        "id", "device_id", "version", "status", "error", "attempts", "created_at", "updated_at", "rollout_id",
    ]  # fmt: skip
    return list(reader)


def test_csv_export_of_the_current_filter_and_order(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    _fleet(client, admin)
    sign_in(client, *portal_user)
    page, _ = rows(client, "status=active&sort=device&per_page=25")
    [link] = [a for a in page.find_all("a") if a.text == "Export CSV"]
    href = link.attrs.get("href") or ""
    assert urlsplit(href).path == "/assignments/export.csv"
    assert parse_qs(urlsplit(href).query) == {"status": ["active"], "sort": ["device"]}

    assert [(row["device_id"], row["status"]) for row in export(client, urlsplit(href).query)] == [
        ("BP-B", "delivered"),
        ("BP-C", "pending"),
    ]
    everything = export(client, "sort=device")
    assert [row["device_id"] for row in everything] == ["BP-A", "BP-B", "BP-C", "BP-D"]
    failed = everything[3]
    assert (failed["version"], failed["status"], failed["error"], failed["attempts"]) == (
        "v1.0.2", "failed", "crc_mismatch", "0",
    )  # fmt: skip
    assert failed["created_at"].endswith("+00:00") and failed["updated_at"] >= failed["created_at"]
    assert failed["rollout_id"] == ""


def test_csv_export_is_not_paged(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 128)
    admin.device(device_id="BP-MANY")
    for _ in range(60):
        assignment = admin.assign("BP-MANY", release["id"]).json()
        admin.post(f"/api/v1/assignments/{assignment['id']}/cancel")
    sign_in(client, *portal_user)
    exported = export(client, "status=cancelled&page=2&per_page=25")
    assert len(exported) == 60 and len({row["id"] for row in exported}) == 60


def test_csv_export_needs_a_signed_in_user(client: TestClient) -> None:
    r = client.get("/assignments/export.csv", follow_redirects=False)
    assert r.status_code in (303, 401) and "text/csv" not in r.headers.get("content-type", "")
