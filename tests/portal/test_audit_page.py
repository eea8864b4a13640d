"""The audit log page: what operators do in the portal is recorded under their name, and the filters work."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.portal.pages import Element, html, table_rows
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient


def entries(client: TestClient, query: str = "") -> tuple[Element, list[tuple[str, str, str]]]:
    """The page and its rows as (actor, action, target)."""
    r = client.get("/audit" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    page = html(r)
    return page, [(cells[1], cells[2], cells[3]) for cells in table_rows(page)]


def test_portal_actions_are_recorded_and_filterable(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-API-1")  # by the API token, not the portal user
    sign_in(client, *portal_user)
    token = csrf(client, "/firmware/upload")
    upload = client.post(
        "/firmware/upload",
        data={"version": "v1.0.1", "model": "bota-pin"},
        files={"bin": ("fw.bin", b"\x01" * 64)},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert upload.status_code == 201, upload.text
    release_id = upload.json()["id"]
    assert (
        client.post("/devices/new", data={"id": "BP-AUD-1", "model": "bota-pin", "csrf_token": token}).status_code
        == 201
    )
    assigned = client.post(
        "/devices/BP-AUD-1/assign", data={"release_id": release_id, "csrf_token": token}, follow_redirects=False
    )
    assert assigned.status_code == 303

    me = "user:op@example.com"
    page, everything = entries(client)
    mine = [e for e in everything if e[0] == me]
    assert [(actor, action) for actor, action, _ in mine] == [
        (me, "assignment.create"),
        (me, "device.register"),
        (me, "firmware.upload"),
    ]  # newest first
    assert f"release {release_id}" == mine[2][2] and mine[1][2] == "device BP-AUD-1"
    assert ("token:test-admin", "device.register", "device BP-API-1") in everything
    assert "/devices/BP-AUD-1" in page.links()  # device targets link to the device

    _, by_actor = entries(client, f"actor={me}")
    assert by_actor == mine
    _, by_action = entries(client, "action=device.register")
    assert sorted(by_action) == sorted(
        [(me, "device.register", "device BP-AUD-1"), ("token:test-admin", "device.register", "device BP-API-1")]
    )
    _, both = entries(client, f"action=device.register&actor={me}")
    assert both == [(me, "device.register", "device BP-AUD-1")]
    page, by_target = entries(client, "target=BP-AUD-1")
    assert [action for _, action, _ in by_target] == ["device.register"]
    page, nobody = entries(client, "actor=user:nobody@example.com")
    assert nobody == [] and "No entries match." in page.text
    # The filter form shows what was asked for.
    page, _ = entries(client, f"action=device.register&actor={me}")
    assert page.by_id("action").attr("value") == "device.register" and page.by_id("actor").attr("value") == me


def test_the_audit_log_pages(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    for i in range(52):
        admin.device(device_id=f"BP-P{i:02d}")
    sign_in(client, *portal_user)
    page, first = entries(client, "action=device.register")
    assert len(first) == 50 and "Page 1 of 2" in page.text
    assert "/audit?action=device.register&page=2" in page.links()
    _, second = entries(client, "action=device.register&page=2")
    assert {target for _, _, target in first + second} == {f"device BP-P{i:02d}" for i in range(52)}
