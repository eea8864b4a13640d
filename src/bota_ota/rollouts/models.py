from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bota_ota.core.database import Base, UTCDateTime, new_id, utcnow

ROLLOUT_STATUSES = ("scheduled", "running", "paused", "completed", "cancelled")
OPEN_STATUSES = ("scheduled", "running", "paused")
STAGE_STATUSES = ("waiting", "running", "done")
# A member of a rollout: waiting (to be assigned), assigned (has an assignment of this rollout), busy
# (another assignment is active: joins when it ends), up_to_date (skipped: on the version or newer).
MEMBER_STATES = ("waiting", "assigned", "busy", "up_to_date")


class Rollout(Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        CheckConstraint("status in ('scheduled','running','paused','completed','cancelled')", name="status"),
        CheckConstraint("advance in ('auto','manual')", name="advance"),
        Index("ix_rollouts_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="RESTRICT"), index=True)
    model: Mapped[str] = mapped_column(String(32))  # the release's: the target is always narrowed to it
    version: Mapped[str] = mapped_column(String(64))  # the release's, as uploaded
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    paused_reason: Mapped[str | None] = mapped_column(Text)
    # {"group_id": ...} or {"filter": {...}}: a group is read whenever the rollout evaluates its target.
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    stages: Mapped[list[float]] = mapped_column(JSON)  # cumulative percentages, ending at 100
    advance: Mapped[str] = mapped_column(String(8), default="auto")
    success_threshold_pct: Mapped[float] = mapped_column(Float)
    failure_threshold_pct: Mapped[float] = mapped_column(Float)
    failure_min_devices: Mapped[int] = mapped_column(Integer)
    stage_window_s: Mapped[int] = mapped_column(Integer)
    include_new_devices: Mapped[bool] = mapped_column(Boolean, default=True)
    # Overrides of the delivery policy (over the release's) for the assignments it makes.
    delivery_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    current_stage: Mapped[int] = mapped_column(Integer, default=-1)  # the last started stage; -1: none yet
    # When the engine last looked for devices that came to match the target (include_new_devices).
    members_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    stage_rows: Mapped[list[RolloutStage]] = relationship(
        order_by="RolloutStage.index", cascade="all, delete-orphan", lazy="selectin"
    )


class RolloutStage(Base):
    __tablename__ = "rollout_stages"
    __table_args__ = (CheckConstraint("status in ('waiting','running','done')", name="status"),)

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    percent: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Why it is done: "success" (the threshold was met) or "window" (its window ended; see docs/rollouts.md).
    done_reason: Mapped[str | None] = mapped_column(String(16))


class RolloutDevice(Base):
    """A device the rollout has placed in one of its stages, and what became of it."""

    __tablename__ = "rollout_devices"
    __table_args__ = (
        CheckConstraint("state in ('waiting','assigned','busy','up_to_date')", name="state"),
        Index("ix_rollout_devices_rollout_id_state", "rollout_id", "state"),
    )

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True)
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    # The rollout's latest assignment for the device (a retry makes a new one).
    assignment_id: Mapped[str | None] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RolloutEvent(Base):
    """What happened to a rollout, by whom ("system" for the engine), with detail."""

    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_rollout_id_seq", "rollout_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
