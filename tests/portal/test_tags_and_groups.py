"""Device tags in the portal (shown, edited, filtered by), groups (list, create, page, edit, delete), the
dashboard's running rollouts, and the Assignments page's release and rollout filters."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.portal.pages import add_user, field_error, flash, html, table_rows
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient


def device_ids(client: TestClient, query: str) -> list[str]:
    return [row[0].split()[0] for row in table_rows(html(client.get(f"/devices?{query}")))]


# ---- tags ------------------------------------------------------------------------------------------------------


def test_tags_are_shown_edited_and_filtered_by(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    for i in (1, 2, 3):
        admin.device(device_id=f"BP-T-{i}")
    admin.post("/api/v1/devices/tags", json={"filter": {"ids": ["BP-T-1", "BP-T-2"]}, "add": ["beta"]})
    sign_in(client, *portal_user)

    page = html(client.get("/devices/BP-T-3"))
    token = csrf(client, "/devices/BP-T-3")
    r = client.post(
        "/devices/BP-T-3/tags", data={"tags": "EU-west, beta,, beta", "csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/devices/BP-T-3"
    page = html(client.get("/devices/BP-T-3"))
    assert flash(page) == ("Tags of BP-T-3: beta, eu-west.", False)
    assert [li.text for li in page.by_id("device-tags").find_all("li")] == ["beta", "eu-west"]
    assert page.by_id("tags").attr("value") == "beta, eu-west"
    assert admin.get("/api/v1/devices/BP-T-3").json()["tags"] == ["beta", "eu-west"]
    [entry] = admin.get("/api/v1/audit", params={"action": "device.tags"}).json()
    assert entry["actor"] == "user:op@example.com"

    r = client.post("/devices/BP-T-3/tags", data={"tags": "beta, Not OK!", "csrf_token": token})
    assert r.status_code == 422
    page = html(r)
    assert "a tag is" in field_error(page, "tags") and page.by_id("tags").attr("aria-invalid") == "true"
    assert page.by_id("tags").attr("value") == "beta, Not OK!"  # kept as typed
    many = ", ".join(f"t{i}" for i in range(21))
    assert client.post("/devices/BP-T-3/tags", data={"tags": many, "csrf_token": token}).status_code == 422
    assert admin.get("/api/v1/devices/BP-T-3").json()["tags"] == ["beta", "eu-west"]
    assert client.post("/devices/NOPE/tags", data={"tags": "beta", "csrf_token": token}).status_code == 404

    client.post("/devices/BP-T-2/tags", data={"tags": "", "csrf_token": token})  # empty clears them
    assert admin.get("/api/v1/devices/BP-T-2").json()["tags"] == []

    # The list: chips, and the filter (comma-separated or repeated; all of the tags).
    rows = {row[0].split()[0]: row for row in table_rows(html(client.get("/devices")))}
    assert rows["BP-T-3"][3] == "beta eu-west" and rows["BP-T-2"][3] == "—"
    assert device_ids(client, "tag=beta") == ["BP-T-1", "BP-T-3"]
    assert device_ids(client, "tag=beta,+EU-west") == ["BP-T-3"]
    assert device_ids(client, "tag=beta&tag=eu-west") == ["BP-T-3"]
    assert html(client.get("/devices?tag=beta&tag=eu-west")).by_id("tag").attr("value") == "beta, eu-west"
    r = client.get("/devices?tag=no+good!")
    assert r.status_code == 422 and "a tag is" in field_error(html(r), "tag")


def test_a_viewer_sees_tags_but_no_tag_form(client: TestClient, admin: ApiClient, sessions: Any) -> None:
    admin.device(device_id="BP-T-9")
    admin.post("/api/v1/devices/tags", json={"filter": {"ids": ["BP-T-9"]}, "add": ["beta"]})
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = html(client.get("/devices/BP-T-9"))
    assert page.by_id("device-tags").text == "beta"
    assert "/devices/BP-T-9/tags" not in page.form_actions() and "Save tags" not in page.buttons()
    r = client.post("/devices/BP-T-9/tags", data={"tags": "", "csrf_token": csrf(client, "/")})
    assert r.status_code == 403
    assert admin.get("/api/v1/devices/BP-T-9").json()["tags"] == ["beta"]


# ---- groups ----------------------------------------------------------------------------------------------------


def test_groups_crud(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    admin.device(device_id="BP-G-1")
    admin.device(device_id="BP-G-2")
    admin.device(model="bota-note", device_id="BN-G-1")
    admin.post("/api/v1/devices/tags", json={"filter": {"ids": ["BP-G-1", "BN-G-1"]}, "add": ["beta"]})
    sign_in(client, *portal_user)
    assert "/groups/new" in html(client.get("/groups")).links()
    token = csrf(client, "/groups/new")

    # Errors beside the fields, values kept, nothing created.
    for form, field in [
        ({"name": "  "}, "name"),
        ({"name": "x", "tags": "Not OK!"}, "tags"),
        ({"name": "x", "firmware_below": "latest"}, "firmware_below"),
        ({"name": "x", "firmware_version": "1.0.0", "firmware_below": "2.0.0"}, "firmware_below"),
        ({"name": "x", "seen_within_s": "soon"}, "seen_within_s"),
        ({"name": "x", "model": "toaster"}, "model"),
    ]:
        r = client.post("/groups/new", data={**form, "csrf_token": token})
        assert r.status_code == 422, form
        page = html(r)
        assert field_error(page, field), form
        assert page.by_id("name").attr("value") == form["name"]
    assert admin.get("/api/v1/groups").json() == []

    r = client.post(
        "/groups/new",
        data={
            "name": "Beta Pins",
            "description": "early adopters",
            "model": "bota-pin",
            "tags": "beta",
            "csrf_token": token,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    group_path = r.headers["location"]
    [group] = admin.get("/api/v1/groups").json()
    assert group_path == f"/groups/{group['id']}"
    assert group["filter"] == {"model": "bota-pin", "tags": ["beta"]} and group["description"] == "early adopters"

    page = html(client.get(group_path))
    assert flash(page) == ("Group “Beta Pins” created.", False)
    assert page.by_id("group-filter").text == "model Bota Pin · tags beta"
    assert [row[0] for row in table_rows(page, page.by_id("members"))] == ["BP-G-1"]
    assert {"Edit", "Delete"} <= set(page.buttons()) | {a.text for a in page.find_all("a")}

    r = client.post("/groups/new", data={"name": "beta pins", "csrf_token": token})
    assert r.status_code == 409 and "already exists" in field_error(html(r), "name")

    listed = html(client.get("/groups"))
    assert table_rows(listed)[0][:3] == ["Beta Pins early adopters", "model Bota Pin · tags beta", "1"]

    edit = html(client.get(f"{group_path}/edit"))
    assert edit.by_id("tags").attr("value") == "beta" and edit.by_id("name").attr("value") == "Beta Pins"
    r = client.post(f"{group_path}/edit", data={"name": "All betas", "tags": "beta", "csrf_token": token})
    assert r.status_code == 200 and str(r.url).endswith(group_path)
    page = html(r)
    assert sorted(row[0] for row in table_rows(page, page.by_id("members"))) == ["BN-G-1", "BP-G-1"]
    assert admin.get(f"/api/v1/groups/{group['id']}").json()["filter"] == {"tags": ["beta"]}
    r = client.post(f"{group_path}/edit", data={"name": "", "csrf_token": token})
    assert r.status_code == 422 and field_error(html(r), "name")

    r = client.post(f"{group_path}/delete", data={"csrf_token": token})
    assert r.status_code == 200 and str(r.url).endswith("/groups")
    assert flash(html(r)) == ("Group “All betas” deleted; its devices are unchanged.", False)
    assert admin.get("/api/v1/groups").json() == []
    assert client.get(group_path).status_code == 404
    assert client.post(f"{group_path}/delete", data={"csrf_token": token}).status_code == 404
    assert client.get(f"{group_path}/edit").status_code == 404


def test_groups_for_a_viewer(client: TestClient, admin: ApiClient, sessions: Any) -> None:
    group = admin.post("/api/v1/groups", json={"name": "All", "filter": {}}).json()
    for i in range(55):
        admin.device(device_id=f"BP-GV-{i:02d}")
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    listed = html(client.get("/groups"))
    assert "/groups/new" not in listed.links() and table_rows(listed)[0][2] == "55"
    page = html(client.get(f"/groups/{group['id']}"))
    # Only the pager's page-jump button: nothing that changes the group.
    assert page.buttons() == ["Sign out", "Go"] and f"/groups/{group['id']}/edit" not in page.links()
    assert page.form_actions() == ["/logout", f"/groups/{group['id']}"]
    assert len(table_rows(page, page.by_id("members"))) == 50
    assert f"/groups/{group['id']}?page=2" in page.links()
    second = html(client.get(f"/groups/{group['id']}?page=2"))
    assert len(table_rows(second, second.by_id("members"))) == 5
    third = html(client.get(f"/groups/{group['id']}?per_page=25&page=3"))  # a page size of 25: 25, 25, 5
    assert len(table_rows(third, third.by_id("members"))) == 5 and "Page 3 of 3" in third.text
    beyond = html(client.get(f"/groups/{group['id']}?per_page=25&page=9"))  # past the end: the last page
    assert len(table_rows(beyond, beyond.by_id("members"))) == 5 and "Page 3 of 3" in beyond.text
    assert beyond.find("time") is not None  # when the group was made and changed, as relative times
    token = csrf(client, "/groups")
    assert client.get("/groups/new").status_code == 403
    assert client.get(f"/groups/{group['id']}/edit").status_code == 403
    for path, form in [
        ("/groups/new", {"name": "mine"}),
        (f"/groups/{group['id']}/edit", {"name": "renamed"}),
        (f"/groups/{group['id']}/delete", {}),
    ]:
        assert client.post(path, data={**form, "csrf_token": token}).status_code == 403, path
    assert [g["name"] for g in admin.get("/api/v1/groups").json()] == ["All"]


# ---- the dashboard and the assignments page -------------------------------------------------------------------


def test_the_dashboard_shows_running_rollouts(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    release = admin.release("v1.0.1", bin=b"\x01" * 64)
    admin.device(device_id="BP-D-1")
    sign_in(client, *portal_user)
    assert "No rollout is running." in html(client.get("/")).by_id("running-rollouts").text
    body = {"name": "dash", "release_id": release["id"], "target": {"filter": {}}, "stages": [50, 100]}
    rollout = admin.post("/api/v1/rollouts", json=body).json()
    card = html(client.get("/")).by_id("running-rollouts")
    [row] = table_rows(card)
    assert row[:3] == ["dash", "Bota Pin v1.0.1", "1 of 2"] and "applied" in row[3]
    assert f"/rollouts/{rollout['id']}" in card.links()
    admin.post(f"/api/v1/rollouts/{rollout['id']}/cancel")
    assert table_rows(html(client.get("/")).by_id("running-rollouts")) == []


def test_assignments_filter_by_release_and_rollout(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    old = admin.release("v1.0.0", bin=b"\x01" * 64)
    new = admin.release("v1.0.1", bin=b"\x02" * 64)
    for i in (1, 2, 3):
        admin.device(device_id=f"BP-A-{i}")
    admin.assign("BP-A-1", old["id"])
    body = {"name": "Spring", "release_id": new["id"], "target": {"filter": {"ids": ["BP-A-2", "BP-A-3"]}},
            "stages": [50, 100], "advance": "manual"}  # fmt: skip
    rollout = admin.post("/api/v1/rollouts", json=body).json()
    admin.post(f"/api/v1/rollouts/{rollout['id']}/advance")
    admin.assign("BP-A-1", new["id"])  # busy with the old one: refused, so nothing changes
    sign_in(client, *portal_user)

    def listed(query: str) -> list[str]:
        return sorted(row[0] for row in table_rows(html(client.get(f"/assignments?{query}"))))

    assert listed("") == ["BP-A-1", "BP-A-2", "BP-A-3"]
    assert listed(f"release_id={old['id']}") == ["BP-A-1"]
    assert listed(f"release_id={new['id']}") == ["BP-A-2", "BP-A-3"]
    assert listed(f"rollout_id={rollout['id']}") == ["BP-A-2", "BP-A-3"]
    assert listed(f"rollout_id={rollout['id']}&status=applied") == []
    page = html(client.get(f"/assignments?rollout_id={rollout['id']}&status=pending"))
    assert page.by_id("rollout-filter").text.startswith("Rollout: Spring (Bota Pin v1.0.1)")
    assert f"/rollouts/{rollout['id']}" in page.links()
    # The status chips and the release form keep the other filters.
    assert f"/assignments?status=failed&rollout_id={rollout['id']}&sort=-created" in page.links()
    selected = [o.attr("value") for o in page.by_id("release_id").find_all("option") if "selected" in o.attrs]
    assert selected == []
    page = html(client.get(f"/assignments?release_id={old['id']}"))
    selected = [o.attr("value") for o in page.by_id("release_id").find_all("option") if "selected" in o.attrs]
    assert selected == [old["id"]]
    unknown = client.get("/assignments?rollout_id=nope")
    assert unknown.status_code == 200 and "unknown rollout nope" in html(unknown).by_id("rollout-filter").text
    assert table_rows(html(unknown)) == []
