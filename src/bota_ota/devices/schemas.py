from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bota_ota.core.schemas import InputModel

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


class DeviceToken(BaseModel):
    id: str
    token: str


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    kind: str
    actor: str | None
    detail: dict[str, Any]
