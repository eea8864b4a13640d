"""The reference mobile app: the whole Bluetooth OTA flow of docs/app-api.md against a real server.

login → connect over BLE → check that the device's serial is the id to update → relay the device's
status → check for an update → check the offer's release log proof (given the log's key) → confirm →
download the .ufw and check it → report ``started`` → push it over BLE with its signature
(docs/ble-ota.md) → report ``completed`` or ``failed`` → reconnect after the reboot and relay the new
version → end BLE mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bota_ota.sim.ble.central import (
    DeviceInfo,
    OtaDisconnectedError,
    OtaError,
    OtaTransport,
    OtaWrongDeviceError,
    push_image,
    wrong_device_message,
)
from bota_ota.sim.ble.profile import KEY_ID_SIZE, Result, Signature
from bota_ota.sim.release_log import ProofError, check_offer
from bota_ota.sim.verify import decode_signature

log = logging.getLogger(__name__)

Confirm = Callable[[dict[str, Any]], Awaitable[bool] | bool]
Progress = Callable[[int, int], None]


class AppError(Exception):
    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class WrongDeviceError(AppError):
    """The phone is connected to another device than the one it was asked to update (its Serial Number
    String is another id, or missing). Raised before anything is relayed for, or written to, that device."""

    def __init__(self, expected: str, actual: str | None) -> None:
        super().__init__(wrong_device_message(expected, actual))
        self.expected = expected
        self.actual = actual


@dataclass
class AppOutcome:
    """What happened, in the words the app would show."""

    outcome: str  # up_to_date, declined, refused (the app would not install it: ``reason``), applied, failed
    version_before: str | None = None
    version_after: str | None = None
    offered: dict[str, Any] | None = None
    result: str | None = None  # the BLE result code name, or "disconnected"
    sent: int = 0
    elapsed_s: float = 0.0
    relays: int = 0
    relay_replies: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None  # why the app refused the offer, in words for the user


def offered_signature(release: dict[str, Any]) -> Signature | None:
    """What SIGNED_START carries, from the offered release; None when it is not signed. Raises ``AppError``
    when its signature or key id is malformed."""
    text, key = release.get("signature"), release.get("key_id")
    if text is None:
        return None
    signature = decode_signature(text)
    try:
        key_bytes = bytes.fromhex(key) if isinstance(key, str) else b""
    except ValueError:
        key_bytes = b""
    if signature is None or len(key_bytes) != KEY_ID_SIZE:
        raise AppError("the offered release's signature or key id is malformed: not installing it")
    return Signature(security_version=int(release.get("security_version") or 0), key_id=key_bytes, signature=signature)


class ReferenceApp:
    """``log_key``: the release log's public key. With it, the app installs only releases the log proves
    were published (``check_release_log``); without it, it skips that check with a warning."""

    def __init__(self, server: str, *, timeout: float = 30.0, log_key: Ed25519PublicKey | None = None) -> None:
        self.http = httpx.AsyncClient(base_url=server.rstrip("/"), timeout=timeout)
        self.token: str | None = None
        self.log_key = log_key

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = await self.http.request(method, "/api/app/v1" + url, headers=headers, **kw)
        if r.status_code >= 400:
            try:
                problem = dict(r.json())
            except ValueError:
                problem = {}
            detail = problem.get("detail", r.text)
            raise AppError(f"{method} {url}: {r.status_code} {detail}", status=r.status_code, problem=problem)
        return r.json()

    async def login(self, email: str, password: str) -> None:
        self.token = (await self._call("POST", "/auth/login", json={"email": email, "password": password}))["token"]

    async def device(self, device_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/devices/{device_id}"))

    async def relay(self, device_id: str, status: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._call("POST", f"/devices/{device_id}/relay", json=status))

    async def check(self, device_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/devices/{device_id}/firmware-update"))

    async def report(self, device_id: str, offer: dict[str, Any], state: str, error: str | None = None) -> None:
        body: dict[str, Any] = {"release_id": offer["release"]["id"], "state": state}
        if offer.get("assignment_id"):
            body["assignment_id"] = offer["assignment_id"]
        if error:
            body["error"] = error
        await self._call("POST", f"/devices/{device_id}/ble-ota", json=body)

    async def end_ble(self, device_id: str) -> None:
        await self._call("POST", f"/devices/{device_id}/ble", json={"connected": False})

    def check_release_log(self, offer: dict[str, Any], model: str) -> None:
        """Raise ``ProofError`` unless the offer's ``transparency`` proves that the release log holds this
        release (docs/ble-ota.md, "What the app checks before it installs")."""
        if self.log_key is None:
            log.warning("no release log key given: installing without checking the release log")
            return
        release = offer["release"]
        check_offer(release, release.get("transparency"), model=model, log_key=self.log_key)

    async def download(self, release: dict[str, Any]) -> bytes:
        """Fetch the .ufw and check it against what the server promised (size, CRC32, SHA-256)."""
        r = await self.http.get(release["url"])
        if r.status_code != 200:
            raise AppError(f"downloading the update failed: HTTP {r.status_code}")
        image = r.content
        if len(image) != release["size"]:
            raise AppError(f"the download has {len(image)} bytes, expected {release['size']}")
        if zlib.crc32(image) & 0xFFFFFFFF != release["crc32"] or hashlib.sha256(image).hexdigest() != release["sha256"]:
            raise AppError("the download does not match its checksums")
        return image

    async def update_device(
        self,
        device_id: str,
        transport: OtaTransport,
        *,
        confirm: Confirm = lambda offer: True,
        rate_kbps: float | None = None,
        disconnect_at: float | None = None,
        on_progress: Progress | None = None,
        corrupt: bool = False,
        reconnect_timeout_s: float = 30.0,
    ) -> AppOutcome:
        """Run the whole flow for one device the user owns (``login`` first).

        Raises ``WrongDeviceError`` when the peer's serial is not ``device_id``: checked on every read before
        its status is relayed (so after every connect, before the first relay) and again by ``push_image``
        before START.
        """
        outcome = AppOutcome(outcome="failed")
        relay_task: asyncio.Task[None] | None = None
        stop_relay = asyncio.Event()
        relayed = False  # BLE mode was (possibly) started on the server: end it when done

        async def read_checked() -> DeviceInfo:
            info = await transport.read_info()
            if info.serial != device_id:
                raise WrongDeviceError(device_id, info.serial)
            return info

        async def read_and_relay() -> dict[str, Any]:
            nonlocal relayed
            info = await read_checked()
            status: dict[str, Any] = {"firmware_version": info.firmware_version, "battery": info.battery}
            if info.recording is not None:
                status["recording"] = info.recording
            relayed = True
            reply = await self.relay(device_id, status)
            outcome.relays += 1
            outcome.relay_replies.append(reply)
            return {"info": info, "reply": reply}

        async def keep_relaying(interval_s: float) -> None:
            while not stop_relay.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_relay.wait(), timeout=interval_s)
                if stop_relay.is_set() or not transport.connected:
                    continue
                # A wrong device (WrongDeviceError, an AppError) is not relayed; push_image refuses it too.
                with contextlib.suppress(OtaError, AppError, httpx.HTTPError):
                    await read_and_relay()

        try:
            await transport.connect()
            first = await read_and_relay()
            outcome.version_before = first["info"].firmware_version
            relay_task = asyncio.create_task(keep_relaying(float(first["reply"]["heartbeat_interval_s"])))
            offer = await self.check(device_id)
            outcome.offered = offer
            if not offer["update_available"]:
                outcome.outcome = "up_to_date"
                return outcome
            # START names the model the server chose the release for, not the one the peer reports: if the
            # phone is connected to another device than ``device_id``, the device refuses with WRONG_MODEL.
            model = (await self.device(device_id))["model"]
            try:
                self.check_release_log(offer, model)
                signed = offered_signature(offer["release"])
            except (ProofError, AppError) as exc:
                outcome.outcome, outcome.reason = "refused", str(exc)
                log.warning("not installing %s: %s", offer["release"]["version"], exc)
                return outcome
            confirmed = confirm(offer)
            if not isinstance(confirmed, bool):
                confirmed = await confirmed
            if not confirmed:
                outcome.outcome = "declined"
                return outcome
            release = offer["release"]
            image = await self.download(release)
            if corrupt:  # a bit flipped between the phone and the device
                image = image[:-1] + bytes([image[-1] ^ 0x01])
            try:
                await self.report(device_id, offer, "started")
            except AppError as exc:
                if exc.status == 409 and exc.problem.get("reason") == "recording":
                    # The server knows the device records (relayed): no transfer starts, nothing is written.
                    outcome.outcome, outcome.result = "failed", "RECORDING"
                    return outcome
                raise
            started = time.monotonic()
            try:
                report = await push_image(
                    transport,
                    image,
                    model=model,
                    version=release["version"],
                    serial=device_id,
                    crc32=release["crc32"],
                    rate_kbps=rate_kbps,
                    on_progress=on_progress,
                    disconnect_at=disconnect_at,
                    signed=signed,
                )
            except OtaDisconnectedError as exc:
                outcome.sent = exc.sent
                outcome.result = "disconnected"
                await self.report(device_id, offer, "failed", "disconnected")
                return outcome
            except OtaWrongDeviceError as exc:  # the link dropped and came back to another device
                await self.report(device_id, offer, "failed", "wrong_device")
                raise WrongDeviceError(exc.expected, exc.actual) from exc
            outcome.sent = report.sent
            outcome.elapsed_s = time.monotonic() - started
            outcome.result = report.result.name
            if report.result is not Result.SUCCESS:
                await self.report(device_id, offer, "failed", report.result.name)
                return outcome
            await self.report(device_id, offer, "completed")
            # The device reboots into the new image; reconnect and relay what it runs now.
            stop_relay.set()
            deadline = time.monotonic() + reconnect_timeout_s
            while True:
                try:
                    if not transport.connected:
                        await transport.connect()
                    after = await read_and_relay()
                    break
                except OtaError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            outcome.version_after = after["info"].firmware_version
            outcome.outcome = "applied" if outcome.version_after == release["version"] else "failed"
            return outcome
        finally:
            stop_relay.set()
            if relay_task is not None:
                await relay_task
            with contextlib.suppress(Exception):
                await transport.disconnect()
            if relayed:
                with contextlib.suppress(AppError, httpx.HTTPError):
                    await self.end_ble(device_id)
