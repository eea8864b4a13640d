from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bota_ota.core.schemas import InputModel

AssignmentStatus = Literal["pending", "delivered", "applied", "failed", "cancelled"]


class AssignmentCreate(InputModel):
    release_id: str = Field(min_length=1, max_length=64)


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
