"""Several stateless instances behave as one server.

Two real ``bota-ota serve`` processes (one of them with two uvicorn workers) share one PostgreSQL database
and one S3 bucket (s3rver). A simulated fleet of 30 devices reaches them through a round-robin load
balancer, so each device's heartbeats land on both instances. One release is assigned to every device,
half of the assignments made through each instance. Every assignment must be delivered once and applied
once, with no duplicated events; the telemetry each instance buffered must be written when it shuts
down (SIGTERM), never lost.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bota_ota.core.database import make_engine
from bota_ota.devices.models import Device, DeviceEvent
from bota_ota.sim.device import Timing
from bota_ota.sim.fleet import Fleet, FleetConfig, provision
from tests.support.balancer import RoundRobinBalancer
from tests.support.database import PG_URL
from tests.support.s3rver import S3rverInfo
from tests.support.server import ServerProcess, cli, server_env
from tests.support.sim import run_fleet

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.s3,
    pytest.mark.skipif(not PG_URL, reason="several instances share one PostgreSQL database (CI sets it)"),
]

DEVICES = 30
STARTUP_DEADLINE_S = 120
NEW_VERSION = "v2.0.0"
HEARTBEAT = re.compile(r'"POST /api/device/v1/heartbeat HTTP/1.1" 200')


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    env: dict[str, str]
    token: str
    database_url: str

    def api(self, server: ServerProcess) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture
def cluster(tmp_path: Path, database_url: str, s3rver: S3rverInfo) -> Iterator[Cluster]:
    env = server_env(
        database_url,
        BOTA_OTA_SECRET_KEY="shared-by-all-instances",
        BOTA_OTA_STORAGE_BACKEND="s3",
        BOTA_OTA_S3_ENDPOINT_URL=s3rver.endpoint_url,
        BOTA_OTA_S3_BUCKET=f"fw-{uuid.uuid4().hex[:12]}",
        BOTA_OTA_S3_REGION=s3rver.region,
        BOTA_OTA_S3_ACCESS_KEY_ID=s3rver.access_key_id,
        BOTA_OTA_S3_SECRET_ACCESS_KEY=s3rver.secret_access_key,
        BOTA_OTA_S3_CREATE_BUCKET="true",
        BOTA_OTA_HEARTBEAT_INTERVAL_S="1",
        # Routine telemetry stays buffered until shutdown, so the test sees the shutdown flush do its work.
        BOTA_OTA_TELEMETRY_FLUSH_INTERVAL_S="600",
        # Both instances sweep every second, at the same time as they serve the fleet.
        BOTA_OTA_SWEEP_INTERVAL_S="1",
    )
    a = ServerProcess(data_dir=tmp_path / "a" / "data", env=env)
    b = ServerProcess(data_dir=tmp_path / "b" / "data", env=env)
    try:
        # Started side by side on an empty database: they migrate, and bootstrap the admin, concurrently.
        a.spawn("--workers", "2")
        b.spawn()
        # A bounded wait, not a speed check: three interpreters start on what may be a busy 2-core machine.
        a.wait_healthy(STARTUP_DEADLINE_S)
        b.wait_healthy(STARTUP_DEADLINE_S)
        created = cli(env, "token", "create", "--name", "fleet", "--role", "operator", "--data-dir", str(a.data_dir))
        yield Cluster(a=a, b=b, env=env, token=created.stdout.strip().splitlines()[-1], database_url=database_url)
    finally:
        a.stop()
        b.stop()


def _upload(api: httpx.Client) -> dict[str, Any]:
    r = api.post(
        "/api/v1/firmware",
        data={"version": NEW_VERSION, "model": "bota-pin"},
        files={"bin": ("fw.bin", os.urandom(200_000))},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_two_instances_on_one_database_apply_every_assignment_exactly_once(cluster: Cluster, tmp_path: Path) -> None:
    a_api, b_api = cluster.api(cluster.a), cluster.api(cluster.b)
    assert sum("First start: an admin was created" in s.output() for s in (cluster.a, cluster.b)) == 1
    release = _upload(a_api)
    # The release stored through A is visible to B at once: nothing about it lives in A's memory.
    assert b_api.get(f"/api/v1/firmware/{release['id']}").json()["version"] == NEW_VERSION
    assignments: dict[str, str] = {}
    tokens: dict[str, str] = {}

    async def scenario() -> None:
        balancer = RoundRobinBalancer([("127.0.0.1", cluster.a.port), ("127.0.0.1", cluster.b.port)])
        await balancer.start()
        try:
            config = FleetConfig(
                server=balancer.url,
                devices=DEVICES,
                prefix="MI",
                seed=6,
                timing=Timing(reboot_s=0.3, write_s=0.05, backoff_base_s=0.05, backoff_max_s=0.5),
                flash_dir=tmp_path / "flash",
                state_file=tmp_path / "fleet.json",
                start_spread_s=0.5,
                max_connections=8,  # fewer connections than devices: they take turns on both instances
            )
            fleet = Fleet(config, await provision(config, cluster.token))
            for n, cred in enumerate(fleet.credentials):  # half through each instance
                api = a_api if n % 2 else b_api
                r = api.post(f"/api/v1/devices/{cred.device_id}/assignments", json={"release_id": release["id"]})
                assert r.status_code == 201, r.text
                assignments[cred.device_id] = r.json()["id"]

            def all_applied() -> bool:
                rows = b_api.get("/api/v1/assignments", params={"status": "applied", "limit": 1000}).json()
                return len(rows) == DEVICES

            async with fleet:
                await run_fleet(fleet, all_applied, timeout=120)
                assert fleet.versions() == {NEW_VERSION: DEVICES}
                assert fleet.stats().applied == DEVICES
                assert fleet.stats().failed == {}
            assert min(balancer.connections[0], balancer.connections[1]) > 0
            tokens.update({c.device_id: c.token for c in fleet.credentials})
        finally:
            await balancer.stop()

    asyncio.run(scenario())

    # Each assignment: created, delivered and applied exactly once; each progress state at most once.
    for device_id, assignment_id in assignments.items():
        detail = a_api.get(f"/api/v1/assignments/{assignment_id}").json()
        assert (detail["device_id"], detail["status"]) == (device_id, "applied")
        kinds = Counter(e["kind"] for e in detail["events"])
        assert (kinds["created"], kinds["delivered"], kinds["applied"]) == (1, 1, 1), detail["events"]
        assert kinds.keys() <= {"created", "delivered", "progress", "applied"}, detail["events"]
        states = [e["detail"]["state"] for e in detail["events"] if e["kind"] == "progress"]
        assert len(states) == len(set(states)), detail["events"]
    # Both instances answered the fleet's heartbeats.
    assert all(len(HEARTBEAT.findall(s.output())) > 0 for s in (cluster.a, cluster.b))

    # One more heartbeat from every device, half to each instance: routine (nothing changed), so only buffered.
    for n, (_device_id, token) in enumerate(sorted(tokens.items())):
        server = cluster.a if n % 2 else cluster.b
        r = httpx.post(
            server.url + "/api/device/v1/heartbeat",
            json={"firmware_version": NEW_VERSION, "battery": 7, "network": "wifi"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.json()["ota"] is None, r.text

    engine = make_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            batteries = conn.execute(select(Device.battery).where(Device.id.in_(list(assignments)))).scalars().all()
            assert 7 not in batteries  # still in the instances' buffers (flush interval: 10 minutes)
        # Graceful shutdown on SIGTERM: a single process re-raises the signal (-15), uvicorn's worker
        # supervisor exits 0 once its workers have shut down; neither had to be killed.
        assert (cluster.a.stop(), cluster.b.stop()) == (0, -15)
        with engine.connect() as conn:
            rows = conn.execute(select(Device.id, Device.battery).where(Device.id.in_(list(assignments)))).all()
            assert dict(rows) == dict.fromkeys(assignments, 7)  # written on shutdown, none lost
            events = conn.scalar(select(func.count()).select_from(DeviceEvent))
            assert events == 0  # no BLE sessions, nothing for the sweeps to end
    finally:
        engine.dispose()
    assert all("shutdown: wrote the telemetry of" in s.output() for s in (cluster.a, cluster.b))
