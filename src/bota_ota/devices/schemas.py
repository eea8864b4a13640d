from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from bota_ota.core.schemas import InputModel
from bota_ota.firmware.versions import InvalidVersion, parse_version

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


# ---- tags and the device filter --------------------------------------------------------------------

MAX_TAGS_PER_DEVICE = 20
MAX_FILTER_IDS = 10_000
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
TAG_MESSAGE = "a tag is a lower-case word of 1-32 letters, digits, '-' or '_' (e.g. beta, eu-west)"
MAX_SEEN_WITHIN_S = 365 * 24 * 3600


def check_tag(value: str) -> str:
    tag = value.strip().lower()
    if not TAG_RE.match(tag):
        raise ValueError(f"{value!r}: {TAG_MESSAGE}")
    return tag


def check_tags(values: list[str]) -> list[str]:
    """Lower-cased, without duplicates, sorted."""
    return sorted({check_tag(v) for v in values})


def _check_ids(values: list[str]) -> list[str]:
    out = []
    for value in values:
        value = value.strip()
        if not DEVICE_ID_RE.match(value):
            raise ValueError(f"{value!r}: {DEVICE_ID_MESSAGE}")
        out.append(value)
    return sorted(set(out))


def _check_version(value: str) -> str:
    try:
        parse_version(value)
    except InvalidVersion as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


Tags = Annotated[list[str], Field(max_length=MAX_TAGS_PER_DEVICE), AfterValidator(check_tags)]


class DeviceFilter(InputModel):
    """Devices matching every given key. ``{}`` matches every device."""

    model: DeviceModel | None = None
    tags: Tags | None = Field(None, description="Devices that have all of these tags")
    ids: Annotated[list[str], Field(max_length=MAX_FILTER_IDS), AfterValidator(_check_ids)] | None = Field(
        None, description="These device ids (serials)"
    )
    firmware_version: str | None = Field(
        None, min_length=1, max_length=64, description="Exactly this reported version (v1.0.1 = 1.0.1)"
    )
    firmware_below: Annotated[str, AfterValidator(_check_version)] | None = Field(
        None,
        description="Reported version lower than this semantic version; devices with no or an unparseable "
        "reported version do not match",
    )
    seen_within_s: int | None = Field(
        None, ge=1, le=MAX_SEEN_WITHIN_S, description="Last heartbeat at most this many seconds ago"
    )
    network: Literal["wifi", "cellular"] | None = Field(None, description="The last reported network")
    q: str | None = Field(None, min_length=1, max_length=100, description="Case-insensitive search in id and name")

    @field_validator("firmware_below")
    @classmethod
    def _one_version_condition(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("firmware_version") is not None:
            raise ValueError("give firmware_version or firmware_below, not both")
        return value

    def as_json(self) -> dict[str, Any]:
        """The normalized filter, with only the keys given: what groups and rollouts store."""
        return self.model_dump(exclude_none=True)


class TagsUpdate(InputModel):
    tags: Tags = Field(description=f"At most {MAX_TAGS_PER_DEVICE} lower-case words; [] removes all")


class BulkTags(InputModel):
    filter: DeviceFilter = Field(description="The devices to change; {} is every device")
    add: Tags = Field(default_factory=list)
    remove: Tags = Field(default_factory=list)


class BulkTagsResult(BaseModel):
    matched: int = Field(description="Devices matching the filter")
    changed: int = Field(description="Devices whose tags changed")


# ---- groups ------------------------------------------------------------------------------------------

# Counted after stripping: "  EU beta  " is the 7-character name "EU beta".
GroupName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class GroupCreate(InputModel):
    name: GroupName
    description: str | None = Field(None, max_length=500)
    filter: DeviceFilter


class GroupUpdate(InputModel):
    name: GroupName | None = None
    description: str | None = Field(None, max_length=500)
    filter: DeviceFilter | None = None


class GroupOut(BaseModel):
    id: str
    name: str
    description: str | None
    filter: dict[str, Any]
    device_count: int = Field(description="Devices matching the filter now")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


# ---- rename and CSV import -----------------------------------------------------------------------------


class DeviceRename(InputModel):
    name: str | None = Field(description="The new name (trimmed, at most 200 characters); null or blank clears it")


class ImportLineErrorOut(BaseModel):
    line: int = Field(description="The line of the file (the header row is line 1)")
    field: str = Field(description="The column: id, model, name, tags or owner")
    detail: str


class ImportCreatedOut(BaseModel):
    line: int
    id: str
    model: str
    name: str | None
    token: str = Field(description="The device's bearer token. Shown once; only its hash is stored.")
    claim_code: str = Field(description="Lets the owner claim the device in the app. Shown once.")


class ImportReportOut(BaseModel):
    dry_run: bool
    valid: int = Field(description="Lines without an error")
    errors: list[ImportLineErrorOut] = Field(description="Every error of every line; none were created if any")
    created: list[ImportCreatedOut] = Field(description="The devices registered (none in a dry run)")
