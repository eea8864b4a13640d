"""Assignments across the fleet: the status chips with their counts, the status filter, pagination."""

from __future__ import annotations

from collections import Counter

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
    assert "(56)" in page.find("h1").text  # type: ignore[union-attr]
    assert chips(page) == {
        "All": ("All", True),
        "pending": ("pending 1", False),
        "delivered": ("delivered 1", False),
        "applied": ("applied 1", False),
        "failed": ("failed 1", False),
        "cancelled": ("cancelled 51", False),
        "superseded": ("superseded 1", False),
    }
    assert len(first) == 50 and "Page 1 of 2" in page.text
    assert "/assignments?page=2" in page.links()
    page2, second = rows(client, "page=2")
    assert len(second) == 6 and "Page 2 of 2" in page2.text and "/assignments?page=1" in page2.links()
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

    page, cancelled = rows(client, "status=cancelled")
    assert len(cancelled) == 50 and set(cancelled) == {("BP-MANY", "cancelled")}
    assert "(51)" in page.find("h1").text  # type: ignore[union-attr]
    assert "/assignments?status=cancelled&page=2" in page.links()  # the pager keeps the filter
    page, last = rows(client, "status=cancelled&page=2")
    assert last == [("BP-MANY", "cancelled")] and "Page 2 of 2" in page.text


def test_an_empty_status_and_an_unknown_one(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 128)
    admin.device(device_id="BP-ONE")
    admin.assign("BP-ONE", release["id"])
    sign_in(client, *portal_user)
    page, none = rows(client, "status=failed")
    assert none == [] and "No assignments with status failed." in page.text
    _, everything = rows(client, "status=bogus")  # not a status: no filter
    assert everything == [("BP-ONE", "pending")]
    assert client.get("/assignments?page=0").status_code == 422
