"""Bluetooth OTA end to end: a real server process, a simulated device that is also a Bumble GATT
peripheral, and the reference app as a Bumble central, meeting over in-process virtual controllers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bota_ota.sim.app import ReferenceApp, WrongDeviceError
from bota_ota.sim.ble import Opcode
from bota_ota.sim.ble.central import BumbleOtaTransport
from bota_ota.sim.ble.link import VirtualLink
from bota_ota.sim.ble_device import BleSimDevice, attach_ble
from bota_ota.sim.device import SimDevice
from bota_ota.sim.fleet import Fleet
from bota_ota.sim.verify import key_id as sim_key_id
from tests.sim.signed import SIGNER, STRANGER, log_key, random_image, signed_release, trust_key
from tests.support.sim import SimServer, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.ble]

EMAIL, PASSWORD = "ana@example.com", "bluetooth-pw"


@dataclass
class World:
    server: SimServer
    fleet: Fleet
    device: SimDevice
    ble: BleSimDevice
    app: ReferenceApp
    transport: BumbleOtaTransport

    @property
    def device_id(self) -> str:
        return self.device.device_id

    def assignment(self, assignment_id: str) -> dict[str, Any]:
        return self.server.assignment(assignment_id)

    def events(self) -> list[dict[str, Any]]:
        return list(self.server.api.get(f"/api/v1/devices/{self.device_id}/events").json())


@contextlib.asynccontextmanager
async def world(server: SimServer, *, prefix: str, owner: str = EMAIL, devices: int = 1) -> AsyncIterator[World]:
    """``devices`` Bota Pins owned by ``owner``; the first (``World.device``) has the radio the phone reaches."""
    fleet = await start_fleet(server, server.config(devices, prefix=prefix, reboot_s=0.3))
    if server.api.get("/api/v1/app-users").json() == []:
        r = server.api.post("/api/v1/app-users", json={"email": EMAIL, "password": PASSWORD})
        assert r.status_code == 201, r.text
    for credentials in fleet.credentials:
        r = server.api.put(f"/api/v1/devices/{credentials.device_id}/owner", json={"email": owner})
        assert r.status_code == 200
    link = VirtualLink()
    async with fleet:
        runner = asyncio.create_task(fleet.run())
        device = fleet.devices[0]
        ble = await attach_ble(device, link, index=1, reboot_s=0.3)
        phone = await link.add_device("C0:AA:00:00:00:01", name="phone")
        app = ReferenceApp(server.url)
        await app.login(EMAIL, PASSWORD)
        try:
            yield World(server, fleet, device, ble, app, BumbleOtaTransport(phone, ble.address))
        finally:
            await app.aclose()
            await ble.stop()
            fleet.stop()
            await runner
            await link.close()


def upload(server: SimServer, version: str, ufw: bytes, *, draft: bool = False, bin: bool = True) -> dict[str, Any]:
    files = {"ufw": (f"{version}.ufw", ufw)}
    if bin:
        files["bin"] = (f"{version}.bin", os.urandom(50_000))
    data = {"version": version, "model": "bota-pin"}
    if draft:
        data["draft"] = "true"
    r = server.api.post("/api/v1/firmware", data=data, files=files)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.1)


def test_a_newer_release_is_offered_and_applied_and_drafts_never_are(sim_server: SimServer) -> None:
    upload(sim_server, "v1.1.0", os.urandom(120_000))
    upload(sim_server, "v1.2.0", os.urandom(120_000), draft=True)

    async def scenario() -> None:
        async with world(sim_server, prefix="N") as w:
            await wait_for(lambda: w.device.stats.heartbeats > 0)
            progress: list[tuple[int, int]] = []
            outcome = await w.app.update_device(
                w.device_id, w.transport, on_progress=lambda s, t: progress.append((s, t))
            )
            assert outcome.offered is not None
            assert (outcome.offered["reason"], outcome.offered["release"]["version"]) == ("newer_release", "v1.1.0")
            assert (outcome.outcome, outcome.version_before, outcome.version_after) == ("applied", "v1.0.0", "v1.1.0")
            assert progress[-1] == (120_000, 120_000)
            assert all(r["ota"] is None for r in outcome.relay_replies)
            assert w.device.firmware_version == "v1.1.0"
            kinds = [e["kind"] for e in w.events()]
            assert {"ble_ota.started", "ble_ota.completed"} <= set(kinds)
            # The device speaks for itself again and reports the new version.
            await wait_for(lambda: not w.device.heartbeat_paused)
            server_view = w.server.api.get(f"/api/v1/devices/{w.device_id}").json()
            assert server_view["firmware_version"] == "v1.1.0"
            # v1.2.0 is a draft: never offered, so the app now finds nothing.
            again = await w.app.update_device(w.device_id, w.transport)
            assert again.outcome == "up_to_date"

    asyncio.run(scenario())


def test_a_pending_http_assignment_is_installed_over_ble_and_the_relay_never_delivers(sim_server: SimServer) -> None:
    release = upload(sim_server, "v1.3.0", os.urandom(80_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="P") as w:
            await w.transport.connect()  # the phone connects: the device stops heartbeating ...
            await wait_for(lambda: w.device.heartbeat_paused)
            heartbeats = w.device.stats.heartbeats
            assignment = w.server.api.post(
                f"/api/v1/devices/{w.device_id}/assignments", json={"release_id": release["id"]}
            ).json()
            info = await w.transport.read_info()
            for _ in range(3):  # ... and the app relays; no manifest, the assignment stays pending
                reply = await w.app.relay(w.device_id, {"firmware_version": info.firmware_version})
                assert reply["ota"] is None
                await asyncio.sleep(0.4)
            assert w.assignment(assignment["id"])["status"] == "pending"
            assert w.device.stats.heartbeats == heartbeats
            outcome = await w.app.update_device(w.device_id, w.transport)
            assert outcome.offered is not None and outcome.offered["reason"] == "assignment"
            assert outcome.offered["assignment_id"] == assignment["id"]
            assert outcome.outcome == "applied"
            detail = w.assignment(assignment["id"])
            assert (detail["status"], detail["channel"]) == ("applied", "ble")
            assert [e["kind"] for e in detail["events"]][:3] == ["created", "delivered", "ble_completed"]

    asyncio.run(scenario())


def test_a_disconnect_mid_transfer_restarts_at_offset_zero(sim_server: SimServer) -> None:
    upload(sim_server, "v1.4.0", os.urandom(150_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="X") as w:
            first = await w.app.update_device(w.device_id, w.transport, disconnect_at=0.5)
            assert (first.outcome, first.result) == ("failed", "disconnected")
            assert 0 < first.sent < 150_000
            assert w.device.firmware_version == "v1.0.0"
            second = await w.app.update_device(w.device_id, w.transport)
            assert second.outcome == "applied"
            assert w.ble.peripheral.counters.first_data_offsets == [0, 0]
            failed = [e for e in w.events() if e["kind"] == "ble_ota.failed"]
            assert failed and failed[0]["detail"]["error"] == "disconnected"

    asyncio.run(scenario())


def test_recording_is_refused_and_nothing_is_written(sim_server: SimServer) -> None:
    upload(sim_server, "v1.5.0", os.urandom(60_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="R") as w:
            await w.transport.connect()  # the device pauses its heartbeat: from now on only the app speaks
            await wait_for(lambda: w.device.heartbeat_paused)
            await w.app.relay(w.device_id, {"firmware_version": "v1.0.0", "recording": False})
            w.device.start_recording(3600)
            seen_by_server: list[bool] = []

            def confirm(offer: dict[str, Any]) -> bool:
                # The app has relayed what it read over BLE (Device State): the server knows of the recording.
                seen_by_server.append(w.server.api.get(f"/api/v1/devices/{w.device_id}").json()["recording"])
                return True

            outcome = await w.app.update_device(w.device_id, w.transport, confirm=confirm)
            assert seen_by_server == [True]
            assert (outcome.outcome, outcome.result) == ("failed", "RECORDING")
            assert w.ble.peripheral.counters.flash_bytes_written == 0
            assert w.device.firmware_version == "v1.0.0"
            # The server refused the start (409, reason recording): no transfer was recorded as started.
            assert not [e for e in w.events() if e["kind"] == "ble_ota.started"]
            # The app went away: the device speaks for itself again.
            await wait_for(lambda: not w.device.heartbeat_paused)

    asyncio.run(scenario())


def test_the_app_names_the_servers_model_so_another_models_device_refuses(sim_server: SimServer) -> None:
    upload(sim_server, "v1.7.0", os.urandom(60_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="M") as w:
            # The phone is connected to a Bota Note, not to the Bota Pin the user picked in the app.
            w.ble.peripheral.state.model = "bota-note"
            outcome = await w.app.update_device(w.device_id, w.transport)
            assert (outcome.outcome, outcome.result) == ("failed", "WRONG_MODEL")
            assert w.ble.peripheral.counters.flash_bytes_written == 0
            assert w.device.firmware_version == "v1.0.0"

    asyncio.run(scenario())


def test_a_corrupted_image_fails_the_crc_and_the_old_version_stays(sim_server: SimServer) -> None:
    upload(sim_server, "v1.6.0", os.urandom(60_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="C") as w:
            outcome = await w.app.update_device(w.device_id, w.transport, corrupt=True)
            assert (outcome.outcome, outcome.result) == ("failed", "CRC_MISMATCH")
            assert w.device.firmware_version == "v1.0.0"
            info = await w.transport.read_info() if w.transport.connected else None
            assert info is None or info.firmware_version == "v1.0.0"

    asyncio.run(scenario())


def test_another_users_app_gets_404(sim_server: SimServer) -> None:
    async def scenario() -> None:
        async with world(sim_server, prefix="O") as w:
            r = w.server.api.post("/api/v1/app-users", json={"email": "bob@example.com", "password": "bob-password"})
            assert r.status_code == 201
            bob = ReferenceApp(w.server.url)
            await bob.login("bob@example.com", "bob-password")
            try:
                for call in (
                    bob.device(w.device_id),
                    bob.check(w.device_id),
                    bob.relay(w.device_id, {"firmware_version": "v1.0.0"}),
                ):
                    with pytest.raises(Exception, match="404"):
                        await call
            finally:
                await bob.aclose()
            r = httpx.get(f"{w.server.url}/api/app/v1/devices/{w.device_id}")
            assert r.status_code == 401

    asyncio.run(scenario())


def test_an_app_connected_to_another_device_of_the_model_relays_nothing_and_writes_nothing(
    sim_server: SimServer,
) -> None:
    upload(sim_server, "v1.8.0", os.urandom(60_000))  # an update A would take, and B could too

    async def scenario() -> None:
        async with world(sim_server, prefix="W", devices=2) as w:  # the user owns both: only serials differ
            b = w.device_id  # in front of the phone
            a = next(c.device_id for c in w.fleet.credentials if c.device_id != b)  # the one to update
            await wait_for(lambda: all(d.stats.heartbeats > 0 for d in w.fleet.devices))
            with pytest.raises(WrongDeviceError) as refused:
                await w.app.update_device(a, w.transport)
            assert (refused.value.expected, refused.value.actual) == (a, b)
            assert f"connected to {b}, not to {a}" in str(refused.value)
            counters = w.ble.peripheral.counters
            assert (counters.connections, counters.start_requests, counters.responses) == (1, 0, [])
            assert (counters.flash_erases, counters.chunks_received, counters.chunks_ignored) == (0, 0, 0)
            assert w.device.firmware_version == "v1.0.0"
            assert not w.ble.peripheral.connected
            # The server heard nothing from the app about A (or B): no relay, no BLE mode, no transfer.
            for device_id in (a, b):
                view = w.server.api.get(f"/api/v1/devices/{device_id}").json()
                assert view["ble_connected"] is False
                kinds = [e["kind"] for e in w.server.api.get(f"/api/v1/devices/{device_id}/events").json()]
                assert not [k for k in kinds if k.startswith("ble")], kinds

    asyncio.run(scenario())


def test_app_sim_refuses_another_device_than_the_one_named(sim_server: SimServer) -> None:
    """``bota-ota app-sim --connect-to`` puts BP-APP-2 in front of the phone: the app names both ids and exits 2."""
    upload(sim_server, "v1.9.0", os.urandom(60_000))
    r = sim_server.api.post("/api/v1/app-users", json={"email": EMAIL, "password": PASSWORD})
    assert r.status_code == 201, r.text
    for device_id in ("BP-APP-1", "BP-APP-2"):
        r = sim_server.api.post("/api/v1/devices", json={"id": device_id, "model": "bota-pin"})
        assert r.status_code == 201, r.text
        assert sim_server.api.put(f"/api/v1/devices/{device_id}/owner", json={"email": EMAIL}).status_code == 200
    done = subprocess.run(
        [str(Path(sys.executable).parent / "bota-ota"), "app-sim", "--server", sim_server.url, "--user", EMAIL,
         "--password", PASSWORD, "--device", "BP-APP-1", "--connect-to", "BP-APP-2", "--yes", "--rate", "0"],
        env={**sim_server.proc.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "wrong device: the phone is connected to BP-APP-2, not to BP-APP-1" in " ".join(done.stderr.split())
    for device_id in ("BP-APP-1", "BP-APP-2"):
        kinds = [e["kind"] for e in sim_server.api.get(f"/api/v1/devices/{device_id}/events").json()]
        assert not [k for k in kinds if k.startswith("ble")], kinds


# ---- signed firmware (docs/ble-ota.md, "Signed START" and "What the app checks before it installs") ----


def _trust(w: World, key: Ed25519PrivateKey, counter: int) -> None:
    """Build ``key`` into the device's firmware and set its security counter (its HTTP and BLE sides share them)."""
    w.device.trust.keys = {sim_key_id(key.public_key()): key.public_key()}
    w.device.trust.security_version = counter


def test_a_signed_release_is_checked_against_the_log_pushed_with_its_signature_and_applied(
    sim_server: SimServer,
) -> None:
    trust_key(sim_server)
    release = signed_release(sim_server, "v2.1.0", security_version=2, ufw=random_image(90_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="SG") as w:
            _trust(w, SIGNER, counter=1)
            w.app.log_key = log_key(sim_server)
            outcome = await w.app.update_device(w.device_id, w.transport)
            assert (outcome.outcome, outcome.result, outcome.reason) == ("applied", "SUCCESS", None)
            assert outcome.offered is not None
            offered = outcome.offered["release"]
            assert (offered["id"], offered["security_version"]) == (release["id"], 2)
            assert offered["transparency"] is not None
            counters = w.ble.peripheral.counters
            assert counters.responses[0].request_opcode == Opcode.SIGNED_START
            assert (w.device.firmware_version, w.device.security_version) == ("v2.1.0", 2)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("device_key", "counter", "result"),
    [(STRANGER, 0, "SIGNATURE_INVALID"), (SIGNER, 3, "ROLLBACK_REFUSED")],
    ids=["untrusted-key", "rollback"],
)
def test_the_device_refuses_an_image_it_must_not_install_and_nothing_is_flashed(
    sim_server: SimServer, device_key: Ed25519PrivateKey, counter: int, result: str
) -> None:
    trust_key(sim_server)
    signed_release(sim_server, "v2.2.0", security_version=2, ufw=random_image(70_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="SR") as w:
            _trust(w, device_key, counter=counter)
            outcome = await w.app.update_device(w.device_id, w.transport)
            assert (outcome.outcome, outcome.result) == ("failed", result)
            counters = w.ble.peripheral.counters
            assert (counters.flash_erases, counters.flash_bytes_written, counters.reboots) == (0, 0, 0)
            assert (w.device.firmware_version, w.device.security_version) == ("v1.0.0", counter)
            failed = [e for e in w.events() if e["kind"] == "ble_ota.failed"]
            assert failed and failed[0]["detail"]["error"] == result

    asyncio.run(scenario())


class RewritingTransport(httpx.AsyncHTTPTransport):
    """The app's HTTP, with the firmware-update offer changed on the way (a compromised server or network)."""

    def __init__(self, rewrite: Any) -> None:
        super().__init__()
        self.rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if not request.url.path.endswith("/firmware-update") or response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        if body.get("release"):
            self.rewrite(body["release"])
        return httpx.Response(200, json=body, request=request)


def _another_entry(release: dict[str, Any]) -> None:
    assert release["transparency"] is not None, "the server sent no release log proof to alter"
    release["transparency"]["leaf_index"] += 1


@pytest.mark.parametrize(
    ("log_key_of", "rewrite", "why"),
    [
        ("stranger", None, "tree head is signed by key"),  # the app knows another log key
        ("server", _another_entry, "inclusion proof of log entry"),  # the proof was altered on the way
    ],
)
def test_the_app_refuses_an_offer_whose_log_proof_does_not_verify(
    sim_server: SimServer, log_key_of: str, rewrite: Any, why: str
) -> None:
    trust_key(sim_server)
    signed_release(sim_server, "v2.3.0", security_version=1, ufw=random_image(50_000))

    async def scenario() -> None:
        async with world(sim_server, prefix="SL") as w:
            _trust(w, SIGNER, counter=0)
            w.app.log_key = STRANGER.public_key() if log_key_of == "stranger" else log_key(sim_server)
            if rewrite is not None:
                token = w.app.token
                await w.app.http.aclose()
                w.app.http = httpx.AsyncClient(base_url=w.server.url, transport=RewritingTransport(rewrite))
                w.app.token = token
            confirmed: list[dict[str, Any]] = []
            outcome = await w.app.update_device(w.device_id, w.transport, confirm=lambda o: confirmed.append(o) or True)
            assert outcome.outcome == "refused"
            assert outcome.reason is not None and why in outcome.reason, outcome.reason
            assert confirmed == []  # the user was not even asked
            counters = w.ble.peripheral.counters
            assert (counters.start_requests, counters.flash_erases) == (0, 0)
            assert w.device.firmware_version == "v1.0.0"
            assert not [e for e in w.events() if e["kind"].startswith("ble_ota.")]

    asyncio.run(scenario())
