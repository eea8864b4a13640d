"""The device side of the update lifecycle (/work/spec/lifecycle.md), against a real server process: the
delivery conditions each heartbeat carries, ``ota_abort``, ``ota_deferred`` reasons, fresh attempts after
a failed or rolled-back one, and the ``bootloop`` fault.

Tests marked "server rule" need the server's side of the lifecycle (deferral by battery/storage,
``ota_abort`` after a cancel, retries after an attempt); the others drive the device's reply handling
directly and hold whatever the server does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bota_ota.sim.device import DEFAULT_STORAGE_FREE_KB, MAX_DOWNLOAD_RETRIES, Network, SimDevice
from bota_ota.sim.faults import FaultProxy
from bota_ota.sim.fleet import Fleet
from tests.support.server import free_port
from tests.support.sim import SimServer, SlowTransport, sim_server_running, start_fleet, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def retry_server(tmp_path: Path, database_url: str) -> Iterator[SimServer]:
    """A server that retries a failed attempt at once (no backoff), two attempts in all."""
    with sim_server_running(tmp_path, database_url, BOTA_OTA_MAX_ATTEMPTS="2", BOTA_OTA_RETRY_BACKOFF_S="0") as s:
        yield s


@contextlib.asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[None]:
    """The fleet heartbeating in the background while the test acts on it."""
    runner = asyncio.create_task(fleet.run())
    try:
        yield
    finally:
        fleet.stop()
        await runner


def record_bodies(fleet: Fleet) -> list[dict[str, Any]]:
    """Every heartbeat body the fleet sends from now on, in order."""
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    assert fleet.net is not None
    fleet.net.heartbeats.event_hooks = {"request": [record]}
    return sent


async def slow_downloads(fleet: Fleet, server: SimServer) -> None:
    assert fleet.net is not None
    await fleet.net.downloads.aclose()
    fleet.net.downloads = httpx.AsyncClient(base_url=server.url, transport=SlowTransport())


def unreachable_downloads(device: SimDevice, server: SimServer) -> None:
    """Downloads go to a port nobody listens on: every attempt is refused."""
    dead = FaultProxy("127.0.0.1", server.proc.port)
    dead.port = free_port()
    device.proxies = {("127.0.0.1", server.proc.port): dead}


# ---- conditions -------------------------------------------------------------------------------------


def test_heartbeats_carry_the_conditions_a_test_sets_and_clears(sim_server: SimServer) -> None:
    async def scenario() -> list[dict[str, Any]]:
        fleet = await start_fleet(sim_server, sim_server.config(1, prefix="CO"))
        async with fleet:
            sent = record_bodies(fleet)
            device = fleet.devices[0]
            assert await device.heartbeat() is not None  # the server takes the new fields
            device.set_battery(12, charging=True)
            device.set_network("cellular")
            device.set_storage_free_kb(64)
            device.set_unsynced_recordings(3)
            assert await device.heartbeat() is not None
            device.set_charging(False)
            device.set_storage_free_kb(None)  # not reported at all
            device.set_unsynced_recordings(None)
            assert await device.heartbeat() is not None
            device.clear_conditions()
            assert await device.heartbeat() is not None
            assert device.stats.heartbeats == 4 and device.stats.heartbeat_errors == 0  # all valid (no 422)
        return sent

    first, sick, half, healthy = asyncio.run(scenario())
    keys = ("battery", "charging", "network", "storage_free_kb", "unsynced_recordings")
    assert first["charging"] is False and first["network"] == "wifi" and first["battery"] >= 30
    assert (first["storage_free_kb"], first["unsynced_recordings"]) == (DEFAULT_STORAGE_FREE_KB, 0)
    assert [sick[k] for k in keys] == [12, True, "cellular", 64, 3]
    assert half["charging"] is False and "storage_free_kb" not in half and "unsynced_recordings" not in half
    assert [healthy[k] for k in keys] == [first[k] for k in keys]


def test_condition_setters_refuse_impossible_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Network.create("http://127.0.0.1:9")  # never used
        try:
            device = SimDevice(
                device_id="V-1", token="t", model="bota-pin", firmware_version="v1.0.0", net=net, flash_dir=tmp_path
            )
            for level in (101, -1):
                with pytest.raises(ValueError, match="battery"):
                    device.set_battery(level)
            with pytest.raises(ValueError, match="network"):
                device.set_network("lte")
            with pytest.raises(ValueError, match="storage_free_kb"):
                device.set_storage_free_kb(-5)
            with pytest.raises(ValueError, match="unsynced_recordings"):
                device.set_unsynced_recordings(-1)
        finally:
            await net.aclose()

    asyncio.run(scenario())


def test_every_deferral_reason_is_counted_and_the_device_goes_on(tmp_path: Path) -> None:
    async def scenario() -> SimDevice:
        net = Network.create("http://127.0.0.1:9")  # never used: nothing here goes over the network
        try:
            device = SimDevice(
                device_id="V-2", token="t", model="bota-pin", firmware_version="v1.0.0", net=net, flash_dir=tmp_path
            )
            reasons = ["recording", "battery_low", "network", "storage", "unsynced_recordings", "retry_wait"]
            for reason in [*reasons, "retry_wait", "some_future_reason"]:
                await device.handle_reply({"heartbeat_interval_s": 7, "ota": None, "ota_deferred": reason})
            await device.handle_reply({"heartbeat_interval_s": 7, "ota": None, "ota_deferred": None})
            assert device.interval_s == 7.0 and device.state == "idle" and device.job is None
            return device
        finally:
            await net.aclose()

    stats = asyncio.run(scenario()).stats
    assert stats.deferred == 8
    assert stats.deferred_by == {
        "recording": 1, "battery_low": 1, "network": 1, "storage": 1, "unsynced_recordings": 1, "retry_wait": 2,
        "some_future_reason": 1,
    }  # fmt: skip


def test_low_battery_and_no_room_hold_the_update_until_cleared(sim_server: SimServer) -> None:
    """Server rule: the delivery policy (battery ≥ 30 % unless charging; room for the image)."""
    release = sim_server.release("v3.0.0", size=300_000)

    async def scenario() -> None:
        config = sim_server.config(2, faults="low_battery=1", prefix="LB", interval_override_s=0.2)
        fleet = await start_fleet(sim_server, config)
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            low, full = fleet.devices
            full.clear_conditions()
            full.set_storage_free_kb(100)  # 100 KiB free, a 300 kB image
            async with running(fleet):
                await wait_until(
                    lambda: low.stats.deferred_by["battery_low"] >= 3 and full.stats.deferred_by["storage"] >= 3,
                    timeout=30,
                    what=lambda: f"deferrals {low.stats.deferred_by} {full.stats.deferred_by}",
                )
                assert set(sim_server.statuses(list(assignments.values())).values()) == {"pending"}
                assert low.stats.bytes == 0 and full.stats.bytes == 0
                low.set_battery(15, charging=True)  # on the charger: the battery level no longer matters
                full.clear_conditions()
                await wait_until(lambda: fleet.versions() == {"v3.0.0": 2}, timeout=30, what=lambda: str(fleet.stats()))
        assert set(sim_server.statuses(list(assignments.values())).values()) == {"applied"}

    asyncio.run(scenario())


# ---- ota_abort ----------------------------------------------------------------------------------------


def test_ota_abort_while_downloading_stops_discards_and_forgets_the_job(sim_server: SimServer) -> None:
    release = sim_server.release("v3.1.0", size=2_000_000)

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(1, prefix="AB"))
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            await slow_downloads(fleet, sim_server)
            sent = record_bodies(fleet)
            device = fleet.devices[0]
            reply = await device.heartbeat()
            assert reply is not None and reply["ota"]["assignment_id"] == assignment_id
            task = device._task
            assert task is not None
            await wait_until(lambda: device.progress > 0 and device.flash_path.exists(), timeout=30)
            assert device.state == "downloading" and device.ota_report is not None

            await device.handle_reply({"heartbeat_interval_s": 1, "ota": None, "ota_abort": assignment_id})
            assert task.cancelled()  # the download task stopped cleanly (its stream closed)
            assert not device.flash_path.exists()  # the partial image is gone
            assert device.job is None and device.ota_report is None and device.state == "idle"
            assert device.stats.aborted == 1 and device.stats.failed == {}
            transferred = device.stats.bytes
            assert 0 < transferred < 2_000_000

            # Nothing more about it: the next heartbeats carry no ota block. This server did not cancel
            # the assignment, so it sends the manifest again: the device does not pick the job up again.
            for _ in range(2):
                again = await device.heartbeat()
                assert again is not None and again["ota"]["assignment_id"] == assignment_id
                assert "ota" not in sent[-1]
            assert device.job is None and device._task is task and device.stats.bytes == transferred
            # An abort for something it is not working on changes nothing.
            await device.handle_reply({"heartbeat_interval_s": 1, "ota": None, "ota_abort": "something-else"})
            assert device.stats.aborted == 1

    asyncio.run(scenario())


def test_ota_abort_while_writing_is_too_late_the_update_finishes(sim_server: SimServer) -> None:
    release = sim_server.release("v3.2.0")

    async def scenario() -> None:
        config = sim_server.config(1, prefix="AW", interval_override_s=0.2, write_s=1.0)
        fleet = await start_fleet(sim_server, config)
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            device = fleet.devices[0]
            async with running(fleet):
                await wait_until(lambda: device.state == "writing", timeout=30, what=lambda: device.state)
                assert not await device.abort(assignment_id)
                assert device.job is not None and device.state == "writing"
                await wait_until(lambda: device.firmware_version == "v3.2.0", timeout=30)
                await wait_until(lambda: sim_server.statuses([assignment_id])[assignment_id] == "applied", timeout=30)
            assert device.stats.aborted == 0 and device.stats.applied == 1

    asyncio.run(scenario())


def test_cancelling_a_download_in_progress_makes_the_server_abort_it(sim_server: SimServer) -> None:
    """Server rule: a report of a cancelled assignment that is downloading gets ``ota_abort``."""
    release = sim_server.release("v3.3.0", size=3_000_000)

    async def scenario() -> None:
        config = sim_server.config(1, prefix="AC", interval_override_s=0.2)
        fleet = await start_fleet(sim_server, config)
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            await slow_downloads(fleet, sim_server)
            sent = record_bodies(fleet)
            device = fleet.devices[0]
            async with running(fleet):
                await wait_until(lambda: device.progress > 0, timeout=30, what=lambda: device.state)
                r = sim_server.api.post(f"/api/v1/assignments/{assignment_id}/cancel")
                assert r.status_code == 200, r.text
                await wait_until(lambda: device.stats.aborted == 1, timeout=30, what=lambda: str(device.stats))
                assert (device.state, device.job, device.ota_report) == ("idle", None, None)
                assert not device.flash_path.exists()
                after = len(sent)
                beats = device.stats.heartbeats
                await wait_until(lambda: device.stats.heartbeats >= beats + 3, timeout=30)
            assert all("ota" not in body for body in sent[after:])
            assert device.stats.bytes < 3_000_000 and device.firmware_version == "v1.0.0"
        assert sim_server.statuses([assignment_id]) == {assignment_id: "cancelled"}

    asyncio.run(scenario())


# ---- fresh attempts -----------------------------------------------------------------------------------


def test_a_manifest_after_a_told_failure_starts_a_fresh_attempt(sim_server: SimServer) -> None:
    """Driven by hand, whatever the server decides: the same manifest is ignored while the failure is
    untold (a stale reply), and starts a new download once the server has the failure."""
    release = sim_server.release("v3.4.0")

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(1, prefix="FA"))
        sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            device = fleet.devices[0]
            unreachable_downloads(device, sim_server)
            reply = await device.heartbeat()
            assert reply is not None and reply["ota"] is not None
            manifest = reply["ota"]
            first = device._task
            await wait_until(lambda: device.stats.failed["download_failed"] == 1, timeout=30)
            assert device.job is None and device.ota_report is not None  # the failure, not told yet

            await device.handle_reply({"heartbeat_interval_s": 1, "ota": manifest})  # sent before it knew
            assert device.job is None and device._task is first

            told = await device.heartbeat()  # carries the failure
            assert told is not None and device.ota_report is None

            await device.handle_reply({"heartbeat_interval_s": 1, "ota": manifest})  # a retry
            second = device._task
            assert second is not first and device.job is not None
            assert device.job.assignment_id == manifest["assignment_id"]
            await device.handle_reply({"heartbeat_interval_s": 1, "ota": manifest})  # the job in progress
            assert device._task is second  # not restarted
            await wait_until(lambda: device.stats.failed["download_failed"] == 2, timeout=30)
            assert device.stats.retries == 2 * MAX_DOWNLOAD_RETRIES  # two whole attempts

    asyncio.run(scenario())


@pytest.mark.parametrize(("fault", "error"), [("bootloop=1", "rolled_back"), ("power_loss=1", "power_loss")])
def test_each_attempt_downloads_again_until_the_server_gives_up(
    retry_server: SimServer, fault: str, error: str
) -> None:
    """Server rule: a rolled-back or failed attempt is delivered again (here at once, 2 attempts)."""
    release = retry_server.release("v3.5.0", size=250_000)

    async def scenario() -> SimDevice:
        config = retry_server.config(1, faults=fault, prefix="RT", interval_override_s=0.2)
        fleet = await start_fleet(retry_server, config)
        (assignment_id,) = retry_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            device = fleet.devices[0]
            async with running(fleet):
                await wait_until(
                    lambda: retry_server.statuses([assignment_id])[assignment_id] == "failed",
                    timeout=60,
                    what=lambda: str(device.stats),
                )
        detail = retry_server.assignment(assignment_id)
        assert detail["error"] == error
        return device

    device = asyncio.run(scenario())
    assert device.stats.bytes == 2 * 250_000  # downloaded afresh for the second attempt
    assert device.firmware_version == "v1.0.0" and device.stats.applied == 0
    if error == "rolled_back":
        assert device.stats.rolled_back == 2 and device.stats.failed == {}
    else:
        assert device.stats.failed == {"power_loss": 2} and device.stats.rolled_back == 0


# ---- bootloop -----------------------------------------------------------------------------------------


def test_bootloop_reports_writing_and_rebooting_then_comes_back_on_the_old_version(sim_server: SimServer) -> None:
    release = sim_server.release("v3.6.0")

    async def scenario() -> tuple[list[dict[str, Any]], SimDevice, str]:
        config = sim_server.config(1, faults="bootloop=1", prefix="BL", interval_override_s=0.2)
        fleet = await start_fleet(sim_server, config)
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            sent = record_bodies(fleet)
            device = fleet.devices[0]
            async with running(fleet):
                await wait_until(lambda: device.stats.rolled_back >= 1, timeout=30, what=lambda: str(device.stats))
                beats = device.stats.heartbeats
                await wait_until(lambda: device.stats.heartbeats >= beats + 2, timeout=30)
            return sent, device, assignment_id

    sent, device, assignment_id = asyncio.run(scenario())
    states = [b["ota"]["state"] if "ota" in b else None for b in sent]
    rebooting = states.index("rebooting")
    assert "writing" in states[:rebooting]  # told as a real device does, before the reboot
    back = sent[rebooting + 1]  # the first heartbeat after the reboot: old version, no word of the update
    assert back["firmware_version"] == "v1.0.0" and "ota" not in back
    assert all(b["firmware_version"] == "v1.0.0" for b in sent)
    assert device.firmware_version == "v1.0.0" and device.stats.applied == 0 and device.stats.failed == {}
    assert not device.flash_path.exists()
    # What the server made of it (server rule): a rolled-back attempt, pending again behind a backoff.
    detail = sim_server.assignment(assignment_id)
    assert "rolled_back" in [e["kind"] for e in detail["events"]], detail["events"]
    assert detail["status"] == "pending"
    assert device.stats.deferred_by["retry_wait"] >= 1
