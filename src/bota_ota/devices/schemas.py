from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bota_ota.core.schemas import InputModel
from bota_ota.ota.schemas import AssignmentSummary

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
DEVICE_ID_MESSAGE = "id must be 1-64 characters: letters, digits, '.', '_' or '-' (e.g. BP-000123)"
DeviceModel = Literal["bota-pin", "bota-pin-pro", "bota-note"]


class DeviceCreate(InputModel):
    id: str = Field(description="The device serial, e.g. BP-000123", examples=["BP-000123"])
    model: DeviceModel
    name: str | None = Field(None, max_length=200)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        value = value.strip()
        if not DEVICE_ID_RE.match(value):
            raise ValueError(DEVICE_ID_MESSAGE)
        return value


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
    active_assignment: AssignmentSummary | None


class DeviceCreated(DeviceOut):
    token: str = Field(description="The device's bearer token. Shown once; only its hash is stored.")
    claim_code: str = Field(
        description="Lets the owner claim the device in the app (e.g. printed on its box). Shown once."
    )


class DeviceToken(BaseModel):
    id: str
    token: str


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    kind: str
    actor: str | None
    detail: dict[str, Any]
