"""A tour of every main portal page with some data in it, for the whole-portal checks (accessibility with
axe-core, no sideways overflow on phones and tablets): one server per test module, seeded through the APIs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, ViewportSize

from tests.browser.support import ADMIN_EMAIL, Portal, sign_in
from tests.support.server import ServerProcess, server_env

DEVICES = ("BP-000101", "BP-000102", "BP-000103")
PHONE: ViewportSize = {"width": 390, "height": 844}
TABLET: ViewportSize = {"width": 820, "height": 1180}
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
SIGN_IN_PAGE = ("sign-in page", "/login")


@dataclass(frozen=True)
class Stop:
    name: str
    path: str
    status: int = 200


def seed(portal: Portal) -> list[Stop]:
    """A release and an older one, three devices that heartbeat, an assignment, a group, a rollout, a viewer;
    returns the pages to visit (signed in as the admin) with the status each answers with."""
    portal.upload_release("v1.0.0")
    release_id = portal.upload_release("v1.0.1", size=70_000)
    for device_id in DEVICES:
        token = portal.register_device(device_id, name=f"Studio {device_id[-1]}")
        portal.heartbeat(token, "v1.0.0", battery=81, network="wifi", rssi=-61)
    r = portal.api.post(f"/api/v1/devices/{DEVICES[0]}/assignments", json={"release_id": release_id})
    assert r.status_code == 201, r.text
    r = portal.api.post("/api/v1/groups", json={"name": "Studios", "filter": {"ids": list(DEVICES)}})
    assert r.status_code == 201, r.text
    group_id = r.json()["id"]
    r = portal.api.post(
        "/api/v1/rollouts",
        json={
            "name": "Spring update",
            "release_id": release_id,
            "target": {"filter": {"ids": list(DEVICES[1:])}},
            "stages": [50, 100],
        },
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    portal.create_user("viewer@example.com", "viewer")
    device = f"/devices/{DEVICES[0]}"
    return [
        Stop("dashboard", "/"),
        Stop("firmware", "/firmware"),
        Stop("upload", "/firmware/upload"),
        Stop("devices", "/devices"),
        Stop("device overview", device),
        Stop("device OTA tab", f"{device}?tab=ota"),
        Stop("device activity tab", f"{device}?tab=activity"),
        Stop("register", "/devices/new"),
        Stop("groups", "/groups"),
        Stop("group", f"/groups/{group_id}"),
        Stop("rollouts", "/rollouts"),
        Stop("rollout", f"/rollouts/{rollout_id}"),
        Stop("new rollout", "/rollouts/new"),
        Stop("assignments", "/assignments"),
        Stop("audit log", "/audit"),
        Stop("users", "/users"),
        Stop("API tokens", "/tokens"),
        Stop("error page", "/devices/NO-SUCH-DEVICE", status=404),
    ]


@contextmanager
def seeded_portal(base: Path) -> Iterator[tuple[Portal, list[Stop]]]:
    """A fresh ``bota-ota serve`` (SQLite in ``base``) with the tour's data."""
    server = ServerProcess(data_dir=base / "srv", env=server_env(None))
    portal = Portal.start(server)
    try:
        yield portal, seed(portal)
    finally:
        portal.close()
        server.stop()


def tour(
    context: BrowserContext,
    portal: Portal,
    stops: list[Stop],
    wrong: list[str],
    *,
    arriving: Callable[[str], None] = lambda name: None,
) -> Iterator[tuple[str, Page]]:
    """Visits the sign-in page signed out, then every stop signed in as the admin, in one browser context;
    yields (page name, page) once each page has loaded; ``arriving(name)`` is called before it is asked for.
    A page answering another status than expected is added to ``wrong`` (and still checked), so one broken
    page does not hide the others' findings."""
    page = context.new_page()
    visits = [Stop(*SIGN_IN_PAGE), None, *stops]
    for stop in visits:
        if stop is None:
            sign_in(page, ADMIN_EMAIL, portal.admin_password)
            continue
        arriving(stop.name)
        response = page.goto(stop.path)
        status = response.status if response is not None else None
        if status != stop.status:
            wrong.append(f"{stop.name} ({stop.path}) answered {status}, not {stop.status}")
        yield stop.name, page
