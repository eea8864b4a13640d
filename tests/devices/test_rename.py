"""Renaming a device and setting its owner: checked, audited, answered with the device."""

from __future__ import annotations

from typing import Any

import pytest

from bota_ota.core.database import session_scope
from bota_ota.core.errors import ValidationFailed
from bota_ota.devices import service as device_service
from tests.support.app_api import make_app_user
from tests.support.factories import ApiClient, assert_problem

URL = "/api/v1/devices"


def _rename(api: ApiClient, device_id: str, body: Any) -> Any:
    return api.patch(f"{URL}/{device_id}", json=body)


def test_rename_trims_answers_the_device_and_is_audited(operator: ApiClient, admin: ApiClient) -> None:
    dev = admin.device(name="Old")
    r = _rename(operator, dev["id"], {"name": "  Kitchen pin  "})
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["name"]) == (dev["id"], "Kitchen pin")
    assert admin.get(f"{URL}/{dev['id']}").json()["name"] == "Kitchen pin"
    entries = admin.get("/api/v1/audit", params={"action": "device.rename"}).json()
    assert [(e["target_id"], e["actor"], e["detail"]) for e in entries] == [
        (dev["id"], "token:test-operator", {"before": "Old", "after": "Kitchen pin"})
    ]


@pytest.mark.parametrize("name", [None, "", "   "])
def test_null_or_blank_clears_the_name(admin: ApiClient, name: str | None) -> None:
    dev = admin.device(name="Old")
    r = _rename(admin, dev["id"], {"name": name})
    assert r.status_code == 200, r.text
    assert r.json()["name"] is None


def test_exactly_200_characters_after_trimming_is_allowed(admin: ApiClient) -> None:
    dev = admin.device()
    assert _rename(admin, dev["id"], {"name": " " + "n" * 200 + " "}).json()["name"] == "n" * 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n" * 201}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": 5}, "name"),
        ({}, "name"),
        ({"name": "x", "model": "bota-note"}, "model"),
    ],
)
def test_a_bad_rename_is_422_naming_the_field(admin: ApiClient, body: Any, field: str) -> None:
    dev = admin.device(name="Old")
    assert_problem(_rename(admin, dev["id"], body), 422, field=field)
    assert admin.get(f"{URL}/{dev['id']}").json()["name"] == "Old"


def test_rename_roles_and_unknown_device(admin: ApiClient, viewer: ApiClient) -> None:
    dev = admin.device(name="Old")
    assert_problem(_rename(viewer, dev["id"], {"name": "x"}), 403)
    assert_problem(_rename(admin, "BP-NOPE", {"name": "x"}), 404)
    assert_problem(admin.client.patch(f"{URL}/{dev['id']}", content=b"{", headers=admin.headers), 422)


def test_set_owner_service_for_the_portal(admin: ApiClient, sessions: Any) -> None:
    make_app_user(admin, email="ana@example.com")
    dev = admin.device()
    with session_scope(sessions) as session:
        device = device_service.set_owner(session, dev["id"], " ANA@example.com ", actor="test")
        assert device.owner is not None and device.owner.email == "ana@example.com"
    with session_scope(sessions) as session:
        with pytest.raises(ValidationFailed) as caught:
            device_service.set_owner(session, dev["id"], "nobody@example.com", actor="test")
        assert caught.value.field == "email"
    with session_scope(sessions) as session:
        assert device_service.set_owner(session, dev["id"], None, actor="test").owner is None
    assert admin.get(f"{URL}/{dev['id']}").json()["owner"] is None


def test_the_owner_api_names_the_email_of_an_unknown_app_user(admin: ApiClient) -> None:
    dev = admin.device()
    r = admin.client.put(f"{URL}/{dev['id']}/owner", json={"email": "nobody@example.com"}, headers=admin.headers)
    assert_problem(r, 422, field="email")
