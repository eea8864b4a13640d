"""The portal's login rate limit: failed sign-ins are rows, counted per e-mail address (and per client)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from bota_ota.accounts.models import LoginAttempt
from bota_ota.app import create_app
from bota_ota.core.database import session_scope
from bota_ota.core.settings import Settings
from tests.portal.pages import add_user, html
from tests.portal.support import csrf

EMAIL, PASSWORD = "op@example.com", "operator-pw"


def attempt(client: TestClient, email: str, password: str) -> httpx.Response:
    return client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf(client)}, follow_redirects=False
    )


def signed_in(client: TestClient) -> bool:
    return client.get("/", follow_redirects=False).status_code == 200


def sign_out(client: TestClient) -> None:
    assert client.post("/logout", data={"csrf_token": csrf(client, "/")}, follow_redirects=False).status_code == 303


def test_locked_after_too_many_failures_even_with_the_right_password(
    client: TestClient, portal_user: tuple[str, str], settings: Settings, sessions: Any
) -> None:
    assert settings.login_max_failures == 5
    add_user(sessions, "other@example.com", "viewer")
    for _ in range(settings.login_max_failures):
        assert attempt(client, EMAIL, "wrong-password").status_code == 401
    locked = attempt(client, EMAIL, PASSWORD)
    assert locked.status_code == 429
    retry_after = int(locked.headers["Retry-After"])
    assert 0 < retry_after <= settings.login_window_s
    page = html(locked)
    assert page.by_id("password-error").text == "Too many failed sign-ins. Try again in 15 minutes."
    assert page.by_id("email").attr("value") == EMAIL
    assert not signed_in(client)
    # The address counts however it is typed.
    assert attempt(client, " OP@Example.COM ", PASSWORD).status_code == 429

    # Another account is not affected.
    assert attempt(client, "other@example.com", "correct-horse").status_code == 303
    assert signed_in(client)
    sign_out(client)
    assert attempt(client, EMAIL, PASSWORD).status_code == 429


def test_the_lock_ends_with_the_window(
    client: TestClient, portal_user: tuple[str, str], settings: Settings, sessions: Any
) -> None:
    for _ in range(settings.login_max_failures):
        attempt(client, EMAIL, "wrong-password")
    assert attempt(client, EMAIL, PASSWORD).status_code == 429
    # Instead of waiting: the failures become older than the window.
    with session_scope(sessions) as session:
        for row in session.scalars(select(LoginAttempt)):
            row.at -= timedelta(seconds=settings.login_window_s + 1)
    assert attempt(client, EMAIL, PASSWORD).status_code == 303


def test_a_successful_sign_in_clears_the_count(
    client: TestClient, portal_user: tuple[str, str], settings: Settings
) -> None:
    below = settings.login_max_failures - 1
    for _ in range(below):
        assert attempt(client, EMAIL, "wrong-password").status_code == 401
    assert attempt(client, EMAIL, PASSWORD).status_code == 303
    sign_out(client)
    for _ in range(below):
        assert attempt(client, EMAIL, "wrong-password").status_code == 401
    # Without the clearing these would be 2 * (limit - 1) failures in the window: locked.
    assert attempt(client, EMAIL, PASSWORD).status_code == 303


def test_unknown_addresses_count_too(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_max_failures):
        assert attempt(client, "nobody@example.com", "whatever").status_code == 401
    r = attempt(client, "nobody@example.com", "whatever")
    assert r.status_code == 429 and "Retry-After" in r.headers


def test_one_client_trying_many_addresses_is_limited_too(settings: Settings, sessions: Any) -> None:
    """Per client address the limit is ten times the per-address one (an office behind one NAT still signs in)."""
    add_user(sessions, "late@example.com", "viewer")
    small = settings.model_copy(update={"login_max_failures": 2})
    with TestClient(create_app(small), base_url="http://testserver") as client:
        for i in range(2 * 10):
            assert attempt(client, f"guess{i}@example.com", "nope").status_code == 401, i
        r = attempt(client, "late@example.com", "correct-horse")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
