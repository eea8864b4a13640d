"""Every state-changing portal route refuses a request without this session's CSRF token."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import bota_ota.portal
from bota_ota.core.settings import Settings
from tests.portal.pages import add_user, browser, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, files_in

# Every POST route of the portal, with a form that would succeed if it carried the right token.
ROUTES: dict[str, dict[str, str]] = {
    "/login": {"email": "someone@example.com", "password": "correct-horse"},
    "/logout": {},
    "/firmware/upload": {"version": "v9.9.9", "model": "bota-pin"},
    "/firmware/{release_id}/released": {"released": "false"},
    "/firmware/{release_id}/delete": {},
    "/devices/new": {"id": "BP-CSRF-NEW", "model": "bota-pin"},
    "/devices/{device_id}/assign": {"release_id": "{release_id}"},
    "/assignments/{assignment_id}/cancel": {},
    "/assignments/{assignment_id}/retry": {},
    "/users": {"email": "new@example.com", "password": "long-enough", "role": "admin"},
    "/users/{user_id}": {"role": "admin"},
    "/tokens": {"name": "sneaky", "role": "admin"},
    "/tokens/{token_id}/revoke": {},
    "/devices/{device_id}/tags": {"tags": "beta"},
    "/devices/{device_id}/name": {"name": "renamed"},
    "/devices/{device_id}/owner": {"owner": "someone@example.com"},
    "/devices/{device_id}/token": {},
    "/devices/{device_id}/decommission": {},
    "/devices/{device_id}/recommission": {},
    "/devices/import": {},
    "/devices/import/run": {"csv": "id,model\nBP-CSRF-IMPORT,bota-pin\n"},
    "/devices/import/tokens.csv": {"tokens": "BP-CSRF-1,secret"},
    "/groups/new": {"name": "sneaky group"},
    "/groups/{group_id}/edit": {"name": "renamed"},
    "/groups/{group_id}/delete": {},
    "/rollouts/new": {"name": "sneaky", "release_id": "{release_id}", "target_kind": "filter", "stages": "50, 100"},
    "/rollouts/{rollout_id}/{action}": {},
}


def test_the_list_covers_every_portal_post_route() -> None:
    posts = set()
    for module in pkgutil.iter_modules(bota_ota.portal.__path__, "bota_ota.portal."):
        router = getattr(importlib.import_module(module.name), "router", None)
        if isinstance(router, APIRouter):
            posts |= {r.path for r in router.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())}
    assert posts == set(ROUTES)


@dataclass
class World:
    ids: dict[str, str]
    boss_email: str


@pytest.fixture
def world(client: TestClient, admin: ApiClient, sessions: Any) -> World:
    """An admin signed in on ``client``, and one of everything the routes act on."""
    add_user(sessions, "boss@example.com", "admin")
    user_id = add_user(sessions, "someone@example.com", "viewer")
    unreferenced = admin.release("v1.0.0", bin=b"\x01" * 64)
    referenced = admin.release("v1.0.1", bin=b"\x02" * 64)
    admin.device(device_id="BP-CSRF-1")
    admin.device(device_id="BP-CSRF-2")
    assignment = admin.assign("BP-CSRF-2", referenced["id"]).json()
    token_id = admin.get("/api/v1/tokens").json()[0]["id"]
    admin.device(device_id="BP-CSRF-3")
    group = admin.post("/api/v1/groups", json={"name": "csrf", "filter": {"tags": ["csrf"]}}).json()
    rollout = admin.post(
        "/api/v1/rollouts",
        json={
            "name": "csrf",
            "release_id": referenced["id"],
            "target": {"filter": {"ids": ["BP-CSRF-3"]}},
            # One stage: nothing is left for the engine's background tick to start while the test compares.
            "stages": [100],
        },
    ).json()
    sign_in(client, "boss@example.com", "correct-horse")
    ids = {
        "release_id": unreferenced["id"],
        "device_id": "BP-CSRF-1",
        "assignment_id": assignment["id"],
        "user_id": user_id,
        "token_id": token_id,
        "group_id": group["id"],
        "rollout_id": rollout["id"],
        "action": "pause",
    }
    return World(ids=ids, boss_email="boss@example.com")


def snapshot(admin: ApiClient, settings: Settings) -> dict[str, Any]:
    return {
        "audit": admin.get("/api/v1/audit", params={"limit": 500}).json(),
        "releases": admin.get("/api/v1/firmware").json(),
        "devices": [(d["id"], d["active_assignment"]) for d in admin.get("/api/v1/devices").json()],
        "users": admin.get("/api/v1/users").json(),
        "tokens": admin.get("/api/v1/tokens").json(),
        "groups": admin.get("/api/v1/groups").json(),
        "rollouts": admin.get("/api/v1/rollouts").json(),
        "blobs": files_in(settings.blob_dir),
    }


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_post_without_the_right_token_is_refused(
    app: FastAPI, client: TestClient, admin: ApiClient, settings: Settings, world: World, route: str
) -> None:
    path = route.format(**world.ids)
    form = {k: v.format(**world.ids) for k, v in ROUTES[route].items()}
    files = {"bin": ("fw.bin", b"\x03" * 64)} if route == "/firmware/upload" else None
    before = snapshot(admin, settings)
    for how, token in [
        ("missing", None),
        ("forged", "x" * 43),
        ("another session's", csrf(browser(app))),  # valid, but bound to someone else's session
    ]:
        data = form if token is None else {**form, "csrf_token": token}
        r = client.post(path, data=data, files=files, follow_redirects=False)
        assert r.status_code == 403, (how, r.text)
        assert snapshot(admin, settings) == before, how
        # Still signed in, as the same person.
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 200 and f"{world.boss_email} (admin)" in html(page).text, how


def test_the_right_token_is_accepted(client: TestClient, admin: ApiClient, world: World) -> None:
    """The other side of the tests above: the same requests with the token go through."""
    token = csrf(client, "/")
    r = client.post(f"/firmware/{world.ids['release_id']}/released", data={"released": "false", "csrf_token": token})
    assert r.status_code == 200
    assert admin.get(f"/api/v1/firmware/{world.ids['release_id']}").json()["released"] is False
    # HTMX sends it as a header instead.
    r = client.post(
        f"/assignments/{world.ids['assignment_id']}/cancel", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert r.status_code == 303
    assert admin.get(f"/api/v1/assignments/{world.ids['assignment_id']}").json()["status"] == "cancelled"


def test_signing_in_and_out_replaces_the_token(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    """A new session on sign-in: a token planted before (session fixation) is worth nothing after."""
    before = csrf(client)
    sign_in(client, *portal_user)
    during = csrf(client, "/")
    assert during != before
    r = client.post("/devices/new", data={"id": "BP-FIX-1", "model": "bota-pin", "csrf_token": before})
    assert r.status_code == 403 and admin.get("/api/v1/devices/BP-FIX-1").status_code == 404
    assert client.post("/logout", data={"csrf_token": during}, follow_redirects=False).status_code == 303
    sign_in(client, *portal_user)
    r = client.post("/devices/new", data={"id": "BP-FIX-1", "model": "bota-pin", "csrf_token": during})
    assert r.status_code == 403 and admin.get("/api/v1/devices/BP-FIX-1").status_code == 404
