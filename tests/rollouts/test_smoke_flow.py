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


def test_preview_counts_matching_skipped_and_busy(admin: ApiClient, client: TestClient) -> None:
    old = admin.release("v1.0.0")
    release = admin.release("v1.0.1")
    devices = [admin.device() for _ in range(10)]
    admin.device(model="bota-note")  # another model: never counted
    heartbeat(client, devices[0]["token"], firmware_version="v1.0.1")  # up to date
    heartbeat(client, devices[1]["token"], firmware_version="v1.2.0")  # newer: up to date too
    assert admin.assign(devices[2]["id"], old["id"]).status_code == 201  # busy
    body = {"release_id": release["id"], "target": {"filter": {}}, "stages": [10, 50, 100]}
    r = admin.post("/api/v1/rollouts/preview", json=body)
    assert r.status_code == 200, r.text
    preview = r.json()
    assert (preview["matching"], preview["up_to_date"], preview["busy"]) == (10, 2, 1)
    assert [s["devices"] for s in preview["stages"]] == [1, 4, 5]
    assert admin.get("/api/v1/rollouts").json() == []  # a preview creates nothing
    bad = admin.post("/api/v1/rollouts/preview", json={**body, "stages": [50, 10]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "stages"
