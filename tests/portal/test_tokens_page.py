"""API tokens (admins only): the secret is shown once and works against the management API; revoke ends it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, field_error, flash, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient


@pytest.fixture
def boss(client: TestClient, sessions: Any) -> None:
    add_user(sessions, "boss@example.com", "admin")
    sign_in(client, "boss@example.com", "correct-horse")


def me(client: TestClient, secret: str) -> httpx.Response:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})


def token_row(page: Element, name: str) -> Element:
    for tr in page.find_all("tr"):
        th = tr.find("th", scope="row")
        if th is not None and th.text == name:
            return tr
    raise AssertionError(f"no token {name!r} listed")


def test_create_shows_the_secret_once_and_revoke_ends_it(client: TestClient, boss: None, admin: ApiClient) -> None:
    r = client.post(
        "/tokens", data={"name": " ci-pipeline ", "role": "operator", "csrf_token": csrf(client, "/tokens")}
    )
    assert r.status_code == 201, r.text
    page = html(r)
    secret = page.by_id("api-token").text
    assert secret.startswith("bota_at_")
    assert me(client, secret).json() == {"kind": "token", "name": "ci-pipeline", "role": "operator"}
    # An operator token can do what operators do, and no more.
    assert (
        client.post(
            "/api/v1/devices",
            json={"id": "BP-TOK-1", "model": "bota-pin"},
            headers={"Authorization": f"Bearer {secret}"},
        ).status_code
        == 201
    )
    assert client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {secret}"}).status_code == 403

    listing = client.get("/tokens")
    assert secret not in listing.text and not html(listing).has_id("api-token")
    row = token_row(html(listing), "ci-pipeline")
    assert secret[:12] + "…" in row.text and "active" in row.text and "by user:boss@example.com" in row.text
    [action] = row.form_actions()
    assert action.startswith("/tokens/") and action.endswith("/revoke")

    revoked = client.post(action, data={"csrf_token": csrf(client, "/tokens")})
    assert revoked.status_code == 200
    page = html(revoked)
    assert flash(page) == ("Revoked the token ci-pipeline.", False)
    assert token_row(page, "ci-pipeline").form_actions() == []  # no Revoke button any more
    assert "revoked" in token_row(page, "ci-pipeline").text
    assert me(client, secret).status_code == 401
    assert admin.get("/api/v1/me").status_code == 200  # other tokens are untouched
    actions = [e["action"] for e in admin.get("/api/v1/audit", params={"actor": "user:boss@example.com"}).json()]
    assert actions == ["token.revoke", "token.create"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_bad_name_is_shown_beside_the_field(client: TestClient, boss: None, admin: ApiClient, name: str) -> None:
    r = client.post("/tokens", data={"name": name, "role": "viewer", "csrf_token": csrf(client, "/tokens")})
    assert r.status_code == 422
    page = html(r)
    assert "name" in field_error(page, "name")
    assert page.by_id("name").attr("aria-invalid") == "true"
    assert not page.has_id("api-token")
    assert [t["name"] for t in admin.get("/api/v1/tokens").json()] == ["test-admin"]


def test_a_bad_role_is_shown_beside_the_role(client: TestClient, boss: None, admin: ApiClient) -> None:
    r = client.post("/tokens", data={"name": "x", "role": "root", "csrf_token": csrf(client, "/tokens")})
    assert r.status_code == 422 and field_error(html(r), "role")
    assert [t["name"] for t in admin.get("/api/v1/tokens").json()] == ["test-admin"]


def test_revoking_an_unknown_token_is_404(client: TestClient, boss: None) -> None:
    assert client.post("/tokens/nope/revoke", data={"csrf_token": csrf(client, "/tokens")}).status_code == 404


@pytest.mark.parametrize("name", ["Ana's laptop", "x'); alert(document.cookie); ('", 'say "hi" </form>'])
def test_the_revoke_confirmation_survives_any_token_name(client: TestClient, boss: None, name: str) -> None:
    """The name ends up in the Revoke form's confirmation (``data-confirm``, asked by portal.js): any quote or
    markup in it stays text, and the page carries no inline script for it to break out of."""
    created = client.post("/tokens", data={"name": name, "role": "viewer", "csrf_token": csrf(client, "/tokens")})
    assert created.status_code == 201
    listing = client.get("/tokens")
    [form] = [f for f in html(listing).find_all("form") if f.attrs.get("data-confirm")]
    assert form.attrs["data-confirm"] == f"Revoke {name}? Clients using it stop working at once."
    assert "onsubmit" not in listing.text and "<script>" not in listing.text


def test_the_reply_that_shows_the_secret_is_not_stored(client: TestClient, boss: None) -> None:
    created = client.post("/tokens", data={"name": "ci", "role": "viewer", "csrf_token": csrf(client, "/tokens")})
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    page = html(created)
    secret = page.by_id("api-token").text
    copy = page.find("button", data_copy=secret)
    assert copy is not None and copy.attr("aria-label") == "Copy the token"
