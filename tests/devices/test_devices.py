"""Devices: registration, listing and search, the device view, and token rotation (stored only as a hash)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect as sa_inspect

from bota_ota.devices.models import Device
from tests.support.factories import ApiClient, assert_problem, heartbeat

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
}


def _register(api: ApiClient, **body: Any) -> Any:
    return api.post("/api/v1/devices", json=body)


# ---- registration ------------------------------------------------------------------------------


def test_register_returns_201_with_token_and_device_view(admin: ApiClient) -> None:
    r = _register(admin, id="BP-000123", model="bota-pin", name="Kitchen pin")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body.keys() >= DEVICE_KEYS | {"token"}
    assert body["id"] == "BP-000123"
    assert body["model"] == "bota-pin"
    assert body["name"] == "Kitchen pin"
    assert body["token"].startswith("bota_dt_")
    assert len(body["token"]) > 40
    assert body["firmware_version"] is None
    assert body["last_seen_at"] is None
    assert body["online"] is False
    assert body["active_assignment"] is None
    # The token is shown once: GET never returns it.
    got = admin.get("/api/v1/devices/BP-000123").json()
    assert "token" not in got
    assert body["token"] not in admin.get("/api/v1/devices/BP-000123").text
    assert body["token"] not in admin.get("/api/v1/devices").text


def test_each_device_gets_its_own_token(admin: ApiClient) -> None:
    a = admin.device()
    b = admin.device()
    assert a["token"] != b["token"]


@pytest.mark.parametrize("model", ["bota-pin", "bota-pin-pro", "bota-note"])
def test_register_each_model(admin: ApiClient, model: str) -> None:
    device = admin.device(model=model)
    assert admin.get(f"/api/v1/devices/{device['id']}").json()["model"] == model


def test_name_is_optional(admin: ApiClient) -> None:
    r = _register(admin, id="BN-1", model="bota-note")
    assert r.status_code == 201
    assert r.json()["name"] is None
    r = _register(admin, id="BN-2", model="bota-note", name="   ")
    assert r.status_code == 201
    assert r.json()["name"] is None


def test_duplicate_id_is_409_and_keeps_the_first(admin: ApiClient) -> None:
    first = admin.device(device_id="BP-000001", name="first")
    r = _register(admin, id="BP-000001", model="bota-note", name="second")
    assert_problem(r, 409, "id")
    got = admin.get("/api/v1/devices/BP-000001").json()
    assert got["name"] == "first"
    assert got["model"] == "bota-pin"
    # The original token still works.
    assert heartbeat(admin.client, first["token"]).status_code == 200


@pytest.mark.parametrize(
    "device_id",
    ["BP 000123", "BP 0001 ", " ", "", "A" * 65, "-BP1", "BP/1", "BP#1", "Bötä-1", "BP\t1"],
)
def test_bad_id_is_422_naming_id(admin: ApiClient, device_id: str) -> None:
    assert_problem(_register(admin, id=device_id, model="bota-pin"), 422, "id")
    assert admin.get("/api/v1/devices").json() == []


def test_id_of_64_characters_is_accepted(admin: ApiClient) -> None:
    device_id = "B" + "1" * 63
    assert _register(admin, id=device_id, model="bota-pin").status_code == 201
    assert admin.get(f"/api/v1/devices/{device_id}").status_code == 200


@pytest.mark.parametrize("model", ["bota-watch", "", "BOTA-PIN", None, 3])
def test_bad_model_is_422_naming_model(admin: ApiClient, model: Any) -> None:
    assert_problem(_register(admin, id="BP-1", model=model), 422, "model")
    assert_problem(admin.get("/api/v1/devices/BP-1"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "bota-pin"}, "id"),
        ({"id": "BP-1"}, "model"),
        ({"id": "BP-1", "model": "bota-pin", "name": "n" * 201}, "name"),
        ({"id": "BP-1", "model": "bota-pin", "colour": "red"}, "colour"),
        ({"id": 123, "model": "bota-pin"}, "id"),
    ],
)
def test_other_register_validation(admin: ApiClient, body: dict[str, Any], field: str) -> None:
    assert_problem(admin.post("/api/v1/devices", json=body), 422, field)


# ---- listing -----------------------------------------------------------------------------------


def _ids(api: ApiClient, **params: Any) -> tuple[list[str], int]:
    r = api.get("/api/v1/devices", params=params)
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()], int(r.headers["X-Total-Count"])


@pytest.fixture
def fleet(admin: ApiClient) -> None:
    admin.device("bota-pin", "BP-000001", "Kitchen")
    admin.device("bota-pin", "BP-000002", "Living room")
    admin.device("bota-pin-pro", "PRO-000001", "KITCHEN annex")
    admin.device("bota-note", "BN-000001", None)
    admin.device("bota-note", "BN-000002", "Office")


@pytest.mark.usefixtures("fleet")
def test_list_all_with_total(admin: ApiClient) -> None:
    ids, total = _ids(admin)
    assert total == 5
    assert sorted(ids) == sorted(["BP-000001", "BP-000002", "PRO-000001", "BN-000001", "BN-000002"])


@pytest.mark.usefixtures("fleet")
def test_list_filter_by_model(admin: ApiClient) -> None:
    assert _ids(admin, model="bota-note") == (["BN-000001", "BN-000002"], 2)
    assert _ids(admin, model="bota-pin-pro") == (["PRO-000001"], 1)
    assert_problem(admin.get("/api/v1/devices", params={"model": "bota-watch"}), 422, "query.model")


@pytest.mark.usefixtures("fleet")
def test_search_matches_id_or_name_case_insensitively(admin: ApiClient) -> None:
    assert sorted(_ids(admin, q="kitchen")[0]) == ["BP-000001", "PRO-000001"]
    assert sorted(_ids(admin, q="KiTcHeN")[0]) == ["BP-000001", "PRO-000001"]
    assert _ids(admin, q="bn-00000")[1] == 2
    assert _ids(admin, q="pro-000001")[0] == ["PRO-000001"]
    assert _ids(admin, q="office")[0] == ["BN-000002"]
    assert _ids(admin, q="no such thing") == ([], 0)


@pytest.mark.usefixtures("fleet")
def test_search_and_model_combine(admin: ApiClient) -> None:
    assert _ids(admin, q="kitchen", model="bota-pin") == (["BP-000001"], 1)
    assert _ids(admin, q="000001", model="bota-note") == (["BN-000001"], 1)


@pytest.mark.usefixtures("fleet")
def test_limit_and_offset_page_through_with_stable_total(admin: ApiClient) -> None:
    all_ids, total = _ids(admin)
    pages = [_ids(admin, limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [len(p[0]) for p in pages] == [2, 2, 1, 0]
    assert all(p[1] == total == 5 for p in pages)
    assert [i for p in pages for i in p[0]] == all_ids
    assert _ids(admin, q="kitchen", limit=1) == (_ids(admin, q="kitchen")[0][:1], 2)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "many"}, {"q": "x" * 101}])
def test_bad_paging_parameters_are_422(admin: ApiClient, params: dict[str, Any]) -> None:
    assert_problem(admin.get("/api/v1/devices", params=params), 422)


def test_search_treats_like_wildcards_literally(admin: ApiClient) -> None:
    admin.device(device_id="BP-100")
    admin.device(device_id="BP_200")
    assert _ids(admin, q="_")[0] == ["BP_200"]


def test_search_is_case_insensitive_for_non_ascii_names(admin: ApiClient) -> None:
    admin.device(device_id="BN-1", name="Ärzte Pin")
    assert _ids(admin, q="ärzte")[0] == ["BN-1"]


# ---- one device --------------------------------------------------------------------------------


def test_get_one_shape_after_heartbeat_and_assignment(admin: ApiClient) -> None:
    device = admin.device(name="Desk")
    rel = admin.release("v1.0.1")
    hb = heartbeat(admin.client, device["token"], firmware_version="v1.0.0", battery=55, network="cellular", rssi=-70)
    assert hb.status_code == 200
    assignment = admin.assign(device["id"], rel["id"]).json()
    body = admin.get(f"/api/v1/devices/{device['id']}").json()
    assert body.keys() >= DEVICE_KEYS
    assert body["firmware_version"] == "v1.0.0"
    assert body["battery"] == 55
    assert body["network"] == "cellular"
    assert body["recording"] is False
    assert body["ble_connected"] is False
    assert body["online"] is True
    assert datetime.fromisoformat(body["last_seen_at"]).tzinfo is not None
    active = body["active_assignment"]
    assert active["id"] == assignment["id"]
    assert active["status"] == "pending"
    assert active["version"] == "v1.0.1"
    assert active["release_id"] == rel["id"]
    # The list shows the same view.
    listed = admin.get("/api/v1/devices").json()
    assert listed == [body]


def test_unknown_device_is_404(admin: ApiClient) -> None:
    assert_problem(admin.get("/api/v1/devices/BP-404"), 404)


# ---- tokens ------------------------------------------------------------------------------------


def test_token_rotation(admin: ApiClient, client: TestClient) -> None:
    device = admin.device()
    old = device["token"]
    assert heartbeat(client, old).status_code == 200
    r = admin.post(f"/api/v1/devices/{device['id']}/token")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == device["id"]
    new = r.json()["token"]
    assert new != old
    assert new.startswith("bota_dt_")
    assert_problem(heartbeat(client, old), 401)
    assert heartbeat(client, new).status_code == 200
    # Rotating again retires the second token too.
    newer = admin.post(f"/api/v1/devices/{device['id']}/token").json()["token"]
    assert_problem(heartbeat(client, new), 401)
    assert heartbeat(client, newer).status_code == 200


def test_rotating_one_device_leaves_others_alone(admin: ApiClient, client: TestClient) -> None:
    a = admin.device()
    b = admin.device()
    admin.post(f"/api/v1/devices/{a['id']}/token")
    assert heartbeat(client, b["token"]).status_code == 200


def test_rotate_unknown_device_is_404(admin: ApiClient) -> None:
    assert_problem(admin.post("/api/v1/devices/BP-404/token"), 404)


def test_token_is_stored_only_as_a_hash(admin: ApiClient, sessions: Any) -> None:
    device = admin.device(name="hash check")
    rotated = admin.post(f"/api/v1/devices/{device['id']}/token").json()["token"]
    for token, current in ((device["token"], False), (rotated, True)):
        with sessions() as session:
            row = session.get(Device, device["id"])
            assert row is not None
            assert row.token_hash != token
            values = [getattr(row, attr.key) for attr in sa_inspect(Device).column_attrs]
            assert all(token not in str(v) for v in values), values
            assert (row.token_hash == hashlib.sha256(token.encode()).hexdigest()) is current
