"""The device filter: one JSON shape for bulk tag changes and groups, and the same filters as list parameters.

Each filter is checked on one fleet through the bulk tag endpoint (which devices it touches) and through a
group (which devices it lists), so both uses are held to the same meaning.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from bota_ota.core.database import session_scope
from bota_ota.devices.models import Device
from tests.support.factories import ApiClient, assert_problem, heartbeat

ALL = ["BN-1", "BN-2", "BN-3", "BP-1", "BP-2", "PRO-1"]
_group_names = itertools.count(1)


def _put_tags(api: ApiClient, device_id: str, tags: list[str]) -> None:
    r = api.client.put(f"/api/v1/devices/{device_id}/tags", headers=api.headers, json={"tags": tags})
    assert r.status_code == 200, r.text


def _flush(client: TestClient, app: Any) -> None:
    """Write any buffered heartbeat telemetry (last seen, network) now."""
    client.portal.call(app.state.heartbeat.flush)  # type: ignore[union-attr]


@pytest.fixture
def fleet(admin: ApiClient, app: Any, sessions: Any) -> None:
    """Six devices, each a different answer to some filter.

    ===== ============ ============= =================== ========== ==============
    id    model        name          tags                firmware   network, seen
    ===== ============ ============= =================== ========== ==============
    BP-1  bota-pin     Kitchen       beta, eu            1.9.0      wifi, now
    BP-2  bota-pin     Office        beta                v1.10.0    cellular, now
    PRO-1 bota-pin-pro Garage        eu                  1.0.0-rc.1 wifi, now
    BN-1  bota-note    (none)        (none)              V1.0.1     cellular, now
    BN-2  bota-note    Kitchen annex beta, eu, gamma     (never)    (never seen)
    BN-3  bota-note    Shed          (none)              banana     wifi, 2 h ago
    ===== ============ ============= =================== ========== ==============
    """
    rows = [
        ("BP-1", "bota-pin", "Kitchen", ["beta", "eu"], "1.9.0", "wifi"),
        ("BP-2", "bota-pin", "Office", ["beta"], "v1.10.0", "cellular"),
        ("PRO-1", "bota-pin-pro", "Garage", ["eu"], "1.0.0-rc.1", "wifi"),
        ("BN-1", "bota-note", None, [], "V1.0.1", "cellular"),
        ("BN-2", "bota-note", "Kitchen annex", ["beta", "eu", "gamma"], None, None),
        ("BN-3", "bota-note", "Shed", [], "banana", "wifi"),
    ]
    for device_id, model, name, tags, version, network in rows:
        device = admin.device(model=model, device_id=device_id, name=name)
        if tags:
            _put_tags(admin, device_id, tags)
        if version is not None:
            r = heartbeat(admin.client, device["token"], firmware_version=version, network=network)
            assert r.status_code == 200, r.text
    _flush(admin.client, app)
    with session_scope(sessions) as session:
        session.execute(
            update(Device).where(Device.id == "BN-3").values(last_seen_at=datetime.now(UTC) - timedelta(hours=2))
        )
    # The fleet is as the table says.
    seen = {d["id"]: (d["firmware_version"], d["network"]) for d in admin.get("/api/v1/devices").json()}
    assert seen == {r[0]: (r[4], r[5]) for r in rows}


def _bulk(api: ApiClient, body: dict[str, Any]) -> httpx.Response:
    return api.post("/api/v1/devices/tags", json=body)


def _via_bulk(api: ApiClient, device_filter: dict[str, Any]) -> list[str]:
    """The devices a bulk change with this filter touches (by adding a tag none of them has)."""
    r = _bulk(api, {"filter": device_filter, "add": ["probe"]})
    assert r.status_code == 200, r.text
    touched = sorted(d["id"] for d in api.get("/api/v1/devices").json() if "probe" in d["tags"])
    assert r.json() == {"matched": len(touched), "changed": len(touched)}
    return touched


def _via_group(api: ApiClient, device_filter: dict[str, Any]) -> list[str]:
    """The devices a group with this filter lists."""
    r = api.post("/api/v1/groups", json={"name": f"filter check {next(_group_names)}", "filter": device_filter})
    assert r.status_code == 201, r.text
    group = r.json()
    listed = api.get(f"/api/v1/groups/{group['id']}/devices", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    ids = sorted(d["id"] for d in listed.json())
    assert int(listed.headers["X-Total-Count"]) == len(ids) == group["device_count"]
    return ids


FILTERS: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ALL),
    ({"model": "bota-note"}, ["BN-1", "BN-2", "BN-3"]),
    ({"tags": ["eu", "beta"]}, ["BN-2", "BP-1"]),
    ({"tags": ["Beta"]}, ["BN-2", "BP-1", "BP-2"]),
    ({"ids": ["BP-2", "BN-3", "XX-404"]}, ["BN-3", "BP-2"]),
    ({"firmware_version": "1.0.1"}, ["BN-1"]),
    # Semantic order: 1.9.0 and 1.0.0-rc.1 are below 1.10.0; never reported and "banana" are not.
    ({"firmware_below": "1.10.0"}, ["BN-1", "BP-1", "PRO-1"]),
    ({"firmware_below": "v1.0.0"}, ["PRO-1"]),
    ({"seen_within_s": 3600}, ["BN-1", "BP-1", "BP-2", "PRO-1"]),
    ({"network": "wifi"}, ["BN-3", "BP-1", "PRO-1"]),
    ({"q": "KITCHEN"}, ["BN-2", "BP-1"]),
    ({"model": "bota-pin", "tags": ["beta"], "network": "cellular"}, ["BP-2"]),
    ({"tags": ["eu"], "firmware_below": "2.0.0"}, ["BP-1", "PRO-1"]),
]


@pytest.mark.usefixtures("fleet")
@pytest.mark.parametrize(("device_filter", "expected"), FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filter_matches(operator: ApiClient, device_filter: dict[str, Any], expected: list[str]) -> None:
    # A group lists them first; then a bulk change touches the same devices.
    assert _via_group(operator, device_filter) == expected
    assert _via_bulk(operator, device_filter) == expected


# ---- the same filters as list parameters ------------------------------------------------------------


QUERIES: list[tuple[list[tuple[str, Any]], list[str]]] = [
    ([("tag", "beta"), ("tag", "eu")], ["BN-2", "BP-1"]),
    ([("firmware_below", "1.10.0")], ["BN-1", "BP-1", "PRO-1"]),
    ([("seen_within_s", 3600)], ["BN-1", "BP-1", "BP-2", "PRO-1"]),
    ([("network", "cellular")], ["BN-1", "BP-2"]),
    ([("model", "bota-note"), ("tag", "eu"), ("q", "annex")], ["BN-2"]),
]


@pytest.mark.usefixtures("fleet")
@pytest.mark.parametrize(("params", "expected"), QUERIES, ids=[str(p) for p, _ in QUERIES])
def test_list_parameters(viewer: ApiClient, params: list[tuple[str, Any]], expected: list[str]) -> None:
    r = viewer.get("/api/v1/devices", params=params)
    assert r.status_code == 200, r.text
    assert sorted(d["id"] for d in r.json()) == expected
    assert int(r.headers["X-Total-Count"]) == len(expected)


@pytest.mark.usefixtures("fleet")
def test_list_parameters_combine_with_online_and_paging(viewer: ApiClient) -> None:
    r = viewer.get("/api/v1/devices", params={"network": "wifi", "online": "true", "limit": 1})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 1
    assert r.json()[0]["id"] in {"BP-1", "PRO-1"}
    assert r.headers["X-Total-Count"] == "2"


@pytest.mark.parametrize(
    "params",
    [
        {"firmware_below": "banana"},
        {"firmware_version": "1.0.0", "firmware_below": "1.2.0"},
        {"seen_within_s": 0},
        {"network": "satellite"},
    ],
)
def test_bad_list_parameters_are_422(viewer: ApiClient, params: dict[str, Any]) -> None:
    assert_problem(viewer.get("/api/v1/devices", params=params), 422)


# ---- validation -------------------------------------------------------------------------------------


def _field_named(response: httpx.Response, status: int, field: str) -> None:
    """A problem naming this field (or an element of it, e.g. "filter.tags.0")."""
    body = assert_problem(response, status)
    fields = [e["field"] for e in body.get("errors") or []]
    assert any(f == field or f.startswith(field + ".") for f in fields), body


BAD_FILTERS: list[tuple[dict[str, Any], str]] = [
    ({"colour": "red"}, "filter.colour"),
    ({"model": "bota-watch"}, "filter.model"),
    ({"tags": ["no spaces"]}, "filter.tags"),
    ({"tags": [f"t{n}" for n in range(21)]}, "filter.tags"),
    ({"ids": [f"BP-{n}" for n in range(10001)]}, "filter.ids"),
    ({"firmware_below": "banana"}, "filter.firmware_below"),
    ({"firmware_version": "1.0.0", "firmware_below": "1.2.0"}, "filter"),
    ({"seen_within_s": 0}, "filter.seen_within_s"),
    ({"seen_within_s": 31536001}, "filter.seen_within_s"),
    ({"network": "satellite"}, "filter.network"),
]


@pytest.mark.parametrize(("device_filter", "field"), BAD_FILTERS, ids=[f for _, f in BAD_FILTERS])
def test_bad_filter_is_422_naming_the_key(operator: ApiClient, device_filter: dict[str, Any], field: str) -> None:
    operator.device(device_id="BP-ONLY")
    _field_named(_bulk(operator, {"filter": device_filter, "add": ["probe"]}), 422, field)
    assert operator.get("/api/v1/devices/BP-ONLY").json()["tags"] == []


def test_limits_themselves_are_accepted(operator: ApiClient) -> None:
    operator.device(device_id="BP-ONLY")
    device_filter = {
        "ids": ["BP-ONLY"] + [f"BP-{n}" for n in range(9999)],
        "seen_within_s": 31536000,
        "q": "x" * 100,
    }
    r = _bulk(operator, {"filter": device_filter, "add": ["probe"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 0, "changed": 0}  # BP-ONLY was never seen and has no "x" in it
    r = _bulk(operator, {"filter": {"ids": device_filter["ids"], "firmware_below": "v1.2.0"}, "add": ["probe"]})
    assert r.status_code == 200, r.text
    assert r.json()["matched"] == 0  # never reported a version


def test_group_filter_is_validated_the_same_way(operator: ApiClient) -> None:
    _field_named(operator.post("/api/v1/groups", json={"name": "g", "filter": {"colour": "red"}}), 422, "filter.colour")
    _field_named(
        operator.post("/api/v1/groups", json={"name": "g", "filter": {"firmware_below": "banana"}}),
        422,
        "filter.firmware_below",
    )
    assert operator.get("/api/v1/groups").json() == []
