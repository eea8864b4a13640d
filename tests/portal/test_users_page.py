"""Users (admins only): create, change role, deactivate; the last active admin stays an admin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.portal.pages import add_user, browser, field_error, flash, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient

BOSS = "boss@example.com"


@pytest.fixture
def boss(client: TestClient, sessions: Any) -> str:
    """An admin signed in on ``client``; returns their user id."""
    user_id = add_user(sessions, BOSS, "admin")
    sign_in(client, BOSS, "correct-horse")
    return user_id


def users(admin: ApiClient) -> dict[str, dict[str, Any]]:
    return {u["email"]: u for u in admin.get("/api/v1/users").json()}


def post(client: TestClient, path: str, **form: str) -> httpx.Response:
    return client.post(path, data={"csrf_token": csrf(client, "/"), **form})


def can_sign_in(app: FastAPI, email: str, password: str) -> bool:
    other = browser(app)
    r = other.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf(other)}, follow_redirects=False
    )
    assert r.status_code in (303, 401), r.text
    return r.status_code == 303


def test_operators_cannot_manage_users_or_tokens(client: TestClient, sessions: Any, admin: ApiClient) -> None:
    target = add_user(sessions, "someone@example.com", "viewer")
    add_user(sessions, "op2@example.com", "operator")
    sign_in(client, "op2@example.com", "correct-horse")
    nav = html(client.get("/")).find("nav", **{"aria-label": "Main"})
    assert nav is not None
    assert "/users" not in nav.links() and "/tokens" not in nav.links() and "/devices" in nav.links()
    assert client.get("/users").status_code == 403
    assert client.get("/tokens").status_code == 403
    token_id = admin.get("/api/v1/tokens").json()[0]["id"]
    for path, form in [
        ("/users", {"email": "new@example.com", "password": "long-enough", "role": "admin"}),
        (f"/users/{target}", {"role": "admin"}),
        (f"/users/{target}", {"active": "false"}),
        ("/tokens", {"name": "sneaky", "role": "admin"}),
        (f"/tokens/{token_id}/revoke", {}),
    ]:
        assert post(client, path, **form).status_code == 403, path
    assert set(users(admin)) == {"someone@example.com", "op2@example.com"}
    assert users(admin)["someone@example.com"]["role"] == "viewer" and users(admin)["someone@example.com"]["is_active"]
    assert [t["name"] for t in admin.get("/api/v1/tokens").json()] == ["test-admin"]
    assert admin.get("/api/v1/me").status_code == 200


def test_admins_see_users_and_tokens_in_the_nav(client: TestClient, boss: str) -> None:
    nav = html(client.get("/")).find("nav", **{"aria-label": "Main"})
    assert nav is not None and "/users" in nav.links() and "/tokens" in nav.links()


def test_create_a_user_who_can_then_sign_in(app: FastAPI, client: TestClient, boss: str, admin: ApiClient) -> None:
    r = post(client, "/users", email=" New@Example.com ", password="new-password", role="operator")
    assert r.status_code == 200 and str(r.url).endswith("/users")
    page = html(r)
    assert flash(page) == ("Created new@example.com (operator).", False)
    assert "new@example.com" in [th.text for th in page.find_all("th", scope="row")]
    created = users(admin)["new@example.com"]
    assert (created["role"], created["is_active"]) == ("operator", True)
    assert can_sign_in(app, "new@example.com", "new-password")
    assert not can_sign_in(app, "new@example.com", "wrong-password")
    [entry] = admin.get("/api/v1/audit", params={"action": "user.create", "actor": f"user:{BOSS}"}).json()
    assert entry["target_id"] == created["id"]


def test_create_user_errors_are_shown_beside_the_field(client: TestClient, boss: str, admin: ApiClient) -> None:
    dup = post(client, "/users", email="BOSS@example.com", password="long-enough", role="viewer")
    assert dup.status_code == 409
    page = html(dup)
    assert "already exists" in field_error(page, "email")
    assert page.by_id("email").attr("aria-invalid") == "true" and field_error(page, "password") == ""

    short = post(client, "/users", email="new@example.com", password="short", role="operator")
    assert short.status_code == 422
    page = html(short)
    assert "at least 8 characters" in field_error(page, "password")
    assert field_error(page, "email") == ""
    assert page.by_id("email").attr("value") == "new@example.com"  # what was typed is kept
    assert page.by_id("role").find("option", value="operator", selected=None) is not None

    bad_email = post(client, "/users", email="not-an-address", password="long-enough")
    assert bad_email.status_code == 422 and field_error(html(bad_email), "email")
    bad_role = post(client, "/users", email="new@example.com", password="long-enough", role="root")
    assert bad_role.status_code == 422 and field_error(html(bad_role), "role")
    assert set(users(admin)) == {BOSS}


def test_change_role_applies_to_a_signed_in_user(
    app: FastAPI, client: TestClient, boss: str, sessions: Any, admin: ApiClient
) -> None:
    target = add_user(sessions, "ana@example.com", "viewer")
    theirs = browser(app)
    sign_in(theirs, "ana@example.com", "correct-horse")
    assert theirs.get("/firmware/upload").status_code == 403

    r = post(client, f"/users/{target}", role="operator")
    assert flash(html(r)) == ("ana@example.com is now operator, active.", False)
    assert users(admin)["ana@example.com"]["role"] == "operator"
    assert theirs.get("/firmware/upload").status_code == 200  # the role is read on every request
    [entry] = admin.get("/api/v1/audit", params={"action": "user.update"}).json()
    assert (entry["actor"], entry["target_id"], entry["detail"]) == (f"user:{BOSS}", target, {"role": "operator"})

    bad = post(client, f"/users/{target}", role="root")
    message, is_error = flash(html(bad)) or ("", False)
    assert is_error and message.startswith("Not changed:")
    assert users(admin)["ana@example.com"]["role"] == "operator"


def test_deactivate_ends_their_session_and_sign_in(
    app: FastAPI, client: TestClient, boss: str, sessions: Any, admin: ApiClient
) -> None:
    target = add_user(sessions, "ana@example.com", "operator")
    theirs = browser(app)
    sign_in(theirs, "ana@example.com", "correct-horse")
    assert theirs.get("/devices").status_code == 200

    r = post(client, f"/users/{target}", active="false")
    assert flash(html(r)) == ("ana@example.com is now operator, deactivated.", False)
    assert users(admin)["ana@example.com"]["is_active"] is False
    refused = theirs.get("/devices", follow_redirects=False)
    assert (refused.status_code, refused.headers["location"]) == (303, "/login?next=%2Fdevices")
    token = csrf(theirs)  # a page they can still load: the sign-in form
    forged = theirs.post("/devices/new", data={"id": "BP-X", "model": "bota-pin", "csrf_token": token})
    assert forged.url.path == "/login" and admin.get("/api/v1/devices/BP-X").status_code == 404
    assert not can_sign_in(app, "ana@example.com", "correct-horse")

    post(client, f"/users/{target}", active="true")
    assert can_sign_in(app, "ana@example.com", "correct-horse")


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(
    app: FastAPI, client: TestClient, boss: str, sessions: Any, admin: ApiClient
) -> None:
    for form in ({"role": "operator"}, {"active": "false"}, {"role": "viewer", "active": "false"}):
        r = post(client, f"/users/{boss}", **form)
        message, is_error = flash(html(r)) or ("", False)
        assert is_error and f"{BOSS} is the last active admin" in message, form
        assert (users(admin)[BOSS]["role"], users(admin)[BOSS]["is_active"]) == ("admin", True)
    assert html(client.get("/users")).find("h1") is not None  # still an admin

    # A deactivated admin does not count; an active second admin does.
    other = add_user(sessions, "second@example.com", "admin")
    post(client, f"/users/{other}", active="false")
    r = post(client, f"/users/{boss}", role="operator")
    assert (flash(html(r)) or ("", False))[1] is True
    assert users(admin)[BOSS]["role"] == "admin"
    post(client, f"/users/{other}", active="true")
    post(client, f"/users/{other}", role="viewer")
    assert (flash(html(client.get("/users"))) is None) and users(admin)["second@example.com"]["role"] == "viewer"
    assert users(admin)[BOSS]["role"] == "admin"

    # With another active admin, the boss may step down (and then no longer manage users).
    post(client, f"/users/{other}", role="admin")
    r = post(client, f"/users/{boss}", role="operator")
    assert users(admin)[BOSS]["role"] == "operator"
    assert r.status_code == 403  # the redirect to /users is no longer theirs to see
    assert can_sign_in(app, "second@example.com", "correct-horse")


def test_unknown_user_is_404(client: TestClient, boss: str) -> None:
    assert post(client, "/users/nope", role="viewer").status_code == 404


def test_the_list_is_a_focusable_region_with_relative_times(client: TestClient, boss: str, sessions: Any) -> None:
    ana = add_user(sessions, "ana@example.com", "viewer")
    page = html(client.get("/users"))
    region = page.find("div", role="region")
    assert region is not None and (region.attr("tabindex"), region.attr("aria-label")) == ("0", "Portal users")
    row = page.by_id(f"user-{ana}")  # the audit log links here
    when = row.find("time")
    assert when is not None and (when.attr("title") or "").endswith(" UTC")
    [deactivate] = [f for f in row.find_all("form") if f.attr("data-confirm")]
    assert deactivate.attr("data-confirm") == "Deactivate ana@example.com? They are signed out at once."
