"""A held assignment (its rollout is paused) is never delivered over HTTP: no manifest, it stays pending, no
event. Released again, it is delivered at the next heartbeat. A delivered assignment that is held goes on.

``held`` has no API of its own yet (rollouts set it): these tests set it in the database, through the app's
own sessions (this instance's commit drops the device from its cache at once) or with plain SQL outside the
application, as another instance or worker would (the triggers report it; the tests wait for the cache to
drop the device, never for a fixed time).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.settings import Settings
from bota_ota.heartbeat.invalidation import SqliteEpochWatcher
from bota_ota.ota.models import Assignment
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, firmware_bytes, heartbeat
from tests.support.heartbeat_cache import listening_cache, outside_sql, settle, until
from tests.support.statements import Statements

NO_OTA = {"heartbeat_interval_s": 60, "ota": None, "ota_deferred": None, "ota_abort": None}

sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="SQLite's change counter")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"telemetry_flush_interval_s": 600.0, "sweep_interval_s": 3600.0})


@pytest.fixture
def setup(admin: ApiClient) -> dict[str, Any]:
    release = admin.release("v1.0.1", bin=firmware_bytes(10_000, seed=7))
    device = admin.device()
    r = admin.assign(device["id"], release["id"])
    assert r.status_code == 201, r.text
    return {"release": release, "device": device, "token": device["token"], "assignment": r.json()}


def _set_held(sessions: sessionmaker[Session], assignment_id: str, held: bool) -> None:
    """Through the app's own session factory, as a rollout's pause or resume in this instance would."""
    with sessions() as session:
        row = session.get(Assignment, assignment_id)
        assert row is not None
        row.held = held
        session.commit()


def _set_held_outside(app: Any, assignment_id: str, held: bool) -> None:
    """Plain SQL on a connection of the test's own: no hooks of this instance, only the triggers."""
    with outside_sql(app) as conn:
        conn.execute(f"UPDATE assignments SET held = {'TRUE' if held else 'FALSE'} WHERE id = '{assignment_id}'")
        conn.commit()


def _detail(admin: ApiClient, assignment_id: str) -> tuple[str, list[str]]:
    r = admin.get(f"/api/v1/assignments/{assignment_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    return body["status"], [e["kind"] for e in body["events"]]


def test_a_held_assignment_is_not_delivered_until_released(
    admin: ApiClient, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    assignment_id = setup["assignment"]["id"]
    _set_held(sessions, assignment_id, True)
    for _ in range(3):  # the first heartbeat (written at once) and routine ones alike
        r = heartbeat(admin.client, setup["token"])
        assert r.status_code == 200, r.text
        assert r.json() == NO_OTA, "no manifest, and not announced as deferred either"
    assert _detail(admin, assignment_id) == ("pending", ["created"])
    dev = admin.get(f"/api/v1/devices/{setup['device']['id']}").json()
    assert dev["last_seen_at"] is not None, "the heartbeat itself was taken"

    _set_held(sessions, assignment_id, False)
    manifest = heartbeat(admin.client, setup["token"]).json()["ota"]
    assert manifest is not None and manifest["assignment_id"] == assignment_id
    assert manifest["size"] == 10_000
    assert _detail(admin, assignment_id) == ("delivered", ["created", "delivered"])


def test_a_held_assignment_is_not_deferred_while_recording(
    admin: ApiClient, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    _set_held(sessions, setup["assignment"]["id"], True)
    assert heartbeat(admin.client, setup["token"], recording=True).json() == NO_OTA
    _set_held(sessions, setup["assignment"]["id"], False)
    assert heartbeat(admin.client, setup["token"], recording=True).json()["ota_deferred"] == "recording"
    assert _detail(admin, setup["assignment"]["id"]) == ("pending", ["created", "deferred"])


def test_a_held_assignment_still_applies_when_the_device_reports_its_version(
    admin: ApiClient, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    """Nothing is delivered: the device runs that version already (e.g. installed by other means)."""
    _set_held(sessions, setup["assignment"]["id"], True)
    assert heartbeat(admin.client, setup["token"], firmware_version="v1.0.1").json() == NO_OTA
    assert _detail(admin, setup["assignment"]["id"]) == ("applied", ["created", "applied"])


def test_a_delivered_assignment_that_is_held_goes_on(
    admin: ApiClient, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    """Only pending assignments are held; should a delivered one be, its download under way finishes."""
    assignment_id = setup["assignment"]["id"]
    assert heartbeat(admin.client, setup["token"]).json()["ota"]["assignment_id"] == assignment_id
    _set_held(sessions, assignment_id, True)
    again = heartbeat(admin.client, setup["token"]).json()["ota"]
    assert again is not None and again["assignment_id"] == assignment_id
    r = heartbeat(admin.client, setup["token"], ota={"assignment_id": assignment_id, "state": "downloading"})
    assert r.json()["ota"]["assignment_id"] == assignment_id
    assert heartbeat(admin.client, setup["token"], firmware_version="v1.0.1").json() == NO_OTA
    assert _detail(admin, assignment_id) == ("applied", ["created", "delivered", "progress", "applied"])


# ---- with the device in this instance's cache ---------------------------------------------------------------


def _cached_while_recording(admin: ApiClient, app: Any, setup: dict[str, Any]) -> None:
    """The device cached with its pending assignment, not delivered because it records."""
    assert heartbeat(admin.client, setup["token"], recording=True).json()["ota_deferred"] == "recording"  # written
    settle(app)
    assert heartbeat(admin.client, setup["token"], recording=True).json()["ota_deferred"] == "recording"  # cached
    assert app.state.heartbeat.cache.holds(setup["device"]["id"])


def test_an_assignment_held_by_this_instance_is_not_delivered_from_its_cache(
    admin: ApiClient, app: Any, sessions: sessionmaker[Session], setup: dict[str, Any]
) -> None:
    cache = listening_cache(app)
    _cached_while_recording(admin, app, setup)
    _set_held(sessions, setup["assignment"]["id"], True)
    assert not cache.holds(setup["device"]["id"]), "this instance's own commit drops the device at once"
    assert heartbeat(admin.client, setup["token"]).json() == NO_OTA
    assert _detail(admin, setup["assignment"]["id"]) == ("pending", ["created", "deferred"])


def test_an_assignment_held_elsewhere_is_not_delivered_from_the_cache_and_released_it_is(
    admin: ApiClient, app: Any, setup: dict[str, Any]
) -> None:
    cache = listening_cache(app)
    device_id, assignment_id = setup["device"]["id"], setup["assignment"]["id"]
    _cached_while_recording(admin, app, setup)

    _set_held_outside(app, assignment_id, True)
    until(lambda: not cache.holds(device_id), "the hold to reach the cache")
    assert heartbeat(admin.client, setup["token"]).json() == NO_OTA  # recording ended: written at once
    settle(app)
    assert heartbeat(admin.client, setup["token"]).json() == NO_OTA  # read again and cached, held
    assert cache.holds(device_id)
    statements = Statements(app.state.ctx.engine)
    assert heartbeat(admin.client, setup["token"]).json() == NO_OTA
    assert statements.seen == [], "a held assignment keeps the heartbeat routine: answered from the cache"
    assert _detail(admin, assignment_id) == ("pending", ["created", "deferred"])

    _set_held_outside(app, assignment_id, False)
    until(lambda: not cache.holds(device_id), "the release to reach the cache")
    manifest = heartbeat(admin.client, setup["token"]).json()["ota"]
    assert manifest is not None and manifest["assignment_id"] == assignment_id
    assert _detail(admin, assignment_id) == ("delivered", ["created", "deferred", "delivered"])


@pytest.fixture
def no_periodic_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite watcher checks only at start and at this instance's own writes (set before the app starts)."""
    monkeypatch.setattr(SqliteEpochWatcher, "CHECK_INTERVAL_S", 3600.0)


@sqlite_only
def test_a_stale_cache_entry_cannot_deliver_a_held_assignment(
    no_periodic_check: None, admin: ApiClient, app: Any, setup: dict[str, Any]
) -> None:
    """The cache only decides that a heartbeat is routine: a delivery planned from an entry that has not heard
    of the hold yet is planned again from the locked rows, which say held."""
    cache = listening_cache(app)
    device_id, assignment_id = setup["device"]["id"], setup["assignment"]["id"]
    _cached_while_recording(admin, app, setup)
    _set_held_outside(app, assignment_id, True)
    assert cache.holds(device_id), "no periodic check in this test: the entry still says not held"
    assert heartbeat(admin.client, setup["token"]).json() == NO_OTA  # recording ended: planned "deliver" first
    assert _detail(admin, assignment_id) == ("pending", ["created", "deferred"])
