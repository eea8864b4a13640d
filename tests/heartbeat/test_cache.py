"""The heartbeat's per-instance cache and the device change feed that keeps it fresh (issue 6, part 2).

A routine heartbeat from a cached device touches no database; any change of the device or its
assignments, made by this instance or by another process on the same database, reaches the cache within
one feed poll, so a new assignment is still delivered at the next heartbeat.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from bota_ota.devices.changes import DeviceChange, FeedPosition, note_changed_devices, prune_changes, read_changes
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, literal_column, select
from sqlalchemy.exc import OperationalError

from bota_ota.app import create_app
from bota_ota.core.database import session_scope, utcnow
from bota_ota.core.settings import Settings
from bota_ota.devices.models import Device
from bota_ota.heartbeat.cache import DeviceCache, DeviceSnapshot
from bota_ota.heartbeat.entrance import MAX_BODY_BYTES
from bota_ota.heartbeat.rules import NOT_READ
from bota_ota.ota.models import Assignment
from tests.factories import ApiClient, assert_problem, heartbeat, make_token
from tests.ota.test_lean_heartbeat import Statements

URL = "/api/device/v1/heartbeat"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"telemetry_flush_interval_s": 600.0, "sweep_interval_s": 3600.0, "change_poll_interval_s": 0.05}
    )


def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _cache(app: Any) -> DeviceCache:
    cache: DeviceCache = app.state.heartbeat.cache
    _until(cache.usable, "the change feed's first read")
    return cache


def _settle(app: Any) -> None:
    """Let the feed reader see this instance's last commit too (it drops the device once more): a read
    that overlaps that drop is, rightly, not cached. Two more feed reads: the second began after the commit."""
    cache = _cache(app)
    target = cache.feeds + 2
    _until(lambda: cache.feeds >= target, "two feed reads")


def _known_device(admin: ApiClient, app: Any) -> dict[str, Any]:
    dev = admin.device()
    assert heartbeat(admin.client, dev["token"], firmware_version="v1.0.0").status_code == 200  # written at once
    _settle(app)
    return dev


def _release_id(admin: ApiClient) -> str:
    return str(admin.release(version="v1.0.1")["id"])


def test_a_cached_routine_heartbeat_runs_no_sql(admin: ApiClient, app: Any) -> None:
    cache = _cache(app)
    dev = _known_device(admin, app)
    statements = Statements(app.state.ctx.engine)
    r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0", battery=70)  # miss: one read, cached
    assert r.status_code == 200 and r.json()["ota"] is None
    assert statements.seen and statements.writes == []
    hits = cache.hits
    statements.clear()
    for battery in (71, 72, 73):
        r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0", battery=battery)
        assert r.json() == {"heartbeat_interval_s": 60, "ota": None, "ota_deferred": None}
    assert statements.seen == []
    assert cache.hits == hits + 3
    assert app.state.heartbeat.buffer.peek(dev["id"]).battery == 73  # the readings still go to the buffer


def test_an_assignment_made_here_is_delivered_at_the_next_heartbeat(admin: ApiClient, app: Any) -> None:
    cache = _cache(app)
    dev = _known_device(admin, app)
    heartbeat(admin.client, dev["token"])  # cached now
    assert len(cache) == 1
    assignment = admin.assign(dev["id"], _release_id(admin)).json()
    assert len(cache) == 0, "this instance's own commit drops the device at once"
    reply = heartbeat(admin.client, dev["token"]).json()
    assert reply["ota"]["assignment_id"] == assignment["id"]


def test_a_material_change_is_not_answered_from_the_cache(admin: ApiClient, app: Any) -> None:
    _cache(app)
    dev = _known_device(admin, app)
    heartbeat(admin.client, dev["token"])
    heartbeat(admin.client, dev["token"], firmware_version="v1.0.5", recording=True)
    got = admin.get(f"/api/v1/devices/{dev['id']}").json()
    assert (got["firmware_version"], got["recording"]) == ("v1.0.5", True)


def test_a_cached_delivered_assignment_gets_fresh_urls_without_sql(admin: ApiClient, app: Any) -> None:
    _cache(app)
    dev = _known_device(admin, app)
    assignment = admin.assign(dev["id"], _release_id(admin)).json()
    first = heartbeat(admin.client, dev["token"]).json()["ota"]  # delivered: a write
    assert first["assignment_id"] == assignment["id"]
    _settle(app)
    heartbeat(admin.client, dev["token"])  # a miss after the write: read and cached
    statements = Statements(app.state.ctx.engine)
    again = heartbeat(admin.client, dev["token"]).json()["ota"]
    assert statements.seen == []
    assert again["assignment_id"] == assignment["id"]
    assert (again["sha256"], again["size"]) == (first["sha256"], first["size"])
    assert admin.client.get(again["url"].replace("http://testserver", "")).status_code == 200


def test_a_rotated_token_stops_working_at_once(admin: ApiClient, app: Any) -> None:
    _cache(app)
    dev = _known_device(admin, app)
    heartbeat(admin.client, dev["token"])
    new_token = admin.post(f"/api/v1/devices/{dev['id']}/token").json()["token"]
    assert_problem(heartbeat(admin.client, dev["token"]), 401)
    assert heartbeat(admin.client, new_token).status_code == 200


@pytest.fixture
def second_instance(settings: Settings) -> Iterator[tuple[Any, TestClient]]:
    """Another server process's app on the same database (its own cache, its own feed reader)."""
    other = create_app(settings)
    with TestClient(other, base_url="http://testserver") as client:
        yield other, client


def test_a_change_made_by_another_instance_reaches_this_cache_within_a_poll(
    admin: ApiClient, app: Any, second_instance: tuple[Any, TestClient]
) -> None:
    other_app, other = second_instance
    other_cache = _cache(other_app)
    _cache(app)
    dev = _known_device(admin, app)
    _settle(other_app)
    assert heartbeat(other, dev["token"]).json()["ota"] is None
    assert heartbeat(other, dev["token"]).json()["ota"] is None
    assert len(other_cache) == 1
    assignment = admin.assign(dev["id"], _release_id(admin)).json()  # through the first instance
    _until(lambda: len(other_cache) == 0, "the other instance to drop the device")
    assert heartbeat(other, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]

    heartbeat(other, dev["token"], ota={"assignment_id": assignment["id"], "state": "downloading", "progress": 5})
    admin.post(f"/api/v1/assignments/{assignment['id']}/cancel")
    _until(lambda: len(other_cache) == 0, "the cancel to reach the other instance")
    assert heartbeat(other, dev["token"]).json()["ota"] is None


def test_the_cache_is_not_used_while_the_feed_is_not_read(admin: ApiClient, app: Any) -> None:
    cache = _cache(app)
    dev = _known_device(admin, app)
    heartbeat(admin.client, dev["token"])
    cache.stop()  # as if the feed reader had failed for longer than stale_after_s
    statements = Statements(app.state.ctx.engine)
    heartbeat(admin.client, dev["token"])
    assert statements.seen, "read from the database"


def test_no_cache_when_its_size_is_zero(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"device_cache_size": 0}))
    with TestClient(app, base_url="http://testserver") as client:
        admin = ApiClient(client, make_token(app.state.ctx.sessions, "admin"))
        dev = admin.device()
        for _ in range(4):
            assert heartbeat(client, dev["token"]).status_code == 200
        assert len(app.state.heartbeat.cache) == 0
        assignment = admin.assign(dev["id"], _release_id(admin)).json()
        assert heartbeat(client, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]


# ---- what the fast path refuses -------------------------------------------------------------------------


def test_the_fast_path_answers_bad_requests_with_problem_json(admin: ApiClient) -> None:
    dev = admin.device()
    auth = {"Authorization": f"Bearer {dev['token']}", "Content-Type": "application/json"}
    assert_problem(admin.client.post(URL, content=b"{not json", headers=auth), 422, "body")
    assert_problem(admin.client.post(URL, content=b"", headers=auth), 422, "body")
    too_full = {"firmware_version": "v1", "battery": 101}
    assert_problem(admin.client.post(URL, json=too_full, headers=auth), 422, "battery")
    assert_problem(
        admin.client.post(URL, json={"firmware_version": "v1", "ota": {"assignment_id": "x"}}, headers=auth),
        422,
        "ota.state",
    )
    big = b'{"firmware_version": "v1", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_problem(admin.client.post(URL, content=big, headers=auth), 413, "body")
    assert_problem(admin.client.post(URL, json={"firmware_version": "v1"}), 401)
    assert_problem(admin.client.post(URL, json={"firmware_version": "v1"}, headers={"Authorization": "Basic x"}), 401)
    assert admin.client.post(URL, json={"firmware_version": "v1"}, headers=auth).status_code == 200


def test_the_heartbeat_is_still_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][URL]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Heartbeat")
    # Other methods on the path still reach the router.
    assert client.get(URL).status_code == 405


# ---- the change feed ------------------------------------------------------------------------------------


def test_the_feed_records_committed_device_changes_only(app: Any, admin: ApiClient) -> None:
    engine = app.state.ctx.engine
    position = FeedPosition()
    assert read_changes(engine, position) == set()  # starts at the end
    first, second = admin.device(), admin.device()
    assert read_changes(engine, position) == {first["id"], second["id"]}
    assert read_changes(engine, position) == set()

    with pytest.raises(RuntimeError), session_scope(app.state.ctx.sessions) as session:
        session.get(Device, first["id"]).name = "renamed"  # type: ignore[union-attr]
        session.flush()
        raise RuntimeError("rolled back")
    assert read_changes(engine, position) == set()

    admin.assign(second["id"], _release_id(admin))
    assert read_changes(engine, position) == {second["id"]}


def test_pruning_keeps_numbering_going(app: Any, admin: ApiClient) -> None:
    engine = app.state.ctx.engine
    position = FeedPosition()
    read_changes(engine, position)
    first = admin.device()
    assert read_changes(engine, position) == {first["id"]}
    with session_scope(app.state.ctx.sessions) as session:
        assert prune_changes(session, now=utcnow() + timedelta(hours=1)) >= 1
        assert session.scalar(select(func.count()).select_from(DeviceChange)) == 0
    second = admin.device()
    assert read_changes(engine, position) == {second["id"]}, "a number is never handed out twice"


def test_feed_rows_that_commit_late_are_not_missed(app: Any, admin: ApiClient) -> None:
    """PostgreSQL numbers rows at insert time, not at commit: a transaction that wrote its feed row and
    commits late becomes visible after a younger row was read. The reader must still see it."""
    engine = app.state.ctx.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: rows commit in order")
    slow, fast = admin.device(), admin.device()
    position = FeedPosition()
    read_changes(engine, position)
    with engine.connect() as slow_conn:
        # What the commit hook writes, then a stall before COMMIT (a slow disk, a paused process).
        slow_conn.execute(
            insert(DeviceChange).values(
                device_id=slow["id"], at=utcnow(), xid=literal_column("pg_current_xact_id()::text::bigint")
            )
        )
        admin.post(f"/api/v1/devices/{fast['id']}/token")  # a younger transaction commits first
        assert read_changes(engine, position) == {fast["id"]}
        slow_conn.commit()
    assert read_changes(engine, position) == {slow["id"]}
    assert read_changes(engine, position) == set()


# ---- the cache's own rules ------------------------------------------------------------------------------


def _snapshot(device_id: str) -> DeviceSnapshot:
    return DeviceSnapshot(
        id=device_id,
        last_seen_at=None,
        firmware_version="v1",
        recording=False,
        ble_connected=False,
        assignment=None,
        bin=None,
    )


def test_a_read_that_raced_a_change_is_not_cached() -> None:
    cache = DeviceCache(max_entries=10)
    cache.fed(max_gap_s=60)
    generation = cache.begin_read()
    cache.drop({"dev-a"})  # the change arrived while the read was running
    assert not cache.put("tok-a", _snapshot("dev-a"), generation)
    assert cache.put("tok-b", _snapshot("dev-b"), generation), "other devices are fine"
    assert cache.put("tok-a", _snapshot("dev-a"), cache.begin_read())
    cache.clear()
    assert not cache.put("tok-c", _snapshot("dev-c"), generation), "a read from before a clear"


def test_the_cache_is_bounded_and_follows_token_changes() -> None:
    cache = DeviceCache(max_entries=2)
    cache.fed(max_gap_s=60)
    for n in range(3):
        cache.put(f"tok-{n}", _snapshot(f"dev-{n}"), cache.begin_read())
    assert len(cache) == 2 and cache.get("tok-0") is None
    cache.put("tok-new", _snapshot("dev-2"), cache.begin_read())  # dev-2 under a new token
    assert cache.get("tok-2") is None and cache.get("tok-new") is not None
    cache.drop({"dev-2"})
    assert cache.get("tok-new") is None


def test_the_cache_trusts_entries_only_while_fed() -> None:
    cache = DeviceCache(max_entries=10, stale_after_s=0.05)
    cache.put("tok", _snapshot("dev"), cache.begin_read())
    assert cache.get("tok") is None, "never fed"
    cache.fed(max_gap_s=60)
    assert len(cache) == 0, "the first feed read starts from an empty cache"
    cache.put("tok", _snapshot("dev"), cache.begin_read())
    assert cache.get("tok") is not None
    time.sleep(0.1)
    assert cache.get("tok") is None, "the feed has not been read for too long"
    cache.fed(max_gap_s=0.01)
    assert len(cache) == 0, "a gap longer than the feed keeps rows: start again"


def test_entries_expire_even_when_the_feed_never_names_them() -> None:
    """The safety net for changes made with SQL outside the application."""
    cache = DeviceCache(max_entries=10, max_age_s=0.05)
    cache.fed(max_gap_s=60)
    cache.put("tok", _snapshot("dev"), cache.begin_read())
    assert cache.get("tok") is not None
    time.sleep(0.1)
    cache.fed(max_gap_s=60)
    assert cache.get("tok") is None


def test_bulk_statements_name_their_devices_in_the_feed(app: Any, admin: ApiClient) -> None:
    engine = app.state.ctx.engine
    dev = admin.device()
    release_id = _release_id(admin)
    position = FeedPosition()
    read_changes(engine, position)
    with session_scope(app.state.ctx.sessions) as session:
        row = {"id": "bulk-1", "device_id": dev["id"], "release_id": release_id, "version": "v1.0.1"}
        session.execute(insert(Assignment), [row])
        note_changed_devices(session, [dev["id"]])
    assert read_changes(engine, position) == {dev["id"]}


def test_a_busy_inline_read_falls_back_to_a_worker_thread(
    admin: ApiClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = app.state.heartbeat.reader
    if reader is None:
        pytest.skip("the inline read is SQLite's")
    dev = admin.device()
    reader.close()

    def locked() -> None:
        raise OperationalError("SELECT …", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(reader, "_engine", SimpleNamespace(connect=locked))
    assert reader.read("whatever") is NOT_READ
    r = heartbeat(admin.client, dev["token"], battery=12)  # read in a thread instead
    assert r.status_code == 200 and r.json()["ota"] is None
    assert_problem(heartbeat(admin.client, "bota_dt_nobody"), 401)
