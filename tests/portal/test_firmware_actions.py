"""The firmware list's actions: Release / Mark as draft, and Delete (refused while assignments reference it)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from bota_ota.core.settings import Settings
from tests.portal.pages import Element, add_user, flash, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, files_in, heartbeat


def release_row(client: TestClient, release_id: str) -> Element:
    page = client.get("/firmware")
    assert page.status_code == 200
    return html(page).by_id(f"release-{release_id}")


def cells(row: Element) -> list[str]:
    return [c.text for c in row.descendants if c.tag in ("th", "td")]


def test_mark_as_draft_and_release_again(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    sign_in(client, *portal_user)
    row = release_row(client, release["id"])
    assert "Mark as draft" in row.buttons() and "released" in row.text

    token = csrf(client, "/firmware")
    r = client.post(f"/firmware/{release['id']}/released", data={"released": "false", "csrf_token": token})
    assert r.status_code == 200 and str(r.url).endswith("/firmware")  # followed the 303
    assert flash(html(r)) == ("Bota Pin v1.0.1 is now a draft: apps will not offer it.", False)
    assert admin.get(f"/api/v1/firmware/{release['id']}").json()["released"] is False
    row = release_row(client, release["id"])
    assert "Release" in row.buttons() and "Mark as draft" not in row.buttons()
    assert row.find("span", class_="badge draft") is not None

    client.post(f"/firmware/{release['id']}/released", data={"released": "true", "csrf_token": token})
    assert admin.get(f"/api/v1/firmware/{release['id']}").json()["released"] is True

    entries = admin.get("/api/v1/audit", params={"action": "firmware.update"}).json()
    assert [(e["actor"], e["target_id"], e["detail"]) for e in entries] == [
        ("user:op@example.com", release["id"], {"released": True}),
        ("user:op@example.com", release["id"], {"released": False}),
    ]


def test_delete_an_unreferenced_release_removes_it_and_its_files(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], settings: Settings
) -> None:
    keep = admin.release("v1.0.1", bin=b"\x01" * 100, ufw=b"\x02" * 50)
    gone = admin.release("v1.0.2", bin=b"\x03" * 100, ufw=b"\x04" * 50)
    assert len(files_in(settings.blob_dir)) == 4
    sign_in(client, *portal_user)
    row = release_row(client, gone["id"])
    assert f"/firmware/{gone['id']}/delete" in row.form_actions()

    r = client.post(f"/firmware/{gone['id']}/delete", data={"csrf_token": csrf(client, "/firmware")})
    assert r.status_code == 200
    page = html(r)
    assert flash(page) == ("Deleted Bota Pin v1.0.2.", False)
    assert not page.has_id(f"release-{gone['id']}") and page.has_id(f"release-{keep['id']}")
    assert admin.get(f"/api/v1/firmware/{gone['id']}").status_code == 404
    remaining = files_in(settings.blob_dir)
    assert len(remaining) == 2 and all(keep["id"] in str(p) for p in remaining)
    [entry] = admin.get("/api/v1/audit", params={"action": "firmware.delete"}).json()
    assert (entry["actor"], entry["target_id"]) == ("user:op@example.com", gone["id"])


def test_a_referenced_release_has_no_delete_button_and_is_not_deleted(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], settings: Settings
) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    device = admin.device(device_id="BP-DEL-1")
    assignment = admin.assign(device["id"], release["id"]).json()
    admin.post(f"/api/v1/assignments/{assignment['id']}/cancel")  # a finished assignment still references it
    sign_in(client, *portal_user)
    row = release_row(client, release["id"])
    assert "Delete" not in row.buttons()
    assert f"/firmware/{release['id']}/delete" not in row.form_actions()
    assert "Mark as draft" in row.buttons()  # the other action is still there

    r = client.post(f"/firmware/{release['id']}/delete", data={"csrf_token": csrf(client, "/firmware")})
    assert r.status_code == 200
    message, is_error = flash(html(r)) or ("", False)
    assert is_error and message.startswith("Not deleted:") and "referenced by assignments" in message
    assert admin.get(f"/api/v1/firmware/{release['id']}").status_code == 200
    assert len(files_in(settings.blob_dir)) == 1
    assert admin.get("/api/v1/audit", params={"action": "firmware.delete"}).json() == []


def test_a_viewer_sees_no_actions_and_a_forged_post_gets_403(
    client: TestClient, admin: ApiClient, sessions: Any, settings: Settings
) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = html(client.get("/firmware"))
    row = page.by_id(f"release-{release['id']}")
    assert row.buttons() == ["Copy"] and row.form_actions() == []  # copying the SHA-256 is for everyone
    assert "Upload firmware" not in page.text and "/firmware/upload" not in page.links()

    token = csrf(client, "/firmware")  # a valid token: only the role stops these
    released = client.post(f"/firmware/{release['id']}/released", data={"released": "false", "csrf_token": token})
    assert released.status_code == 403
    deleted = client.post(f"/firmware/{release['id']}/delete", data={"csrf_token": token})
    assert deleted.status_code == 403
    after = admin.get(f"/api/v1/firmware/{release['id']}")
    assert after.status_code == 200 and after.json()["released"] is True
    assert len(files_in(settings.blob_dir)) == 1


def test_actions_on_an_unknown_release_are_404(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    token = csrf(client, "/firmware")
    assert client.post("/firmware/nope/released", data={"released": "true", "csrf_token": token}).status_code == 404
    assert client.post("/firmware/nope/delete", data={"csrf_token": token}).status_code == 404


def test_the_devices_column_counts_devices_running_the_release(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    other = admin.release("v1.0.2", bin=b"\x02" * 100)
    note = admin.release("v1.0.1", model="bota-note", bin=b"\x03" * 100)
    for i, version in enumerate(["v1.0.1", "v1.0.1", "v1.0.0"]):
        heartbeat(client, admin.device(device_id=f"BP-RUN-{i}")["token"], firmware_version=version)
    sign_in(client, *portal_user)
    page = html(client.get("/firmware"))
    devices_cell = {r: cells(page.by_id(f"release-{r}"))[4] for r in (release["id"], other["id"], note["id"])}
    assert devices_cell == {release["id"]: "2", other["id"]: "0", note["id"]: "0"}


def test_the_devices_count_links_to_a_list_of_as_many_devices(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.release("v1.0.1", bin=b"\x01" * 100)
    for i, version in enumerate(["v1.0.1", "v1.0.1", "1.0.1"]):  # one device spells it without the v
        heartbeat(client, admin.device(device_id=f"BP-RUN-{i}")["token"], firmware_version=version)
    sign_in(client, *portal_user)
    page = html(client.get("/firmware"))
    [link] = [a for a in page.find_all("a") if (a.attrs.get("href") or "").startswith("/devices?model=bota-pin&")]
    assert link.text == "3"
    listed = html(client.get(link.attrs["href"] or ""))
    assert "(3)" in (listed.find("h1") or Element("h1", {})).text
