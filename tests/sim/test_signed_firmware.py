"""Signed firmware over HTTP OTA: a real server process, simulated devices with keys built into their
firmware and a security counter (docs/device-protocol.md, "Verifying an image")."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bota_ota.sim.fleet import Fleet
from tests.sim.signed import SIGNER, STRANGER, random_image, signed_release, trust_key
from tests.support.sim import SimServer, run_fleet, start_fleet

pytestmark = pytest.mark.e2e


def _all(server: SimServer, assignment_ids: list[str], status: str) -> bool:
    return set(server.statuses(assignment_ids).values()) == {status}


def _never_flashed(server: SimServer, assignment_id: str) -> None:
    """The device refused the image after verifying it: it never reported writing or rebooting."""
    detail = server.assignment(assignment_id)
    told = [e["detail"].get("state") for e in detail["events"] if e["kind"] == "progress"]
    assert "writing" not in told and "rebooting" not in told, detail["events"]


class RewritingTransport(httpx.AsyncHTTPTransport):
    """Heartbeat replies with their manifest changed on the way: what a compromised server would send."""

    def __init__(self, rewrite: Callable[[dict[str, Any]], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.url.path != "/api/device/v1/heartbeat" or response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        if body.get("ota"):
            self.rewrite(body["ota"])
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(200, headers=headers, content=json.dumps(body).encode(), request=request)


def test_a_signed_release_is_applied_and_raises_each_devices_counter(sim_server: SimServer) -> None:
    key_id = trust_key(sim_server)
    release = signed_release(sim_server, "v1.1.0", security_version=2, bin=random_image(120_000))

    async def scenario() -> None:
        config = sim_server.config(4, prefix="G")
        config.trusted_keys = [SIGNER.public_key()]
        config.security_version = 1
        fleet = await start_fleet(sim_server, config)
        manifests: list[dict[str, Any]] = []
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            _watch_manifests(fleet, manifests)
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "applied"))
            assert fleet.versions() == {"v1.1.0": 4}
            assert [d.security_version for d in fleet.devices] == [2, 2, 2, 2]
            assert fleet.stats().failed == {}
        # What the devices verified: the manifest carried the .bin's signature, its key and security version.
        assert manifests and {(m["key_id"], m["security_version"]) for m in manifests} == {(key_id, 2)}
        assert all(len(m["signature"]) == 88 for m in manifests)

    asyncio.run(scenario())


def _watch_manifests(fleet: Fleet, seen: list[dict[str, Any]]) -> None:
    assert fleet.net is not None

    async def record(response: httpx.Response) -> None:
        if response.request.url.path == "/api/device/v1/heartbeat" and response.status_code == 200:
            manifest = json.loads(await response.aread()).get("ota")
            if manifest:
                seen.append(manifest)

    fleet.net.heartbeats.event_hooks = {"response": [record]}


def test_devices_that_trust_another_key_refuse_it_and_the_assignment_fails_at_once(sim_server: SimServer) -> None:
    trust_key(sim_server)
    release = signed_release(sim_server, "v1.2.0", security_version=0, bin=random_image(80_000))

    async def scenario() -> None:
        config = sim_server.config(2, prefix="K")
        config.trusted_keys = [STRANGER.public_key()]
        fleet = await start_fleet(sim_server, config)
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "failed"))
            assert fleet.versions() == {"v1.0.0": 2}
            assert fleet.stats().failed == {"signature_invalid": 2}
            assert fleet.stats().applied == 0
        for assignment_id in assignments.values():
            detail = sim_server.assignment(assignment_id)
            assert detail["error"] == "signature_invalid"
            assert not [e for e in detail["events"] if e["kind"] == "attempt_failed"]  # final at once
            _never_flashed(sim_server, assignment_id)

    asyncio.run(scenario())


def test_a_tampered_image_is_refused_even_when_its_checksums_are_made_to_match(sim_server: SimServer) -> None:
    """The stored .bin is altered after the upload, and the manifest's CRC32 and SHA-256 are changed to match
    it, as a compromised server or store could: every checksum passes, the signature does not."""
    trust_key(sim_server)
    image = random_image(100_000)
    release = signed_release(sim_server, "v1.3.0", security_version=1, bin=image)
    (stored,) = [p for p in Path(sim_server.proc.data_dir).rglob("*") if p.is_file() and p.read_bytes() == image]
    tampered = bytearray(image)
    tampered[50_000] ^= 0xFF
    stored.write_bytes(bytes(tampered))

    def match_the_tampered_file(manifest: dict[str, Any]) -> None:
        manifest["crc32"] = zlib.crc32(tampered)
        manifest["sha256"] = hashlib.sha256(tampered).hexdigest()

    async def scenario() -> None:
        config = sim_server.config(1, prefix="T")
        config.trusted_keys = [SIGNER.public_key()]
        fleet = await start_fleet(sim_server, config)
        (assignment_id,) = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"]).values()
        async with fleet:
            assert fleet.net is not None
            await fleet.net.heartbeats.aclose()
            fleet.net.heartbeats = httpx.AsyncClient(
                base_url=sim_server.url, transport=RewritingTransport(match_the_tampered_file)
            )
            await run_fleet(fleet, lambda: _all(sim_server, [assignment_id], "failed"))
            device = fleet.devices[0]
            assert device.stats.failed == {"signature_invalid": 1}
            assert (device.firmware_version, device.security_version) == ("v1.0.0", 0)
        assert sim_server.assignment(assignment_id)["error"] == "signature_invalid"
        _never_flashed(sim_server, assignment_id)

    asyncio.run(scenario())


def test_an_older_security_version_is_refused_as_a_rollback_and_the_assignment_fails_at_once(
    sim_server: SimServer,
) -> None:
    trust_key(sim_server)
    release = signed_release(sim_server, "v1.4.0", security_version=2, bin=random_image(60_000))

    async def scenario() -> None:
        config = sim_server.config(2, prefix="V")
        config.trusted_keys = [SIGNER.public_key()]
        config.security_version = 3
        fleet = await start_fleet(sim_server, config)
        assignments = sim_server.assign_all([c.device_id for c in fleet.credentials], release["id"])
        async with fleet:
            await run_fleet(fleet, lambda: _all(sim_server, list(assignments.values()), "failed"))
            assert fleet.stats().failed == {"rollback_refused": 2}
            assert [(d.firmware_version, d.security_version) for d in fleet.devices] == [("v1.0.0", 3)] * 2
        for assignment_id in assignments.values():
            detail = sim_server.assignment(assignment_id)
            # Final at once, like signature_invalid: no second attempt fetches the same image again.
            assert detail["error"] == "rollback_refused"
            assert not [e for e in detail["events"] if e["kind"] == "attempt_failed"]
            _never_flashed(sim_server, assignment_id)

    asyncio.run(scenario())
