from __future__ import annotations

import itertools
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator, model_validator

from bota_ota.core.schemas import InputModel
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.firmware.policy import DeliveryPolicyIn

RolloutStatus = Literal["scheduled", "running", "paused", "completed", "cancelled"]
MAX_STAGES = 10
DEFAULT_STAGE_WINDOW_S = 24 * 3600


def check_stages(stages: list[float]) -> list[float]:
    rounded = [round(p, 2) for p in stages]
    if any(p <= 0 or p > 100 for p in rounded):
        raise ValueError("each stage is a percentage above 0 and at most 100")
    if any(b <= a for a, b in itertools.pairwise(rounded)):
        raise ValueError("stages must increase (they are cumulative: 1, 10, 100)")
    if rounded[-1] != 100:
        raise ValueError("the last stage must be 100")
    return rounded


Stages = Annotated[
    list[float],
    Field(
        min_length=1,
        max_length=MAX_STAGES,
        description="Cumulative percentages of the target, increasing, ending at 100 (steps of 0.01)",
    ),
    AfterValidator(check_stages),
]


class RolloutTarget(InputModel):
    """A group or a filter, exactly one of them.

    One model with two optional fields rather than a union of two models: a bad value then gets the name a
    user wrote (``target.filter.colour``), not one per union member."""

    group_id: str | None = Field(None, min_length=1, max_length=64, description="A saved group")
    filter: DeviceFilter | None = Field(None, description="A device filter")

    @model_validator(mode="after")
    def _exactly_one(self) -> RolloutTarget:
        if (self.group_id is None) == (self.filter is None):
            raise ValueError('give exactly one of "group_id" and "filter"')
        return self


class RolloutCreate(InputModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    release_id: str = Field(min_length=1, max_length=64)
    target: RolloutTarget = Field(
        description='{"group_id": ...} or {"filter": {...}}; always narrowed to the release\'s model'
    )
    stages: Stages = Field(default_factory=lambda: [1.0, 10.0, 100.0])
    advance: Literal["auto", "manual"] = "auto"
    success_threshold_pct: float = Field(95.0, gt=0, le=100)
    failure_threshold_pct: float = Field(5.0, ge=0, le=100)
    failure_min_devices: int = Field(3, ge=1, le=1_000_000)
    stage_window_s: int = Field(
        DEFAULT_STAGE_WINDOW_S,
        ge=60,
        le=90 * 24 * 3600,
        description="After this long a stage no longer waits for devices it has not reached (offline, busy)",
    )
    start_at: datetime | None = Field(None, description="Start later; null starts at once")
    include_new_devices: bool = True
    delivery_policy: DeliveryPolicyIn | None = Field(
        None,
        description="Overrides of the delivery policy for the assignments it makes, over the release's "
        "(key by key; the rollout's win)",
    )

    @field_validator("start_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-24T08:00:00Z")
        return value


class StageCounts(BaseModel):
    """The stage's assignments by status; ``retrying`` and ``deferred`` are of the pending ones."""

    pending: int = 0
    delivered: int = 0
    applied: int = 0
    failed: int = 0
    cancelled: int = 0
    superseded: int = Field(0, description="The device reported a newer version: up to date, a success")
    retrying: int = Field(0, description="Of the pending: waiting for another attempt after a failed one")
    deferred: int = Field(0, description="Of the pending: the device's last heartbeat did not get it")
    deferred_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="The deferred ones by reason: recording, retry_wait, battery_low, network, storage, "
        "unsynced_recordings",
    )


class StageOut(BaseModel):
    index: int
    percent: float
    devices: int = Field(description="Devices placed in this stage (skipped ones included)")
    status: Literal["waiting", "running", "done"]
    done_reason: str | None = Field(None, description="success, or window (its window ended)")
    started_at: datetime | None
    finished_at: datetime | None
    counts: StageCounts


class Skipped(BaseModel):
    up_to_date: int = 0
    busy: int = 0


class Totals(BaseModel):
    targeted: int = Field(description="Devices placed in started stages")
    assigned: int
    applied: int
    superseded: int = Field(description="Reported a newer version than the release's: up to date")
    failed: int
    deferred: int = Field(description="Pending, and the device's last heartbeat did not get it")
    waiting_offline: int = Field(description="Assigned but not yet reached (pending), in stages that are done")
    skipped: Skipped


class ReleaseRef(BaseModel):
    id: str
    version: str
    model: str


class RolloutOut(BaseModel):
    id: str
    name: str
    release: ReleaseRef
    status: RolloutStatus
    paused_reason: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    start_at: datetime | None
    target: dict[str, Any]
    advance: str
    success_threshold_pct: float
    failure_threshold_pct: float
    failure_min_devices: int
    stage_window_s: int
    include_new_devices: bool
    delivery_policy: dict[str, Any] | None = Field(
        None, description="The rollout's overrides of the delivery policy (over the release's), as given"
    )
    current_stage: int = Field(description="Index of the last started stage; -1 before the start")
    stages: list[StageOut]
    totals: Totals
    failures_by_error: dict[str, int]
    deferred_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Pending assignments the devices' last heartbeats did not get, by reason"
    )


class RolloutEventOut(BaseModel):
    at: datetime
    kind: str
    actor: str
    detail: dict[str, Any]


class RolloutDetail(RolloutOut):
    events: list[RolloutEventOut]


class RetryResult(BaseModel):
    retried: int


class PreviewRequest(InputModel):
    release_id: str = Field(min_length=1, max_length=64)
    target: RolloutTarget
    stages: Stages = Field(default_factory=lambda: [1.0, 10.0, 100.0])


class StagePreview(BaseModel):
    index: int
    percent: float
    devices: int = Field(description="About how many of the target's devices the stage will hold")


class Preview(BaseModel):
    matching: int = Field(description="Devices of the release's model matching the target now")
    up_to_date: int = Field(description="Of those, already on the release's version or newer: skipped")
    busy: int = Field(description="Of those, with another active assignment: they join when it ends")
    stages: list[StagePreview]
