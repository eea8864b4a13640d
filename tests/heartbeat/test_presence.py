"""Presence: a routine heartbeat writes nothing; its telemetry is written behind in batches.

The app under test flushes only when told to (interval ten minutes, the longest allowed) and does not sweep
on its own, so each test decides when the write-behind buffer is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from bota_ota.app import create_app
from bota_ota.core.database import session_scope
from bota_ota.core.settings import Settings
from bota_ota.devices.models import Device
from bota_ota.heartbeat.presence import PendingTelemetry, TelemetryBuffer, write_telemetry
from tests.support.factories import ApiClient, heartbeat, make_token
from tests.support.statements import Statements


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"telemetry_flush_interval_s": 600.0, "sweep_interval_s": 3600.0})


@pytest.fixture
def statements(app: Any) -> Statements:
    return Statements(app.state.ctx.engine)


def _device(admin: ApiClient, device_id: str) -> dict[str, Any]:
    return dict(admin.get(f"/api/v1/devices/{device_id}").json())


def _flush(client: TestClient, app: Any) -> int:
    return int(client.portal.call(app.state.heartbeat.flush))  # type: ignore[union-attr]


def _seen(admin: ApiClient, device_id: str) -> datetime:
    return datetime.fromisoformat(_device(admin, device_id)["last_seen_at"])


@pytest.fixture
def known_device(admin: ApiClient) -> dict[str, Any]:
    """A device that has sent its first heartbeat (which is written at once)."""
    dev = admin.device()
    r = heartbeat(admin.client, dev["token"], firmware_version="v1.0.0", battery=90, network="wifi", rssi=-50)
    assert r.status_code == 200
    assert _device(admin, dev["id"])["battery"] == 90
    return dev


def test_a_routine_heartbeat_writes_nothing_until_the_flush(
    admin: ApiClient, app: Any, known_device: dict[str, Any], statements: Statements
) -> None:
    first_seen = _seen(admin, known_device["id"])
    statements.clear()
    r = heartbeat(admin.client, known_device["token"], firmware_version="v1.0.0", battery=80, rssi=-70)
    assert r.status_code == 200
    assert r.json()["ota"] is None
    assert statements.writes == []
    assert statements.seen, "the heartbeat read the device"
    # Not written yet: the API shows the last flushed values.
    d = _device(admin, known_device["id"])
    assert (d["battery"], d["rssi"], datetime.fromisoformat(d["last_seen_at"])) == (90, -50, first_seen)

    assert _flush(admin.client, app) == 1
    d = _device(admin, known_device["id"])
    assert (d["battery"], d["rssi"], d["network"]) == (80, -70, "wifi")  # network omitted: kept
    assert datetime.fromisoformat(d["last_seen_at"]) > first_seen
    assert len(app.state.heartbeat.buffer) == 0


def test_many_routine_heartbeats_are_one_batched_update(admin: ApiClient, app: Any, statements: Statements) -> None:
    devices = [admin.device() for _ in range(5)]
    for dev in devices:
        heartbeat(admin.client, dev["token"], battery=50)
    statements.clear()
    for n in range(3):  # the last reading of each device wins
        for dev in devices:
            heartbeat(admin.client, dev["token"], battery=60 + n)
    assert statements.writes == []
    assert _flush(admin.client, app) == 5
    assert [s.split(" SET ")[0] for s in statements.writes if s.startswith("UPDATE")] == ["UPDATE devices"]
    assert {_device(admin, dev["id"])["battery"] for dev in devices} == {62}


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"firmware_version": "v1.0.1"}, {"firmware_version": "v1.0.1"}),
        ({"recording": True}, {"recording": True}),
    ],
)
def test_material_changes_are_written_at_once(
    admin: ApiClient, known_device: dict[str, Any], change: dict[str, Any], expect: dict[str, Any]
) -> None:
    first_seen = _seen(admin, known_device["id"])
    heartbeat(admin.client, known_device["token"], **{"firmware_version": "v1.0.0", "battery": 33, **change})
    d = _device(admin, known_device["id"])
    assert {k: d[k] for k in expect} == expect
    # The whole heartbeat is written with it: readings and last-seen too.
    assert d["battery"] == 33
    assert datetime.fromisoformat(d["last_seen_at"]) > first_seen


def test_the_first_heartbeat_is_written_at_once(admin: ApiClient) -> None:
    dev = admin.device()
    heartbeat(admin.client, dev["token"], battery=70)
    d = _device(admin, dev["id"])
    assert d["online"] is True and d["battery"] == 70 and d["firmware_version"] == "v1.0.0"


def test_ending_ble_mode_is_written_at_once(admin: ApiClient, known_device: dict[str, Any], sessions: Any) -> None:
    with session_scope(sessions) as session:
        session.execute(
            update(Device)
            .where(Device.id == known_device["id"])
            .values(ble_connected=True, ble_last_relay_at=datetime.now(UTC))
        )
    assert _device(admin, known_device["id"])["ble_connected"] is True
    heartbeat(admin.client, known_device["token"], firmware_version="v1.0.0")
    assert _device(admin, known_device["id"])["ble_connected"] is False
    kinds = [e["kind"] for e in admin.get(f"/api/v1/devices/{known_device['id']}/events").json()]
    assert kinds == ["ble.disconnected"]


def test_a_new_assignment_is_delivered_on_the_next_heartbeat(
    admin: ApiClient, known_device: dict[str, Any], statements: Statements
) -> None:
    heartbeat(admin.client, known_device["token"])  # routine: nothing written, nothing cached either
    release = admin.release("v1.0.1")
    assignment = admin.assign(known_device["id"], release["id"]).json()
    statements.clear()
    reply = heartbeat(admin.client, known_device["token"]).json()
    assert reply["ota"]["assignment_id"] == assignment["id"]
    # Delivered is written at once, in the request.
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "delivered"
    assert any(s.startswith("UPDATE assignments") for s in statements.writes)


def test_a_delivered_assignment_is_resent_without_a_write(
    admin: ApiClient, known_device: dict[str, Any], statements: Statements
) -> None:
    release = admin.release("v1.0.1")
    assignment = admin.assign(known_device["id"], release["id"]).json()
    heartbeat(admin.client, known_device["token"])  # delivered (written)
    statements.clear()
    for report in (None, {"assignment_id": assignment["id"], "state": "downloading", "progress": 0}):
        body = {"ota": report} if report else {}
        assert heartbeat(admin.client, known_device["token"], **body).json()["ota"]["assignment_id"] == assignment["id"]
        # The first progress report is a change: written at once. The lost reply before it is not.
        assert bool(statements.writes) is (report is not None)
        statements.clear()
    # The same progress again changes nothing.
    again = {"assignment_id": assignment["id"], "state": "downloading", "progress": 0}
    assert heartbeat(admin.client, known_device["token"], ota=again).json()["ota"] is not None
    assert statements.writes == []


def test_applied_and_failed_are_written_at_once(admin: ApiClient, known_device: dict[str, Any]) -> None:
    release = admin.release("v1.0.1")
    first = admin.assign(known_device["id"], release["id"]).json()
    heartbeat(admin.client, known_device["token"])
    heartbeat(
        admin.client,
        known_device["token"],
        ota={"assignment_id": first["id"], "state": "failed", "error": "crc_mismatch"},
    )
    assert admin.get(f"/api/v1/assignments/{first['id']}").json()["status"] == "failed"
    second = admin.assign(known_device["id"], release["id"]).json()
    heartbeat(admin.client, known_device["token"], firmware_version="v1.0.1")
    assert admin.get(f"/api/v1/assignments/{second['id']}").json()["status"] == "applied"


def test_buffered_readings_count_when_a_later_heartbeat_is_written_at_once(
    admin: ApiClient, known_device: dict[str, Any]
) -> None:
    heartbeat(admin.client, known_device["token"], battery=40, network="cellular")  # buffered
    heartbeat(admin.client, known_device["token"], firmware_version="v1.0.2")  # written, says no battery
    d = _device(admin, known_device["id"])
    assert (d["firmware_version"], d["battery"], d["network"]) == ("v1.0.2", 40, "cellular")


def test_the_buffer_is_written_on_shutdown(settings: Settings, sessions: Any) -> None:
    app = create_app(settings)
    with TestClient(app) as client:
        admin = ApiClient(client, make_token(app.state.ctx.sessions, "admin"))
        dev = admin.device()
        heartbeat(client, dev["token"], battery=90)
        heartbeat(client, dev["token"], battery=11, rssi=-99)
        assert len(app.state.heartbeat.buffer) == 1
    # The lifespan has ended (as on SIGTERM): the reading is in the database.
    with session_scope(app.state.ctx.sessions) as session:
        device = session.get(Device, dev["id"])
        assert device is not None
        assert (device.battery, device.rssi) == (11, -99)


def test_a_failed_flush_keeps_the_readings_for_the_next_one(
    admin: ApiClient, app: Any, known_device: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(admin.client, known_device["token"], battery=55)

    def database_down(*args: Any) -> int:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr("bota_ota.heartbeat.runtime.write_telemetry", database_down)
    with pytest.raises(ConnectionError):
        _flush(admin.client, app)
    assert len(app.state.heartbeat.buffer) == 1
    heartbeat(admin.client, known_device["token"], rssi=-77)  # arrives meanwhile, merged with the kept one
    monkeypatch.undo()
    assert _flush(admin.client, app) == 1
    d = _device(admin, known_device["id"])
    assert (d["battery"], d["rssi"]) == (55, -77)


# ---- the flush's rules, on the database directly -----------------------------------------------------


def test_a_late_flush_never_moves_a_device_back_in_time(app: Any, admin: ApiClient) -> None:
    dev = admin.device()
    heartbeat(admin.client, dev["token"], battery=90)
    engine = app.state.ctx.engine
    now = datetime.now(UTC)
    # Another instance stored a newer heartbeat; this instance's older reading arrives late.
    write_telemetry(engine, {dev["id"]: PendingTelemetry(seen_at=now + timedelta(seconds=5), battery=20)})
    assert write_telemetry(engine, {dev["id"]: PendingTelemetry(seen_at=now + timedelta(seconds=1), battery=99)}) == 0
    assert _device(admin, dev["id"])["battery"] == 20


def test_the_buffer_keeps_the_newest_reading_and_fills_gaps_from_older_ones() -> None:
    full: list[int] = []
    buffer = TelemetryBuffer(flush_at=2, on_full=lambda: full.append(1))
    t0 = datetime.now(UTC)
    buffer.add("A", PendingTelemetry(seen_at=t0, battery=50, network="wifi"))
    buffer.add("A", PendingTelemetry(seen_at=t0 + timedelta(seconds=2), battery=49))
    buffer.add("A", PendingTelemetry(seen_at=t0 + timedelta(seconds=1), battery=77, rssi=-60))  # arrived late
    assert buffer.peek("A") == PendingTelemetry(seen_at=t0 + timedelta(seconds=2), battery=49, network="wifi", rssi=-60)
    assert full == []
    buffer.add("B", PendingTelemetry(seen_at=t0))
    buffer.add("C", PendingTelemetry(seen_at=t0))
    assert full == [1]  # told once when it reached flush_at
    assert set(buffer.take_all()) == {"A", "B", "C"}
    assert len(buffer) == 0


# ---- the flush on its own ------------------------------------------------------------------------------


@pytest.fixture
def self_flushing(settings: Settings) -> Iterator[tuple[ApiClient, Any]]:
    app = create_app(settings.model_copy(update={"telemetry_flush_interval_s": 0.2}))
    with TestClient(app) as client:
        yield ApiClient(client, make_token(app.state.ctx.sessions, "admin")), app


def _wait_until_written(admin: ApiClient, device_id: str, battery: int) -> None:
    """A bounded wait (not a timing assertion): the background flush gets there on its own."""
    import time

    deadline = time.monotonic() + 30
    while _device(admin, device_id)["battery"] != battery:
        assert time.monotonic() < deadline, "the buffered reading was never written"
        time.sleep(0.05)


def test_the_flusher_writes_within_its_interval_without_being_asked(self_flushing: tuple[ApiClient, Any]) -> None:
    admin, app = self_flushing
    dev = admin.device()
    heartbeat(admin.client, dev["token"], battery=90)
    heartbeat(admin.client, dev["token"], battery=12)
    _wait_until_written(admin, dev["id"], 12)
    assert len(app.state.heartbeat.buffer) == 0


def test_a_full_buffer_is_written_before_its_interval(admin: ApiClient, app: Any) -> None:
    # The app under test flushes every ten minutes; a full buffer must not wait for that.
    app.state.heartbeat.buffer.flush_at = 3
    devices = [admin.device() for _ in range(3)]
    for dev in devices:
        heartbeat(admin.client, dev["token"], battery=90)
    for dev in devices:
        heartbeat(admin.client, dev["token"], battery=21)
    for dev in devices:
        _wait_until_written(admin, dev["id"], 21)


def test_a_percentage_is_written_behind_but_a_new_state_at_once(
    admin: ApiClient, app: Any, known_device: dict[str, Any], statements: Statements
) -> None:
    release = admin.release(version="v1.0.1")
    aid = admin.assign(known_device["id"], release["id"]).json()["id"]
    heartbeat(admin.client, known_device["token"])  # delivered
    report = {"assignment_id": aid, "state": "downloading", "progress": 10}
    heartbeat(admin.client, known_device["token"], ota=report)  # a new state: at once, with an event
    assert admin.get(f"/api/v1/assignments/{aid}").json()["progress"] == 10
    statements.clear()
    for progress in (20, 30, 40):
        heartbeat(admin.client, known_device["token"], ota={**report, "progress": progress})
    assert statements.writes == []
    assert _flush(admin.client, app) == 1
    got = admin.get(f"/api/v1/assignments/{aid}").json()
    assert (got["ota_state"], got["progress"]) == ("downloading", 40)
    assert [e["kind"] for e in got["events"]].count("progress") == 1
    heartbeat(admin.client, known_device["token"], ota={**report, "state": "verifying", "progress": 100})
    got = admin.get(f"/api/v1/assignments/{aid}").json()
    assert (got["ota_state"], got["progress"]) == ("verifying", 100)
    # A late flush of an old percentage never moves the assignment back to downloading.
    write_telemetry(
        app.state.ctx.engine,
        {known_device["id"]: PendingTelemetry(seen_at=datetime.now(UTC), ota=(aid, "downloading", 50))},
    )
    assert admin.get(f"/api/v1/assignments/{aid}").json()["ota_state"] == "verifying"
