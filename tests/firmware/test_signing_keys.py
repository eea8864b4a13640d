"""Trusted signing keys and per-model settings through the management API: who may do what, the checks,
the audit trail."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bota_ota.firmware import signing
from tests.firmware.signing_support import key_id, new_key, public_pem, register
from tests.support.factories import ApiClient, assert_problem


def _audit(admin: ApiClient, action: str) -> list[dict[str, Any]]:
    return list(admin.get("/api/v1/audit", params={"action": action}).json())


def test_register_list_and_get_a_key(admin: ApiClient, viewer: ApiClient) -> None:
    key = new_key(1)
    r = admin.post(
        "/api/v1/signing-keys",
        json={"name": " release-2026 ", "public_key": public_pem(key), "models": ["bota-pin", "bota-pin-pro"]},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key_id"] == key_id(key)
    assert (body["name"], body["models"]) == ("release-2026", ["bota-pin", "bota-pin-pro"])
    assert body["public_key"] == public_pem(key)
    assert (body["created_by"], body["revoked_at"], body["revoked_by"]) == ("token:test-admin", None, None)
    # Viewers read keys (public keys are no secret) and models.
    assert viewer.get("/api/v1/signing-keys").json() == [body]
    assert viewer.get(f"/api/v1/signing-keys/{body['key_id']}").json() == body
    [entry] = _audit(admin, "signing_key.create")
    assert (entry["target_id"], entry["actor"]) == (body["key_id"], "token:test-admin")
    assert entry["detail"] == {"name": "release-2026", "models": ["bota-pin", "bota-pin-pro"]}


@pytest.mark.parametrize("form", ["pem", "base64", "hex"])
def test_the_public_key_in_every_accepted_form(admin: ApiClient, form: str) -> None:
    key = new_key(2)
    raw = signing.public_raw(key.public_key())
    text = {"pem": public_pem(key), "base64": base64.b64encode(raw).decode(), "hex": raw.hex()}[form]
    r = admin.post("/api/v1/signing-keys", json={"name": "k", "public_key": text, "models": ["bota-note"]})
    assert r.status_code == 201, r.text
    assert r.json()["key_id"] == key_id(key)
    assert r.json()["public_key"] == public_pem(key)  # stored as PEM whatever the form given


def test_a_key_registered_twice_is_409(admin: ApiClient) -> None:
    key = new_key(3)
    register(admin, key)
    r = admin.post(
        "/api/v1/signing-keys",
        json={"name": "again", "public_key": signing.public_raw(key.public_key()).hex(), "models": ["bota-note"]},
    )
    body = assert_problem(r, 409, "public_key")
    assert body["key_id"] == key_id(key)
    assert len(admin.get("/api/v1/signing-keys").json()) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"public_key": "not a key"}, "public_key"),
        ({"public_key": "AAAA"}, "public_key"),
        ({"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}, "public_key"),
        ({"models": ["bota-pen"]}, "models.0"),
        ({"models": ["bota-pin", "nope"]}, "models.1"),
        ({"models": []}, "models"),
        ({"name": "   "}, "name"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(admin: ApiClient, change: dict[str, Any], field: str) -> None:
    body = {"name": "k", "public_key": public_pem(new_key(4)), "models": ["bota-pin"], **change}
    assert_problem(admin.post("/api/v1/signing-keys", json=body), 422, field)
    assert admin.get("/api/v1/signing-keys").json() == []
    assert _audit(admin, "signing_key.create") == []


def test_an_rsa_key_is_refused(admin: ApiClient) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    r = admin.post("/api/v1/signing-keys", json={"name": "rsa", "public_key": pem, "models": ["bota-pin"]})
    assert "Ed25519" in assert_problem(r, 422, "public_key")["detail"]


def test_revoke_is_admin_audited_and_409_the_second_time(admin: ApiClient) -> None:
    kid = register(admin, new_key(5))
    r = admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["revoked_at"] is not None and body["revoked_by"] == "token:test-admin"
    assert (body["assignments_cancelled"], body["rollouts_paused"]) == (0, 0)
    assert admin.get(f"/api/v1/signing-keys/{kid}").json()["revoked_at"] == body["revoked_at"]
    assert_problem(admin.post(f"/api/v1/signing-keys/{kid}/revoke"), 409, "key_id")
    [entry] = _audit(admin, "signing_key.revoke")
    assert entry["target_id"] == kid
    assert entry["detail"] == {"name": "release-key", "releases": 0, "assignments_cancelled": 0, "rollouts_paused": 0}
    assert_problem(admin.post("/api/v1/signing-keys/0000000000000000/revoke"), 404)
    assert_problem(admin.get("/api/v1/signing-keys/0000000000000000"), 404)


def test_non_admins_are_403_on_key_and_model_changes(admin: ApiClient, operator: ApiClient, viewer: ApiClient) -> None:
    kid = register(admin, new_key(6))
    body = {"name": "k", "public_key": public_pem(new_key(7)), "models": ["bota-pin"]}
    for api in (operator, viewer):
        assert_problem(api.post("/api/v1/signing-keys", json=body), 403)
        assert_problem(api.post(f"/api/v1/signing-keys/{kid}/revoke"), 403)
        assert_problem(api.patch("/api/v1/models/bota-pin", json={"require_signed": True}), 403)
        assert api.get("/api/v1/signing-keys").status_code == 200
        assert api.get("/api/v1/models").status_code == 200
    assert admin.get(f"/api/v1/signing-keys/{kid}").json()["revoked_at"] is None
    assert len(admin.get("/api/v1/signing-keys").json()) == 1
    assert admin.get("/api/v1/models").json()[0]["require_signed"] is False
    assert admin.client.get("/api/v1/signing-keys").status_code == 401


def test_models_show_settings_floors_and_trusted_keys(admin: ApiClient) -> None:
    models = admin.get("/api/v1/models").json()
    assert [m["model"] for m in models] == ["bota-pin", "bota-pin-pro", "bota-note"]
    assert models[0] == {
        "model": "bota-pin",
        "name": "Bota Pin",
        "require_signed": False,
        "security_floor": 0,
        "trusted_keys": [],
    }
    a = register(admin, new_key(8), ("bota-pin", "bota-note"))
    b = register(admin, new_key(9), ("bota-pin",))
    admin.post(f"/api/v1/signing-keys/{b}/revoke")
    by_model = {m["model"]: m for m in admin.get("/api/v1/models").json()}
    assert by_model["bota-pin"]["trusted_keys"] == [a]  # a revoked key is not trusted
    assert by_model["bota-note"]["trusted_keys"] == [a]
    assert by_model["bota-pin-pro"]["trusted_keys"] == []


def test_require_signed_is_upserted_and_audited_when_it_changes(admin: ApiClient) -> None:
    r = admin.patch("/api/v1/models/bota-pin-pro", json={"require_signed": True})
    assert r.status_code == 200, r.text
    assert (r.json()["model"], r.json()["require_signed"]) == ("bota-pin-pro", True)
    assert admin.patch("/api/v1/models/bota-pin-pro", json={"require_signed": True}).json()["require_signed"] is True
    assert admin.patch("/api/v1/models/bota-pin-pro", json={"require_signed": False}).json()["require_signed"] is False
    entries = _audit(admin, "model.update")
    assert [(e["target_id"], e["detail"]) for e in entries] == [
        ("bota-pin-pro", {"require_signed": False}),
        ("bota-pin-pro", {"require_signed": True}),
    ]  # newest first; the repeat changed nothing and is not audited
    assert_problem(admin.patch("/api/v1/models/bota-pen", json={"require_signed": True}), 404)
    assert_problem(admin.patch("/api/v1/models/bota-pin", json={}), 422, "require_signed")
    assert_problem(admin.patch("/api/v1/models/bota-pin", json={"require_signed": "maybe"}), 422, "require_signed")
