"""A real ``bota-ota serve`` process for the simulator tests, and running simulated fleets against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bota_ota.sim.device import Timing
from bota_ota.sim.faults import Faults
from bota_ota.sim.fleet import Fleet, FleetConfig, provision
from tests.support.database import PG_URL
from tests.support.server import ServerProcess, cli, server_env


@dataclass
class SimServer:
    proc: ServerProcess
    api: httpx.Client
    token: str
    tmp: Path

    @property
    def url(self) -> str:
        return self.proc.url

    def release(self, version: str, size: int = 300_000, model: str = "bota-pin") -> dict[str, Any]:
        r = self.api.post(
            "/api/v1/firmware",
            data={"version": version, "model": model},
            files={"bin": (f"{version}.bin", os.urandom(size))},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def assign_all(self, device_ids: list[str], release_id: str) -> dict[str, str]:
        out = {}
        for device_id in device_ids:
            r = self.api.post(f"/api/v1/devices/{device_id}/assignments", json={"release_id": release_id})
            assert r.status_code == 201, r.text
            out[device_id] = r.json()["id"]
        return out

    def statuses(self, assignment_ids: list[str]) -> dict[str, str]:
        """One request for the lot (the newest 1,000 assignments), not one per assignment: the check runs
        every 0.25 s, and the fleet shares the process."""
        wanted = set(assignment_ids)
        rows = self.api.get("/api/v1/assignments", params={"limit": 1000}).json()
        found = {a["id"]: a["status"] for a in rows if a["id"] in wanted}
        missing = wanted - found.keys()
        found.update({a: self.api.get(f"/api/v1/assignments/{a}").json()["status"] for a in missing})
        return found

    def assignment(self, assignment_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/assignments/{assignment_id}").json())

    def config(self, devices: int, *, faults: str = "", prefix: str = "T", seed: int = 7, **timing: Any) -> FleetConfig:
        timing.setdefault("reboot_s", 0.3)
        timing.setdefault("write_s", 0.05)
        timing.setdefault("backoff_base_s", 0.05)
        timing.setdefault("backoff_max_s", 0.5)
        return FleetConfig(
            server=self.url,
            devices=devices,
            prefix=prefix,
            faults=Faults.parse(faults),
            seed=seed,
            timing=Timing(**timing),
            flash_dir=self.tmp / "flash",
            state_file=self.tmp / f"state-{prefix}.json",
            start_spread_s=0.5,
        )


@contextlib.contextmanager
def sim_server_running(tmp_path: Path, database_url: str, **env: str) -> Iterator[SimServer]:
    """A ``bota-ota serve`` process with a 1 s heartbeat interval and 2 s URLs (so expiry happens in a
    test), an operator token for the API, stopped afterwards. ``env`` adds or overrides settings."""
    settings = {
        "BOTA_OTA_HEARTBEAT_INTERVAL_S": "1",
        "BOTA_OTA_SIGNED_URL_TTL_S": "2",
        "BOTA_OTA_SECRET_KEY": "sim-secret",
    }
    server_env_ = server_env(database_url if PG_URL else None, **{**settings, **env})
    proc = ServerProcess(data_dir=tmp_path / "srv", env=server_env_)
    proc.start()
    try:
        created = cli(
            server_env_, "token", "create", "--name", "sim", "--role", "operator", "--data-dir", str(proc.data_dir)
        )
        token = created.stdout.strip().splitlines()[-1]
        with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            yield SimServer(proc=proc, api=api, token=token, tmp=tmp_path)
    finally:
        proc.stop()


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float,
    what: str | Callable[[], str] = "the condition",
) -> None:
    """Wait for an event: ``condition()`` is checked every 0.25 s (a plain function runs in a thread, so
    an event loop running devices keeps going); the timeout only bounds a test that would hang."""
    deadline = time.monotonic() + timeout
    while True:
        done = condition() if asyncio.iscoroutinefunction(condition) else await asyncio.to_thread(condition)
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what() if callable(what) else what}")
        await asyncio.sleep(0.25)


async def run_fleet(
    fleet: Fleet,
    until: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 60.0,
) -> None:
    """Run the fleet until ``until()`` is true (checked every 0.25 s); fail the test on timeout."""
    runner = asyncio.create_task(fleet.run())
    try:
        await wait_until(
            until,
            timeout=timeout,
            what=lambda: f"fleet states {fleet.states()}, versions {fleet.versions()}, stats {fleet.stats()}",
        )
    finally:
        fleet.stop()
        await runner


async def start_fleet(server: SimServer, config: FleetConfig) -> Fleet:
    creds = await provision(config, server.token)
    return Fleet(config, creds)


class SlowStream(httpx.AsyncByteStream):
    """The response body in 16 KiB pieces, 50 ms apart: a download slow enough to be seen in progress."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            for i in range(0, len(chunk), 16384):
                await asyncio.sleep(0.05)
                yield chunk[i : i + 16384]

    async def aclose(self) -> None:
        await self.inner.aclose()


class SlowTransport(httpx.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=SlowStream(response.stream),
            extensions=response.extensions,
            request=request,
        )
