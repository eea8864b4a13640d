"""Device tags: setting a device's tags, tags in every device view, listing by tag, and bulk tag changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.factories import ApiClient, assert_problem

DEVICE_KEYS = {
    "id",
    "model",
    "name",
    "firmware_version",
    "last_seen_at",
    "online",
    "recording",
    "network",
    "battery",
    "ble_connected",
    "active_assignment",
    "tags",
}


def _put_tags(api: ApiClient, device_id: str, tags: Any) -> httpx.Response:
    return api.client.put(f"/api/v1/devices/{device_id}/tags", headers=api.headers, json={"tags": tags})


def _set_tags(api: ApiClient, device_id: str, tags: list[str]) -> dict[str, Any]:
    r = _put_tags(api, device_id, tags)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _tags(api: ApiClient, device_id: str) -> list[str]:
    r = api.get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    return list(r.json()["tags"])


def _bulk(api: ApiClient, body: dict[str, Any]) -> httpx.Response:
    return api.post("/api/v1/devices/tags", json=body)


def _all_tags(api: ApiClient) -> dict[str, list[str]]:
    r = api.get("/api/v1/devices", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {d["id"]: d["tags"] for d in r.json()}


def _audit(api: ApiClient, action: str) -> list[dict[str, Any]]:
    r = api.get("/api/v1/audit", params={"action": action})
    assert r.status_code == 200, r.text
    return list(r.json())


def _field_named(response: httpx.Response, status: int, field: str) -> None:
    """A problem naming this field (or an element of it, e.g. "tags.1" for a bad second tag)."""
    body = assert_problem(response, status)
    fields = [e["field"] for e in body.get("errors") or []]
    assert any(f == field or f.startswith(field + ".") for f in fields), body


# ---- one device's tags ---------------------------------------------------------------------------


def test_a_new_device_has_no_tags_in_every_view(admin: ApiClient) -> None:
    created = admin.device(device_id="BP-TAG-0")
    assert created["tags"] == []
    assert admin.get("/api/v1/devices/BP-TAG-0").json()["tags"] == []
    assert [d["tags"] for d in admin.get("/api/v1/devices").json()] == [[]]


def test_put_tags_normalizes_and_returns_the_device_view(operator: ApiClient) -> None:
    operator.device(device_id="BP-TAG-1", name="Desk")
    body = _set_tags(operator, "BP-TAG-1", ["Beta", " eu ", "beta", "a-1_b", "EU"])
    assert body.keys() >= DEVICE_KEYS
    assert body["id"] == "BP-TAG-1"
    assert body["name"] == "Desk"
    assert body["tags"] == ["a-1_b", "beta", "eu"]
    # GET shows the same view, and so does the list.
    got = operator.get("/api/v1/devices/BP-TAG-1").json()
    assert got == body
    assert operator.get("/api/v1/devices").json() == [body]


def test_put_replaces_the_tags_and_an_empty_list_clears_them(admin: ApiClient) -> None:
    admin.device(device_id="BP-TAG-2")
    _set_tags(admin, "BP-TAG-2", ["alpha", "bravo"])
    assert _set_tags(admin, "BP-TAG-2", ["charlie"])["tags"] == ["charlie"]
    assert _tags(admin, "BP-TAG-2") == ["charlie"]
    assert _set_tags(admin, "BP-TAG-2", [])["tags"] == []
    assert _tags(admin, "BP-TAG-2") == []


def test_tags_of_one_device_leave_other_devices_alone(admin: ApiClient) -> None:
    admin.device(device_id="BP-TAG-A")
    admin.device(device_id="BP-TAG-B")
    _set_tags(admin, "BP-TAG-A", ["beta"])
    _set_tags(admin, "BP-TAG-B", ["eu"])
    _set_tags(admin, "BP-TAG-A", [])
    assert _all_tags(admin) == {"BP-TAG-A": [], "BP-TAG-B": ["eu"]}


def test_twenty_tags_of_up_to_32_characters_are_accepted(admin: ApiClient) -> None:
    admin.device(device_id="BP-TAG-3")
    tags = [f"t{n:02d}" for n in range(19)] + ["x" * 32]
    assert _set_tags(admin, "BP-TAG-3", tags)["tags"] == sorted(tags)


def test_put_tags_of_unknown_device_is_404(admin: ApiClient) -> None:
    assert_problem(_put_tags(admin, "BP-404", ["beta"]), 404)


@pytest.mark.parametrize("bad", ["no spaces", "ünï", "", "x" * 33])
def test_bad_tag_is_422_naming_tags_and_changes_nothing(admin: ApiClient, bad: str) -> None:
    admin.device(device_id="BP-TAG-4")
    _set_tags(admin, "BP-TAG-4", ["keep"])
    _field_named(_put_tags(admin, "BP-TAG-4", ["beta", bad]), 422, "tags")
    assert _tags(admin, "BP-TAG-4") == ["keep"]


def test_twenty_one_tags_is_422_naming_tags(admin: ApiClient) -> None:
    admin.device(device_id="BP-TAG-5")
    _field_named(_put_tags(admin, "BP-TAG-5", [f"t{n}" for n in range(21)]), 422, "tags")
    assert _tags(admin, "BP-TAG-5") == []


@pytest.mark.parametrize("body", [{"tags": ["beta"], "colour": "red"}, {}])
def test_put_tags_body_must_be_exactly_a_tag_list(admin: ApiClient, body: dict[str, Any]) -> None:
    admin.device(device_id="BP-TAG-6")
    r = admin.client.put("/api/v1/devices/BP-TAG-6/tags", headers=admin.headers, json=body)
    assert_problem(r, 422)
    assert _tags(admin, "BP-TAG-6") == []


def test_viewer_cannot_set_tags(admin: ApiClient, viewer: ApiClient) -> None:
    admin.device(device_id="BP-TAG-7")
    assert_problem(_put_tags(viewer, "BP-TAG-7", ["beta"]), 403)
    assert _tags(admin, "BP-TAG-7") == []
    assert viewer.get("/api/v1/devices/BP-TAG-7").json()["tags"] == []


def test_put_tags_is_audited(operator: ApiClient, admin: ApiClient) -> None:
    operator.device(device_id="BP-TAG-8")
    _set_tags(operator, "BP-TAG-8", ["beta"])
    entries = _audit(admin, "device.tags")
    assert len(entries) == 1, entries
    assert entries[0]["actor"] == "token:test-operator"
    assert entries[0]["target_id"] == "BP-TAG-8"
    # A rejected change records nothing.
    _put_tags(operator, "BP-TAG-8", ["no spaces"])
    assert len(_audit(admin, "device.tags")) == 1


# ---- listing by tag ------------------------------------------------------------------------------


@pytest.fixture
def tagged(admin: ApiClient) -> None:
    for device_id, tags in (
        ("BP-1", ["beta", "eu"]),
        ("BP-2", ["beta"]),
        ("BP-3", ["eu", "us"]),
        ("BP-4", []),
        ("BP-5", ["beta", "eu", "gamma"]),
    ):
        admin.device(device_id=device_id)
        _set_tags(admin, device_id, tags)


def _listed(api: ApiClient, params: Any) -> tuple[list[str], int]:
    r = api.get("/api/v1/devices", params=params)
    assert r.status_code == 200, r.text
    return sorted(d["id"] for d in r.json()), int(r.headers["X-Total-Count"])


@pytest.mark.usefixtures("tagged")
def test_list_by_tags_needs_all_of_them(viewer: ApiClient) -> None:
    assert _listed(viewer, [("tag", "beta")]) == (["BP-1", "BP-2", "BP-5"], 3)
    assert _listed(viewer, [("tag", "beta"), ("tag", "eu")]) == (["BP-1", "BP-5"], 2)
    assert _listed(viewer, [("tag", "eu"), ("tag", "us")]) == (["BP-3"], 1)
    assert _listed(viewer, [("tag", "nobody")]) == ([], 0)
    assert _listed(viewer, [("tag", "Beta"), ("tag", "EU")]) == (["BP-1", "BP-5"], 2)


@pytest.mark.usefixtures("tagged")
def test_list_by_tag_pages_with_the_total_of_matches(viewer: ApiClient) -> None:
    r = viewer.get("/api/v1/devices", params=[("tag", "beta"), ("limit", 2)])
    assert r.status_code == 200, r.text
    assert len(r.json()) == 2
    assert r.headers["X-Total-Count"] == "3"
    assert all("beta" in d["tags"] for d in r.json())


def test_bad_tag_in_the_query_is_422(admin: ApiClient) -> None:
    for bad in ("no spaces", "x" * 33):
        assert_problem(admin.get("/api/v1/devices", params=[("tag", "beta"), ("tag", bad)]), 422)


# ---- bulk changes --------------------------------------------------------------------------------


@pytest.mark.usefixtures("tagged")
def test_bulk_add_counts_matched_and_changed(operator: ApiClient) -> None:
    r = _bulk(operator, {"filter": {"tags": ["eu"]}, "add": ["beta"]})
    assert r.status_code == 200, r.text
    # BP-1, BP-3 and BP-5 match; BP-1 and BP-5 already had "beta".
    assert r.json() == {"matched": 3, "changed": 1}
    assert _all_tags(operator) == {
        "BP-1": ["beta", "eu"],
        "BP-2": ["beta"],
        "BP-3": ["beta", "eu", "us"],
        "BP-4": [],
        "BP-5": ["beta", "eu", "gamma"],
    }
    # Again: nothing left to change.
    assert _bulk(operator, {"filter": {"tags": ["eu"]}, "add": ["beta"]}).json() == {"matched": 3, "changed": 0}


@pytest.mark.usefixtures("tagged")
def test_bulk_remove_counts_only_devices_that_had_the_tag(operator: ApiClient) -> None:
    r = _bulk(operator, {"filter": {}, "remove": ["eu"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 5, "changed": 3}
    assert _all_tags(operator) == {
        "BP-1": ["beta"],
        "BP-2": ["beta"],
        "BP-3": ["us"],
        "BP-4": [],
        "BP-5": ["beta", "gamma"],
    }


@pytest.mark.usefixtures("tagged")
def test_bulk_add_and_remove_together_with_normalized_tags(operator: ApiClient) -> None:
    r = _bulk(operator, {"filter": {"tags": ["beta"]}, "add": ["Stable", "stable"], "remove": ["BETA"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 3, "changed": 3}
    assert _all_tags(operator) == {
        "BP-1": ["eu", "stable"],
        "BP-2": ["stable"],
        "BP-3": ["eu", "us"],
        "BP-4": [],
        "BP-5": ["eu", "gamma", "stable"],
    }


@pytest.mark.usefixtures("tagged")
def test_bulk_with_a_filter_matching_nothing(operator: ApiClient) -> None:
    before = _all_tags(operator)
    r = _bulk(operator, {"filter": {"tags": ["nobody"]}, "add": ["beta"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 0, "changed": 0}
    assert _all_tags(operator) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"add": ["beta"]}, "filter"),
        ({"filter": {}}, None),
        ({"filter": {}, "add": [], "remove": []}, None),
        ({"filter": {}, "add": ["beta"], "remove": ["beta"]}, None),
        ({"filter": {}, "add": ["no spaces"]}, "add"),
        ({"filter": {}, "add": ["beta"], "colour": "red"}, "colour"),
    ],
)
def test_bad_bulk_request_is_422_and_changes_nothing(
    operator: ApiClient, admin: ApiClient, body: dict[str, Any], field: str | None
) -> None:
    operator.device(device_id="BP-BULK-1")
    _set_tags(operator, "BP-BULK-1", ["beta"])
    r = _bulk(operator, body)
    if field is None:
        assert_problem(r, 422)
    else:
        _field_named(r, 422, field)
    assert _all_tags(operator) == {"BP-BULK-1": ["beta"]}
    assert _audit(admin, "device.tags.bulk") == []


def test_bulk_add_past_twenty_tags_is_422_naming_add_and_changes_no_device(
    operator: ApiClient, admin: ApiClient
) -> None:
    operator.device(device_id="BP-FULL")
    operator.device(device_id="BP-ROOM")
    _set_tags(operator, "BP-FULL", [f"t{n:02d}" for n in range(19)])
    _set_tags(operator, "BP-ROOM", ["t00"])
    before = _all_tags(operator)
    # BP-ROOM could take both; BP-FULL would end with 21.
    _field_named(_bulk(operator, {"filter": {}, "add": ["new-a", "new-b"]}), 422, "add")
    assert _all_tags(operator) == before
    assert _audit(admin, "device.tags.bulk") == []
    # One more tag fits both: exactly 20 is allowed.
    assert _bulk(operator, {"filter": {}, "add": ["new-a"]}).json() == {"matched": 2, "changed": 2}
    assert len(_tags(operator, "BP-FULL")) == 20


def test_bulk_add_that_only_repeats_existing_tags_at_the_limit_is_allowed(operator: ApiClient) -> None:
    operator.device(device_id="BP-FULL")
    full = [f"t{n:02d}" for n in range(20)]
    _set_tags(operator, "BP-FULL", full)
    r = _bulk(operator, {"filter": {}, "add": ["t00", "t19"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 1, "changed": 0}
    assert _tags(operator, "BP-FULL") == full


def test_viewer_cannot_change_tags_in_bulk(admin: ApiClient, viewer: ApiClient) -> None:
    admin.device(device_id="BP-BULK-2")
    assert_problem(_bulk(viewer, {"filter": {}, "add": ["beta"]}), 403)
    assert _tags(admin, "BP-BULK-2") == []


@pytest.mark.usefixtures("tagged")
def test_bulk_change_is_audited(operator: ApiClient, admin: ApiClient) -> None:
    assert _bulk(operator, {"filter": {"tags": ["us"]}, "add": ["canary"]}).status_code == 200
    entries = _audit(admin, "device.tags.bulk")
    assert len(entries) == 1, entries
    assert entries[0]["actor"] == "token:test-operator"
    assert entries[0]["action"] == "device.tags.bulk"
