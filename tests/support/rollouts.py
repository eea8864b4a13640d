"""Rollout test helpers shared by tests/rollouts: API calls, engine ticks at chosen times, device actions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import session_scope
from bota_ota.core.settings import Settings
from bota_ota.rollouts import engine
from tests.support.factories import ApiClient, heartbeat

URL = "/api/v1/rollouts"


def create(api: ApiClient, release_id: str, target: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    body = {"name": fields.pop("name", "rollout"), "release_id": release_id, "target": target or {"filter": {}}}
    r = api.post(URL, json={**body, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def create_all(api: ApiClient, release_id: str, **fields: Any) -> dict[str, Any]:
    """A rollout that has assigned every device of its target: stages [50, 100], the second started by hand.

    Not ``stages=[100]``, which the engine cannot place yet (see test_a_single_stage_rollout_assigns_every_device
    in tests/rollouts/test_rollouts_api.py): this keeps that one bug from failing every test that merely wants all
    devices assigned at once."""
    rollout = create(api, release_id, stages=[50, 100], advance="manual", **fields)
    return act(api, rollout["id"], "advance")


def detail(api: ApiClient, rollout_id: str) -> dict[str, Any]:
    r = api.get(f"{URL}/{rollout_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def act(api: ApiClient, rollout_id: str, action: str) -> dict[str, Any]:
    r = api.post(f"{URL}/{rollout_id}/{action}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def assignments(api: ApiClient, rollout_id: str, status: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"rollout_id": rollout_id, "limit": 1000}
    if status is not None:
        params["status"] = status
    r = api.get("/api/v1/assignments", params=params)
    assert r.status_code == 200, r.text
    return list(r.json())


def assigned_devices(api: ApiClient, rollout_id: str, status: str | None = None) -> set[str]:
    return {a["device_id"] for a in assignments(api, rollout_id, status)}


def tick(sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> int:
    """One engine pass at ``now`` (the real time unless given)."""
    with session_scope(sessions) as session:
        return engine.tick(session, settings, now or datetime.now(UTC))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def fleet(api: ApiClient, n: int, *, model: str = "bota-pin", version: str | None = "v1.0.0") -> list[dict[str, Any]]:
    """n registered devices, each having sent one heartbeat with ``version`` (none if None)."""
    devices = [api.device(model=model) for _ in range(n)]
    if version is not None:
        for d in devices:
            assert heartbeat(api.client, d["token"], firmware_version=version).status_code == 200
    return devices


def by_id(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in devices}


def deliver(client: TestClient, device: dict[str, Any]) -> str:
    """A heartbeat that must get the manifest; returns its assignment id."""
    reply = heartbeat(client, device["token"], firmware_version="v1.0.0").json()
    assert reply["ota"] is not None, reply
    return str(reply["ota"]["assignment_id"])


def apply(client: TestClient, device: dict[str, Any], version: str = "v1.0.1") -> None:
    """Delivered, then the device comes back on the new version: applied."""
    deliver(client, device)
    assert heartbeat(client, device["token"], firmware_version=version).status_code == 200


def fail(client: TestClient, device: dict[str, Any], error: str = "crc_mismatch") -> None:
    """Delivered, then the device reports the update failed."""
    aid = deliver(client, device)
    ota = {"assignment_id": aid, "state": "failed", "error": error}
    assert heartbeat(client, device["token"], firmware_version="v1.0.0", ota=ota).status_code == 200


def kinds(rollout: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in rollout["events"]]
