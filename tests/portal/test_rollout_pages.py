"""The rollout pages: Deploy from the firmware list, the form with its live preview, the list, the rollout page
with its polled progress, and the actions with their roles."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, field_error, flash, html, table_rows
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat

ACTION_BUTTONS = {"Pause", "Resume", "Advance", "Retry failed", "Cancel"}


@pytest.fixture
def fleet(admin: ApiClient) -> dict[str, Any]:
    """A release to deploy, an older one, and four Bota Pins: two tagged beta, one already up to date, one busy."""
    old = admin.release("v1.0.0", bin=b"\x01" * 64)
    new = admin.release("v1.0.1", bin=b"\x02" * 64)
    devices = {i: admin.device(device_id=f"BP-RO-{i}") for i in range(1, 5)}
    admin.post("/api/v1/devices/tags", json={"filter": {"ids": ["BP-RO-1", "BP-RO-2"]}, "add": ["beta"]})
    heartbeat(admin.client, devices[3]["token"], firmware_version="v1.0.1")  # up to date
    assert admin.assign("BP-RO-4", old["id"]).status_code == 201  # busy
    return {"old": old, "new": new, "devices": devices}


def rollout_via_api(admin: ApiClient, release_id: str, **body: Any) -> dict[str, Any]:
    payload = {"name": "api rollout", "release_id": release_id, "target": {"filter": {}}, "stages": [50, 100]}
    r = admin.post("/api/v1/rollouts", json={**payload, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def form_values(page: Element) -> dict[str, str]:
    form = page.by_id("rollout-form")
    values = {}
    for element in form.find_all("input"):
        name = element.attr("name")
        if name and element.attr("type") not in ("radio", "checkbox"):
            values[name] = element.attr("value") or ""
    return values


def action_buttons(page: Element) -> set[str]:
    return {b for b in page.buttons() if b in ACTION_BUTTONS}


# ---- Deploy and the form ------------------------------------------------------------------------------------


def test_deploy_leads_to_the_form_and_creates_the_rollout(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    release = fleet["new"]
    sign_in(client, *portal_user)
    row = html(client.get("/firmware")).by_id(f"release-{release['id']}")
    assert f"/rollouts/new?release_id={release['id']}" in row.links()

    page = html(client.get(f"/rollouts/new?release_id={release['id']}"))
    assert form_values(page)["stages"] == "1, 10, 100" and form_values(page)["name"] == "Bota Pin v1.0.1"
    counts = {dd.attr("data-count"): dd.text.split()[0] for dd in page.by_id("preview-counts").find_all("dd")}
    assert counts == {"matching": "4", "up_to_date": "1", "busy": "1"}

    form = {
        "csrf_token": csrf(client, "/firmware"),
        "release_id": release["id"],
        "name": "  Beta canary  ",
        "target_kind": "filter",
        "tags": "Beta",
        "firmware_below": "",
        "seen_within_s": "",
        "network": "",
        "stages": "10, 50%, 100",
        "success_threshold_pct": "90",
        "failure_threshold_pct": "10",
        "failure_min_devices": "2",
        "stage_window_h": "2",
        "advance": "manual",
    }  # include_new_devices left unchecked
    r = client.post("/rollouts/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("/rollouts/")
    rollout_id = location.rsplit("/", 1)[1]

    body = admin.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert body["name"] == "Beta canary"
    assert [s["percent"] for s in body["stages"]] == [10, 50, 100]
    assert (body["success_threshold_pct"], body["failure_threshold_pct"], body["failure_min_devices"]) == (90, 10, 2)
    assert (body["stage_window_s"], body["advance"], body["include_new_devices"]) == (7200, "manual", False)
    assert body["target"] == {"filter": {"model": "bota-pin", "tags": ["beta"]}}
    assert body["created_by"] == "user:op@example.com" and body["status"] == "running"

    page = html(client.get(location))
    assert flash(page) == ("Rollout “Beta canary” created: Bota Pin v1.0.1.", False)
    assert page.by_id("rollout-status").text.startswith("running stage 1 of 3")


def test_a_group_target(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    group = admin.post("/api/v1/groups", json={"name": "Beta testers", "filter": {"tags": ["beta"]}}).json()
    sign_in(client, *portal_user)
    page = html(client.get(f"/rollouts/new?release_id={fleet['new']['id']}"))
    assert group["id"] in [o.attr("value") for o in page.by_id("group_id").find_all("option")]

    preview = html(
        client.get(
            "/rollouts/preview",
            params={
                "release_id": fleet["new"]["id"],
                "target_kind": "group",
                "group_id": group["id"],
                "stages": "50,100",
            },
        )
    )
    assert preview.find("dd", data_count="matching").text == "2"  # type: ignore[union-attr]

    form = {
        "csrf_token": csrf(client, "/"),
        "release_id": fleet["new"]["id"],
        "name": "to the group",
        "target_kind": "group",
        "group_id": group["id"],
        "stages": "50, 100",
        "include_new_devices": "on",
    }
    r = client.post("/rollouts/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    body = admin.get(r.headers["location"].replace("/rollouts/", "/api/v1/rollouts/")).json()
    assert body["target"] == {"group_id": group["id"], "group_name": "Beta testers"}
    assert body["include_new_devices"] is True
    page = html(client.get(r.headers["location"]))
    assert f"/groups/{group['id']}" in page.links()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stages": "10, 5"}, "stages"),
        ({"stages": "10, 50"}, "stages"),
        ({"stages": "ten, 100"}, "stages"),
        ({"stages": ""}, "stages"),
        ({"name": "   "}, "name"),
        ({"success_threshold_pct": "0"}, "success_threshold_pct"),
        ({"failure_threshold_pct": "lots"}, "failure_threshold_pct"),
        ({"failure_min_devices": "0"}, "failure_min_devices"),
        ({"stage_window_h": "0"}, "stage_window_h"),
        ({"stage_window_h": "nan"}, "stage_window_h"),
        ({"stage_window_h": "99999"}, "stage_window_h"),
        ({"tags": "not a tag!"}, "tags"),
        ({"firmware_below": "latest"}, "firmware_below"),
        ({"seen_within_s": "-5"}, "seen_within_s"),
        ({"network": "carrier-pigeon"}, "network"),
        ({"advance": "sideways"}, "advance"),
        ({"target_kind": "group", "group_id": ""}, "group_id"),
        ({"target_kind": "group", "group_id": "no-such-group"}, "group_id"),
        ({"policy_min_battery": "150"}, "policy_min_battery"),
        ({"policy_min_battery": "-1"}, "policy_min_battery"),
        ({"policy_min_battery": "lots"}, "policy_min_battery"),
        ({"policy_min_battery": "50.5"}, "policy_min_battery"),
    ],
)
def test_invalid_values_show_an_error_beside_the_field_and_create_nothing(
    client: TestClient,
    admin: ApiClient,
    portal_user: tuple[str, str],
    fleet: dict[str, Any],
    changes: dict[str, str],
    field: str,
) -> None:
    sign_in(client, *portal_user)
    form = {"csrf_token": csrf(client, "/"), "release_id": fleet["new"]["id"], "name": "kept name",
            "target_kind": "filter", "tags": "beta", "stages": "1, 10, 100", "success_threshold_pct": "95",
            "failure_threshold_pct": "5", "failure_min_devices": "3", "stage_window_h": "24", "advance": "auto",
            **changes}  # fmt: skip
    r = client.post("/rollouts/new", data=form)
    assert r.status_code == (404 if changes.get("group_id") == "no-such-group" else 422), r.text
    page = html(r)
    assert field_error(page, field), r.text
    if field != "advance":  # radio buttons: the message is beside the group
        assert page.by_id(field).attr("aria-invalid") == "true"
    values = form_values(page)
    for key in ("name", "stages", "tags", "stage_window_h"):  # what was typed is still there
        assert values[key] == form[key], key
    assert admin.get("/api/v1/rollouts").json() == []


def test_the_form_sets_the_rollouts_delivery_policy(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    sign_in(client, *portal_user)
    page = html(client.get(f"/rollouts/new?release_id={fleet['new']['id']}"))
    policy = page.by_id("delivery-policy")
    assert page.by_id("policy_min_battery").attr("value") == ""
    boxes = {b.attr("name"): b for b in policy.find_all("input", type="checkbox")}
    assert set(boxes) == {"policy_wifi_only", "policy_defer_while_unsynced"}
    assert not any("checked" in b.attrs for b in boxes.values())  # left alone, nothing is overridden

    form = {"csrf_token": csrf(client, "/"), "release_id": fleet["new"]["id"], "name": "careful",
            "target_kind": "filter", "tags": "beta", "stages": "100", "policy_min_battery": " 60 % ",
            "policy_wifi_only": "on"}  # fmt: skip
    r = client.post("/rollouts/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    rollout_id = r.headers["location"].rsplit("/", 1)[1]
    body = admin.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert body["delivery_policy"] == {"min_battery": 60, "networks": ["wifi"]}
    made = admin.get("/api/v1/assignments", params={"rollout_id": rollout_id}).json()
    assert {a["device_id"] for a in made} == {"BP-RO-1", "BP-RO-2"}
    for a in made:
        assert admin.get(f"/api/v1/assignments/{a['id']}").json()["policy"] == body["delivery_policy"]
    page = html(client.get(r.headers["location"]))
    assert page.by_id("rollout-policy").text == "delivery: battery at least 60 % unless charging · Wi-Fi only"

    admin.post(f"/api/v1/rollouts/{rollout_id}/cancel")  # its devices are free for the next one
    form = {**form, "name": "plain", "policy_min_battery": "", "policy_wifi_only": "",
            "policy_defer_while_unsynced": "on"}  # fmt: skip
    r = client.post("/rollouts/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    body = admin.get(r.headers["location"].replace("/rollouts/", "/api/v1/rollouts/")).json()
    assert body["delivery_policy"] == {"defer_while_unsynced": True}
    assert html(client.get(r.headers["location"])).by_id("rollout-policy").text == (
        "delivery: waits for unsynced recordings"
    )


def test_the_preview_fragment_counts_the_devices(client: TestClient, sessions: Any, fleet: dict[str, Any]) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")  # a read: viewers may preview too
    release_id = fleet["new"]["id"]

    def preview(**params: str) -> Element:
        r = client.get("/rollouts/preview", params={"release_id": release_id, **params})
        assert r.status_code == 200, r.text
        return html(r)

    page = preview(stages="50, 100")
    counts = {dd.attr("data-count"): dd.text.split()[0] for dd in page.find_all("dd")}
    assert counts == {"matching": "4", "up_to_date": "1", "busy": "1"}
    assert [row[:2] for row in table_rows(page)] == [["1", "50 %"], ["2", "100 %"]]
    assert sum(int(row[2].split()[0]) for row in table_rows(page)) == 4

    assert preview(tags="beta", stages="100").find("dd", data_count="matching").text == "2"  # type: ignore[union-attr]
    # Only BP-RO-3 ever reported a version (v1.0.1): below v2.0.0 it matches, below v1.0.1 nothing does.
    assert preview(firmware_below="v2.0.0").find("dd", data_count="matching").text == "1"  # type: ignore[union-attr]
    assert preview(firmware_below="v1.0.1").find("dd", data_count="matching").text == "0"  # type: ignore[union-attr]
    assert "Stages:" in preview(stages="10, 5").text  # bad stages: counts still shown, the stages explained
    assert preview(stages="10, 5").find("dd", data_count="matching").text == "4"  # type: ignore[union-attr]
    assert "a tag is" in preview(tags="Not OK!").by_id("preview-problem").text
    assert preview(target_kind="group", group_id="nope").has_id("preview-problem")
    assert client.get("/rollouts/preview", params={"release_id": "nope"}).status_code == 404


def test_a_release_without_a_bin_cannot_be_deployed(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    ufw_only = admin.release("v2.0.0", bin=None, ufw=b"\x05" * 64)
    sign_in(client, *portal_user)
    row = html(client.get("/firmware")).by_id(f"release-{ufw_only['id']}")
    assert not any(link.startswith("/rollouts/new") for link in row.links())
    r = client.get(f"/rollouts/new?release_id={ufw_only['id']}")
    assert r.status_code == 422 and ".bin" in field_error(html(r), "release_id")
    form = {"csrf_token": csrf(client, "/"), "release_id": ufw_only["id"], "name": "x", "stages": "50, 100"}
    r = client.post("/rollouts/new", data=form)
    assert r.status_code == 422 and ".bin" in field_error(html(r), "release_id")


def test_new_rollout_without_a_release_offers_a_choice(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    sign_in(client, *portal_user)
    page = html(client.get("/rollouts/new"))
    options = [o.text for o in page.by_id("release_id").find_all("option")]
    assert sorted(options) == ["Bota Pin v1.0.0", "Bota Pin v1.0.1"]


# ---- the list and the rollout page ------------------------------------------------------------------------


def test_the_list_and_its_status_filter(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    running = rollout_via_api(admin, fleet["new"]["id"], name="the running one")
    paused = rollout_via_api(admin, fleet["new"]["id"], name="the paused one")
    admin.post(f"/api/v1/rollouts/{paused['id']}/pause")
    sign_in(client, *portal_user)
    page = html(client.get("/rollouts"))
    row = page.by_id(f"rollout-{running['id']}")
    cells = [c.text for c in row.descendants if c.tag == "td"]
    assert cells[:4] == ["the running one", "Bota Pin v1.0.1", "running", "1 of 2"]
    assert page.has_id(f"rollout-{paused['id']}")
    page = html(client.get("/rollouts?status=paused"))
    assert page.has_id(f"rollout-{paused['id']}") and not page.has_id(f"rollout-{running['id']}")
    assert client.get("/rollouts?status=bogus&page=1").status_code == 200  # an unknown status is no filter
    nav = html(client.get("/")).find("nav", aria_label="Main")
    assert nav is not None and {"/rollouts", "/groups"} <= set(nav.links())


def test_the_rollout_page_shows_stages_failures_and_history(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    rollout = rollout_via_api(admin, fleet["new"]["id"], name="everyone", advance="manual")
    admin.post(f"/api/v1/rollouts/{rollout['id']}/advance")  # both stages started: every device placed
    assignments = admin.get("/api/v1/assignments", params={"rollout_id": rollout["id"]}).json()
    assert {a["device_id"] for a in assignments} == {"BP-RO-1", "BP-RO-2"}
    by_device = {a["device_id"]: a for a in assignments}
    tokens = {d["id"]: d["token"] for d in fleet["devices"].values()}
    heartbeat(admin.client, tokens["BP-RO-1"], firmware_version="v1.0.0")
    heartbeat(admin.client, tokens["BP-RO-1"], firmware_version="v1.0.1")  # applied
    heartbeat(admin.client, tokens["BP-RO-2"], firmware_version="v1.0.0")
    heartbeat(
        admin.client, tokens["BP-RO-2"], firmware_version="v1.0.0",
        ota={"assignment_id": by_device["BP-RO-2"]["id"], "state": "failed", "error": "crc_mismatch"},
    )  # fmt: skip

    sign_in(client, *portal_user)
    page = html(client.get(f"/rollouts/{rollout['id']}"))
    detail = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
    for stage in detail["stages"]:
        counts = page.by_id(f"stage-{stage['index']}").find("td", class_="stage-counts nowrap")
        assert counts is not None
        assert counts.attr("data-applied") == str(stage["counts"]["applied"])
        assert counts.attr("data-failed") == str(stage["counts"]["failed"])
        assert counts.attr("data-devices") == str(stage["devices"])
    assert sum(s["counts"]["applied"] for s in detail["stages"]) == 1
    failures = page.by_id("failures")
    assert failures.text == "crc_mismatch: 1"
    assert failures.links() == [f"/assignments?rollout_id={rollout['id']}&status=failed"]
    kinds = [row[1] for row in table_rows(page, page.by_id("events"))]
    assert kinds[-1] == "created" and "stage_started" in kinds
    live = page.by_id("rollout-live")  # the status, progress and history re-render from the page itself
    assert (live.attr("hx-get"), live.attr("hx-select")) == (f"/rollouts/{rollout['id']}", "#rollout-live")
    assert "every 5s" in (live.attr("hx-trigger") or "")
    assert live.find_all("td", class_="stage-counts nowrap") and not live.find_all("button")  # buttons: elsewhere

    # The failures link leads to the rollout's failed assignments.
    listed = html(client.get(f"/assignments?rollout_id={rollout['id']}&status=failed"))
    assert [row[0] for row in table_rows(listed)] == ["BP-RO-2"]
    assert "everyone" in listed.by_id("rollout-filter").text


def stage_cells(page: Element) -> list[Element]:
    return page.find_all("td", class_="stage-counts nowrap")


def stage_total(page: Element, key: str) -> int:
    return sum(int(td.attr(f"data-{key}") or 0) for td in stage_cells(page))


def test_the_rollout_page_shows_superseded_retrying_and_deferred_devices(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    rollout = rollout_via_api(admin, fleet["new"]["id"], name="waiting", advance="manual")
    admin.post(f"/api/v1/rollouts/{rollout['id']}/advance")  # both stages started: BP-RO-1 and BP-RO-2 assigned
    tokens = {d["id"]: d["token"] for d in fleet["devices"].values()}
    heartbeat(admin.client, tokens["BP-RO-1"], firmware_version="v1.2.0")  # newer than the release: superseded
    reply = heartbeat(admin.client, tokens["BP-RO-2"], battery=10, charging=False).json()
    assert reply["ota_deferred"] == "battery_low"

    sign_in(client, *portal_user)
    path = f"/rollouts/{rollout['id']}"
    page = html(client.get(path))
    assert (stage_total(page, "superseded"), stage_total(page, "deferred"), stage_total(page, "retrying")) == (1, 1, 0)
    texts = " ".join(td.text for td in stage_cells(page))
    assert "1 superseded" in texts and "1 deferred: battery low 1" in texts
    assert page.find("dd", data_total="superseded").text.startswith("1")  # type: ignore[union-attr]
    assert page.find("dd", data_total="deferred").text == "1 (battery low 1)"  # type: ignore[union-attr]

    # Delivered once the battery is charged, the download fails: pending again, retrying after a wait.
    reply = heartbeat(admin.client, tokens["BP-RO-2"], battery=90).json()
    ota = {"assignment_id": reply["ota"]["assignment_id"], "state": "failed", "error": "download_failed"}
    heartbeat(admin.client, tokens["BP-RO-2"], ota=ota)
    assert heartbeat(admin.client, tokens["BP-RO-2"]).json()["ota_deferred"] == "retry_wait"
    fragment = html(client.get(path)).by_id("rollout-live")
    assert (stage_total(fragment, "retrying"), stage_total(fragment, "deferred")) == (1, 1)
    texts = " ".join(td.text for td in stage_cells(fragment))
    assert "1 retrying · 1 deferred: waiting to retry 1" in texts
    assert fragment.find("dd", data_total="deferred").text == "1 (waiting to retry 1)"  # type: ignore[union-attr]
    listed = html(client.get("/rollouts")).by_id(f"rollout-{rollout['id']}")
    assert "+ 1 superseded" in listed.text


def test_the_page_regions_follow_the_devices_and_the_status(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    """What each poll of the page brings: the counts as the devices report, the status (with the words
    announced when it changes) and the buttons that fit it; a finished rollout's page stops polling."""
    rollout = rollout_via_api(admin, fleet["new"]["id"], name="live", advance="manual")
    admin.post(f"/api/v1/rollouts/{rollout['id']}/advance")
    path = f"/rollouts/{rollout['id']}"
    sign_in(client, *portal_user)

    def poll() -> Element:
        return html(client.get(path))

    page = poll()
    for region in ("rollout-live", "rollout-actions"):
        assert page.by_id(region).attr("hx-select") == f"#{region}"
    assert page.by_id("rollout-status").attr("data-announce") == "Rollout live: running, stage 2 of 2"
    assert stage_total(page.by_id("rollout-live"), "applied") == 0
    token = fleet["devices"][1]["token"]
    heartbeat(admin.client, token, firmware_version="v1.0.0")
    heartbeat(admin.client, token, firmware_version="v1.0.1")
    assert stage_total(poll().by_id("rollout-live"), "applied") == 1

    admin.post(f"/api/v1/rollouts/{rollout['id']}/pause")  # paused elsewhere: the status and buttons follow
    page = poll()
    assert page.by_id("rollout-status").attr("data-announce") == "Rollout live: paused, stage 2 of 2"
    assert action_buttons(page.by_id("rollout-actions")) == {"Resume", "Retry failed", "Cancel"}

    admin.post(f"/api/v1/rollouts/{rollout['id']}/cancel")  # finished: nothing polls any more
    page = poll()
    assert page.by_id("rollout-status").attr("data-announce") == "Rollout live: cancelled, stage 2 of 2"
    assert page.by_id("rollout-live").attr("hx-trigger") is None
    assert page.by_id("rollout-actions").attr("hx-trigger") is None


def test_the_actions_follow_the_status(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str], fleet: dict[str, Any]
) -> None:
    rollout = rollout_via_api(admin, fleet["new"]["id"], name="steps", advance="manual")
    path = f"/rollouts/{rollout['id']}"
    sign_in(client, *portal_user)
    page = html(client.get(path))
    assert action_buttons(page) == {"Pause", "Advance", "Retry failed", "Cancel"}
    cancel_form = next(f for f in page.find_all("form") if f.attr("action") == f"{path}/cancel")
    assert (cancel_form.attr("data-confirm") or "").startswith("Cancel this rollout?")
    assert cancel_form.attr("onsubmit") is None  # no inline script: portal.js asks
    token = csrf(client, path)

    def act(action: str) -> Element:
        r = client.post(f"{path}/{action}", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == path, r.text
        return html(client.get(path))

    page = act("pause")
    assert flash(page) == ("Paused “steps”: its pending updates are held.", False)
    assert admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["status"] == "paused"
    assert action_buttons(page) == {"Resume", "Retry failed", "Cancel"}

    page = act("pause")  # a stale page: refused by the service, said in the flash
    message, is_error = flash(page) or ("", False)
    assert is_error and message.startswith("Not done: cannot pause a rollout that is paused")

    page = act("resume")
    assert admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["status"] == "running"
    page = act("retry-failed")
    assert flash(page) == ("Retrying 0 failed devices.", False)
    page = act("advance")
    assert flash(page) == ("Started stage 2 of “steps”.", False)
    assert admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["current_stage"] == 1
    page = act("cancel")
    assert admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["status"] == "cancelled"
    assert action_buttons(page) == set()
    assert page.by_id("rollout-live").attr("hx-get") is None
    kinds = [e["kind"] for e in admin.get(f"/api/v1/rollouts/{rollout['id']}").json()["events"]]
    assert {"paused", "resumed", "retried_failed", "stage_started", "cancelled"} <= set(kinds)
    audit = admin.get("/api/v1/audit", params={"action": "rollout.paused"}).json()
    assert [e["actor"] for e in audit] == ["user:op@example.com"]


def test_a_viewer_reads_everything_and_changes_nothing(
    client: TestClient, admin: ApiClient, sessions: Any, fleet: dict[str, Any]
) -> None:
    rollout = rollout_via_api(admin, fleet["new"]["id"])
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    for path in (
        "/rollouts",
        f"/rollouts/{rollout['id']}",
        "/firmware",
        "/",
    ):
        r = client.get(path)
        assert r.status_code == 200, path
        page = html(r)
        assert action_buttons(page) == set(), path
        assert not any(link.startswith("/rollouts/new") for link in page.links()), path
    before = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
    token = csrf(client, "/rollouts")
    for action in ("pause", "resume", "advance", "retry-failed", "cancel"):
        r = client.post(f"/rollouts/{rollout['id']}/{action}", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 403, action
    assert client.get(f"/rollouts/new?release_id={fleet['new']['id']}").status_code == 403
    form = {"csrf_token": token, "release_id": fleet["new"]["id"], "name": "nope", "stages": "50, 100"}
    assert client.post("/rollouts/new", data=form).status_code == 403
    after = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
    assert after["status"] == before["status"] and len(after["events"]) == len(before["events"])
    assert len(admin.get("/api/v1/rollouts").json()) == 1


def test_bad_ids_are_not_found(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    token = csrf(client, "/")
    assert client.get("/rollouts/nope").status_code == 404
    assert client.get("/rollouts/new?release_id=nope").status_code == 404
    assert client.post("/rollouts/nope/pause", data={"csrf_token": token}).status_code == 404
    assert client.post("/rollouts/nope/explode", data={"csrf_token": token}).status_code == 404
    form = {"csrf_token": token, "release_id": "nope", "name": "x", "stages": "50, 100"}
    assert client.post("/rollouts/new", data=form).status_code == 404
    assert client.get("/rollouts?page=0").status_code == 200  # lenient: the first page


def test_every_new_page_renders_for_an_admin(
    client: TestClient, admin: ApiClient, sessions: Any, fleet: dict[str, Any]
) -> None:
    rollout = rollout_via_api(admin, fleet["new"]["id"], name="admin view")
    group = admin.post("/api/v1/groups", json={"name": "Betas", "filter": {"tags": ["beta"]}}).json()
    add_user(sessions, "boss@example.com", "admin")
    sign_in(client, "boss@example.com", "correct-horse")
    for path, marker in [
        ("/rollouts", "admin view"),
        ("/rollouts/new", "Release to deploy"),
        (f"/rollouts/new?release_id={fleet['new']['id']}", "Start rollout"),
        (f"/rollouts/{rollout['id']}", "Pause"),
        ("/groups", "Betas"),
        ("/groups/new", "Create group"),
        (f"/groups/{group['id']}", "BP-RO-1"),
        (f"/groups/{group['id']}/edit", "Save group"),
        ("/devices?tag=beta", "BP-RO-2"),
        ("/devices/BP-RO-1", "Save tags"),
        (f"/assignments?rollout_id={rollout['id']}", "admin view"),
        (f"/assignments?release_id={fleet['old']['id']}", "BP-RO-4"),
        ("/", "admin view"),
    ]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert marker in r.text, path
