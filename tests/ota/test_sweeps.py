"""The periodic sweeps every instance runs: the stalled-delivery timeout and the BLE-mode timeout.

Each must change a row once, with one event, however many instances sweep at the same moment: on
PostgreSQL they take rows with ``FOR UPDATE SKIP LOCKED``; the concurrency tests below need it.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import session_scope
from bota_ota.core.settings import Settings
from bota_ota.devices.models import Device, DeviceEvent
from bota_ota.mobile.sweeps import end_silent_ble_modes
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import Assignment, AssignmentEvent
from bota_ota.ota.sweeps import fail_stalled_deliveries
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, heartbeat

DAY = 24 * 3600
needs_postgres = pytest.mark.skipif(not PG_URL, reason="SKIP LOCKED concurrency is tested on PostgreSQL")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The app's own sweeper stays out of the way: the tests run the sweeps themselves.
    return settings.model_copy(update={"sweep_interval_s": 3600.0})


def _now() -> datetime:
    return datetime.now(UTC)


def _delivered(admin: ApiClient, sessions: sessionmaker[Session], *, idle_s: float, count: int = 1) -> list[str]:
    """Assignments delivered over HTTP, whose last activity lies ``idle_s`` in the past."""
    release = admin.release(f"v9.{count}.{int(idle_s)}")
    ids = []
    for _ in range(count):
        dev = admin.device()
        assignment = admin.assign(dev["id"], release["id"]).json()
        assert heartbeat(admin.client, dev["token"]).json()["ota"]["assignment_id"] == assignment["id"]
        ids.append(assignment["id"])
    with session_scope(sessions) as session:
        session.execute(
            update(Assignment)
            .where(Assignment.id.in_(ids))
            .values(delivered_at=_now() - timedelta(seconds=idle_s), created_at=_now() - timedelta(seconds=idle_s))
        )
    return ids


def _events(sessions: sessionmaker[Session], assignment_ids: list[str]) -> Counter[tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(
            select(AssignmentEvent.assignment_id, AssignmentEvent.kind).where(
                AssignmentEvent.assignment_id.in_(assignment_ids)
            )
        ).all()
    return Counter((a, k) for a, k in rows)


def _sweep_deliveries(sessions: sessionmaker[Session], timeout_s: int = DAY, **kw: Any) -> int:
    with session_scope(sessions) as session:
        return fail_stalled_deliveries(session, timeout_s=timeout_s, now=_now(), **kw)


# ---- stalled deliveries ----------------------------------------------------------------------------------


def test_a_delivery_without_progress_for_a_day_fails_once(admin: ApiClient, sessions: Any) -> None:
    [stalled] = _delivered(admin, sessions, idle_s=DAY + 60)
    [recent] = _delivered(admin, sessions, idle_s=DAY - 600)
    assert _sweep_deliveries(sessions) == 1
    a = admin.get(f"/api/v1/assignments/{stalled}").json()
    assert (a["status"], a["error"]) == ("failed", "delivery_timeout")
    assert [(e["kind"], e["actor"]) for e in a["events"]][-1] == ("failed", "system:delivery-timeout")
    assert admin.get(f"/api/v1/assignments/{recent}").json()["status"] == "delivered"
    assert _sweep_deliveries(sessions) == 0  # final: never again
    assert _events(sessions, [stalled])[(stalled, "failed")] == 1


def test_progress_holds_the_timeout_off_and_pending_never_times_out(admin: ApiClient, sessions: Any) -> None:
    [busy] = _delivered(admin, sessions, idle_s=2 * DAY)
    with session_scope(sessions) as session:
        session.execute(update(Assignment).where(Assignment.id == busy).values(progress_at=_now()))
    release = admin.release("v8.0.0")
    dev = admin.device()
    pending = admin.assign(dev["id"], release["id"]).json()["id"]
    with session_scope(sessions) as session:
        session.execute(
            update(Assignment).where(Assignment.id == pending).values(created_at=_now() - timedelta(days=30))
        )
    assert _sweep_deliveries(sessions) == 0
    assert {admin.get(f"/api/v1/assignments/{a}").json()["status"] for a in (busy, pending)} == {
        "delivered",
        "pending",
    }


def test_a_timeout_of_zero_never_fails_anything(admin: ApiClient, sessions: Any) -> None:
    _delivered(admin, sessions, idle_s=365 * DAY)
    assert _sweep_deliveries(sessions, timeout_s=0) == 0


def test_the_device_may_be_assigned_again_after_a_timeout(admin: ApiClient, sessions: Any) -> None:
    [stalled] = _delivered(admin, sessions, idle_s=DAY + 1)
    device_id = admin.get(f"/api/v1/assignments/{stalled}").json()["device_id"]
    assert _sweep_deliveries(sessions) == 1
    release = admin.release("v7.0.0")
    assert admin.assign(device_id, release["id"]).status_code == 201


def test_the_apps_sweeper_runs_both_sweeps(
    admin: ApiClient, client: TestClient, app: Any, sessions: Any, settings: Settings
) -> None:
    [stalled] = _delivered(admin, sessions, idle_s=settings.delivery_timeout_s + 5)
    done = client.portal.call(app.state.scheduler.run_once)  # type: ignore[union-attr]
    assert done == {"ble_modes_ended": 0, "deliveries_timed_out": 1, "stale_uploads_removed": 0}
    assert admin.get(f"/api/v1/assignments/{stalled}").json()["error"] == "delivery_timeout"


# ---- BLE mode ----------------------------------------------------------------------------------------------


def _in_ble_mode(admin: ApiClient, sessions: Any, *, silent_s: float, count: int = 1) -> list[str]:
    ids = [admin.device()["id"] for _ in range(count)]
    with session_scope(sessions) as session:
        session.execute(
            update(Device)
            .where(Device.id.in_(ids))
            .values(ble_connected=True, ble_last_relay_at=_now() - timedelta(seconds=silent_s))
        )
    return ids


def _sweep_ble(sessions: sessionmaker[Session], **kw: Any) -> int:
    with session_scope(sessions) as session:
        return end_silent_ble_modes(session, timeout_s=180, now=_now(), **kw)


def _device_events(sessions: sessionmaker[Session], device_ids: list[str]) -> Counter[tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(
            select(DeviceEvent.device_id, DeviceEvent.kind).where(DeviceEvent.device_id.in_(device_ids))
        ).all()
    return Counter((d, k) for d, k in rows)


def test_ble_mode_ends_when_the_app_stops_relaying(admin: ApiClient, sessions: Any) -> None:
    [silent] = _in_ble_mode(admin, sessions, silent_s=181)
    [relaying] = _in_ble_mode(admin, sessions, silent_s=10)
    assert _sweep_ble(sessions) == 1
    assert admin.get(f"/api/v1/devices/{silent}").json()["ble_connected"] is False
    assert admin.get(f"/api/v1/devices/{relaying}").json()["ble_connected"] is True
    [ended] = admin.get(f"/api/v1/devices/{silent}/events").json()
    assert (ended["kind"], ended["actor"], ended["detail"]["reason"]) == (
        "ble.disconnected",
        "system:ble-timeout",
        "relay timeout",
    )
    assert _sweep_ble(sessions) == 0
    assert _device_events(sessions, [silent, relaying]) == {(silent, "ble.disconnected"): 1}


# ---- many sweepers at once (PostgreSQL) ------------------------------------------------------------------


@needs_postgres
def test_a_second_sweeper_skips_the_rows_the_first_holds(admin: ApiClient, sessions: Any) -> None:
    ids = _delivered(admin, sessions, idle_s=DAY + 60, count=6)
    first = sessions()
    try:
        # The first sweeper has taken (locked) three rows and not committed yet...
        assert fail_stalled_deliveries(first, timeout_s=DAY, now=_now(), limit=3) == 3
        # ...the second neither waits for them nor takes them: it does the other three.
        assert _sweep_deliveries(sessions) == 3
        first.commit()
    finally:
        first.close()
    assert _sweep_deliveries(sessions) == 0
    assert _events(sessions, ids) == {(a, k): 1 for a in ids for k in ("created", "delivered", "failed")}


@needs_postgres
def test_a_sweeper_skips_an_assignment_a_heartbeat_is_writing(admin: ApiClient, sessions: Any) -> None:
    [stalled] = _delivered(admin, sessions, idle_s=DAY + 60)
    device_id = admin.get(f"/api/v1/assignments/{stalled}").json()["device_id"]
    heartbeat_tx = sessions()
    try:
        assert ota_service.active_assignment(heartbeat_tx, device_id, lock=True) is not None
        assert _sweep_deliveries(sessions) == 0  # skipped, not waited for
    finally:
        heartbeat_tx.rollback()
        heartbeat_tx.close()
    assert _sweep_deliveries(sessions) == 1


@needs_postgres
def test_many_concurrent_sweepers_fail_each_assignment_and_end_each_ble_mode_exactly_once(
    admin: ApiClient, sessions: Any
) -> None:
    assignments = _delivered(admin, sessions, idle_s=DAY + 60, count=24)
    devices = _in_ble_mode(admin, sessions, silent_s=600, count=24)
    done: list[tuple[int, int]] = []  # (failed, ended) per round; list.append is thread-safe
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def sweeper() -> None:
        try:
            barrier.wait()
            while True:  # small batches, so the sweepers really interleave
                n_failed = _sweep_deliveries(sessions, limit=2)
                n_ended = _sweep_ble(sessions, limit=2)
                done.append((n_failed, n_ended))
                if n_failed == n_ended == 0:
                    return
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (sum(f for f, _ in done), sum(e for _, e in done)) == (24, 24)
    events = _events(sessions, assignments)
    assert {a: events[(a, "failed")] for a in assignments} == dict.fromkeys(assignments, 1)
    assert _device_events(sessions, devices) == {(d, "ble.disconnected"): 1 for d in devices}
