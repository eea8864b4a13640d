from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from bota_ota.core.schemas import InputModel
from bota_ota.firmware.policy import DeliveryPolicyIn


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    size: int
    crc32: int
    sha256: str
    filename: str
    signature: str | None = Field(None, description="Ed25519 signature (base64) of docs/security.md's signed bytes")
    key_id: str | None = Field(None, description="The trusted signing key that verified the signature")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def signed(self) -> bool:
        return self.signature is not None


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
    security_version: int = Field(0, description="Anti-rollback counter, part of the signed bytes")
    security_floor: bool = Field(False, description="Marked as its model's security floor (docs/security.md)")
    installable: bool = Field(True, description="Whether it may be assigned or deployed now")
    unfit_reason: str | None = Field(None, description="Why it may not be assigned or deployed (else null)")


class ReleasePatch(InputModel):
    released: bool | None = None
    notes: str | None = None
    delivery_policy: DeliveryPolicyIn | None = Field(
        None, description="Overrides of the server's delivery policy ({} clears them); applies to new assignments"
    )
    security_floor: bool | None = Field(
        None,
        description="Mark (true) or unmark the release as its model's security floor (admin). Marking cancels "
        "active assignments of the model's releases below the floor and pauses their rollouts",
    )


class SigningKeyCreate(InputModel):
    name: str = Field(min_length=1, max_length=200, description="Who or what signs with it, e.g. 'release-2026'")
    public_key: str = Field(
        min_length=1,
        max_length=4096,
        description="Ed25519 public key: PEM (SubjectPublicKeyInfo, as `bota-ota keys generate` writes to NAME.pub), "
        "or its 32 raw bytes as base64 or hex",
    )
    models: list[str] = Field(min_length=1, max_length=16, description="The models it signs for (bota-pin, …)")


class SigningKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key_id: str
    name: str
    public_key: str = Field(description="PEM, SubjectPublicKeyInfo")
    models: list[str]
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None


class SigningKeyRevoked(SigningKeyOut):
    assignments_cancelled: int = Field(description="Active assignments of releases it signed, now cancelled")
    rollouts_paused: int = Field(description="Scheduled or running rollouts of those releases, now paused")


class ModelOut(BaseModel):
    model: str = Field(description="The model's slug: bota-pin, bota-pin-pro or bota-note")
    name: str
    require_signed: bool = Field(description="Uploads must carry a signature for each file")
    security_floor: int = Field(description="The highest security version among releases marked as the floor")
    trusted_keys: list[str] = Field(description="Ids of the non-revoked signing keys trusted for the model")


class ModelPatch(InputModel):
    require_signed: bool


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
    security_version: int = 0
    # A signature file's bytes per file kind ("bin", "ufw"), as sent (bin_sig, ufw_sig): not yet parsed.
    signatures: dict[str, bytes] = field(default_factory=dict)

    def file(self, kind: str) -> ReleaseFile | None:
        return next((f for f in self.files if f.kind == kind), None)
