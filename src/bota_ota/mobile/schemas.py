from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from bota_ota.core.schemas import InputModel
from bota_ota.transparency.schemas import ReleaseInLog


class Login(InputModel):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=200)


class LoginReply(BaseModel):
    token: str
    expires_at: datetime


class AppUserCreate(InputModel):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=8, max_length=200)


class AppUserOut(BaseModel):
    id: str
    email: str
    created_at: datetime
    devices: int


class OwnerSet(InputModel):
    email: str | None = Field(None, max_length=254, description="The app user's e-mail; null removes the owner")


class Claim(InputModel):
    id: str = Field(min_length=1, max_length=64)
    claim_code: str = Field(min_length=1, max_length=32)


class AppDevice(BaseModel):
    id: str
    model: str
    name: str | None
    firmware_version: str | None
    last_seen_at: datetime | None
    recording: bool
    battery: int | None
    ble_connected: bool


class UfwRelease(BaseModel):
    id: str
    version: str
    size: int
    crc32: int
    sha256: str
    url: str
    expires_at: datetime
    signature: str | None = Field(
        description="The .ufw's Ed25519 release signature (base64, docs/security.md), which the device checks "
        "again before it installs the image; null if the release is unsigned"
    )
    key_id: str | None = Field(description="Id of the signing key that made `signature` (16 hex digits), or null")
    security_version: int = Field(description="The release's anti-rollback counter, part of the signed bytes")
    transparency: ReleaseInLog | None = Field(
        description="Where the release is in the public transparency log, with an inclusion proof and the signed "
        "tree head it leads to; null when the release is not in the log (e.g. a draft an operator assigned)"
    )


class AssignedUpdate(BaseModel):
    """The device's active assignment, as the app is told of it."""

    id: str
    version: str
    status: Literal["pending", "delivered"]
    over_ble: bool = Field(
        description="Whether the app can install it: its release has a .ufw. If false, only the device itself "
        "can, over WiFi/4G (HTTP OTA)"
    )


class FirmwareUpdate(BaseModel):
    update_available: bool = Field(description="True when `release` is a .ufw for the app to install over BLE")
    reason: Literal["assignment", "assignment_http_only", "newer_release"] | None
    assignment_id: str | None
    release: UfwRelease | None
    assignment: AssignedUpdate | None = Field(
        None, description="The device's active assignment, if any (not a held one), whether or not it has a .ufw"
    )
    message: str | None = Field(
        None, description="For people: why no release is offered while one is assigned, or why it cannot start now"
    )
    blocked: Literal["recording", "security"] | None = Field(
        None,
        description="Why the update cannot be installed: `recording` — the offered update cannot start now, the "
        "device's last known state says it is recording (starting it is refused with 409 until a relay says the "
        "recording ended); `security` — the assigned release is not offered at all (`release` is null): it is "
        "below its model's security floor or signed by a revoked key (`message` says which)",
    )


class BleMode(InputModel):
    connected: bool


class BleOta(InputModel):
    release_id: str = Field(min_length=1, max_length=64)
    assignment_id: str | None = Field(None, max_length=64)
    state: Literal["started", "completed", "failed"]
    error: str | None = Field(None, max_length=500)


class BleOtaReply(BaseModel):
    recorded: bool
    assignment_id: str | None
    assignment_status: str | None


class RelayReply(BaseModel):
    heartbeat_interval_s: int
    ota: None = Field(None, description="Always null: the relay never delivers OTA manifests")
    ble_connected: bool
