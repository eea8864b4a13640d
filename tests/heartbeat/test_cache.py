"""The heartbeat's per-instance device cache and what keeps it honest.

A routine heartbeat from a cached device touches no database. Every committed change of what the cache
holds reaches it: this instance's own at once, anyone else's — another instance, a CLI command, plain SQL
outside the application — through the database's triggers (PostgreSQL: NOTIFY to each process's LISTEN
connection; SQLite: a change counter each process checks ten times a second). So a new assignment is
delivered at the next heartbeat, and a cancelled one is no longer offered.

Tests wait for events (a notification heard, a check made, the device gone from the cache), never for a
fixed time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError, OperationalError

from bota_ota.app import create_app
from bota_ota.core.database import note_changed_devices, session_scope, utcnow
from bota_ota.core.settings import Settings
from bota_ota.heartbeat.cache import DeviceCache, DeviceSnapshot
from bota_ota.heartbeat.entrance import MAX_BODY_BYTES
from bota_ota.heartbeat.invalidation import (
    CHANNEL,
    PgChangeListener,
    SqliteEpochWatcher,
)
from bota_ota.heartbeat.read import NOT_READ
from bota_ota.ota.models import Assignment
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, assert_problem, heartbeat, make_token
from tests.support.heartbeat_cache import listening_cache, outside_sql, settle, until
from tests.support.statements import Statements

URL = "/api/device/v1/heartbeat"
# The promise: a change made anywhere reaches every instance's cache within a second.
PROMISED_S = 1.0

postgresql_only = pytest.mark.skipif(not PG_URL, reason="PostgreSQL's LISTEN connection")
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="SQLite's change counter")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"telemetry_flush_interval_s": 600.0, "sweep_interval_s": 3600.0})


def _known_device(admin: ApiClient, app: Any) -> dict[str, Any]:
    dev = admin.device()
    assert heartbeat(admin.client, dev["token"], firmware_version="v1.0.0").status_code == 200  # written at once
    settle(app)
    return dev


def _cached_device(admin: ApiClient, app: Any) -> dict[str, Any]:
    dev = _known_device(admin, app)
    assert heartbeat(admin.client, dev["token"]).status_code == 200  # a miss: read and cached
    assert app.state.heartbeat.cache.holds(dev["id"])
    return dev


def _release_id(admin: ApiClient, version: str = "v1.0.1") -> str:
    return str(admin.release(version=version)["id"])


def _delivered(admin: ApiClient, app: Any, dev: dict[str, Any]) -> dict[str, Any]:
    """An assignment delivered to ``dev`` and the device cached with it (its heartbeats get fresh URLs)."""
    assignment = dict(admin.assign(dev["id"], _release_id(admin)).json())
    assert heartbeat(admin.client, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]  # a write
    settle(app)
    assert heartbeat(admin.client, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]  # cached
    assert app.state.heartbeat.cache.holds(dev["id"])
    return assignment


# ---- what the cache saves -------------------------------------------------------------------------------


def test_a_cached_routine_heartbeat_runs_no_sql(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = _known_device(admin, app)
    statements = Statements(app.state.ctx.engine)
    r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0", battery=70)  # miss: one read, cached
    assert r.status_code == 200 and r.json()["ota"] is None
    assert statements.seen and statements.writes == []
    hits = cache.hits
    statements.clear()
    for battery in (71, 72, 73):
        r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0", battery=battery)
        assert r.json() == {"heartbeat_interval_s": 60, "ota": None, "ota_deferred": None, "ota_abort": None}
    assert statements.seen == []
    assert cache.hits == hits + 3
    assert app.state.heartbeat.buffer.peek(dev["id"]).battery == 73  # the readings still go to the buffer


def test_an_assignment_made_here_is_delivered_at_the_next_heartbeat(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    assignment = admin.assign(dev["id"], _release_id(admin)).json()
    assert not cache.holds(dev["id"]), "this instance's own commit drops the device at once"
    reply = heartbeat(admin.client, dev["token"]).json()
    assert reply["ota"]["assignment_id"] == assignment["id"]


def test_a_material_change_is_not_answered_from_the_cache(admin: ApiClient, app: Any) -> None:
    listening_cache(app)
    dev = _cached_device(admin, app)
    heartbeat(admin.client, dev["token"], firmware_version="v1.0.5", recording=True)
    got = admin.get(f"/api/v1/devices/{dev['id']}").json()
    assert (got["firmware_version"], got["recording"]) == ("v1.0.5", True)


def test_a_cached_delivered_assignment_gets_fresh_urls_without_sql(admin: ApiClient, app: Any) -> None:
    listening_cache(app)
    dev = _known_device(admin, app)
    assignment = admin.assign(dev["id"], _release_id(admin)).json()
    first = heartbeat(admin.client, dev["token"]).json()["ota"]  # delivered: a write
    assert first["assignment_id"] == assignment["id"]
    settle(app)
    heartbeat(admin.client, dev["token"])  # a miss after the write: read and cached
    statements = Statements(app.state.ctx.engine)
    again = heartbeat(admin.client, dev["token"]).json()["ota"]
    assert statements.seen == []
    assert again["assignment_id"] == assignment["id"]
    assert (again["sha256"], again["size"]) == (first["sha256"], first["size"])
    assert admin.client.get(again["url"].replace("http://testserver", "")).status_code == 200


def test_a_rotated_token_stops_working_at_once(admin: ApiClient, app: Any) -> None:
    listening_cache(app)
    dev = _cached_device(admin, app)
    new_token = admin.post(f"/api/v1/devices/{dev['id']}/token").json()["token"]
    assert_problem(heartbeat(admin.client, dev["token"]), 401)
    assert heartbeat(admin.client, new_token).status_code == 200


def test_this_instances_own_writes_keep_the_rest_of_the_cache(admin: ApiClient, app: Any) -> None:
    """Own commits drop their own devices, and are not mistaken for anyone else's (on SQLite, where the
    counter does not say which device, that would empty the whole cache)."""
    cache = listening_cache(app)
    bystander, changed = _cached_device(admin, app), _cached_device(admin, app)
    admin.assign(changed["id"], _release_id(admin))
    admin.post(f"/api/v1/devices/{changed['id']}/token")
    settle(app)
    assert not cache.holds(changed["id"])
    assert cache.holds(bystander["id"])
    statements = Statements(app.state.ctx.engine)
    assert heartbeat(admin.client, bystander["token"]).json()["ota"] is None
    assert statements.seen == []


def test_bulk_statements_name_their_devices(admin: ApiClient, app: Any) -> None:
    """A Core statement no flush sees names its devices; this instance drops them at its COMMIT."""
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    release_id = _release_id(admin)
    with session_scope(app.state.ctx.sessions) as session:
        row = {"id": uuid.uuid4().hex, "device_id": dev["id"], "release_id": release_id, "version": "v1.0.1"}
        session.execute(insert(Assignment), [{**row, "created_at": utcnow(), "delivery_count": 0}])
        note_changed_devices(session, [dev["id"]])
    assert not cache.holds(dev["id"])
    assert heartbeat(admin.client, dev["token"]).json()["ota"]["assignment_id"] == row["id"]


def test_the_cache_is_not_used_while_invalidation_is_not_listening(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    cache.distrust()  # what a lost LISTEN connection or an unreadable counter does
    assert not cache.usable() and len(cache) == 0
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


# ---- changes made elsewhere -----------------------------------------------------------------------------


def test_a_change_made_with_plain_sql_outside_the_application_reaches_the_cache(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    bystander = _cached_device(admin, app)
    dev = _known_device(admin, app)
    assignment = _delivered(admin, app, dev)
    with outside_sql(app) as conn:
        conn.execute(f"UPDATE assignments SET status = 'cancelled' WHERE id = '{assignment['id']}'")
        conn.commit()
        committed = time.monotonic()
    until(lambda: not cache.holds(dev["id"]), "the outside change to reach the cache", timeout_s=10)
    took = time.monotonic() - committed
    postgresql = app.state.ctx.engine.dialect.name == "postgresql"
    # PostgreSQL: NOTIFY is event-driven (about a millisecond), so the promise itself. SQLite: by design at
    # most one check interval (0.1 s); ten times that as margin for a loaded machine.
    bound = PROMISED_S if postgresql else 10 * SqliteEpochWatcher.CHECK_INTERVAL_S
    assert took <= bound, f"the change took {took:.3f} s to reach the cache"
    assert heartbeat(admin.client, dev["token"]).json()["ota"] is None
    if postgresql:
        assert cache.holds(bystander["id"]), "NOTIFY names the device: the others stay cached"


@pytest.fixture
def second_instance(settings: Settings) -> Iterator[tuple[Any, TestClient]]:
    """Another server process's app on the same database (its own cache, its own invalidation)."""
    other = create_app(settings)
    with TestClient(other, base_url="http://testserver") as client:
        yield other, client


def test_a_change_made_by_another_instance_reaches_this_cache(
    admin: ApiClient, app: Any, second_instance: tuple[Any, TestClient]
) -> None:
    other_app, other = second_instance
    other_cache = listening_cache(other_app)
    listening_cache(app)
    dev = _known_device(admin, app)
    settle(other_app)
    assert heartbeat(other, dev["token"]).json()["ota"] is None
    assert heartbeat(other, dev["token"]).json()["ota"] is None
    assert other_cache.holds(dev["id"])
    assignment = admin.assign(dev["id"], _release_id(admin)).json()  # through the first instance
    until(lambda: not other_cache.holds(dev["id"]), "the other instance to drop the device")
    assert heartbeat(other, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]

    heartbeat(other, dev["token"], ota={"assignment_id": assignment["id"], "state": "downloading", "progress": 5})
    settle(other_app)
    heartbeat(other, dev["token"], ota={"assignment_id": assignment["id"], "state": "downloading", "progress": 6})
    assert other_cache.holds(dev["id"])
    admin.post(f"/api/v1/assignments/{assignment['id']}/cancel")
    until(lambda: not other_cache.holds(dev["id"]), "the cancel to reach the other instance")
    assert heartbeat(other, dev["token"]).json()["ota"] is None


def _sql_time(app: Any, at: datetime) -> str:
    """A time as the app's column type stores it (SQLite: SQLAlchemy's text format, in UTC)."""
    if app.state.ctx.engine.dialect.name == "postgresql":
        return at.isoformat()
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _epoch(app: Any) -> int:
    with outside_sql(app) as conn:
        return int(conn.execute("SELECT n FROM cache_epoch").fetchone()[0])


@contextlib.contextmanager
def _notifications(app: Any) -> Iterator[Callable[[], list[str]]]:
    """PostgreSQL: listen as another instance would; the callable returns every payload heard until a
    marker sent now (notifications arrive in commit order, so nothing committed earlier is missed)."""
    with outside_sql(app) as listen:
        listen.autocommit = True
        listen.execute(f"LISTEN {CHANNEL}")

        def heard() -> list[str]:
            marker = f"marker-{uuid.uuid4().hex}"
            with outside_sql(app) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, marker))
                conn.commit()
            payloads = []
            for notify in listen.notifies(timeout=10):
                if notify.payload == marker:
                    return payloads
                if not notify.payload.startswith("marker-"):  # settle's
                    payloads.append(notify.payload)
            raise AssertionError("the marker notification was not heard")

        yield heard


def test_the_write_behind_flush_and_progress_only_updates_report_nothing(admin: ApiClient, app: Any) -> None:
    """The flush writes last-seen times, readings and progress percentages of thousands of devices every
    few seconds; if that reported a change, every cache would be emptied as fast as it fills."""
    cache = listening_cache(app)
    dev = _known_device(admin, app)
    assignment = _delivered(admin, app, dev)
    report = {"assignment_id": assignment["id"], "state": "downloading"}
    heartbeat(admin.client, dev["token"], ota={**report, "progress": 10})  # a change of state: written at once
    settle(app)
    heartbeat(admin.client, dev["token"], ota={**report, "progress": 20}, battery=50)  # cached, percent only
    assert cache.holds(dev["id"])
    postgresql = app.state.ctx.engine.dialect.name == "postgresql"
    with contextlib.ExitStack() as stack:
        heard = stack.enter_context(_notifications(app)) if postgresql else None
        before = None if postgresql else _epoch(app)
        assert app.state.heartbeat.buffer.peek(dev["id"]).ota == (assignment["id"], "downloading", 20)
        assert admin.client.portal.call(app.state.heartbeat.flush) == 1  # type: ignore[union-attr]
        later = _sql_time(app, utcnow() + timedelta(seconds=1))
        with outside_sql(app) as conn:  # and the same columns changed by hand
            conn.execute(
                f"UPDATE assignments SET progress = 30, progress_at = '{later}' WHERE id = '{assignment['id']}'"
            )
            conn.execute(
                f"UPDATE devices SET last_seen_at = '{later}', battery = 5, network = 'cellular', rssi = -90 "
                f"WHERE id = '{dev['id']}'"
            )
            conn.commit()
        if heard is not None:
            assert heard() == []
        else:
            assert _epoch(app) == before
        settle(app)
        assert cache.holds(dev["id"]), "the cache stays warm"

        with outside_sql(app) as conn:  # the control: a column the cache holds
            conn.execute(f"UPDATE assignments SET ota_state = 'verifying' WHERE id = '{assignment['id']}'")
            conn.commit()
        if heard is not None:
            assert heard() == [dev["id"]]
        else:
            assert _epoch(app) == before + 1
        until(lambda: not cache.holds(dev["id"]), "the change to reach the cache")


@postgresql_only
def test_a_truncate_empties_every_cache(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    with outside_sql(app) as conn:
        conn.execute("TRUNCATE assignments CASCADE")
        conn.commit()
    until(lambda: not cache.holds(dev["id"]), "the TRUNCATE to reach the cache")


# ---- PostgreSQL: the LISTEN connection ----------------------------------------------------------------


def _terminate(app: Any, pid: int) -> None:
    with outside_sql(app) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        conn.commit()


@postgresql_only
def test_a_killed_listen_connection_distrusts_the_cache_and_reconnects(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    listener: PgChangeListener = app.state.heartbeat.listener
    dev = _cached_device(admin, app)
    assert listener.backend_pid is not None
    old_pid, connects = listener.backend_pid, listener.connects
    distrusted = threading.Event()
    distrust = cache.distrust

    def spy() -> None:
        distrust()
        distrusted.set()

    cache.distrust = spy  # type: ignore[method-assign]
    try:
        _terminate(app, old_pid)
        assert distrusted.wait(10), "the lost connection did not distrust the cache"
    finally:
        del cache.distrust
    assert not cache.holds(dev["id"]), "emptied: a change may have been missed meanwhile"
    until(lambda: listener.connects > connects and cache.usable(), "the listener to reconnect")
    assert listener.backend_pid not in (None, old_pid)

    # Listening again: a change is delivered as before.
    assignment = _delivered(admin, app, dev)
    with outside_sql(app) as conn:
        conn.execute(f"UPDATE assignments SET status = 'cancelled' WHERE id = '{assignment['id']}'")
        conn.commit()
    until(lambda: not cache.holds(dev["id"]), "the change after the reconnect to reach the cache")
    assert heartbeat(admin.client, dev["token"]).json()["ota"] is None


@postgresql_only
def test_an_outage_is_logged_once_and_retried_with_backoff(
    admin: ApiClient, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = listening_cache(app)
    listener: PgChangeListener = app.state.heartbeat.listener
    conninfo, connects = listener.conninfo, listener.connects
    caplog.set_level(logging.INFO, logger="bota_ota.heartbeat.invalidation")
    listener.conninfo = "host=127.0.0.1 port=1 connect_timeout=2"  # the database is gone: refused
    assert listener.backend_pid is not None
    started = time.monotonic()
    _terminate(app, listener.backend_pid)
    until(lambda: listener.failures >= 3, "the lost connection and two failed reconnects")
    # Attempts 0.5 s and then 1 s apart: not a tight loop (the next is 2 s later).
    assert time.monotonic() - started >= 1.5
    assert not cache.usable()
    listener.conninfo = conninfo
    until(lambda: listener.connects > connects and cache.usable(), "the listener to reconnect")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "bota_ota.heartbeat.invalidation"]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO], messages
    assert "listening again" in messages[-1][1]


# ---- SQLite: the change counter --------------------------------------------------------------------------


@pytest.fixture
def no_periodic_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite watcher checks only at start and at this instance's own writes (set before the app starts)."""
    monkeypatch.setattr(SqliteEpochWatcher, "CHECK_INTERVAL_S", 3600.0)


@sqlite_only
def test_sqlite_a_write_of_ours_notices_a_change_made_by_someone_else_first(
    no_periodic_check: None, admin: ApiClient, app: Any
) -> None:
    """Right after BEGIN IMMEDIATE nobody else can change the counter: if it moved since we last saw it,
    someone else did it, and our own commit must not make that look like ours."""
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    with outside_sql(app) as conn:
        conn.execute(f"UPDATE devices SET recording = 1 WHERE id = '{dev['id']}'")
        conn.commit()
    assert cache.holds(dev["id"]), "no periodic check in this test"
    admin.device()  # any write of this instance
    assert not cache.holds(dev["id"])
    assert heartbeat(admin.client, dev["token"], recording=True).json()["ota"] is None


@sqlite_only
def test_sqlite_a_failed_commit_of_ours_is_not_taken_for_someone_elses_change(admin: ApiClient, app: Any) -> None:
    cache = listening_cache(app)
    dev = _cached_device(admin, app)
    watcher: SqliteEpochWatcher = app.state.heartbeat.listener
    before = _epoch(app)
    with pytest.raises(IntegrityError), session_scope(app.state.ctx.sessions) as session:
        session.execute(text("PRAGMA defer_foreign_keys = ON"))  # the COMMIT itself fails
        session.execute(
            text(
                "INSERT INTO assignments (id, device_id, release_id, version, status, created_at, delivery_count) "
                "VALUES ('bad', 'no-such-device', 'no-such-release', 'v9', 'cancelled', '2026-01-01', 0)"
            )
        )  # the counter rises by one inside this transaction, then falls back with the rollback
    assert _epoch(app) == before
    checks = watcher.checks
    until(lambda: watcher.checks >= checks + 2, "two checks")
    assert cache.holds(dev["id"])
    with outside_sql(app) as conn:  # someone else raises the counter by exactly as much
        conn.execute(f"UPDATE devices SET recording = 1 WHERE id = '{dev['id']}'")
        conn.commit()
    until(lambda: not cache.holds(dev["id"]), "someone else's change to reach the cache")


@sqlite_only
def test_sqlite_an_unreadable_counter_turns_the_cache_off_until_it_is_back(
    admin: ApiClient, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = listening_cache(app)
    watcher: SqliteEpochWatcher = app.state.heartbeat.listener
    dev = _cached_device(admin, app)
    caplog.set_level(logging.INFO, logger="bota_ota.heartbeat.invalidation")
    with outside_sql(app) as conn:
        conn.execute("ALTER TABLE cache_epoch RENAME TO cache_epoch_away")
        conn.commit()
    until(lambda: not cache.usable(), "the cache to be distrusted")
    assert not cache.holds(dev["id"])
    checks = watcher.checks
    with outside_sql(app) as conn:
        conn.execute("ALTER TABLE cache_epoch_away RENAME TO cache_epoch")
        conn.commit()
    until(lambda: cache.usable() and watcher.checks > checks, "the cache to be trusted again")
    messages = [r.levelno for r in caplog.records if r.name == "bota_ota.heartbeat.invalidation"]
    assert messages == [logging.WARNING, logging.INFO], "once per outage, not at every check"


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
    cache.trust()
    generation = cache.begin_read()
    cache.drop({"dev-a"})  # the change arrived while the read was running
    assert not cache.put("tok-a", _snapshot("dev-a"), generation)
    assert cache.put("tok-b", _snapshot("dev-b"), generation), "other devices are fine"
    assert cache.put("tok-a", _snapshot("dev-a"), cache.begin_read())
    cache.clear()
    assert not cache.put("tok-c", _snapshot("dev-c"), generation), "a read from before a clear"


def test_the_cache_is_bounded_and_follows_token_changes() -> None:
    cache = DeviceCache(max_entries=2)
    cache.trust()
    for n in range(3):
        cache.put(f"tok-{n}", _snapshot(f"dev-{n}"), cache.begin_read())
    assert len(cache) == 2 and cache.get("tok-0") is None
    cache.put("tok-new", _snapshot("dev-2"), cache.begin_read())  # dev-2 under a new token
    assert cache.get("tok-2") is None and cache.get("tok-new") is not None
    cache.drop({"dev-2"})
    assert cache.get("tok-new") is None and not cache.holds("dev-2")


def test_entries_are_used_only_while_trusted() -> None:
    cache = DeviceCache(max_entries=10)
    generation = cache.begin_read()
    cache.put("tok", _snapshot("dev"), generation)
    assert cache.get("tok") is None, "not trusted yet"
    cache.trust()
    assert len(cache) == 0, "trust starts from an empty cache"
    assert not cache.put("tok", _snapshot("dev"), generation), "a read from before trust"
    cache.put("tok", _snapshot("dev"), cache.begin_read())
    assert cache.get("tok") is not None
    cache.distrust()
    assert cache.get("tok") is None and len(cache) == 0
