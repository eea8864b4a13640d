"""What a device sends in a heartbeat and what it gets back (docs/device-protocol.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bota_ota.core.schemas import InputModel
from bota_ota.firmware.policy import Deferral

OtaState = Literal["downloading", "verifying", "writing", "rebooting", "failed"]


class OtaReport(InputModel):
    model_config = ConfigDict(extra="ignore")

    assignment_id: str = Field(min_length=1, max_length=64)
    state: OtaState
    progress: int | None = Field(None, ge=0, le=100)
    error: str | None = Field(None, max_length=500)


class Heartbeat(InputModel):
    model_config = ConfigDict(extra="ignore")  # newer firmware may send more

    firmware_version: str = Field(min_length=1, max_length=64, examples=["v1.0.0"])
    recording: bool | None = None
    battery: int | None = Field(None, ge=0, le=100)
    network: Literal["wifi", "cellular"] | None = None
    rssi: int | None = Field(None, ge=-200, le=0)
    charging: bool | None = None
    storage_free_kb: int | None = Field(None, ge=0, le=2**53)
    unsynced_recordings: int | None = Field(None, ge=0, le=1_000_000)
    ota: OtaReport | None = None


class OtaManifest(BaseModel):
    assignment_id: str
    version: str
    url: str
    expires_at: datetime
    size: int
    crc32: int
    sha256: str
    signature: str | None = Field(
        None,
        description="Ed25519 signature (base64) of the signed bytes (docs/security.md) over the .bin; "
        "null for an unsigned release",
    )
    key_id: str | None = Field(None, description="The signing key's id (16 hex digits), or null when unsigned")
    security_version: int = Field(0, description="The release's anti-rollback counter (part of the signed bytes)")


class HeartbeatReply(BaseModel):
    heartbeat_interval_s: int
    ota: OtaManifest | None
    ota_deferred: Deferral | None = Field(
        None, description="Why the active (pending or delivered) assignment's manifest was not sent in this reply"
    )
    ota_abort: str | None = Field(
        None,
        description="An assignment the device reports working on that is no longer its active one (cancelled): "
        "stop downloading it and discard what was downloaded; a device already writing flash finishes.",
    )
