"""A rollout through the API, driven by heartbeats and explicit engine ticks."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient

from tests.support.factories import ApiClient, heartbeat


def _tick(app: Any) -> int:
    return int(asyncio.run(app.state.rollouts.run_once())["rollouts_changed"])


def test_stages_advance_to_completion(admin: ApiClient, client: TestClient, app: Any) -> None:
    release = admin.release("v1.0.1")
    devices = [admin.device() for _ in range(20)]
    for d in devices:
        assert heartbeat(client, d["token"], firmware_version="v1.0.0").status_code == 200
    r = admin.post(
        "/api/v1/rollouts",
        json={
            "name": "first",
            "release_id": release["id"],
            "target": {"filter": {"model": "bota-pin"}},
            "stages": [10, 50, 100],
            "include_new_devices": False,
        },
    )
    assert r.status_code == 201, r.text
    rollout = r.json()
    assert rollout["status"] == "running"
    first = rollout["stages"][0]
    assert first["status"] == "running"
    for _ in range(10):
        for d in devices:
            reply = heartbeat(client, d["token"], firmware_version="v1.0.0").json()
            if reply.get("ota"):
                heartbeat(client, d["token"], firmware_version="v1.0.1")
        _tick(app)
        rollout = admin.get(f"/api/v1/rollouts/{rollout['id']}").json()
        if rollout["status"] == "completed":
            break
    assert rollout["status"] == "completed", rollout
    assert rollout["totals"]["applied"] == 20
    assert sum(s["devices"] for s in rollout["stages"]) == 20
