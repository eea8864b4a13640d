"""Rollouts: create, read, and the operator's actions (pause, resume, cancel, advance, retry failed).

The engine (``engine.py``) does the automatic part. Actions lock the rollout row, as the engine does,
so an action and an evaluation never interleave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, delete, exists, func, insert, literal, select, update
from sqlalchemy.orm import Session

from bota_ota.core.database import utcnow
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import service as device_service
from bota_ota.devices.filters import apply_filter, parse_filter
from bota_ota.devices.models import Device, DeviceGroup
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.firmware.keys import Withdrawn
from bota_ota.firmware.models import Release
from bota_ota.firmware.security import check_installable
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import ACTIVE_STATUSES, ASSIGNMENT_STATUSES, Assignment, AssignmentEvent
from bota_ota.rollouts import engine
from bota_ota.rollouts.models import OPEN_STATUSES, Rollout, RolloutDevice, RolloutEvent, RolloutStage
from bota_ota.rollouts.schemas import (
    Preview,
    PreviewRequest,
    ReleaseRef,
    RolloutCreate,
    RolloutDetail,
    RolloutEventOut,
    RolloutOut,
    RolloutTarget,
    Skipped,
    StageCounts,
    StageOut,
    StagePreview,
    Totals,
)


def _release_for_rollout(session: Session, release_id: str, *, lock: bool = False) -> Release:
    # lock: FOR SHARE, against a concurrent withdrawal of the release (see ``withdraw_releases``).
    release = session.get(Release, release_id, with_for_update={"read": True} if lock else None)
    if release is None:
        raise NotFound(f"release {release_id} not found", field="release_id")
    if release.artifact("bin") is None:
        raise ValidationFailed(
            f"release {release.version} has no .bin file, so it cannot be rolled out over HTTP OTA",
            field="release_id",
        )
    return release


def _target(session: Session, target: RolloutTarget) -> tuple[dict[str, object], DeviceFilter]:
    """The target as stored, and its filter now."""
    if target.group_id is not None:
        group = session.get(DeviceGroup, target.group_id)
        if group is None:
            raise NotFound(f"group {target.group_id} not found", field="target.group_id")
        return {"group_id": group.id, "group_name": group.name}, parse_filter(group.filter)
    assert target.filter is not None  # RolloutTarget holds exactly one of the two
    return {"filter": target.filter.as_json()}, target.filter


def preview(session: Session, body: PreviewRequest) -> Preview:
    """What a rollout of this release to this target would do now: the matching devices, the skipped ones,
    and about how many each stage would hold (the exact split depends on the rollout's id)."""
    release = _release_for_rollout(session, body.release_id)
    _stored, f = _target(session, body.target)
    devices = apply_filter(select(Device.id).where(Device.model == release.model), f, session).subquery()
    up_to_date_versions = engine.versions_at_least(session, release.model, release.version)
    busy = exists().where(Assignment.device_id == devices.c.id, Assignment.status.in_(ACTIVE_STATUSES))
    matching, busy_count = session.execute(select(func.count(), func.count().filter(busy)).select_from(devices)).one()
    up_to_date = 0
    if up_to_date_versions:
        up_to_date = int(
            session.scalar(
                select(func.count())
                .select_from(Device)
                .where(Device.id.in_(select(devices.c.id)), Device.firmware_version.in_(up_to_date_versions))
            )
            or 0
        )
    previous = 0
    stages = []
    for k, percent in enumerate(body.stages):
        upto = round(int(matching) * percent / 100)
        stages.append(StagePreview(index=k, percent=percent, devices=upto - previous))
        previous = upto
    return Preview(matching=int(matching), up_to_date=up_to_date, busy=int(busy_count or 0), stages=stages)


def create_rollout(session: Session, body: RolloutCreate, settings: Settings, *, actor: str) -> Rollout:
    release = _release_for_rollout(session, body.release_id, lock=True)
    # A revoked signing key or a security version below the floor (422 naming release_id).
    check_installable(session, release)
    target, _filter = _target(session, body.target)
    policy = body.delivery_policy.overrides() if body.delivery_policy is not None else None
    now = utcnow()
    rollout = Rollout(
        name=body.name,
        release_id=release.id,
        model=release.model,
        version=release.version,
        status="scheduled",
        target=target,
        stages=body.stages,
        advance=body.advance,
        success_threshold_pct=body.success_threshold_pct,
        failure_threshold_pct=body.failure_threshold_pct,
        failure_min_devices=body.failure_min_devices,
        stage_window_s=body.stage_window_s,
        include_new_devices=body.include_new_devices,
        delivery_policy=policy or None,
        start_at=body.start_at,
        current_stage=-1,
        created_by=actor,
        created_at=now,
        stage_rows=[RolloutStage(index=k, percent=p, status="waiting") for k, p in enumerate(body.stages)],
    )
    session.add(rollout)
    session.flush()
    engine.record(
        session,
        rollout,
        "created",
        actor=actor,
        release_id=release.id,
        version=release.version,
        model=release.model,
        target=target,
        stages=body.stages,
        **({"delivery_policy": policy} if policy else {}),
    )
    if body.start_at is None or body.start_at <= now:
        engine.evaluate(session, rollout, settings, now)  # starts the first stage now, not at the next tick
    return rollout


def get_rollout(session: Session, rollout_id: str, *, lock: bool = False) -> Rollout:
    query = select(Rollout).where(Rollout.id == rollout_id)
    if lock:
        query = query.with_for_update()
    rollout = session.scalar(query)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} not found")
    return rollout


def list_rollouts(
    session: Session, *, status: str | None = None, release_id: str | None = None, limit: int = 100, offset: int = 0
) -> tuple[Sequence[Rollout], int]:
    query = select(Rollout)
    if status:
        query = query.where(Rollout.status == status)
    if release_id:
        query = query.where(Rollout.release_id == release_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Rollout.created_at.desc(), Rollout.id).limit(limit).offset(offset)).all()
    return rows, int(total)


# ---- actions ------------------------------------------------------------------------------------------


def _refuse(rollout: Rollout, action: str, allowed: Sequence[str]) -> Conflict:
    return Conflict(
        f"cannot {action} a rollout that is {rollout.status} (only when {' or '.join(allowed)})", field="status"
    )


def pause(session: Session, rollout_id: str, *, actor: str) -> Rollout:
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status not in ("scheduled", "running"):
        raise _refuse(rollout, "pause", ("scheduled", "running"))
    engine.pause(session, rollout, f"paused by {actor}", utcnow(), actor=actor)
    return rollout


def resume(session: Session, rollout_id: str, settings: Settings, *, actor: str) -> Rollout:
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status != "paused":
        raise _refuse(rollout, "resume", ("paused",))
    # Paused because its release became unfit (revoked key, security floor): it stays paused.
    check_installable(session, _release_for_rollout(session, rollout.release_id, lock=True))
    now = utcnow()
    if rollout.current_stage < 0:  # paused before it started: it starts now (or at start_at)
        rollout.status, rollout.paused_reason = "scheduled", None
        engine.record(session, rollout, "resumed", actor=actor)
        engine.evaluate(session, rollout, settings, now)
        return rollout
    engine.resume(session, rollout, now, actor=actor)
    engine.assign_waiting(session, rollout, now)
    return rollout


def cancel(session: Session, rollout_id: str, *, actor: str) -> Rollout:
    """Cancels every pending and delivered assignment of the rollout, in one statement each."""
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status not in OPEN_STATUSES:
        raise _refuse(rollout, "cancel", OPEN_STATUSES)
    now = utcnow()
    active = (Assignment.rollout_id == rollout.id) & Assignment.status.in_(ACTIVE_STATUSES)
    session.execute(
        insert(AssignmentEvent).from_select(
            ["assignment_id", "at", "kind", "status", "detail", "actor"],
            select(
                Assignment.id,
                literal(now, type_=AssignmentEvent.__table__.c.at.type),
                literal("cancelled"),
                literal("cancelled"),
                literal({"previous": "pending or delivered", "rollout_id": rollout.id}, type_=JSON),
                literal(actor[:200]),
            ).where(active),
        )
    )
    cancelled = engine.changed_devices(
        session,
        update(Assignment)
        .where(active)
        .values(status="cancelled", finished_at=now, held=False)
        .returning(Assignment.device_id)
        .execution_options(synchronize_session=False),
    )
    for row in rollout.stage_rows:
        if row.status == "running":
            row.status, row.finished_at = "done", now
    engine.finish(session, rollout, "cancelled", now, actor=actor, assignments_cancelled=len(cancelled))
    return rollout


def advance(session: Session, rollout_id: str, settings: Settings, *, actor: str) -> Rollout:
    """Start the next stage now (or, after the last one, complete the rollout)."""
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status != "running":
        raise _refuse(rollout, "advance", ("running",))
    now = utcnow()
    current = rollout.stage_rows[rollout.current_stage]
    if current.status == "running":
        current.status, current.finished_at, current.done_reason = "done", now, "advanced"
    if rollout.current_stage == len(rollout.stages) - 1:
        engine.finish(session, rollout, "completed", now, actor=actor)
        return rollout
    engine.start_stage(session, rollout, rollout.current_stage + 1, now, actor=actor)
    return rollout


def retry_failed(session: Session, rollout_id: str, *, actor: str) -> int:
    """New assignments for the rollout's devices whose assignment failed. Returns how many."""
    rollout = get_rollout(session, rollout_id, lock=True)
    if rollout.status not in ("running", "paused"):
        raise _refuse(rollout, "retry failed devices of", ("running", "paused"))
    check_installable(session, _release_for_rollout(session, rollout.release_id, lock=True))
    failed = select(Assignment.id).where(Assignment.rollout_id == rollout.id, Assignment.status == "failed")
    session.execute(
        update(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.assignment_id.in_(failed))
        .values(state="waiting")
        .execution_options(synchronize_session=False)
    )
    now = utcnow()
    made = engine.assign_waiting(session, rollout, now)
    engine.record(session, rollout, "retried_failed", actor=actor, assignments=made)
    return made


def withdraw_releases(
    session: Session, release_ids: Sequence[str], *, reason: str, actor: str, detail: dict[str, Any]
) -> Withdrawn:
    """Releases that may no longer be installed (a revoked signing key, below the security floor): pause
    their scheduled and running rollouts with the reason, then cancel every active assignment of them
    (``firmware.keys.ReleaseWithdrawal``, wired by ``app.py``).

    The releases are locked first (FOR UPDATE; creating an assignment or a rollout takes them FOR SHARE),
    then the rollouts (as the engine does), so no assignment or rollout of them is made meanwhile."""
    ids = sorted(set(release_ids))
    if not ids:
        return Withdrawn()
    session.scalars(select(Release.id).where(Release.id.in_(ids)).order_by(Release.id).with_for_update()).all()
    rollouts = session.scalars(
        select(Rollout)
        .where(Rollout.release_id.in_(ids), Rollout.status.in_(("scheduled", "running")))
        .order_by(Rollout.id)
        .with_for_update()
    ).all()
    words = ", ".join(f"{key} {value}" for key, value in detail.items())
    now = utcnow()
    for rollout in rollouts:
        engine.pause(session, rollout, f"{reason} ({words})" if words else reason, now, actor=actor)
    cancelled = ota_service.cancel_active_for_releases(session, ids, actor=actor, reason=reason, **detail)
    return Withdrawn(assignments_cancelled=cancelled, rollouts_paused=len(rollouts))


# ---- the detail ---------------------------------------------------------------------------------------


def rollout_out(session: Session, rollout: Rollout) -> RolloutOut:
    states = engine.stage_states(session, rollout)
    stages = []
    targeted = assigned = applied = superseded = failed = offline = up_to_date = busy = 0
    deferred: Counter[str] = Counter()
    for row in rollout.stage_rows:
        s = states.get(row.index, engine.StageState())
        counts = StageCounts(
            **{status: s.statuses[status] for status in ASSIGNMENT_STATUSES},
            retrying=s.retrying,
            deferred=s.deferred.total(),
            deferred_by_reason=dict(s.deferred),
        )
        stages.append(
            StageOut(
                index=row.index,
                percent=row.percent,
                devices=s.members,
                status=row.status,
                done_reason=row.done_reason,
                started_at=row.started_at,
                finished_at=row.finished_at,
                counts=counts,
            )
        )
        targeted += s.members
        assigned += sum(s.statuses.values())
        applied += s.statuses["applied"]
        superseded += s.statuses["superseded"]
        failed += s.statuses["failed"]
        deferred.update(s.deferred)
        up_to_date += s.up_to_date
        busy += s.busy
        if row.status == "done":
            offline += s.statuses["pending"]
    return RolloutOut(
        id=rollout.id,
        name=rollout.name,
        release=ReleaseRef(id=rollout.release_id, version=rollout.version, model=rollout.model),
        status=rollout.status,
        paused_reason=rollout.paused_reason,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        started_at=rollout.started_at,
        finished_at=rollout.finished_at,
        start_at=rollout.start_at,
        target=rollout.target,
        advance=rollout.advance,
        success_threshold_pct=rollout.success_threshold_pct,
        failure_threshold_pct=rollout.failure_threshold_pct,
        failure_min_devices=rollout.failure_min_devices,
        stage_window_s=rollout.stage_window_s,
        include_new_devices=rollout.include_new_devices,
        delivery_policy=rollout.delivery_policy,
        current_stage=rollout.current_stage,
        stages=stages,
        totals=Totals(
            targeted=targeted,
            assigned=assigned,
            applied=applied,
            superseded=superseded,
            failed=failed,
            deferred=deferred.total(),
            waiting_offline=offline,
            skipped=Skipped(up_to_date=up_to_date, busy=busy),
        ),
        failures_by_error=engine.failures_by_error(session, rollout),
        deferred_by_reason=dict(deferred),
    )


def rollout_detail(session: Session, rollout: Rollout, *, events: int = 200) -> RolloutDetail:
    session.flush()  # the session does not autoflush: events recorded by this request are pending until now
    rows = session.scalars(
        select(RolloutEvent)
        .where(RolloutEvent.rollout_id == rollout.id)
        .order_by(RolloutEvent.seq.desc())
        .limit(events)
    ).all()
    return RolloutDetail(
        **rollout_out(session, rollout).model_dump(),
        events=[RolloutEventOut(at=e.at, kind=e.kind, actor=e.actor, detail=e.detail) for e in rows],
    )


@device_service.on_decommission
def leave_rollouts(session: Session, device: Device, *, actor: str) -> None:
    """A decommissioned device leaves every unfinished rollout: its memberships go, so no stage counts it
    or assigns it again (the engine's targets leave decommissioned devices out too). Its assignments stay,
    as history; ``ota`` cancels the active one. Finished rollouts keep their members."""
    left = session.scalars(
        delete(RolloutDevice)
        .where(
            RolloutDevice.device_id == device.id,
            RolloutDevice.rollout_id.in_(select(Rollout.id).where(Rollout.status.in_(OPEN_STATUSES))),
        )
        .returning(RolloutDevice.rollout_id)
        .execution_options(synchronize_session=False)
    ).all()
    for rollout_id in left:
        rollout = session.get(Rollout, rollout_id)
        if rollout is not None:
            engine.record(session, rollout, "device_left", actor=actor, device_id=device.id, reason="decommissioned")
