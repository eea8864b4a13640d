"""One simulated device's state machine against a real server process: what it reports on the way, its
silence while rebooting, its retry limit, its checks before flashing, and random recordings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bota_ota.sim.device import MAX_DOWNLOAD_RETRIES, Job, Network, SimDevice
from bota_ota.sim.faults import FaultProxy
from tests.support.server import free_port
from tests.support.sim import SimServer, SlowTransport, run_fleet, sim_server_running, start_fleet


@pytest.mark.e2e
def test_each_state_is_reported_with_progress_and_no_heartbeat_is_sent_while_rebooting(
    sim_server: SimServer,
) -> None:
    release = sim_server.release("v2.1.0", size=600_000)
    sent: list[tuple[float, dict[str, Any]]] = []
    reboots: list[tuple[float, float]] = []

    async def record(request: httpx.Request) -> None:
        sent.append((time.monotonic(), json.loads(request.content)))

    async def scenario() -> str:
        config = sim_server.config(1, prefix="S", interval_override_s=0.2, write_s=0.6, reboot_s=1.0)
        fleet = await start_fleet(sim_server, config)
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            assert fleet.net is not None
            fleet.net.heartbeats.event_hooks = {"request": [record]}
            await fleet.net.downloads.aclose()
            fleet.net.downloads = httpx.AsyncClient(base_url=sim_server.url, transport=SlowTransport())
            device = fleet.devices[0]
            reboot = device._reboot

            async def timed_reboot() -> None:
                started = time.monotonic()
                await reboot()
                reboots.append((started, time.monotonic()))

            device._reboot = timed_reboot  # type: ignore[method-assign]
            await run_fleet(fleet, lambda: sim_server.statuses([assignment_id]) == {assignment_id: "applied"})
        return assignment_id

    assignment_id = asyncio.run(scenario())

    # What the device said, heartbeat by heartbeat: downloading with rising progress, then writing.
    reports = [body["ota"] for _, body in sent if body.get("ota")]
    progress = [r["progress"] for r in reports if r["state"] == "downloading"]
    assert progress == sorted(progress), progress
    assert any(0 < p < 100 for p in progress), progress
    states = [r["state"] for r in reports]
    assert "writing" in states and "rebooting" in states, states  # each told at once, before the reboot
    assert states.index("downloading") < states.index("writing") < states.index("rebooting")
    # The server recorded each state it was told about (and showed it as the assignment's progress).
    events = sim_server.assignment(assignment_id)["events"]
    told = [e["detail"]["state"] for e in events if e["kind"] == "progress"]
    assert told[:1] == ["downloading"] and "writing" in told and "rebooting" in told, events

    # One reboot, and not a heartbeat during it; the first one after it reports the new version at once.
    ((down, up),) = reboots
    assert up - down >= 1.0
    assert not [t for t, _ in sent if down < t < up]
    after = [(t, body) for t, body in sent if t >= up]
    assert after[0][1]["firmware_version"] == "v2.1.0" and "ota" not in after[0][1]
    assert after[0][0] - up < 0.5
    assert all(body["firmware_version"] == "v1.0.0" for t, body in sent if t <= down)


@pytest.fixture
def one_attempt_server(tmp_path: Path, database_url: str) -> Iterator[SimServer]:
    """A server that gives each assignment a single attempt: a reported failure is final at once."""
    with sim_server_running(tmp_path, database_url, BOTA_OTA_MAX_ATTEMPTS="1") as server:
        yield server


@pytest.mark.e2e
def test_ten_retries_then_the_device_reports_download_failed(one_attempt_server: SimServer) -> None:
    sim_server = one_attempt_server
    release = sim_server.release("v2.2.0")

    async def scenario() -> tuple[str, SimDevice]:
        fleet = await start_fleet(sim_server, sim_server.config(1, prefix="R"))
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            # Downloads go to a port nobody listens on: every attempt is refused.
            unreachable = FaultProxy("127.0.0.1", sim_server.proc.port)
            unreachable.port = free_port()
            device = fleet.devices[0]
            device.proxies = {("127.0.0.1", sim_server.proc.port): unreachable}
            await run_fleet(fleet, lambda: sim_server.statuses([assignment_id]) == {assignment_id: "failed"})
        return assignment_id, device

    assignment_id, device = asyncio.run(scenario())
    assert sim_server.assignment(assignment_id)["error"] == "download_failed"
    assert device.stats.retries == MAX_DOWNLOAD_RETRIES  # the first attempt, then 10 retries
    assert device.stats.failed == {"download_failed": 1}
    assert device.firmware_version == "v1.0.0"


@pytest.mark.e2e
def test_random_recordings_defer_updates_and_never_overlap_a_transfer(sim_server: SimServer) -> None:
    release = sim_server.release("v2.3.0")
    overlaps: list[str] = []

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(6, faults="record=0.5,record_s=1", prefix="Q"))
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])

        async def done() -> bool:
            overlaps.extend(f"{d.device_id} {d.state}" for d in fleet.devices if d.recording and d.state != "idle")
            statuses = await asyncio.to_thread(sim_server.statuses, list(assignments.values()))
            return set(statuses.values()) == {"applied"}

        async with fleet:
            await run_fleet(fleet, done)
            assert fleet.stats().deferred > 0  # some updates waited for a recording to end
            assert fleet.versions() == {"v2.3.0": 6}

    asyncio.run(scenario())
    assert not overlaps


@pytest.mark.parametrize("wrong", [None, "size", "crc32", "sha256"])
def test_any_failed_check_before_flashing_is_reported_as_crc_mismatch(tmp_path: Path, wrong: str | None) -> None:
    image = random.Random(2).randbytes(200_000)
    job = Job(
        assignment_id="a",
        version="v1.0.1",
        url="/dl/x",
        expires_at=0,
        size=len(image),
        crc32=zlib.crc32(image),
        sha256=hashlib.sha256(image).hexdigest(),
    )
    if wrong == "size":
        job.size += 1
    elif wrong == "crc32":
        job.crc32 ^= 1
    elif wrong == "sha256":
        job.sha256 = hashlib.sha256(b"something else").hexdigest()

    async def verify() -> str | None:
        net = Network.create("http://127.0.0.1:9")  # never used: nothing here goes over the network
        try:
            device = SimDevice(
                device_id="V-1", token="t", model="bota-pin", firmware_version="v1.0.0", net=net, flash_dir=tmp_path
            )
            device.flash_path.write_bytes(image)
            return device._verify(job)
        finally:
            await net.aclose()

    assert asyncio.run(verify()) == (None if wrong is None else "crc_mismatch")
