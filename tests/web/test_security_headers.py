"""Security headers: a strict CSP on the portal, no framing or sniffing anywhere, no caching of what shows a
secret, HSTS behind TLS, and API docs served from installed files."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bota_ota.app import create_app
from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient


def test_portal_pages_get_a_strict_csp_and_cannot_be_framed(client: TestClient) -> None:
    r = client.get("/login")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in r.headers
    # No inline script or style in the page itself: the CSP would block them.
    assert "<script>" not in r.text and " style=" not in r.text


def test_a_reply_that_shows_a_secret_is_never_stored(admin: ApiClient) -> None:
    r = admin.post("/api/v1/devices", json={"id": "BP-000777", "model": "bota-pin"})
    assert r.status_code == 201 and r.json()["token"]
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    rotated = admin.post("/api/v1/devices/BP-000777/token")
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"


def test_static_files_may_be_cached_and_still_are_not_sniffed(client: TestClient) -> None:
    r = client.get("/static/portal.css")
    assert r.status_code == 200
    assert "cache-control" not in r.headers or "no-store" not in r.headers["cache-control"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_hsts_when_the_cookie_is_https_only(settings: Settings) -> None:
    secure = settings.model_copy(update={"secure_cookies": True})
    with TestClient(create_app(secure)) as client:
        r = client.get("/login")
    assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_api_docs_load_from_installed_files_without_inline_script(client: TestClient) -> None:
    for page, asset in (("/docs", "/docs/static/swagger-ui-bundle.js"), ("/redoc", "/docs/static/redoc.standalone.js")):
        r = client.get(page)
        assert r.status_code == 200
        assert "cdn" not in r.text.lower() and "https://" not in r.text
        assert "<script>" not in r.text
        assert f'src="{asset}"' in r.text
        assert "script-src 'self';" in r.headers["content-security-policy"]
        js = client.get(asset)
        assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs/own/swagger-init.js").status_code == 200
