"""Assignments: create, cancel, list, and the state machine driven by device heartbeats.

    pending ──deliver (heartbeat reply)──► delivered ──version reported──► applied
       │  ╲                                   │  ╲
       │   ╲──version reported──► applied     │   ╲──ota.state=failed──► failed
       │                                      │
       ├──cancel──► cancelled ◄──cancel───────┤
       │                                      │
       └──newer version──► superseded ◄───────┘
          reported (heartbeat or app relay)

applied, failed, cancelled and superseded are final. A release older than the device's reported version
is assigned only when an admin allows the downgrade. See docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Select, case, func, insert, inspect, literal, select, update
from sqlalchemy.orm import Session, selectinload

from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, new_id, note_changed_devices, utcnow
from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import service as devices
from bota_ota.devices.models import Device
from bota_ota.firmware.models import Release
from bota_ota.firmware.security import check_installable
from bota_ota.firmware.versions import is_strictly_newer, supersedes, versions_equal
from bota_ota.ota.models import (
    ACTIVE_STATUSES,
    ASSIGNMENT_STATUSES,
    FINAL_STATUSES,
    Assignment,
    AssignmentEvent,
)

log = logging.getLogger(__name__)


def add_event(assignment: Assignment, kind: str, *, actor: str | None = None, **detail: Any) -> AssignmentEvent:
    event = AssignmentEvent(kind=kind, status=assignment.status, detail=detail, actor=actor, at=utcnow())
    if kind != "progress":
        log.info(
            "assignment %s device=%s version=%s %s (now %s) %s",
            assignment.id,
            assignment.device_id,
            assignment.version,
            kind,
            assignment.status,
            " ".join(f"{k}={v}" for k, v in detail.items()),
        )
    state = inspect(assignment)
    session = state.session
    if state.persistent and session is not None and "events" not in state.dict:
        # Appending to the relationship would first load every earlier event of the assignment (one
        # SELECT per heartbeat that records something); adding the row needs none of them.
        event.assignment_id = assignment.id
        session.add(event)
    else:
        assignment.events.append(event)
    return event


def active_assignment(session: Session, device_id: str, *, lock: bool = False) -> Assignment | None:
    query = select(Assignment).where(Assignment.device_id == device_id, Assignment.status.in_(ACTIVE_STATUSES))
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def create_assignment(
    session: Session,
    *,
    device_id: str,
    release_id: str,
    actor: str,
    allow_downgrade: bool = False,
    retry_of: Assignment | None = None,
) -> Assignment:
    """A pending assignment. A release older than the device's reported version is refused (422) unless
    ``allow_downgrade`` (the caller has checked that an admin asks); the same version is allowed (it is
    applied on the next heartbeat)."""
    # FOR SHARE: decommissioning locks the device (FOR UPDATE) before it cancels the active assignment, so
    # either that cancel sees this assignment or the check below sees the device decommissioned.
    device = session.get(Device, device_id, with_for_update={"read": True})
    if device is None:
        raise NotFound(f"device {device_id} not found")
    if device.decommissioned_at is not None:
        raise Conflict(f"device {device.id} is decommissioned; recommission it before assigning", field="device_id")
    # FOR SHARE: revoking its key or raising its model's floor locks the release (FOR UPDATE) before it
    # cancels the release's active assignments, so either that cancel sees this assignment or the check
    # below sees the revocation (PostgreSQL; SQLite has one writer at a time).
    release = session.get(Release, release_id, with_for_update={"read": True})
    if release is None:
        raise NotFound(f"release {release_id} not found", field="release_id")
    if release.model != device.model:
        raise ValidationFailed(
            f"release {release.version} is for {DEVICE_MODELS[release.model]}, but device {device.id} is a "
            f"{DEVICE_MODELS[device.model]}",
            field="release_id",
        )
    if release.artifact("bin") is None:
        raise ValidationFailed(
            f"release {release.version} has no .bin file, so it cannot be delivered over HTTP OTA "
            "(it can still be installed over Bluetooth from the app)",
            field="release_id",
        )
    # A revoked signing key or a security version below the floor: not even an admin's downgrade.
    check_installable(session, release)
    downgrade_from = device.firmware_version if is_strictly_newer(device.firmware_version, release.version) else None
    if downgrade_from is not None and not allow_downgrade:
        raise ValidationFailed(
            f"release {release.version} is older than {downgrade_from}, the version device {device.id} reports: "
            'assigning it would downgrade the device. Only an admin may, with "allow_downgrade": true',
            field="release_id",
            device_version=downgrade_from,
        )
    existing = active_assignment(session, device.id)
    if existing is not None:
        raise _already_active(device.id, existing)
    assignment = Assignment(
        id=new_id(),
        device_id=device.id,
        release_id=release.id,
        version=release.version,
        status="pending",
        created_by=actor,
        created_at=utcnow(),
        downgrade_from=downgrade_from,
        policy=release.delivery_policy or None,
        retry_of=retry_of.id if retry_of is not None else None,
        attempts=0,
    )
    downgrade: dict[str, Any] = {"downgrade": {"from": downgrade_from, "to": release.version}} if downgrade_from else {}
    if retry_of is not None:
        downgrade["retry_of"] = retry_of.id
    add_event(assignment, "created", actor=actor, release_id=release.id, version=release.version, **downgrade)
    # The partial unique index is the real guard: of two concurrent requests only one insert lands.
    insert_or_raise(session, assignment, lambda: _already_active(device.id, active_assignment(session, device.id)))
    audit.record(
        session,
        actor=actor,
        action="assignment.create",
        target_type="assignment",
        target_id=assignment.id,
        detail={"device_id": device.id, "release_id": release.id, "version": release.version, **downgrade},
    )
    return assignment


def retry_assignment(session: Session, assignment_id: str, *, actor: str, allow_downgrade: bool = False) -> Assignment:
    """A new pending assignment of a failed one's release to the same device, linked to it (``retry_of``).
    The rules of ``create_assignment`` hold (one active assignment, no silent downgrade)."""
    old = get_assignment(session, assignment_id)
    if old.status != "failed":
        raise Conflict(f"assignment {old.id} is {old.status}; only a failed assignment can be retried", field="status")
    return create_assignment(
        session,
        device_id=old.device_id,
        release_id=old.release_id,
        actor=actor,
        allow_downgrade=allow_downgrade,
        retry_of=old,
    )


def _already_active(device_id: str, existing: Assignment | None) -> Conflict:
    if existing is None:
        return Conflict(f"device {device_id} already has an active assignment", field="release_id")
    return Conflict(
        f"device {device_id} already has an active assignment ({existing.version}, {existing.status}); cancel it first",
        field="release_id",
        active_assignment_id=existing.id,
    )


def get_assignment(
    session: Session, assignment_id: str, *, with_events: bool = False, lock: bool = False
) -> Assignment:
    query = select(Assignment).where(Assignment.id == assignment_id)
    if with_events:
        query = query.options(selectinload(Assignment.events))
    if lock:
        query = query.with_for_update()
    assignment = session.scalar(query)
    if assignment is None:
        raise NotFound(f"assignment {assignment_id} not found")
    return assignment


def cancel_assignment(session: Session, assignment_id: str, *, actor: str) -> Assignment:
    assignment = get_assignment(session, assignment_id, lock=True)
    if assignment.status in FINAL_STATUSES:
        raise Conflict(
            f"assignment is already {assignment.status}; only pending or delivered can be cancelled",
            field="status",
        )
    previous = assignment.status
    assignment.status = "cancelled"
    assignment.finished_at = utcnow()
    add_event(assignment, "cancelled", actor=actor, previous=previous)
    audit.record(
        session,
        actor=actor,
        action="assignment.cancel",
        target_type="assignment",
        target_id=assignment.id,
        detail={"device_id": assignment.device_id, "previous": previous},
    )
    session.flush()
    return assignment


@devices.on_decommission
def cancel_for_decommission(session: Session, device: Device, *, actor: str) -> None:
    """A decommissioned device's active assignment (held or not) is cancelled, its event saying why."""
    assignment = active_assignment(session, device.id, lock=True)
    if assignment is None:
        return
    previous = assignment.status
    assignment.status = "cancelled"
    assignment.finished_at = utcnow()
    assignment.held = False
    add_event(assignment, "cancelled", actor=actor, previous=previous, reason="device decommissioned")
    audit.record(
        session,
        actor=actor,
        action="assignment.cancel",
        target_type="assignment",
        target_id=assignment.id,
        detail={"device_id": device.id, "previous": previous, "reason": "device decommissioned"},
    )


def cancel_active_for_releases(session: Session, release_ids: Sequence[str], *, actor: str, **detail: Any) -> int:
    """Cancel every pending and delivered assignment of these releases (held ones included), in two
    set-based statements: one ``cancelled`` event each (with ``detail``, e.g. the ``reason``), then the
    status. Returns how many. The caller locks the releases first (see ``create_assignment``)."""
    if not release_ids:
        return 0
    now = utcnow()
    active = Assignment.release_id.in_(list(release_ids)) & Assignment.status.in_(ACTIVE_STATUSES)
    session.execute(
        insert(AssignmentEvent).from_select(
            ["assignment_id", "at", "kind", "status", "detail", "actor"],
            select(
                Assignment.id,
                literal(now, type_=AssignmentEvent.__table__.c.at.type),
                literal("cancelled"),
                literal("cancelled"),
                case(
                    *(
                        (Assignment.status == status, literal({"previous": status, **detail}, type_=JSON))
                        for status in ACTIVE_STATUSES
                    )
                ),
                literal(actor[:200]),
            ).where(active),
        )
    )
    devices = list(
        session.scalars(
            update(Assignment)
            .where(active)
            .values(status="cancelled", finished_at=now, held=False)
            .returning(Assignment.device_id)
            .execution_options(synchronize_session=False)
        )
    )
    note_changed_devices(session, devices)  # this instance's heartbeat cache drops them at commit
    if devices:
        log.info("cancelled %d active assignments of %d releases: %s", len(devices), len(release_ids), detail)
    return len(devices)


def assignments_query(
    *,
    status: str | None = None,
    device_id: str | None = None,
    release_id: str | None = None,
    rollout_id: str | None = None,
) -> Select[Assignment]:
    """Assignments matching every filter given: a status, or ``active`` for pending and delivered ones."""
    query = select(Assignment)
    if status == "active":
        query = query.where(Assignment.status.in_(ACTIVE_STATUSES))
    elif status:
        query = query.where(Assignment.status == status)
    if device_id:
        query = query.where(Assignment.device_id == device_id)
    if release_id:
        query = query.where(Assignment.release_id == release_id)
    if rollout_id:
        query = query.where(Assignment.rollout_id == rollout_id)
    return query


def list_assignments(
    session: Session,
    *,
    status: str | None = None,
    device_id: str | None = None,
    release_id: str | None = None,
    rollout_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Assignment], int]:
    if status and status not in ASSIGNMENT_STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(ASSIGNMENT_STATUSES)}", field="status")
    query = assignments_query(status=status, device_id=device_id, release_id=release_id, rollout_id=rollout_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Assignment.created_at.desc(), Assignment.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total


def mark_applied(assignment: Assignment, *, reported_version: str, channel: str, actor: str | None = None) -> None:
    assignment.status = "applied"
    assignment.finished_at = utcnow()
    assignment.ota_state = None
    assignment.channel = assignment.channel or channel
    add_event(assignment, "applied", actor=actor, reported_version=reported_version, channel=channel)


def mark_superseded(assignment: Assignment, *, reported_version: str, channel: str, actor: str | None = None) -> None:
    """The device reports a version newer than the assignment's: it has moved past it, and the assignment
    is never delivered again (delivering it now would be a downgrade nobody asked for)."""
    assignment.status = "superseded"
    assignment.finished_at = utcnow()
    assignment.ota_state = None
    add_event(assignment, "superseded", actor=actor, reported_version=reported_version, channel=channel)


# Errors after which another attempt cannot go differently: the assignment fails at once. Every other
# error a device reports (download_failed, power_loss, flash_write, ...) and a rollback end one attempt.
# rollback_refused: the image's security version is below the device's own counter (docs/device-protocol.md).
FINAL_ERRORS = frozenset(
    {"crc_mismatch", "signature_invalid", "rollback_refused", "manifest_invalid", "incompatible_image"}
)
MAX_BACKOFF_S = 6 * 3600


@dataclass(frozen=True)
class AttemptRules:
    """How many attempts an assignment gets and how long to wait between them (settings)."""

    max_attempts: int = 3
    backoff_s: int = 600

    @classmethod
    def of(cls, settings: Settings) -> AttemptRules:
        return cls(max_attempts=settings.max_attempts, backoff_s=settings.retry_backoff_s)

    def wait_s(self, attempts: int) -> int:
        """The wait after the ``attempts``-th failed attempt: the backoff, doubled for each one before."""
        return min(self.backoff_s * (1 << max(attempts - 1, 0)), MAX_BACKOFF_S)


def end_attempt(
    assignment: Assignment, *, error: str, kind: str, rules: AttemptRules, channel: str, **detail: Any
) -> None:
    """A failed attempt (``kind``: ``rolled_back`` or ``attempt_failed``): the assignment is pending again,
    not delivered before ``retry_at``, or, after the last attempt, failed with ``error``. One event either
    way, with the attempt's number."""
    now = utcnow()
    assignment.attempts = (assignment.attempts or 0) + 1
    assignment.ota_state = None
    assignment.progress = None
    assignment.error = error
    if assignment.attempts >= rules.max_attempts:
        assignment.status = "failed"
        assignment.finished_at = now
        assignment.retry_at = None
        assignment.ota_state = "failed"
        add_event(assignment, kind, attempt=assignment.attempts, error=error, final=True, channel=channel, **detail)
        return
    assignment.status = "pending"
    assignment.retry_at = now + timedelta(seconds=rules.wait_s(assignment.attempts))
    assignment.delivery_expires_at = None
    add_event(
        assignment,
        kind,
        attempt=assignment.attempts,
        error=error,
        retry_at=assignment.retry_at.isoformat(),
        channel=channel,
        **detail,
    )


def report_failure(assignment: Assignment, *, error: str, rules: AttemptRules, channel: str) -> None:
    """The device reports ``failed``: a final error fails the assignment at once; any other ends an attempt."""
    if error in FINAL_ERRORS:
        mark_failed(assignment, error=error, channel=channel)
    else:
        end_attempt(assignment, error=error, kind="attempt_failed", rules=rules, channel=channel)


def mark_failed(assignment: Assignment, *, error: str, channel: str, actor: str | None = None) -> None:
    assignment.status = "failed"
    assignment.finished_at = utcnow()
    assignment.error = error
    assignment.ota_state = "failed"
    add_event(assignment, "failed", actor=actor, error=error, channel=channel)


def applied_by_version(assignment: Assignment, firmware_version: str) -> bool:
    return versions_equal(firmware_version, assignment.version)


def superseded_by_version(assignment: Assignment, firmware_version: str) -> bool:
    """Semantically newer than the assignment's version (and than the version an admin's downgrade started
    from); an unparsable version never supersedes."""
    return supersedes(firmware_version, assignment.version, downgrade_from=assignment.downgrade_from)


def count_by_status(session: Session) -> dict[str, int]:
    """Assignments per status, every status present (zero when there are none)."""
    counts = dict.fromkeys(ASSIGNMENT_STATUSES, 0)
    for status, count in session.execute(select(Assignment.status, func.count()).group_by(Assignment.status)).all():
        counts[status] = int(count)
    return counts


def referenced_release_ids(session: Session, release_ids: Sequence[str]) -> set[str]:
    """Which of these releases some assignment references (and so cannot be deleted)."""
    if not release_ids:
        return set()
    return set(session.scalars(select(Assignment.release_id).where(Assignment.release_id.in_(release_ids)).distinct()))
