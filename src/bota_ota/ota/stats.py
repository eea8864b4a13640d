"""What the portal's fleet console counts and lists about updates: devices updating now, devices whose latest
update failed, recent failures, and the assignments list with its filters and order.

Each number the dashboard shows comes from the same query as the list its link opens, so a tile never says
12 and its list shows 9.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session

from bota_ota.devices.models import Device
from bota_ota.ota import fleet
from bota_ota.ota.models import ASSIGNMENT_STATUSES, Assignment
from bota_ota.ota.service import assignments_query

# "active" stands for pending or delivered: the assignments list's filter behind the dashboard's Updating tile.
ASSIGNMENT_FILTERS = ("active", *ASSIGNMENT_STATUSES)

# When an assignment last changed: it ends at finished_at; before that, the device's last reported progress,
# then its delivery, then its creation. Columns the state machine writes, so no events need reading to sort.
UPDATED_AT: ColumnElement[Any] = func.coalesce(
    Assignment.finished_at, Assignment.progress_at, Assignment.delivered_at, Assignment.created_at
)

ASSIGNMENT_SORTS: dict[str, QueryableAttribute[Any] | ColumnElement[Any]] = {
    "created": Assignment.created_at,
    "updated": UPDATED_AT,
    "device": Assignment.device_id,
    "version": Assignment.version,  # as spelled; the list is of one fleet's few releases
    "status": Assignment.status,
}


@dataclass(frozen=True)
class Updating:
    """Devices with an active (pending or delivered) assignment, and how many of them have never sent a
    heartbeat (a device registered and assigned before its first start)."""

    devices: int
    never_seen: int


def _ordered(query: Select[Assignment], sort: str, descending: bool) -> Select[Assignment]:
    column = ASSIGNMENT_SORTS.get(sort, Assignment.created_at)
    tiebreak = (Assignment.created_at, Assignment.id) if sort != "created" else (Assignment.id,)
    keys = (column, *tiebreak)
    return query.order_by(*(k.desc() if descending else k.asc() for k in keys))


def count_assignments(session: Session, query: Select[Assignment]) -> int:
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def list_assignments(
    session: Session,
    *,
    status: str | None = None,
    release_id: str | None = None,
    rollout_id: str | None = None,
    sort: str = "created",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Assignment], int]:
    """One page of assignments in the chosen order (``ASSIGNMENT_SORTS``), and how many match. An offset past
    the end gives the last page (a list that shrank while someone paged through it)."""
    query = assignments_query(status=status, release_id=release_id, rollout_id=rollout_id)
    total = count_assignments(session, query)
    if limit > 0:
        offset = min(offset, max(total - 1, 0) // limit * limit)
    rows = session.scalars(_ordered(query, sort, descending).limit(limit).offset(offset)).all()
    return rows, total


def iter_assignments(
    session: Session,
    *,
    status: str | None = None,
    release_id: str | None = None,
    rollout_id: str | None = None,
    sort: str = "created",
    descending: bool = True,
    batch: int = 1000,
) -> Iterator[Assignment]:
    """Every matching assignment in the chosen order, read in batches (the CSV export streams them)."""
    query = _ordered(assignments_query(status=status, release_id=release_id, rollout_id=rollout_id), sort, descending)
    yield from session.scalars(query.execution_options(yield_per=batch))


def updating(session: Session) -> Updating:
    """The dashboard's Updating tile: the same set as the assignments list filtered on ``active`` (a device
    has at most one active assignment, so assignments and devices count alike)."""
    active = assignments_query(status="active").subquery()
    devices, never_seen = session.execute(
        select(func.count(), func.count().filter(Device.last_seen_at.is_(None)))
        .select_from(active)
        .join(Device, Device.id == active.c.device_id)
    ).one()
    return Updating(devices=int(devices), never_seen=int(never_seen or 0))


def failing_devices(session: Session) -> int:
    """Devices whose latest assignment failed: exactly the device list filtered on ``status=failed`` (the same
    query), so a device that failed once and then applied a later update is not counted."""
    _, total = fleet.list_devices(session, assignment_status="failed", limit=0)
    return total


def recent_failures(session: Session, *, limit: int = 10) -> Sequence[Assignment]:
    """The latest failed assignments, newest failure first."""
    query = assignments_query(status="failed")
    return session.scalars(
        query.order_by(func.coalesce(Assignment.finished_at, Assignment.created_at).desc(), Assignment.id.desc()).limit(
            limit
        )
    ).all()
