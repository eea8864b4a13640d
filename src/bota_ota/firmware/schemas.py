from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bota_ota.core.schemas import InputModel
from bota_ota.firmware.policy import DeliveryPolicyIn


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
    delivery_policy: dict[str, Any] | None = Field(
        None, description="Overrides of the server's delivery policy for assignments made from now on"
    )


class ReleasePatch(InputModel):
    released: bool | None = None
    notes: str | None = None
    delivery_policy: DeliveryPolicyIn | None = Field(
        None, description="Overrides of the server's delivery policy ({} clears them); applies to new assignments"
    )


@dataclass(frozen=True)
class ReleaseFile:
    """One firmware file of a new release, already received into a temporary file."""

    kind: str  # "bin" or "ufw"
    filename: str  # as the uploader named it; may be empty
    path: Path
    size: int
    crc32: int
    sha256: str


@dataclass(frozen=True)
class NewRelease:
    """A release to create, as the upload's edge (API or portal) read it from the request.

    Values are typed but not yet checked: the firmware service checks the version, model, notes and
    files and names the offending field.
    """

    version: str
    model: str
    notes: str
    draft: bool
    files: tuple[ReleaseFile, ...]  # in the order they arrived

    def file(self, kind: str) -> ReleaseFile | None:
        return next((f for f in self.files if f.kind == kind), None)
