"""Every portal page renders for an admin with data on it, and the upload form works end to end."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bota_ota.accounts.service import create_user
from bota_ota.core.database import session_scope
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat


def test_every_page_renders(client: TestClient, admin: ApiClient, sessions) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        create_user(session, email="boss@example.com", password="boss-password", role="admin", actor="test")
    device = admin.device(device_id="BP-R-1")
    release = admin.release("v1.0.1", bin=b"\x03" * 500)
    heartbeat(client, device["token"], firmware_version="v1.0.0")
    admin.post("/api/v1/devices/BP-R-1/assignments", json={"release_id": release["id"]})
    sign_in(client, "boss@example.com", "boss-password")
    for path, marker in [
        ("/", "Dashboard"),
        ("/firmware", "v1.0.1"),
        ("/firmware/upload", "Upload firmware"),
        ("/devices", "BP-R-1"),
        ("/devices/new", "Register a device"),
        ("/devices/BP-R-1?tab=ota", "Assign"),
        ("/assignments?status=pending", "BP-R-1"),
        ("/audit", "device.register"),
        ("/users", "boss@example.com"),
        ("/tokens", "Create a token"),
    ]:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert marker in page.text, path


def test_upload_form_json_path(client: TestClient, admin: ApiClient, sessions) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        create_user(session, email="op@example.com", password="operator-pw", role="operator", actor="test")
    sign_in(client, "op@example.com", "operator-pw")
    token = csrf(client, "/firmware/upload")
    r = client.post(
        "/firmware/upload",
        data={"version": "v2.0.0", "model": "bota-pin"},
        files={"bin": ("fw.bin", b"\x01" * 100)},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert r.status_code == 201, r.text
    bad = client.post(
        "/firmware/upload",
        data={"version": "2.0", "model": "bota-pin"},
        files={"bin": ("fw.bin", b"\x01" * 100)},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "version"
    page = client.post(
        "/firmware/upload",
        data={"version": "2.0", "model": "bota-pin", "csrf_token": token},
        files={"bin": ("fw.bin", b"\x01" * 100)},
    )
    assert page.status_code == 422 and 'id="version-error"' in page.text


def test_the_plain_upload_form_keeps_what_was_typed_after_an_error(
    client: TestClient,
    admin: ApiClient,
    sessions,  # type: ignore[no-untyped-def]
) -> None:
    with session_scope(sessions) as session:
        create_user(session, email="op@example.com", password="operator-pw", role="operator", actor="test")
    sign_in(client, "op@example.com", "operator-pw")
    token = csrf(client, "/firmware/upload")
    page = client.post(
        "/firmware/upload",
        data={"version": "1.2", "model": "bota-note", "notes": "Better <mic> gain", "csrf_token": token},
        files={"bin": ("fw.bin", b"\x01" * 100)},
    )
    assert page.status_code == 422
    assert 'value="1.2"' in page.text
    assert '<option value="bota-note" selected>' in page.text
    assert "Better &lt;mic&gt; gain</textarea>" in page.text
