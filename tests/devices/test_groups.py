"""Device groups: saved, named device filters whose membership is evaluated whenever the group is used."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.factories import ApiClient, assert_problem

GROUP_KEYS = {"id", "name", "description", "filter", "device_count", "created_by", "created_at", "updated_at"}


def _put_tags(api: ApiClient, device_id: str, tags: list[str]) -> None:
    r = api.client.put(f"/api/v1/devices/{device_id}/tags", headers=api.headers, json={"tags": tags})
    assert r.status_code == 200, r.text


def _create(api: ApiClient, **body: Any) -> httpx.Response:
    return api.post("/api/v1/groups", json=body)


def _group(api: ApiClient, name: str, device_filter: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = _create(api, name=name, filter=device_filter, **body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _members(api: ApiClient, group_id: str, **params: Any) -> tuple[list[str], int]:
    r = api.get(f"/api/v1/groups/{group_id}/devices", params=params)
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()], int(r.headers["X-Total-Count"])


def _audit(api: ApiClient, action: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/audit", params={"action": action})
    assert r.status_code == 200, r.text
    return list(r.json())


@pytest.fixture
def fleet(admin: ApiClient) -> None:
    for device_id, model, tags in (
        ("BP-1", "bota-pin", ["beta", "eu"]),
        ("BP-2", "bota-pin", ["beta"]),
        ("BP-3", "bota-pin", ["eu"]),
        ("BN-1", "bota-note", ["beta", "eu"]),
    ):
        admin.device(model=model, device_id=device_id)
        _put_tags(admin, device_id, tags)


# ---- create --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fleet")
def test_create_returns_the_group_with_normalized_filter_and_count(operator: ApiClient) -> None:
    r = _create(
        operator,
        name="EU beta",
        description="Early firmware in Europe",
        filter={"tags": ["EU", "beta", "eu"], "model": "bota-pin"},
    )
    assert r.status_code == 201, r.text
    group = r.json()
    assert group.keys() >= GROUP_KEYS
    assert group["name"] == "EU beta"
    assert group["description"] == "Early firmware in Europe"
    assert group["filter"] == {"model": "bota-pin", "tags": ["beta", "eu"]}
    assert group["device_count"] == 1  # BP-1; BN-1 is a bota-note
    assert group["created_by"] == "token:test-operator"
    created = datetime.fromisoformat(group["created_at"])
    assert created.tzinfo is not None
    assert datetime.fromisoformat(group["updated_at"]) >= created
    assert operator.get(f"/api/v1/groups/{group['id']}").json() == group


def test_description_is_optional_and_an_empty_filter_matches_every_device(operator: ApiClient) -> None:
    operator.device(device_id="BP-1")
    operator.device(device_id="BN-1", model="bota-note")
    group = _group(operator, "  Everything  ", {})
    assert group["name"] == "Everything"
    assert group["description"] is None
    assert group["filter"] == {}
    assert group["device_count"] == 2


def test_duplicate_name_is_409_case_insensitively(operator: ApiClient) -> None:
    first = _group(operator, "EU beta", {"tags": ["eu"]})
    for name in ("EU beta", "eu BETA", "  Eu Beta "):
        assert_problem(_create(operator, name=name, filter={}), 409, "name")
    groups = operator.get("/api/v1/groups").json()
    assert [g["id"] for g in groups] == [first["id"]]
    assert groups[0]["filter"] == {"tags": ["eu"]}


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_bad_name_is_422_naming_name(operator: ApiClient, name: Any) -> None:
    assert_problem(_create(operator, name=name, filter={}), 422, "name")
    assert operator.get("/api/v1/groups").json() == []


def test_name_of_100_characters_is_accepted(operator: ApiClient) -> None:
    assert _group(operator, "n" * 100, {})["name"] == "n" * 100


def test_name_length_is_counted_after_strip(operator: ApiClient) -> None:
    assert _group(operator, "  " + "m" * 100 + "  ", {})["name"] == "m" * 100


def test_filter_is_required(operator: ApiClient) -> None:
    assert_problem(_create(operator, name="No filter"), 422, "filter")
    assert operator.get("/api/v1/groups").json() == []


# ---- read ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fleet")
def test_list_is_sorted_by_name_with_counts_and_total(operator: ApiClient, viewer: ApiClient) -> None:
    _group(operator, "Charlie", {"tags": ["eu"]})
    _group(operator, "Alpha", {"model": "bota-note"})
    _group(operator, "Bravo", {"tags": ["beta"]})
    r = viewer.get("/api/v1/groups")
    assert r.status_code == 200, r.text
    assert [(g["name"], g["device_count"]) for g in r.json()] == [("Alpha", 1), ("Bravo", 3), ("Charlie", 3)]
    assert r.headers["X-Total-Count"] == "3"
    assert all(g.keys() >= GROUP_KEYS for g in r.json())


def test_unknown_group_is_404(viewer: ApiClient) -> None:
    assert_problem(viewer.get("/api/v1/groups/no-such-group"), 404)
    assert_problem(viewer.get("/api/v1/groups/no-such-group/devices"), 404)


@pytest.mark.usefixtures("fleet")
def test_group_devices_are_device_views_and_page_with_the_total(operator: ApiClient, viewer: ApiClient) -> None:
    group = _group(operator, "Beta", {"tags": ["beta"]})
    r = viewer.get(f"/api/v1/groups/{group['id']}/devices")
    assert r.status_code == 200, r.text
    assert r.headers["X-Total-Count"] == "3"
    listed = r.json()
    assert sorted(d["id"] for d in listed) == ["BN-1", "BP-1", "BP-2"]
    # The same view as the device endpoints give.
    for device in listed:
        assert device == viewer.get(f"/api/v1/devices/{device['id']}").json()
    pages = [_members(viewer, group["id"], limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(ids) for ids, _ in pages] == [2, 1, 0]
    assert all(total == 3 for _, total in pages)
    assert [i for ids, _ in pages for i in ids] == [d["id"] for d in listed]


def test_bad_paging_of_group_devices_is_422(operator: ApiClient) -> None:
    group = _group(operator, "All", {})
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert_problem(operator.get(f"/api/v1/groups/{group['id']}/devices", params=params), 422)


def test_membership_is_evaluated_when_the_group_is_used(operator: ApiClient) -> None:
    group = _group(operator, "Canary", {"tags": ["canary"]})
    assert group["device_count"] == 0
    operator.device(device_id="BP-LATE")
    operator.device(device_id="BP-OTHER")
    assert _members(operator, group["id"]) == ([], 0)
    _put_tags(operator, "BP-LATE", ["Canary"])
    assert _members(operator, group["id"]) == (["BP-LATE"], 1)
    assert operator.get(f"/api/v1/groups/{group['id']}").json()["device_count"] == 1
    r = operator.post("/api/v1/devices/tags", json={"filter": {"ids": ["BP-OTHER"]}, "add": ["canary"]})
    assert r.status_code == 200, r.text
    assert sorted(_members(operator, group["id"])[0]) == ["BP-LATE", "BP-OTHER"]
    _put_tags(operator, "BP-LATE", [])
    assert _members(operator, group["id"]) == (["BP-OTHER"], 1)
    assert [g["device_count"] for g in operator.get("/api/v1/groups").json()] == [1]


# ---- update and delete ---------------------------------------------------------------------------


@pytest.mark.usefixtures("fleet")
def test_patch_changes_only_what_is_given(operator: ApiClient) -> None:
    group = _group(operator, "Beta", {"tags": ["beta"]}, description="first")
    r = operator.patch(f"/api/v1/groups/{group['id']}", json={"filter": {"tags": ["Beta"], "model": "bota-note"}})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["name"] == "Beta"
    assert patched["description"] == "first"
    assert patched["filter"] == {"model": "bota-note", "tags": ["beta"]}
    assert patched["device_count"] == 1
    assert patched["created_at"] == group["created_at"]
    assert datetime.fromisoformat(patched["updated_at"]) >= datetime.fromisoformat(group["updated_at"])
    assert _members(operator, group["id"]) == (["BN-1"], 1)

    r = operator.patch(f"/api/v1/groups/{group['id']}", json={"name": "Beta notes", "description": "second"})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["description"], r.json()["filter"]) == (
        "Beta notes",
        "second",
        {"model": "bota-note", "tags": ["beta"]},
    )
    assert operator.get(f"/api/v1/groups/{group['id']}").json() == r.json()


def test_rename_to_another_groups_name_is_409_and_keeps_both(operator: ApiClient) -> None:
    a = _group(operator, "Alpha", {})
    b = _group(operator, "Bravo", {"model": "bota-note"})
    assert_problem(operator.patch(f"/api/v1/groups/{b['id']}", json={"name": "ALPHA"}), 409, "name")
    assert [g["name"] for g in operator.get("/api/v1/groups").json()] == ["Alpha", "Bravo"]
    assert operator.get(f"/api/v1/groups/{a['id']}").json() == a


def test_patch_validates_like_create(operator: ApiClient) -> None:
    group = _group(operator, "Alpha", {})
    assert_problem(operator.patch(f"/api/v1/groups/{group['id']}", json={"name": " "}), 422, "name")
    r = operator.patch(f"/api/v1/groups/{group['id']}", json={"filter": {"model": "bota-watch"}})
    assert_problem(r, 422)
    assert r.json()["errors"][0]["field"].startswith("filter")
    assert_problem(operator.patch("/api/v1/groups/no-such-group", json={"name": "x"}), 404)
    assert operator.get(f"/api/v1/groups/{group['id']}").json() == group


def test_delete_then_404(operator: ApiClient) -> None:
    keep = _group(operator, "Keep", {})
    gone = _group(operator, "Gone", {})
    r = operator.delete(f"/api/v1/groups/{gone['id']}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_problem(operator.get(f"/api/v1/groups/{gone['id']}"), 404)
    assert [g["id"] for g in operator.get("/api/v1/groups").json()] == [keep["id"]]
    # The name is free again.
    assert _create(operator, name="gone", filter={}).status_code == 201


# ---- roles and audit -----------------------------------------------------------------------------


def test_viewer_reads_but_cannot_change_groups(operator: ApiClient, viewer: ApiClient) -> None:
    group = _group(operator, "Alpha", {})
    assert viewer.get(f"/api/v1/groups/{group['id']}").status_code == 200
    assert_problem(_create(viewer, name="Mine", filter={}), 403)
    assert_problem(viewer.patch(f"/api/v1/groups/{group['id']}", json={"name": "Renamed"}), 403)
    assert_problem(viewer.delete(f"/api/v1/groups/{group['id']}"), 403)
    assert operator.get("/api/v1/groups").json() == [group]


def test_group_changes_are_audited(operator: ApiClient, admin: ApiClient) -> None:
    group = _group(operator, "Alpha", {})
    assert operator.patch(f"/api/v1/groups/{group['id']}", json={"description": "d"}).status_code == 200
    assert operator.delete(f"/api/v1/groups/{group['id']}").status_code == 204
    for action in ("group.create", "group.update", "group.delete"):
        entries = _audit(admin, action)
        assert len(entries) == 1, (action, entries)
        assert entries[0]["actor"] == "token:test-operator"
        assert entries[0]["target_id"] == group["id"]
    # Rejected changes record nothing.
    _create(operator, name="", filter={})
    _create(operator, name="Beta", filter={"colour": "red"})
    assert len(_audit(admin, "group.create")) == 1
