"""Roles on API tokens: viewer reads; operator also uploads, registers, assigns, cancels; admin everything."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import ApiClient, assert_problem, firmware_bytes


@pytest.fixture
def world(admin: ApiClient) -> dict[str, Any]:
    """A release, a device and a pending assignment, made by the admin."""
    rel = admin.release("v1.0.1")
    spare = admin.release("v1.0.2")
    dev = admin.device(device_id="BP-ROLES-1")
    a = admin.assign(dev["id"], rel["id"]).json()
    return {"release": rel, "spare": spare, "device": dev, "assignment": a}


def _reads(world: dict[str, Any]) -> list[str]:
    return [
        "/api/v1/firmware",
        f"/api/v1/firmware/{world['release']['id']}",
        "/api/v1/devices",
        f"/api/v1/devices/{world['device']['id']}",
        f"/api/v1/devices/{world['device']['id']}/assignments",
        "/api/v1/assignments",
        f"/api/v1/assignments/{world['assignment']['id']}",
        "/api/v1/audit",
        "/api/v1/me",
    ]


def _upload(api: ApiClient) -> Any:
    return api.post(
        "/api/v1/firmware",
        data={"version": "v9.9.9", "model": "bota-pin"},
        files={"bin": ("fw.bin", firmware_bytes(100), "application/octet-stream")},
    )


def _writes(api: ApiClient, world: dict[str, Any]) -> dict[str, Any]:
    """Each operator-level action, as a thunk (so it runs only when called)."""
    return {
        "upload": lambda: _upload(api),
        "patch release": lambda: api.patch(f"/api/v1/firmware/{world['spare']['id']}", json={"released": False}),
        "delete release": lambda: api.delete(f"/api/v1/firmware/{world['spare']['id']}"),
        "register": lambda: api.post("/api/v1/devices", json={"id": "BP-NEW-1", "model": "bota-pin"}),
        "rotate token": lambda: api.post(f"/api/v1/devices/{world['device']['id']}/token"),
        "cancel": lambda: api.post(f"/api/v1/assignments/{world['assignment']['id']}/cancel"),
        "assign": lambda: api.assign(world["device"]["id"], world["spare"]["id"]),
    }


ADMIN_ONLY = [
    ("post", "/api/v1/tokens", {"name": "x", "role": "viewer"}),
    ("get", "/api/v1/tokens", None),
    ("post", "/api/v1/users", {"email": "a@example.com", "password": "secret-pass", "role": "viewer"}),
    ("get", "/api/v1/users", None),
]


def _call(api: ApiClient, method: str, url: str, body: Any) -> Any:
    return getattr(api, method)(url, json=body) if body is not None else getattr(api, method)(url)


# ---- viewer ------------------------------------------------------------------------------------


def test_viewer_can_read_everything(viewer: ApiClient, world: dict[str, Any]) -> None:
    for url in _reads(world):
        r = viewer.get(url)
        assert r.status_code == 200, (url, r.text)
    assert viewer.get("/api/v1/me").json()["role"] == "viewer"


@pytest.mark.parametrize(
    "action", ["upload", "patch release", "delete release", "register", "rotate token", "cancel", "assign"]
)
def test_viewer_cannot_write(viewer: ApiClient, admin: ApiClient, world: dict[str, Any], action: str) -> None:
    audit_before = admin.get("/api/v1/audit").json()
    r = _writes(viewer, world)[action]()
    problem = assert_problem(r, 403)
    assert "operator" in problem["detail"]
    # Nothing changed.
    assert admin.get("/api/v1/audit").json() == audit_before
    assert admin.get(f"/api/v1/assignments/{world['assignment']['id']}").json()["status"] == "pending"
    assert len(admin.get("/api/v1/firmware").json()) == 2
    assert len(admin.get("/api/v1/devices").json()) == 1


@pytest.mark.parametrize(("method", "url", "body"), ADMIN_ONLY)
def test_viewer_cannot_do_admin_things(viewer: ApiClient, method: str, url: str, body: Any) -> None:
    assert_problem(_call(viewer, method, url, body), 403)


# ---- operator ----------------------------------------------------------------------------------


def test_operator_can_do_operator_actions(operator: ApiClient, world: dict[str, Any]) -> None:
    actions = _writes(operator, world)
    assert actions["upload"]().status_code == 201
    assert actions["register"]().status_code == 201
    assert actions["rotate token"]().status_code == 200
    assert actions["patch release"]().status_code == 200
    assert actions["cancel"]().status_code == 200
    assert actions["assign"]().status_code == 201
    for url in _reads(world):
        assert operator.get(url).status_code == 200, url
    fresh = _upload_other(operator)
    assert operator.delete(f"/api/v1/firmware/{fresh}").status_code == 204


def _upload_other(api: ApiClient) -> str:
    r = api.post(
        "/api/v1/firmware",
        data={"version": "v8.0.0", "model": "bota-note"},
        files={"bin": ("fw.bin", firmware_bytes(100), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize(("method", "url", "body"), ADMIN_ONLY)
def test_operator_cannot_do_admin_things(
    operator: ApiClient, admin: ApiClient, method: str, url: str, body: Any
) -> None:
    tokens_before = admin.get("/api/v1/tokens").json()
    problem = assert_problem(_call(operator, method, url, body), 403)
    assert "admin" in problem["detail"]
    assert admin.get("/api/v1/tokens").json() == tokens_before
    assert admin.get("/api/v1/users").json() == []


def test_operator_cannot_revoke_tokens(operator: ApiClient, admin: ApiClient) -> None:
    victim = admin.post("/api/v1/tokens", json={"name": "victim", "role": "viewer"}).json()
    assert_problem(operator.post(f"/api/v1/tokens/{victim['id']}/revoke"), 403)
    assert admin.client.get("/api/v1/me", headers={"Authorization": f"Bearer {victim['token']}"}).status_code == 200


# ---- admin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_admin_creates_tokens_that_work_with_their_role(admin: ApiClient, client: TestClient, role: str) -> None:
    r = admin.post("/api/v1/tokens", json={"name": f"ci-{role}", "role": role})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["role"] == role
    assert body["name"] == f"ci-{role}"
    assert body["token"].startswith("bota_at_")
    assert body["revoked_at"] is None
    assert body["token"].startswith(body["prefix"])
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert me.json() == {"kind": "token", "name": f"ci-{role}", "role": role}
    # The secret is never listed again.
    listed = admin.get("/api/v1/tokens")
    assert body["token"] not in listed.text
    assert body["id"] in [t["id"] for t in listed.json()]
    # The new token's powers match its role.
    new = ApiClient(client, body["token"])
    expected = {"viewer": 403, "operator": 201, "admin": 201}[role]
    assert new.post("/api/v1/devices", json={"id": f"BP-{role}", "model": "bota-pin"}).status_code == expected
    assert new.get("/api/v1/tokens").status_code == (200 if role == "admin" else 403)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "", "role": "viewer"}, "name"),
        ({"name": "   ", "role": "viewer"}, "name"),
        ({"name": "n" * 101, "role": "viewer"}, "name"),
        ({"role": "viewer"}, "name"),
        ({"name": "x"}, "role"),
    ],
)
def test_token_create_validation(admin: ApiClient, body: dict[str, Any], field: str) -> None:
    before = admin.get("/api/v1/tokens").json()
    assert_problem(admin.post("/api/v1/tokens", json=body), 422, field)
    assert admin.get("/api/v1/tokens").json() == before


def test_admin_creates_users(admin: ApiClient) -> None:
    r = admin.post("/api/v1/users", json={"email": "Ops@Example.com", "password": "correct horse", "role": "operator"})
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == "ops@example.com"
    assert user["role"] == "operator"
    assert "password" not in user
    assert "password_hash" not in user
    assert "correct horse" not in admin.get("/api/v1/users").text
    assert [u["email"] for u in admin.get("/api/v1/users").json()] == ["ops@example.com"]
    dup = admin.post("/api/v1/users", json={"email": "ops@example.com", "password": "another one", "role": "viewer"})
    assert_problem(dup, 409, "email")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "no-at-sign", "password": "long enough", "role": "viewer"}, "email"),
        ({"email": "a@example.com", "password": "short", "role": "viewer"}, "password"),
        ({"email": "a@example.com", "password": "long enough", "role": "god"}, "role"),
    ],
)
def test_user_create_validation(admin: ApiClient, body: dict[str, Any], field: str) -> None:
    assert_problem(admin.post("/api/v1/users", json=body), 422, field)
    assert admin.get("/api/v1/users").json() == []


# ---- authentication ----------------------------------------------------------------------------


def test_revoked_token_is_401(admin: ApiClient, client: TestClient) -> None:
    created = admin.post("/api/v1/tokens", json={"name": "short-lived", "role": "operator"}).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    r = admin.post(f"/api/v1/tokens/{created['id']}/revoke")
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    for response in (
        client.get("/api/v1/me", headers=headers),
        client.get("/api/v1/devices", headers=headers),
        client.post("/api/v1/devices", json={"id": "BP-1", "model": "bota-pin"}, headers=headers),
    ):
        assert_problem(response, 401)
    # Revoking again is harmless; an unknown id is 404.
    assert admin.post(f"/api/v1/tokens/{created['id']}/revoke").status_code == 200
    assert_problem(admin.post("/api/v1/tokens/nope/revoke"), 404)


def test_an_admin_can_revoke_its_own_token(admin: ApiClient) -> None:
    me = next(t for t in admin.get("/api/v1/tokens").json() if t["name"] == "test-admin")
    assert admin.post(f"/api/v1/tokens/{me['id']}/revoke").status_code == 200
    assert_problem(admin.get("/api/v1/me"), 401)


@pytest.mark.parametrize(
    "url",
    ["/api/v1/me", "/api/v1/firmware", "/api/v1/devices", "/api/v1/assignments", "/api/v1/audit", "/api/v1/tokens"],
)
def test_no_token_is_401_with_www_authenticate(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize(
    "authorization", ["Bearer nope", "Bearer bota_at_" + "x" * 43, "Basic YWRtaW46YWRtaW4=", "Token abc", "Bearer"]
)
def test_bad_credentials_are_401(client: TestClient, admin: ApiClient, authorization: str) -> None:
    r = client.get("/api/v1/me", headers={"Authorization": authorization})
    assert_problem(r, 401)
    assert "WWW-Authenticate" in r.headers


def test_no_token_writes_are_401_not_403(client: TestClient) -> None:
    assert_problem(client.post("/api/v1/devices", json={"id": "BP-1", "model": "bota-pin"}), 401)
    assert_problem(client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}), 401)
