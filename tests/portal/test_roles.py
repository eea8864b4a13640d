"""A viewer sees no control they may not use, on any page, and the server refuses the actions anyway."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient

PAGES = [
    "/",
    "/firmware",
    "/devices",
    "/devices/BP-R-1",
    "/devices/BP-R-1?tab=ota",
    "/devices/BP-R-1?tab=activity",
    "/devices/BP-R-2?tab=ota",
    "/devices/BP-R-1/ota-status",
    "/assignments",
    "/audit",
]
CONTROLS = {"Upload firmware", "Register device", "Assign", "Cancel", "Release", "Mark as draft", "Delete"}


@pytest.fixture
def fleet(admin: ApiClient) -> dict[str, str]:
    referenced = admin.release("v1.0.1", bin=b"\x01" * 64)
    draft = admin.release("v1.0.2", bin=b"\x02" * 64, extra={"draft": "true"})
    admin.device(device_id="BP-R-1")
    admin.device(device_id="BP-R-2")
    assignment = admin.assign("BP-R-1", referenced["id"]).json()
    return {"referenced": referenced["id"], "draft": draft["id"], "assignment": assignment["id"]}


def controls(page: Element) -> set[str]:
    """The action buttons and links of a page (besides signing out and filtering)."""
    texts = {b for b in page.buttons() if b not in ("Sign out", "Filter", "Copy", "Go")}  # Go: the pager's jump
    texts |= {a.text for a in page.find_all("a") if a.text in CONTROLS}
    return texts


def test_a_viewer_sees_no_controls(client: TestClient, sessions: Any, fleet: dict[str, str]) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        page = html(r)
        assert controls(page) == set(), path
        assert set(page.form_actions()) <= {"/logout", "/devices", "/assignments", "/audit"}, path  # GET filters
        assert not {"/firmware/upload", "/devices/new", "/users", "/tokens"} & set(page.links()), path


def test_an_operator_sees_them(client: TestClient, portal_user: tuple[str, str], fleet: dict[str, str]) -> None:
    """The other side of the viewer test: the same pages do carry the controls for an operator."""
    sign_in(client, *portal_user)
    seen = {path: controls(html(client.get(path))) for path in PAGES}
    assert seen["/firmware"] == {"Upload firmware", "Mark as draft", "Release", "Delete"}
    assert seen["/devices"] == {"Register device"}
    assert seen["/devices/BP-R-1?tab=ota"] == {"Assign", "Cancel"}
    assert seen["/devices/BP-R-2?tab=ota"] == {"Assign"}
    assert seen["/devices/BP-R-1/ota-status"] == {"Cancel"}
    firmware = html(client.get("/firmware"))
    # Delete only for the release no assignment references.
    assert "Delete" not in firmware.by_id(f"release-{fleet['referenced']}").buttons()
    assert "Delete" in firmware.by_id(f"release-{fleet['draft']}").buttons()
    assert not {"/users", "/tokens"} & set(html(client.get("/")).links())


def test_a_viewer_with_a_valid_csrf_token_is_refused_every_action(
    client: TestClient, admin: ApiClient, sessions: Any, fleet: dict[str, str]
) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    token = csrf(client, "/firmware")
    audit_before = admin.get("/api/v1/audit", params={"limit": 500}).json()
    for path, form in [
        (f"/firmware/{fleet['draft']}/released", {"released": "true"}),
        (f"/firmware/{fleet['draft']}/delete", {}),
        ("/devices/new", {"id": "BP-R-3", "model": "bota-pin"}),
        ("/devices/BP-R-2/assign", {"release_id": fleet["referenced"]}),
        (f"/assignments/{fleet['assignment']}/cancel", {}),
        ("/users", {"email": "me2@example.com", "password": "long-enough", "role": "admin"}),
        ("/tokens", {"name": "mine", "role": "admin"}),
    ]:
        r = client.post(path, data={**form, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 403, path
    for path in ("/firmware/upload", "/devices/new", "/users", "/tokens"):
        assert client.get(path).status_code == 403, path
    assert admin.get("/api/v1/audit", params={"limit": 500}).json() == audit_before
    assert admin.get(f"/api/v1/assignments/{fleet['assignment']}").json()["status"] == "pending"
