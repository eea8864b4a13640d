"""Helpers for portal tests: a signed-in operator through the real sign-in form."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from bota_ota.accounts.service import create_user
from bota_ota.core.database import session_scope

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(name="portal_user")
def portal_user_fixture(sessions) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        create_user(session, email="op@example.com", password="operator-pw", role="operator", actor="test")
    return "op@example.com", "operator-pw"


def csrf(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    match = CSRF_RE.search(page.text)
    assert match, page.text
    return match.group(1)


def sign_in(client: TestClient, email: str, password: str) -> None:
    r = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf(client)}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
