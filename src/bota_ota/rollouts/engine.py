"""The rollout engine: places devices in stages, assigns them, watches outcomes, gates and advances.

Every step is set-based SQL: a stage of 100,000 devices is a handful of statements, not a loop per
device. Every server instance runs ``tick`` every ``BOTA_OTA_ROLLOUT_INTERVAL_S``; each rollout is
evaluated under a row lock taken with ``SKIP LOCKED`` on PostgreSQL (and under SQLite's one write lock),
so with any number of instances a stage starts once and a device is assigned once. All state lives in
the database, so a restart (even ``kill -9``) continues where the last commit left off.

The rules (docs/rollouts.md):

* A device's stage comes from ``stable_bucket(rollout id, device id)`` in [0, 10000): stage ``k`` holds
  the buckets below ``stages[k] * 100`` not held by an earlier stage, so a 1 % stage is spread over the
  whole fleet and the same device always lands in the same stage of one rollout.
* Members are ``waiting`` (to be assigned), ``assigned``, ``busy`` (another assignment is active: it
  joins when that one ends) or ``up_to_date`` (already on the release's version or newer: skipped, never
  downgraded).
* A running stage is **done** when ``success_threshold_pct`` of its devices that need the update have
  applied it (or superseded it: reported a newer version, so they are up to date), or, once its window
  (``stage_window_s``) has passed, when that share of the devices it *reached* have; devices not reached
  by then (still pending, or busy) are reported as ``waiting_offline`` and stay assigned.
* **The failure gate**: when more than ``failure_threshold_pct`` of a started stage's devices that need
  the update have failed, and at least ``failure_min_devices`` have, the rollout pauses itself.
* Every assignment the rollout makes keeps the delivery policy overrides in force: the release's, with the
  rollout's over them (``assignment_policy``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Select,
    Text,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bota_ota.core import audit
from bota_ota.core.database import BUCKETS, bucket_sql, note_changed_devices, utcnow
from bota_ota.core.settings import Settings
from bota_ota.devices.filters import apply_filter, parse_filter
from bota_ota.devices.models import Device, DeviceGroup
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.firmware.models import Release
from bota_ota.firmware.policy import merge_overrides
from bota_ota.firmware.versions import InvalidVersion, parse_version
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment, AssignmentEvent
from bota_ota.rollouts.models import Rollout, RolloutDevice, RolloutEvent, RolloutStage

log = logging.getLogger(__name__)

SYSTEM = "system"


# ---- events ---------------------------------------------------------------------------------------------


def record(session: Session, rollout: Rollout, kind: str, *, actor: str, **detail: Any) -> None:
    """A rollout event, and the same in the audit log."""
    session.add(RolloutEvent(rollout_id=rollout.id, kind=kind, actor=actor, detail=detail, at=utcnow()))
    audit.record(
        session,
        actor=actor,
        action=f"rollout.{kind}",
        target_type="rollout",
        target_id=rollout.id,
        detail={"name": rollout.name, **detail},
    )
    log.info("rollout %s (%s) %s by %s %s", rollout.id, rollout.name, kind, actor, detail or "")


# ---- the target ---------------------------------------------------------------------------------------


def target_filter(session: Session, rollout: Rollout) -> DeviceFilter | None:
    """The rollout's device filter now (a group's is read each time); None if its group is gone."""
    group_id = rollout.target.get("group_id")
    if group_id is not None:
        group = session.get(DeviceGroup, group_id)
        return parse_filter(group.filter) if group is not None else None
    return parse_filter(rollout.target.get("filter"))


def target_devices(session: Session, rollout: Rollout, f: DeviceFilter) -> Select[Any]:
    """``SELECT devices`` of the target, narrowed to the release's model."""
    return apply_filter(select(Device).where(Device.model == rollout.model), f, session)


def thresholds(stages: list[float]) -> list[int]:
    """Bucket limits: stage k holds buckets in [limit[k-1], limit[k])."""
    return [round(p * 100) for p in stages]


def stage_of_bucket(stages: list[float], bucket: int) -> int:
    return next(k for k, limit in enumerate(thresholds(stages)) if bucket < limit)


def _bucket(session: Session, rollout: Rollout) -> Any:
    return bucket_sql(session.get_bind().dialect.name, literal(rollout.id), Device.id)


def _stage_case(stages: list[float], bucket: Any) -> Any:
    limits = thresholds(stages)
    if len(limits) == 1:  # one stage of 100 %: every device is in it (a CASE needs at least one WHEN)
        return literal(len(limits) - 1)
    return case(*((bucket < limit, k) for k, limit in enumerate(limits[:-1])), else_=len(limits) - 1)


def versions_at_least(session: Session, model: str, version: str) -> list[str]:
    """Reported versions among the model's devices that are this version or newer (semver)."""
    floor = parse_version(version).replace(build=None)
    reported = session.scalars(
        select(Device.firmware_version).where(Device.model == model, Device.firmware_version.is_not(None)).distinct()
    ).all()
    out = []
    for text in reported:
        if text is None:
            continue
        try:
            if parse_version(text).replace(build=None).compare(floor) >= 0:
                out.append(text)
        except InvalidVersion:
            continue
    return out


# ---- membership and assignments -----------------------------------------------------------------------


def changed_devices(session: Session, statement: Any) -> list[str]:
    """Run a set-based INSERT or UPDATE of assignments ``RETURNING`` their device ids, and name those
    devices for this instance's heartbeat cache (``note_changed_devices``). Returns the ids."""
    ids = list(session.scalars(statement).all())
    note_changed_devices(session, ids)
    return ids


def rowcount(result: Any) -> int:
    """Rows an INSERT ... SELECT or UPDATE touched (a CursorResult's; -1 where the driver cannot tell)."""
    return max(int(result.rowcount), 0)


def add_members(
    session: Session, rollout: Rollout, f: DeviceFilter, up_to_stage: int, now: datetime
) -> tuple[int, int]:
    """Place the target's devices of stages 0..``up_to_stage`` that are not members yet, each as what it is
    then: ``up_to_date`` (on the release's version or newer), ``assigned`` (a new assignment of this rollout,
    made here: only a started stage's devices are placed) or ``busy`` (another assignment is active).
    Returns how many devices were placed and how many of them were assigned.

    The assignments go in first and the members after them, each member with its final state and
    assignment: placing members as ``waiting`` and updating them once assigned would write every row twice
    (on PostgreSQL with every foreign key checked again, as the rows are from the same transaction).

    No statement here looks for rows in the table it inserts into. Where a table has no pages when the
    statement is planned (the members of a rollout's first stage; a database's first assignments),
    PostgreSQL answers such a ``NOT EXISTS`` with a scan of everything the statement has inserted so far,
    for every row: quadratic in the stage's size. Rows that exist already are skipped by their unique
    index instead (``ON CONFLICT DO NOTHING``)."""
    bucket = _bucket(session, rollout)
    up_to_date = versions_at_least(session, rollout.model, rollout.version)
    in_stages = target_devices(session, rollout, f)
    limit = thresholds(rollout.stages)[up_to_stage]
    if limit < BUCKETS:  # up to 100 %: every bucket, no hash to compute
        in_stages = in_stages.where(bucket < limit)
    member = exists().where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.device_id == Device.id)
    new_devices = in_stages.where(~member)
    if not session.scalar(select(new_devices.with_only_columns(Device.id).exists())):
        return 0, 0  # the periodic membership check, mostly: one look, no writes

    # 1. An assignment for each new member that needs the update and has no active assignment.
    needs_update: Any = or_(Device.firmware_version.is_(None), Device.firmware_version.not_in(up_to_date))
    candidates = new_devices.with_only_columns(*_assignment_values(session, rollout, Device.id, now))
    if up_to_date:
        candidates = candidates.where(needs_update)
    made = session.execute(
        _insert_new(session, Assignment, ["device_id"], where=_active(Assignment.status))
        .from_select(_ASSIGNMENT_COLUMNS, candidates)
        .returning(Assignment.id, Assignment.device_id)
    ).all()
    note_changed_devices(session, [device_id for _, device_id in made])
    record_created(session, rollout, [assignment_id for assignment_id, _ in made], now)

    # 2. The members, with the device's active assignment (at most one) joined by device alone: if this
    # rollout made it, the member is assigned to it; if another did, the member is busy.
    mine = Assignment.rollout_id == rollout.id
    states: list[Any] = [(Device.firmware_version.in_(up_to_date), "up_to_date")] if up_to_date else []
    devices = in_stages.outerjoin(
        Assignment, and_(Assignment.device_id == Device.id, _active(Assignment.status))
    ).with_only_columns(
        literal(rollout.id),
        Device.id,
        _stage_case(rollout.stages, bucket),
        case(*states, (mine, "assigned"), else_="busy"),
        case((mine, Assignment.id)),
        literal(now, type_=RolloutDevice.__table__.c.added_at.type),
    )
    # preserve_rowcount: without it SQLAlchemy reports no row count (-1) for an INSERT ... SELECT on
    # PostgreSQL (psycopg), while SQLite's driver gives it anyway. Either counts the rows inserted.
    result = session.execute(
        _insert_new(session, RolloutDevice, ["rollout_id", "device_id"])
        .from_select(["rollout_id", "device_id", "stage", "state", "assignment_id", "added_at"], devices)
        .execution_options(preserve_rowcount=True)
    )
    return rowcount(result), len(made)


_ASSIGNMENT_COLUMNS = [
    "id",
    "device_id",
    "release_id",
    "version",
    "status",
    "created_at",
    "created_by",
    "rollout_id",
    "held",
    "delivery_count",
    "policy",
]


def assignment_policy(session: Session, rollout: Rollout) -> dict[str, Any] | None:
    """The delivery policy overrides an assignment made by the rollout now keeps: the release's as it is now,
    with the rollout's over them, key by key (None when neither overrides anything)."""
    release = session.get(Release, rollout.release_id)
    return merge_overrides(release.delivery_policy if release is not None else None, rollout.delivery_policy)


def _assignment_values(session: Session, rollout: Rollout, device_id: Any, now: datetime) -> list[Any]:
    """The columns of ``_ASSIGNMENT_COLUMNS`` for a new pending assignment of this rollout to ``device_id``
    (held while the rollout is not running). The policy is worked out here, once per statement, and goes in
    as one literal: the same for every row."""
    policy = assignment_policy(session, rollout)
    return [
        _new_id_sql(session),
        device_id,
        literal(rollout.release_id),
        literal(rollout.version),
        literal("pending"),
        literal(now, type_=Assignment.__table__.c.created_at.type),
        literal(_actor(rollout)),
        literal(rollout.id),
        false() if rollout.status == "running" else true(),
        literal(0),
        null() if policy is None else literal(policy, type_=JSON),
    ]


def _actor(rollout: Rollout) -> str:
    return f"rollout:{rollout.name}"[:200]


def _insert_new(session: Session, model: type[Any], key: list[str], where: Any = None) -> Any:
    """``INSERT ... ON CONFLICT (key) [WHERE ...] DO NOTHING``: rows whose key exists already are skipped."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model).on_conflict_do_nothing(index_elements=key, index_where=where)


def record_created(session: Session, rollout: Rollout, assignment_ids: list[str], now: datetime) -> None:
    """The "created" event of each new assignment, as create_assignment records one."""
    if not assignment_ids:
        return
    detail = {"release_id": rollout.release_id, "version": rollout.version, "rollout_id": rollout.id}
    actor = _actor(rollout)
    # One statement over the ids as one array (PostgreSQL) or one JSON array (SQLite): as rows of an
    # executemany, the same events take two to three times as long.
    ids: Any
    if session.get_bind().dialect.name == "postgresql":
        ids = func.unnest(literal(assignment_ids, type_=postgresql.ARRAY(Text)))
    else:
        ids = func.json_each(literal(json.dumps(assignment_ids))).table_valued("value").c.value
    events = select(
        ids,
        literal(now, type_=AssignmentEvent.__table__.c.at.type),
        literal("created"),
        literal("pending"),
        literal(detail, type_=JSON),
        literal(actor),
    )
    session.execute(
        insert(AssignmentEvent).from_select(["assignment_id", "at", "kind", "status", "detail", "actor"], events)
    )


def _new_id_sql(session: Session) -> Any:
    """32 random hex characters, as ``new_id()`` makes in Python, made by the database for set-based inserts."""
    if session.get_bind().dialect.name == "postgresql":
        return func.replace(cast(func.gen_random_uuid(), Text), "-", "")
    return func.lower(func.hex(func.randomblob(16)))


def _active(status: Any) -> Any:
    """``status IN ('pending', 'delivered')`` with the values written into the SQL: the very condition of the
    one-active-assignment index (a partial unique index on ``device_id``), so that SQLite, too, can look a
    device's active assignment up through it (with the values as bound parameters it cannot tell that the
    index covers the rows)."""
    return status.in_([literal_column(f"'{s}'") for s in ACTIVE_STATUSES])


def assign_waiting(session: Session, rollout: Rollout, now: datetime) -> int:
    """Assign every waiting or busy member of a started stage whose device has no active assignment;
    members whose device is on the version (or newer) by now are skipped instead. Returns how many
    assignments were made."""
    if rollout.current_stage < 0:
        return 0
    up_to_date = versions_at_least(session, rollout.model, rollout.version)
    open_members = and_(
        RolloutDevice.rollout_id == rollout.id,
        RolloutDevice.state.in_(("waiting", "busy")),
        RolloutDevice.stage <= rollout.current_stage,
    )
    if up_to_date:
        session.execute(
            update(RolloutDevice)
            .where(
                open_members,
                RolloutDevice.device_id.in_(select(Device.id).where(Device.firmware_version.in_(up_to_date))),
            )
            .values(state="up_to_date")
            .execution_options(synchronize_session=False)
        )
    active_elsewhere = exists().where(Assignment.device_id == RolloutDevice.device_id, _active(Assignment.status))
    # Decommissioning removes the device's memberships; this covers one it raced with (a lookup by key).
    decommissioned = exists().where(Device.id == RolloutDevice.device_id, Device.decommissioned_at.is_not(None))
    candidates = select(*_assignment_values(session, rollout, RolloutDevice.device_id, now)).where(
        open_members, ~active_elsewhere, ~decommissioned
    )
    new_assignments = session.execute(
        insert(Assignment).from_select(_ASSIGNMENT_COLUMNS, candidates).returning(Assignment.id, Assignment.device_id)
    ).all()
    note_changed_devices(session, [device_id for _, device_id in new_assignments])
    made = len(new_assignments)
    if made <= 0:
        session.execute(
            update(RolloutDevice)
            .where(open_members, RolloutDevice.state == "waiting")
            .values(state="busy")
            .execution_options(synchronize_session=False)
        )
        return 0
    # The device's active assignment (at most one), if this rollout made it: looked up by device alone, so
    # through a device index. With the rollout in the WHERE clause, SQLite and PostgreSQL (whose statistics
    # from before the stage say the rollout has no assignments) look every member up through the rollout's
    # index instead: a scan of all the rollout's new assignments per member, quadratic in the stage's size.
    new_assignment = (
        select(case((Assignment.rollout_id == rollout.id, Assignment.id)))
        .where(Assignment.device_id == RolloutDevice.device_id, _active(Assignment.status))
        .scalar_subquery()
    )
    session.execute(
        update(RolloutDevice)
        .where(open_members, new_assignment.is_not(None))
        .values(state="assigned", assignment_id=new_assignment)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(RolloutDevice)
        .where(open_members, RolloutDevice.state == "waiting")
        .values(state="busy")
        .execution_options(synchronize_session=False)
    )
    record_created(session, rollout, [assignment_id for assignment_id, _ in new_assignments], now)
    return made


# ---- reading the state ----------------------------------------------------------------------------------


@dataclass
class StageState:
    members: int = 0
    up_to_date: int = 0
    busy: int = 0
    waiting: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    retrying: int = 0  # pending again after a failed attempt
    deferred: Counter[str] = field(default_factory=Counter)  # pending, by why the last heartbeat did not get it

    @property
    def needing(self) -> int:
        """Devices of the stage that need the update (skipped ones do not)."""
        return self.members - self.up_to_date

    @property
    def succeeded(self) -> int:
        """Up to date through the rollout: applied it, or superseded it (reported a newer version)."""
        return self.statuses["applied"] + self.statuses["superseded"]

    @property
    def unreached(self) -> int:
        """Not reached yet: assigned but still pending, or busy, or not yet assigned."""
        return self.statuses["pending"] + self.busy + self.waiting


def stage_states(session: Session, rollout: Rollout) -> dict[int, StageState]:
    """Each stage's members by state and their assignments by status, in one grouped statement: a pending
    assignment also by whether it is retrying and by its deferral reason (both null unless pending, so they
    add a few groups, not one per device)."""
    pending = Assignment.status == "pending"
    retrying = case((and_(pending, or_(Assignment.attempts > 0, Assignment.retry_at.is_not(None))), 1), else_=0)
    deferred = case((pending, Assignment.deferred))
    rows = session.execute(
        select(RolloutDevice.stage, RolloutDevice.state, Assignment.status, retrying, deferred, func.count())
        .select_from(RolloutDevice)
        .outerjoin(Assignment, Assignment.id == RolloutDevice.assignment_id)
        .where(RolloutDevice.rollout_id == rollout.id)
        .group_by(RolloutDevice.stage, RolloutDevice.state, Assignment.status, retrying, deferred)
    ).all()
    states: dict[int, StageState] = {k: StageState() for k in range(len(rollout.stages))}
    for stage, state, status, is_retrying, reason, count in rows:
        s = states.setdefault(stage, StageState())
        s.members += count
        if state == "up_to_date":
            s.up_to_date += count
        elif state == "busy":
            s.busy += count
        elif state == "waiting":
            s.waiting += count
        elif status is not None:
            s.statuses[status] += count
            if is_retrying:
                s.retrying += count
            if reason is not None:
                s.deferred[str(reason)] += count
    return states


def failures_by_error(session: Session, rollout: Rollout, stage: int | None = None) -> dict[str, int]:
    """Every failed assignment the rollout made (a retried device's first failure too), by error."""
    query = (
        select(Assignment.error, func.count())
        .where(Assignment.rollout_id == rollout.id, Assignment.status == "failed")
        .group_by(Assignment.error)
    )
    if stage is not None:
        query = query.join(
            RolloutDevice,
            (RolloutDevice.rollout_id == Assignment.rollout_id) & (RolloutDevice.device_id == Assignment.device_id),
        ).where(RolloutDevice.stage == stage)
    errors: Counter[str] = Counter()
    for error, count in session.execute(query).all():
        errors[str(error or "unknown")[:200]] += int(count)
    return dict(errors)


# ---- transitions --------------------------------------------------------------------------------------


def start_stage(session: Session, rollout: Rollout, index: int, now: datetime, *, actor: str) -> None:
    f = target_filter(session, rollout)
    if f is None:
        pause(session, rollout, "its target group was deleted", now, actor=SYSTEM)
        return
    row = rollout.stage_rows[index]
    row.status, row.started_at = "running", now
    rollout.current_stage = index
    rollout.members_checked_at = now
    added, assigned = add_members(session, rollout, f, index, now)
    assigned += assign_waiting(session, rollout, now)  # members of earlier stages that were busy
    record(
        session,
        rollout,
        "stage_started",
        actor=actor,
        stage=index,
        percent=row.percent,
        placed=added,
        assigned=assigned,
    )


def pause(session: Session, rollout: Rollout, reason: str, now: datetime, *, actor: str) -> None:
    """Paused: nothing new is delivered (pending assignments are held); downloads under way finish."""
    rollout.status = "paused"
    rollout.paused_reason = reason
    changed_devices(
        session,
        update(Assignment)
        .where(Assignment.rollout_id == rollout.id, Assignment.status == "pending", Assignment.held.is_(False))
        .values(held=True)
        .returning(Assignment.device_id)
        .execution_options(synchronize_session=False),
    )
    record(session, rollout, "paused", actor=actor, reason=reason)


def resume(session: Session, rollout: Rollout, now: datetime, *, actor: str) -> None:
    rollout.status = "running"
    rollout.paused_reason = None
    changed_devices(
        session,
        update(Assignment)
        .where(Assignment.rollout_id == rollout.id, Assignment.held.is_(True))
        .values(held=False)
        .returning(Assignment.device_id)
        .execution_options(synchronize_session=False),
    )
    record(session, rollout, "resumed", actor=actor)


def finish(session: Session, rollout: Rollout, status: str, now: datetime, *, actor: str, **detail: Any) -> None:
    rollout.status = status
    rollout.finished_at = now
    record(session, rollout, status, actor=actor, **detail)


def _failed_since_resume(session: Session, rollout: Rollout) -> dict[int, int] | None:
    """Failures per stage that finished after the rollout was last resumed; None if it never was."""
    since = session.scalar(
        select(func.max(RolloutEvent.at)).where(RolloutEvent.rollout_id == rollout.id, RolloutEvent.kind == "resumed")
    )
    if since is None:
        return None
    rows = session.execute(
        select(RolloutDevice.stage, func.count())
        .select_from(RolloutDevice)
        .join(Assignment, Assignment.id == RolloutDevice.assignment_id)
        .where(RolloutDevice.rollout_id == rollout.id, Assignment.status == "failed", Assignment.finished_at > since)
        .group_by(RolloutDevice.stage)
    ).all()
    return {int(stage): int(count) for stage, count in rows}


def _gate(rollout: Rollout, states: dict[int, StageState], session: Session) -> str | None:
    """The failure gate over every started stage: the reason to pause, or None.

    Resuming acknowledges the failures so far: after a resume only failures that come later count, or a
    rollout resumed by an operator would pause again at once on the failures that paused it."""
    since_resume = _failed_since_resume(session, rollout)
    for k in range(rollout.current_stage + 1):
        s = states[k]
        failed = s.statuses["failed"] if since_resume is None else since_resume.get(k, 0)
        if failed < rollout.failure_min_devices or s.needing <= 0:
            continue
        share = 100 * failed / s.needing
        if share > rollout.failure_threshold_pct:
            errors = failures_by_error(session, rollout, k)
            why = ", ".join(f"{error} {n}" for error, n in sorted(errors.items(), key=lambda e: -e[1]))
            return (
                f"{failed} of {s.needing} devices in stage {k + 1} failed ({share:.1f} %, above the "
                f"{rollout.failure_threshold_pct:g} % threshold): {why}"
            )
    return None


def _stage_done(rollout: Rollout, row: RolloutStage, s: StageState, now: datetime) -> str | None:
    """Why the running stage is done ("success" or "window"), or None. A superseded assignment is a success:
    its device reported a newer version, so it is up to date."""
    need = s.needing
    applied = s.succeeded
    if need <= 0 or applied * 100 >= rollout.success_threshold_pct * need:
        return "success"
    started = row.started_at or now
    if now >= started + timedelta(seconds=rollout.stage_window_s):
        reached = need - s.unreached
        if reached > 0 and applied * 100 >= rollout.success_threshold_pct * reached:
            return "window"
        if reached <= 0:
            return "window"  # nobody was reachable in the whole window: do not hold the rollout for ever
    return None


def evaluate(session: Session, rollout: Rollout, settings: Settings, now: datetime) -> bool:
    """One look at a rollout (locked by the caller). Returns whether anything changed."""
    if rollout.status == "scheduled":
        if rollout.start_at is not None and rollout.start_at > now:
            return False
        rollout.status = "running"
        rollout.started_at = now
        record(session, rollout, "started", actor=SYSTEM)
        start_stage(session, rollout, 0, now, actor=SYSTEM)
        return True
    if rollout.status != "running":
        return False
    changed = False
    if rollout.include_new_devices and (
        rollout.members_checked_at is None
        or now - rollout.members_checked_at >= timedelta(seconds=settings.rollout_membership_interval_s)
    ):
        f = target_filter(session, rollout)
        if f is None:
            pause(session, rollout, "its target group was deleted", now, actor=SYSTEM)
            return True
        rollout.members_checked_at = now
        added, _assigned = add_members(session, rollout, f, rollout.current_stage, now)
        if added:
            record(session, rollout, "devices_joined", actor=SYSTEM, devices=added)
            changed = True
    if assign_waiting(session, rollout, now):
        changed = True
    states = stage_states(session, rollout)
    reason = _gate(rollout, states, session)
    if reason is not None:
        pause(session, rollout, reason, now, actor=SYSTEM)
        return True
    row = rollout.stage_rows[rollout.current_stage]
    if row.status == "running":
        done = _stage_done(rollout, row, states[rollout.current_stage], now)
        if done is None:
            return changed
        row.status, row.finished_at, row.done_reason = "done", now, done
        s = states[rollout.current_stage]
        record(
            session,
            rollout,
            "stage_done",
            actor=SYSTEM,
            stage=rollout.current_stage,
            reason=done,
            applied=s.statuses["applied"],
            superseded=s.statuses["superseded"],
            waiting_offline=s.unreached,
        )
        changed = True
    last = rollout.current_stage == len(rollout.stages) - 1
    if last:
        if not rollout.include_new_devices:
            finish(session, rollout, "completed", now, actor=SYSTEM)
            return True
        return changed  # keeps assigning devices that come to match until completed or cancelled by hand
    if rollout.advance == "auto":
        start_stage(session, rollout, rollout.current_stage + 1, now, actor=SYSTEM)
        return True
    return changed  # manual: waits for advance


def tick(session: Session, settings: Settings, now: datetime) -> int:
    """Evaluate every due rollout that no other instance is evaluating right now. Returns how many changed."""
    due = (
        select(Rollout)
        .where(
            (Rollout.status == "running")
            | ((Rollout.status == "scheduled") & ((Rollout.start_at.is_(None)) | (Rollout.start_at <= now)))
        )
        .order_by(Rollout.created_at)
        .with_for_update(skip_locked=True)
    )
    changed = 0
    for rollout in session.scalars(due).all():
        with session.begin_nested():
            if evaluate(session, rollout, settings, now):
                changed += 1
    return changed
