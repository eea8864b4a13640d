from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bota_ota.core.schemas import InputModel

AssignmentStatus = Literal["pending", "delivered", "applied", "failed", "cancelled", "superseded"]


class AssignmentCreate(InputModel):
    release_id: str = Field(min_length=1, max_length=64)
    allow_downgrade: bool = Field(
        False,
        description="Admins only: assign a release older than the version the device reports (audited). "
        "Without it such a release is refused with 422.",
    )


class AssignmentSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    release_id: str
    version: str
    status: str
    created_at: datetime
    delivered_at: datetime | None
    ota_state: str | None
    progress: int | None
    attempts: int = Field(0, description="Failed attempts so far")
    deferred: str | None = Field(None, description="Why the device's last heartbeat did not get it (pending only)")


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    device_id: str
    release_id: str
    version: str
    status: str
    channel: str | None
    created_at: datetime
    created_by: str | None
    delivered_at: datetime | None
    finished_at: datetime | None
    error: str | None
    ota_state: str | None
    progress: int | None
    rollout_id: str | None = Field(None, description="The rollout that made it, if any")
    held: bool = Field(False, description="Held while its rollout is paused: not delivered until resumed")
    downgrade_from: str | None = Field(
        None, description="For a downgrade an admin allowed: the version the device reported when it was made"
    )
    attempts: int = Field(0, description="Failed attempts so far (rollbacks, failures the device may get over)")
    retry_at: datetime | None = Field(None, description="Pending after a failed attempt: not delivered before this")
    deferred: str | None = Field(
        None,
        description="Why the device's last heartbeat did not get it: recording, retry_wait, battery_low, network, "
        "storage or unsynced_recordings",
    )
    policy: dict[str, Any] | None = Field(None, description="The delivery policy overrides in force for it")
    retry_of: str | None = Field(None, description="The failed assignment this one retries")


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    kind: str
    status: str
    detail: dict[str, Any]
    actor: str | None


class AssignmentDetail(AssignmentOut):
    events: list[EventOut]


# ---- the device API ------------------------------------------------------------------------------


# ---- the fleet read model: a device with its active assignment ----------------------------------------


class DeviceOut(BaseModel):
    id: str
    model: str
    name: str | None
    created_at: datetime
    firmware_version: str | None
    last_seen_at: datetime | None
    online: bool
    recording: bool
    network: str | None
    battery: int | None
    rssi: int | None
    ble_connected: bool
    owner: str | None = Field(None, description="E-mail of the app user who owns the device")
    tags: list[str] = Field(default_factory=list, description="The device's tags, sorted")
    active_assignment: AssignmentSummary | None
    decommissioned_at: datetime | None = Field(
        None, description="When the device was taken out of service (null: in service)"
    )


class DeviceCreated(DeviceOut):
    token: str = Field(description="The device's bearer token. Shown once; only its hash is stored.")
    claim_code: str = Field(
        description="Lets the owner claim the device in the app (e.g. printed on its box). Shown once."
    )
