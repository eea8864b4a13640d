"""Portal sign-in, CSRF and the firmware page through the ASGI app (tests/browser drives them in Chromium)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, firmware_bytes


def test_anonymous_visitors_are_sent_to_sign_in(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    r = client.get("/firmware", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login?next=%2Ffirmware")
    # HTMX (a live region polling after the session ended): back to the page the request came from.
    r = client.get(
        "/devices/BP-1/ota-status",
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/devices/BP-1?tab=ota"},
        follow_redirects=False,
    )
    assert (r.status_code, r.headers["hx-redirect"]) == (401, "/login?next=%2Fdevices%2FBP-1%3Ftab%3Dota")
    other_site = {"HX-Request": "true", "HX-Current-URL": "https://evil.example/devices"}
    assert client.get("/firmware", headers=other_site, follow_redirects=False).headers["hx-redirect"] == "/login"


def test_sign_in_returns_to_the_page_you_were_on(client: TestClient, portal_user: tuple[str, str]) -> None:
    r = client.get("/devices?q=BP&tag=beta", follow_redirects=False)
    assert r.headers["location"] == "/login?next=%2Fdevices%3Fq%3DBP%26tag%3Dbeta"
    login = client.get(r.headers["location"])
    assert 'name="next" value="/devices?q=BP&amp;tag=beta"' in login.text
    token = csrf(client)
    # A wrong password keeps the destination for the next try.
    wrong = client.post(
        "/login", data={"email": portal_user[0], "password": "nope", "csrf_token": token, "next": "/devices?q=BP"}
    )
    assert wrong.status_code == 401 and 'name="next" value="/devices?q=BP"' in wrong.text
    data = {"email": portal_user[0], "password": portal_user[1], "csrf_token": token, "next": "/devices?q=BP&tag=beta"}
    r = client.post("/login", data=data, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/devices?q=BP&tag=beta")


@pytest.mark.parametrize(
    "unsafe",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "\\/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/devices\r\nSet-Cookie: x=1",
        "/login",
        "",
    ],
)
def test_sign_in_never_sends_you_off_site(client: TestClient, portal_user: tuple[str, str], unsafe: str) -> None:
    assert 'name="next"' not in client.get("/login", params={"next": unsafe}).text
    data = {"email": portal_user[0], "password": portal_user[1], "csrf_token": csrf(client), "next": unsafe}
    r = client.post("/login", data=data, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/")


def test_wrong_password_shows_the_error_beside_the_field(client: TestClient, portal_user: tuple[str, str]) -> None:
    r = client.post("/login", data={"email": portal_user[0], "password": "nope", "csrf_token": csrf(client)})
    assert r.status_code == 401
    assert 'aria-invalid="true"' in r.text and "Wrong e-mail or password." in r.text
    assert 'value="op@example.com"' in r.text
    assert client.get("/firmware", follow_redirects=False).status_code == 303


def test_forms_without_the_csrf_token_are_refused(client: TestClient, portal_user: tuple[str, str]) -> None:
    r = client.post("/login", data={"email": portal_user[0], "password": portal_user[1]})
    assert r.status_code == 403
    r = client.post("/login", data={"email": portal_user[0], "password": portal_user[1], "csrf_token": "forged"})
    assert r.status_code == 403
    assert client.get("/firmware", follow_redirects=False).status_code == 303


def test_sign_in_shows_the_firmware_and_sign_out_ends_it(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    image = firmware_bytes(5000, seed=3)
    admin.release("v1.2.3", bin=image)
    sign_in(client, *portal_user)
    page = client.get("/firmware")
    assert page.status_code == 200
    assert "v1.2.3" in page.text and "op@example.com (operator)" in page.text
    crc = admin.get("/api/v1/firmware").json()[0]["bin"]["crc32"]
    assert f"{crc:08X}" in page.text
    session_cookie = client.cookies.get("bota_ota_session")
    assert session_cookie
    r = client.post("/logout", data={"csrf_token": csrf(client, "/firmware")}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    assert client.get("/firmware", follow_redirects=False).status_code == 303


def test_static_assets_are_served_locally(client: TestClient) -> None:
    assert client.get("/static/htmx-2.0.11.min.js").status_code == 200
    assert client.get("/static/portal.css").status_code == 200
