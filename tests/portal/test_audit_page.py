"""The audit log page: what operators do in the portal is recorded under their name, and the filters work."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, browser, html, table_rows
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


def target_links(page: Element) -> dict[str, str | None]:
    """Each row's target text → the href of its link (None when it is not a link)."""
    links: dict[str, str | None] = {}
    for tr in page.by_id("audit-entries").find_all("tr")[1:]:
        cell = tr.find_all("td")[3]
        a = cell.find("a")
        links[cell.text] = a.attr("href") if a is not None else None
    return links


def test_targets_link_to_their_pages_while_they_exist(
    client: TestClient, sessions: Any, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 64)
    unused = admin.release("v1.0.2", bin=b"\x02" * 64)
    admin.device(device_id="BP-L-1")
    admin.device(device_id="BP-L-2")
    assignment = admin.assign("BP-L-1", release["id"]).json()
    group = admin.post("/api/v1/groups", json={"name": "Studio", "filter": {"ids": ["BP-L-1"]}}).json()
    rollout = admin.post(
        "/api/v1/rollouts",
        json={"name": "r", "release_id": release["id"], "target": {"filter": {"ids": ["BP-L-2"]}}, "stages": [100]},
    ).json()
    assert admin.delete(f"/api/v1/firmware/{unused['id']}").status_code == 204
    add_user(sessions, "boss@example.com", "admin")

    sign_in(client, *portal_user)  # an operator
    page, _ = entries(client)
    links = target_links(page)
    assert links["device BP-L-1"] == "/devices/BP-L-1"
    assert links[f"release {release['id']}"] == f"/firmware#release-{release['id']}"
    assert links[f"release {unused['id']}"] is None  # deleted: nothing to link to
    assert links[f"assignment {assignment['id']}"] == "/devices/BP-L-1?tab=ota"
    assert links[f"group {group['id']}"] == f"/groups/{group['id']}"
    assert links[f"rollout {rollout['id']}"] == f"/rollouts/{rollout['id']}"
    assert not any(href and href.startswith(("/users", "/tokens")) for href in links.values())  # not theirs to see

    boss = browser(client.app)
    sign_in(boss, "boss@example.com", "correct-horse")
    boss_page, _ = entries(boss)
    user_links = [h for h in target_links(boss_page).values() if h and h.startswith("/users#user-")]
    users_page = html(boss.get("/users"))
    assert user_links and all(users_page.has_id(h.split("#")[1]) for h in user_links)


def test_times_are_relative_and_the_table_is_a_focusable_region(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-T-1")
    sign_in(client, *portal_user)
    page, _ = entries(client)
    region = page.find("div", role="region")
    assert region is not None and region.attr("tabindex") == "0" and region.attr("aria-label") == "Audit entries"
    assert region.find("table", id="audit-entries") is not None
    when = page.by_id("audit-entries").find("time")
    assert when is not None and when.attr("datetime")
    assert (when.attr("title") or "").endswith(" UTC") and (when.text == "now" or when.text.endswith(" ago"))
