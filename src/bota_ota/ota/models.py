from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bota_ota.core.database import Base, UTCDateTime, new_id, utcnow

ASSIGNMENT_STATUSES = ("pending", "delivered", "applied", "failed", "cancelled", "superseded")
ACTIVE_STATUSES = ("pending", "delivered")
# superseded: the device reported a newer version than the assignment's, so it is never delivered again.
FINAL_STATUSES = ("applied", "failed", "cancelled", "superseded")

_ACTIVE_WHERE = text("status IN ('pending', 'delivered')")


class Assignment(Base):
    """One release assigned to one device; see docs/architecture.md for the state machine."""

    __tablename__ = "assignments"
    __table_args__ = (
        CheckConstraint("status in ('pending','delivered','applied','failed','cancelled','superseded')", name="status"),
        # The "one active assignment per device" rule lives in the database, so two concurrent requests
        # can never both succeed.
        Index(
            "uq_assignments_one_active_per_device",
            "device_id",
            unique=True,
            sqlite_where=_ACTIVE_WHERE,
            postgresql_where=_ACTIVE_WHERE,
        ),
        Index("ix_assignments_status_created_at", "status", "created_at"),
        Index("ix_assignments_device_id_created_at", "device_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="RESTRICT"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    channel: Mapped[str | None] = mapped_column(String(8))  # "http" or "ble", once delivered
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    ota_state: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[int | None] = mapped_column(Integer)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivery_count: Mapped[int] = mapped_column(Integer, default=0)  # recorded deliveries (delivered + redelivered)
    # When the URL of the last recorded delivery expires: a "redelivered" event is recorded only after it.
    delivery_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The rollout that made it, if any (rollouts/); its pending assignments are held while it is paused:
    # a held assignment is not delivered, over HTTP or offered in the app, until released.
    rollout_id: Mapped[str | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"), index=True)
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Set only when an admin assigned a release older than the device's reported version (allow_downgrade):
    # the version it reported then. Written once, at creation (the cache triggers need not watch it). The
    # device reporting that version again does not supersede the downgrade; a version newer than it does.
    downgrade_from: Mapped[str | None] = mapped_column(String(64))
    # Failed attempts so far (a rollback, or a failure the device may get over): at max_attempts the
    # assignment fails. Between attempts it is pending again and not delivered before retry_at.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Why the device's last heartbeat did not get it (firmware/policy.py: battery_low, network, ...), or
    # None; written only when it changes.
    deferred: Mapped[str | None] = mapped_column(String(24))
    # The delivery policy overrides in force (the release's, then the rollout's), fixed when it is made.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A retry of a failed assignment: the one it retries.
    retry_of: Mapped[str | None] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"))

    events: Mapped[list[AssignmentEvent]] = relationship(
        back_populates="assignment", cascade="all, delete-orphan", order_by="AssignmentEvent.seq"
    )


class AssignmentEvent(Base):
    """Every change of an assignment, with time and detail, in order."""

    __tablename__ = "assignment_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # the assignment's status after this event
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str | None] = mapped_column(String(200))

    assignment: Mapped[Assignment] = relationship(back_populates="events")
