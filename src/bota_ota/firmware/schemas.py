from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from bota_ota.core.schemas import InputModel


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    size: int
    crc32: int
    sha256: str
    filename: str


class ReleaseOut(BaseModel):
    id: str
    version: str
    model: str
    notes: str
    released: bool
    created_at: datetime
    created_by: str | None
    bin: ArtifactOut | None
    ufw: ArtifactOut | None


class ReleasePatch(InputModel):
    released: bool | None = None
    notes: str | None = None
