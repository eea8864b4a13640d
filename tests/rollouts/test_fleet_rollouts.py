"""Staged rollouts end to end: a real ``bota-ota serve`` process (two of them on PostgreSQL), simulated
devices over loopback HTTP, and the rollout engine evaluating every 0.2 s.

Every wait waits for an event (a status, a count, heartbeats the devices themselves counted); the
timeouts only bound a test that would otherwise hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bota_ota.sim.faults import Faults
from bota_ota.sim.fleet import Fleet
from tests.support.balancer import RoundRobinBalancer
from tests.support.database import PG_URL
from tests.support.server import ServerProcess
from tests.support.sim import SimServer, sim_server_running, start_fleet, wait_until

pytestmark = pytest.mark.e2e

NEW = "v2.0.0"
ENGINE = {
    "BOTA_OTA_ROLLOUT_INTERVAL_S": "0.2",
    "BOTA_OTA_ROLLOUT_MEMBERSHIP_INTERVAL_S": "0.5",
    # Routine telemetry is written behind; versions and outcomes are written at once either way.
    "BOTA_OTA_TELEMETRY_FLUSH_INTERVAL_S": "1",
    # URLs that outlive a busy machine: expiry has tests of its own (tests/sim), and a device that gives
    # up on an expired URL would fail these rollouts for a reason they do not test.
    "BOTA_OTA_SIGNED_URL_TTL_S": "600",
    # A failed attempt is delivered again after a second, not the default ten minutes.
    "BOTA_OTA_RETRY_BACKOFF_S": "1",
}


# ---- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[SimServer]:
    with sim_server_running(tmp_path, database_url, **ENGINE) as s:
        yield s


def fleet_config(server: SimServer, devices: int, prefix: str, **timing: Any) -> Any:
    """The devices try again every second, like the server asks: a device whose very first heartbeat fails
    (a connection refused on a loaded machine) would otherwise wait a whole default interval (60 s)."""
    return server.config(devices, prefix=prefix, interval_override_s=1.0, **timing)


def create_rollout(server: SimServer, release_id: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "fleet", "release_id": release_id, "target": {"filter": {"model": "bota-pin"}}, **fields}
    r = server.api.post("/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def detail(server: SimServer, rollout_id: str) -> dict[str, Any]:
    r = server.api.get(f"/api/v1/rollouts/{rollout_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def action(server: SimServer, rollout_id: str, name: str) -> dict[str, Any]:
    r = server.api.post(f"/api/v1/rollouts/{rollout_id}/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def rollout_assignments(server: SimServer, rollout_id: str) -> list[dict[str, Any]]:
    r = server.api.get("/api/v1/assignments", params={"rollout_id": rollout_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json())


def event_kinds(server: SimServer, assignment_id: str) -> Counter[str]:
    return Counter(e["kind"] for e in server.assignment(assignment_id)["events"])


def stage_starts(rollout: dict[str, Any]) -> Counter[int]:
    return Counter(e["detail"]["stage"] for e in rollout["events"] if e["kind"] == "stage_started")


def heartbeat(server: SimServer, token: str, version: str) -> dict[str, Any]:
    r = httpx.post(
        server.url + "/api/device/v1/heartbeat",
        json={"firmware_version": version, "battery": 80, "network": "wifi"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def register(server: SimServer, device_id: str) -> str:
    r = server.api.post("/api/v1/devices", json={"id": device_id, "model": "bota-pin", "name": device_id})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def every_device_heartbeated(fleet: Fleet, at_least: int = 1, since: dict[str, int] | None = None) -> bool:
    since = since or {}
    return all(d.stats.heartbeats >= since.get(d.device_id, 0) + at_least for d in fleet.devices)


def heartbeat_counts(fleet: Fleet) -> dict[str, int]:
    return {d.device_id: d.stats.heartbeats for d in fleet.devices}


@contextlib.asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[Fleet]:
    """The fleet's devices running until the block ends."""
    async with fleet:
        runner = asyncio.create_task(fleet.run())
        try:
            yield fleet
        finally:
            fleet.stop()
            await runner


def assert_one_applied_assignment_each(server: SimServer, rollout_id: str, devices: set[str]) -> None:
    """Each device has exactly one assignment in the rollout, created, delivered and applied once."""
    rows = rollout_assignments(server, rollout_id)
    per_device = Counter(a["device_id"] for a in rows)
    assert set(per_device) == devices and set(per_device.values()) == {1}, per_device
    assert {a["status"] for a in rows} == {"applied"}, Counter(a["status"] for a in rows)
    for a in rows:
        kinds = event_kinds(server, a["id"])
        assert (kinds["created"], kinds["delivered"], kinds["applied"]) == (1, 1, 1), (a["device_id"], kinds)


# ---- a rollout completes by itself ------------------------------------------------------------------------


def test_200_devices_in_three_stages_complete_by_itself_each_applied_once(server: SimServer) -> None:
    """Stages 5/50/100 of 200 devices, five of them already on the release. On PostgreSQL two instances
    share the database and the fleet reaches both through a round-robin balancer: both engines evaluate
    the one rollout, and each stage still starts once and each device is assigned once."""
    release = server.release(NEW, size=50_000)
    second: ServerProcess | None = None
    if PG_URL:
        second = ServerProcess(data_dir=server.proc.data_dir, env=server.proc.env)  # same files, same database
        second.start()
    try:
        rollout_id, fleet_versions, failed = asyncio.run(_complete_by_itself(server, release, second))
    finally:
        if second is not None:
            second.stop()

    assert fleet_versions == {NEW: 200} and failed == {}
    rollout = detail(server, rollout_id)
    assert rollout["status"] == "completed", rollout["paused_reason"]
    assert [s["status"] for s in rollout["stages"]] == ["done", "done", "done"]
    assert sum(s["devices"] for s in rollout["stages"]) == 200
    totals = rollout["totals"]
    assert (totals["applied"], totals["failed"], totals["skipped"]["up_to_date"]) == (195, 0, 5)
    assert stage_starts(rollout) == {0: 1, 1: 1, 2: 1}
    assert [e["kind"] for e in rollout["events"]].count("completed") == 1
    up_to_date = {f"RA-PIN-{i:05d}" for i in range(1, 6)}
    everyone = {f"RA-PIN-{i:05d}" for i in range(1, 201)}
    assert_one_applied_assignment_each(server, rollout_id, everyone - up_to_date)


async def _complete_by_itself(
    server: SimServer, release: dict[str, Any], second: ServerProcess | None
) -> tuple[str, Counter[str], dict[str, int]]:
    balancer = None
    config = fleet_config(server, 200, "RA")
    if second is not None:
        balancer = RoundRobinBalancer([("127.0.0.1", server.proc.port), ("127.0.0.1", second.port)])
        await balancer.start()
        config = dataclasses.replace(config, server=balancer.url)
    try:
        fleet = await start_fleet(server, config)
        for cred in fleet.credentials[:5]:
            cred.firmware_version = NEW  # already updated (a beta group, say): skipped, never assigned
        async with running(fleet):
            await wait_until(
                lambda: every_device_heartbeated(fleet),
                timeout=60,
                what=lambda: f"a first heartbeat from all; {fleet.states()} {fleet.stats()}",
            )
            rollout = create_rollout(server, release["id"], stages=[5, 50, 100], include_new_devices=False)

            # Completed once 95 % of the last stage applied (the default threshold); the last few finish after.
            def completed_and_all_applied() -> bool:
                d = detail(server, rollout["id"])
                return d["status"] == "completed" and d["totals"]["applied"] == 195

            await wait_until(
                completed_and_all_applied,
                timeout=240,
                what=lambda: f"{detail(server, rollout['id'])}; fleet {fleet.states()} {fleet.versions()}",
            )
            if balancer is not None:
                assert min(balancer.connections[0], balancer.connections[1]) > 0  # both instances served it
            return rollout["id"], fleet.versions(), dict(fleet.stats().failed)
    finally:
        if balancer is not None:
            await balancer.stop()


# ---- the canary fails: the rollout stops itself ------------------------------------------------------------


def test_a_failing_canary_pauses_the_rollout_nothing_new_is_delivered_and_resume_goes_on(server: SimServer) -> None:
    """200 devices, stages 10/50/100, corrupt downloads (corrupt=1.0) on 20 % of them: every device of the
    first stage among them, so the canary fails. One first-stage device is offline when the rollout
    pauses: its assignment is held, and it gets nothing when it comes online. Then the cause is fixed,
    the rollout resumed and its failed devices retried: it completes."""
    release = server.release(NEW, size=50_000)
    asyncio.run(_canary(server, release))


async def _canary(server: SimServer, release: dict[str, Any]) -> None:
    fleet = await start_fleet(server, fleet_config(server, 200, "RB"))
    rollout = create_rollout(server, release["id"], stages=[10, 50, 100], include_new_devices=False)
    rid = rollout["id"]
    first_stage = sorted(a["device_id"] for a in rollout_assignments(server, rid))
    # Binomial(200, 0.1): fewer than 4 devices in the first stage has a probability of about 1e-6.
    assert len(first_stage) >= 4, first_stage
    late_id, failing = first_stage[0], first_stage[1:]
    others = [c.device_id for c in fleet.credentials if c.device_id not in first_stage]
    faulty = set(failing) | set(others[: 40 - len(first_stage)])  # 20 % of the fleet in all
    async with fleet:
        for d in fleet.devices:
            if d.device_id in faulty:
                d.faults = Faults.parse("corrupt=1.0")
        late = fleet.device(late_id)
        fleet.devices.remove(late)  # offline for now
        runner = asyncio.create_task(fleet.run())
        late_runner: asyncio.Task[None] | None = None
        try:
            await wait_until(
                lambda: detail(server, rid)["status"] == "paused",
                timeout=120,
                what=lambda: f"{detail(server, rid)}; fleet {fleet.states()} {fleet.stats()}",
            )
            paused = detail(server, rid)
            assert "crc_mismatch" in paused["paused_reason"], paused["paused_reason"]
            assert "in stage 1 failed" in paused["paused_reason"], paused["paused_reason"]
            assert paused["failures_by_error"].keys() == {"crc_mismatch"}
            pause_event = next(e for e in paused["events"] if e["kind"] == "paused")
            assert pause_event["actor"] == "system"
            late_assignment = next(a for a in rollout_assignments(server, rid) if a["device_id"] == late_id)
            assert (late_assignment["status"], late_assignment["held"]) == ("pending", True)

            # While paused: the late device comes online, and every device sends three more heartbeats.
            seen = heartbeat_counts(fleet)
            late_runner = asyncio.create_task(late.run(fleet.stop_event, first_delay_s=0))
            await wait_until(
                lambda: (
                    every_device_heartbeated(fleet, 3, seen)
                    and late.stats.heartbeats >= 3
                    and all(fleet.device(i).state == "idle" for i in failing)
                ),
                timeout=60,
                what=lambda: f"three heartbeats from every device; {fleet.states()}",
            )
            still = detail(server, rid)
            assert still["status"] == "paused" and stage_starts(still) == {0: 1}  # no stage started
            rows = rollout_assignments(server, rid)
            assert sorted(a["device_id"] for a in rows) == first_stage  # nobody new assigned
            assert server.assignment(late_assignment["id"])["status"] == "pending"  # not delivered
            assert late.firmware_version == "v1.0.0" and late.stats.bytes == 0
            failed_ids = {a["device_id"] for a in rows if a["status"] == "failed"}
            assert failed_ids and failed_ids <= set(failing), failed_ids

            # The cause is found and fixed (say, a bad mirror); the operator resumes and retries.
            for d in fleet.devices:
                d.faults = Faults()
            assert action(server, rid, "resume")["status"] == "running"
            r = server.api.post(f"/api/v1/rollouts/{rid}/retry-failed")
            assert r.status_code == 200 and r.json()["retried"] == len(failed_ids), r.text
            fleet.devices.append(late)  # so the fleet's counts below include it
            await wait_until(
                lambda: (d := detail(server, rid))["status"] == "completed" and d["totals"]["applied"] == 200,
                timeout=240,
                what=lambda: f"{detail(server, rid)}; fleet {fleet.states()} {fleet.versions()}",
            )
        finally:
            fleet.stop()
            await runner
            if late_runner is not None:
                await late_runner
        assert fleet.versions() == {NEW: 200}

    done = detail(server, rid)
    assert done["failures_by_error"] == {"crc_mismatch": len(failed_ids)}
    assert stage_starts(done) == {0: 1, 1: 1, 2: 1}
    kinds = [e["kind"] for e in done["events"]]
    assert (kinds.count("paused"), kinds.count("resumed"), kinds.count("retried_failed")) == (1, 1, 1)
    rows = rollout_assignments(server, rid)
    per_device = Counter(a["device_id"] for a in rows)
    assert len(per_device) == 200
    assert {d for d, n in per_device.items() if n == 2} == failed_ids  # the failed one, then its retry
    assert Counter(a["status"] for a in rows) == {"applied": 200, "failed": len(failed_ids)}


# ---- busy and up-to-date devices, a device registered mid-rollout, cancel ----------------------------------


def test_skipped_busy_and_new_devices_then_cancel_leaves_nothing_active(server: SimServer) -> None:
    """One stage of 100 % with include_new_devices: two devices are up to date (skipped), three are busy
    with another update (they join when it ends), three are registered but offline (their assignments stay
    pending), one is registered while the rollout runs (it is assigned). The rollout keeps running after
    its last stage; cancel then leaves no active assignment, and nothing is delivered afterwards."""
    older = server.release("v1.5.0", size=30_000)
    release = server.release(NEW, size=30_000)
    asyncio.run(_busy_new_cancel(server, older, release))


async def _busy_new_cancel(server: SimServer, older: dict[str, Any], release: dict[str, Any]) -> None:
    fleet = await start_fleet(server, fleet_config(server, 30, "RC"))
    creds = fleet.credentials
    for cred in creds[:2]:  # already on the release (the server knows it from their heartbeat)
        cred.firmware_version = NEW
        heartbeat(server, cred.token, NEW)
    busy = [c.device_id for c in creds[2:5]]
    server.assign_all(busy, older["id"])
    offline = {f"RC-PIN-OFF{i}": register(server, f"RC-PIN-OFF{i}") for i in range(3)}

    rollout = create_rollout(server, release["id"], stages=[100], success_threshold_pct=80, include_new_devices=True)
    rid = rollout["id"]
    assert rollout["totals"]["skipped"] == {"up_to_date": 2, "busy": 3}
    assert rollout["totals"]["assigned"] == 25 + 3  # the rest of the fleet and the offline devices

    async with running(fleet):
        # The busy devices finish their other update, then join; the fleet ends up on the release.
        await wait_until(
            lambda: fleet.versions() == {NEW: 30} and detail(server, rid)["stages"][0]["status"] == "done",
            timeout=120,
            what=lambda: f"{detail(server, rid)}; fleet {fleet.versions()}",
        )
    running_after_last_stage = detail(server, rid)
    assert running_after_last_stage["status"] == "running"  # new devices may still come
    for device_id in busy:
        statuses = [a["status"] for a in server.api.get(f"/api/v1/devices/{device_id}/assignments").json()]
        assert sorted(statuses) == ["applied", "applied"], (device_id, statuses)  # v1.5.0, then the rollout's

    # A device registered now is assigned by the running rollout (within the membership interval).
    token = register(server, "RC-PIN-NEW")

    def new_device_got_a_manifest() -> bool:
        return heartbeat(server, token, "v1.0.0").get("ota") is not None

    await wait_until(new_device_got_a_manifest, timeout=60, what="the new device's manifest")
    assert heartbeat(server, token, NEW)["ota"] is None  # updated: applied
    joined = detail(server, rid)
    assert any(e["kind"] == "devices_joined" for e in joined["events"]), (
        [e["kind"] for e in joined["events"]],
        server.api.get("/api/v1/devices/RC-PIN-NEW/assignments").json(),
    )
    new_rows = [a for a in rollout_assignments(server, rid) if a["device_id"] == "RC-PIN-NEW"]
    assert [a["status"] for a in new_rows] == ["applied"]

    # Cancel: the offline devices' pending assignments end in one go; nothing active remains.
    cancelled = action(server, rid, "cancel")
    assert cancelled["status"] == "cancelled"
    rows = rollout_assignments(server, rid)
    assert not [a for a in rows if a["status"] in ("pending", "delivered")]
    assert sorted(a["device_id"] for a in rows if a["status"] == "cancelled") == sorted(offline)
    for device_token in offline.values():  # they come online: nothing to do
        assert heartbeat(server, device_token, "v1.0.0")["ota"] is None
    active = server.api.get("/api/v1/assignments", params={"status": "pending"}).headers["X-Total-Count"]
    assert active == "0"


# ---- kill -9 mid-stage --------------------------------------------------------------------------------------


def test_kill_9_mid_stage_then_restart_completes_with_no_duplicates(server: SimServer) -> None:
    """The server is killed (SIGKILL, nothing flushed) as soon as the second stage has started, and started
    again on the same database; the devices keep retrying meanwhile. The rollout completes, each device
    with one assignment applied once, each stage started once."""
    release = server.release(NEW, size=50_000)
    rid = asyncio.run(_kill_and_restart(server, release))
    rollout = detail(server, rid)
    assert rollout["status"] == "completed"
    assert stage_starts(rollout) == {0: 1, 1: 1, 2: 1}
    assert_one_applied_assignment_each(server, rid, {f"RD-PIN-{i:05d}" for i in range(1, 41)})


async def _kill_and_restart(server: SimServer, release: dict[str, Any]) -> str:
    # Patient devices: a download cut by the kill is retried for about 30 s, longer than a restart takes.
    fleet = await start_fleet(server, fleet_config(server, 40, "RD", backoff_base_s=0.5, backoff_max_s=4))
    async with running(fleet):
        await wait_until(
            lambda: every_device_heartbeated(fleet),
            timeout=60,
            what=lambda: f"a first heartbeat from all; {fleet.states()} {fleet.stats()}",
        )
        rollout = create_rollout(server, release["id"], stages=[10, 50, 100], include_new_devices=False)
        rid = rollout["id"]
        await wait_until(
            lambda: stage_starts(detail(server, rid)).get(1) == 1,
            timeout=120,
            what=lambda: str(detail(server, rid)),
        )
        proc = server.proc.proc
        assert proc is not None
        proc.kill()
        proc.wait()
        server.proc.start()  # same port, same database
        await wait_until(
            lambda: detail(server, rid)["status"] == "completed",
            timeout=240,
            what=lambda: f"{detail(server, rid)}; fleet {fleet.states()} {fleet.versions()}",
        )
        # The rollout completes at its success threshold; a device whose download the kill cut for longer
        # than its own retries reported download_failed, which ends one attempt, and it is delivered again
        # after the (test-short) backoff. Every device gets there, and nothing else failed.
        await wait_until(
            lambda: fleet.versions() == {NEW: 40},
            timeout=120,
            what=lambda: f"every device on {NEW}; fleet {fleet.states()} {fleet.versions()} {fleet.stats()}",
        )
        assert set(fleet.stats().failed) <= {"download_failed"}, fleet.stats()
    return str(rid)
