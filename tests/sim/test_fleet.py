"""The fleet scenarios: a real server process, simulated devices over loopback HTTP, real faults."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.sim import SimServer, run_fleet, start_fleet

pytestmark = pytest.mark.e2e


def _all(server: SimServer, assignment_ids: list[str], status: str) -> bool:
    return set(server.statuses(assignment_ids).values()) == {status}


def test_fifty_devices_all_reach_applied(sim_server: SimServer) -> None:
    release = sim_server.release("v1.1.0", size=200_000)

    async def scenario() -> None:
        config = sim_server.config(50, prefix="A")
        fleet = await start_fleet(sim_server, config)
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "applied"), timeout=90)
            assert fleet.versions() == {"v1.1.0": 50}
            assert fleet.stats().applied == 50
        for device_id in list(assignments)[:5]:
            assert sim_server.api.get(f"/api/v1/devices/{device_id}").json()["firmware_version"] == "v1.1.0"
        # Each assignment went through delivered to applied, and was applied exactly once.
        detail = sim_server.assignment(next(iter(assignments.values())))
        kinds = [e["kind"] for e in detail["events"]]
        assert kinds[0] == "created" and "delivered" in kinds and kinds.count("applied") == 1

    asyncio.run(scenario())


def test_drops_on_every_download_are_resumed_with_range(sim_server: SimServer) -> None:
    release = sim_server.release("v1.2.0", size=1_000_000)

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(8, faults="drop=1", prefix="B"))
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "applied"))
            stats = fleet.stats()
            assert fleet.proxy_cuts >= 8  # every download was cut once by the proxy...
            assert stats.resumed >= 8  # ...and resumed with a Range request
            assert stats.failed == {}

    asyncio.run(scenario())
    # The server itself saw the resumed downloads as Range requests.
    ranged = [line for line in sim_server.proc.output().splitlines() if "range=bytes=" in line]
    assert len(ranged) >= 8, sim_server.proc.output()[-2000:]


def test_corrupted_bytes_fail_with_crc_mismatch_then_a_new_assignment_succeeds(sim_server: SimServer) -> None:
    release = sim_server.release("v1.3.0")

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(5, faults="corrupt=1", prefix="C"))
        ids = [c.device_id for c in fleet.credentials]
        first = sim_server.assign_all(ids, release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(first.values()), "failed"))
            for assignment_id in first.values():
                assert sim_server.assignment(assignment_id)["error"] == "crc_mismatch"
            assert fleet.versions() == {"v1.0.0": 5}
            for device in fleet.devices:  # the link is clean again
                device.faults.corrupt = 0.0
            fleet.stop_event.clear()
            second = sim_server.assign_all(ids, release["id"])
            await run_fleet(fleet, lambda: _all(sim_server, list(second.values()), "applied"))
            assert fleet.versions() == {"v1.3.0": 5}

    asyncio.run(scenario())


def test_recording_devices_keep_the_assignment_pending_until_they_stop(sim_server: SimServer) -> None:
    release = sim_server.release("v1.4.0")

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(4, prefix="D"))
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            recording = fleet.devices[:2]
            for device in recording:
                device.start_recording(3600)
            free = [assignments[d.device_id] for d in fleet.devices[2:]]
            await run_fleet(fleet, lambda: _all(sim_server, free, "applied"))
            held = [assignments[d.device_id] for d in recording]
            assert set(sim_server.statuses(held).values()) == {"pending"}
            assert all(d.stats.deferred > 0 for d in recording)  # the server said why
            assert all(d.stats.bytes == 0 for d in recording)  # and nothing was transferred
            for device in recording:
                device.stop_recording()
            fleet.stop_event.clear()
            await run_fleet(fleet, lambda: _all(sim_server, held, "applied"))

    asyncio.run(scenario())


def test_expired_urls_are_renewed_through_the_next_heartbeat(sim_server: SimServer) -> None:
    release = sim_server.release("v1.5.0")

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(4, faults="expire=1", prefix="E"))
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "applied"))
            assert fleet.stats().expired_urls >= 4  # each device hit a 403 and carried on with a fresh URL

    asyncio.run(scenario())
    refused = [line for line in sim_server.proc.output().splitlines() if "/dl/" in line and " 403" in line]
    assert len(refused) >= 4


def test_power_loss_while_writing_ends_an_attempt_and_keeps_the_old_version(sim_server: SimServer) -> None:
    """power_loss is not a final error: the attempt ends, the assignment waits (retry_wait) for the next one."""
    release = sim_server.release("v1.6.0")

    def attempt_ended(assignment_ids: list[str]) -> bool:
        return all(sim_server.assignment(a)["attempts"] >= 1 for a in assignment_ids)

    async def scenario() -> None:
        fleet = await start_fleet(sim_server, sim_server.config(3, faults="power_loss=1", prefix="F"))
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: attempt_ended(list(assignments.values())))
            await asyncio.sleep(0)
        for device_id, assignment_id in assignments.items():
            assignment = sim_server.assignment(assignment_id)
            assert (assignment["status"], assignment["error"], assignment["attempts"]) == ("pending", "power_loss", 1)
            assert assignment["retry_at"] is not None  # the server's backoff (600 s) is far off
            device = sim_server.api.get(f"/api/v1/devices/{device_id}").json()
            assert device["firmware_version"] == "v1.0.0"
            assert device["active_assignment"]["id"] == assignment_id

    asyncio.run(scenario())
