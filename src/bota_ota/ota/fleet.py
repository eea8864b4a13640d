"""The fleet as operators see it: each device with its active assignment.

A read model across two domains, owned by ``ota`` because ota owns the assignments and may read devices
(``devices`` never reads assignments). The management API, the app API and the portal list and show
devices through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from bota_ota.core.database import utcnow
from bota_ota.devices import service as devices
from bota_ota.devices.filters import apply_filter
from bota_ota.devices.models import Device
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment
from bota_ota.ota.schemas import AssignmentSummary, DeviceOut

SORT_KEYS = ("id", "name", "last_seen", "version", "model")


def _order(sort: str, descending: bool) -> list[Any]:
    """ORDER BY for a sort key; ties by id (ascending), so pages never overlap. Devices without a value
    (never seen, never reported a version, no name) come last in either direction.

    ``version`` sorts by ``version_key``, the reported version's semantic order as plain text, kept beside
    ``firmware_version`` and indexed with ``id`` (devices/version_key.py): the database sorts and pages it
    like any column, at 100,000 devices as at ten, instead of reading every device to sort in Python."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}: one of {', '.join(SORT_KEYS)}")
    if sort == "id":
        return [Device.id.desc() if descending else Device.id.asc()]
    column: Any = {
        "name": Device.name,
        "last_seen": Device.last_seen_at,
        "version": Device.version_key,
        "model": Device.model,
    }[sort]
    return [(column.desc() if descending else column.asc()).nulls_last(), Device.id.asc()]


def list_devices(
    session: Session,
    f: DeviceFilter | None = None,
    *,
    online: bool | None = None,
    online_window_s: int = 130,
    assignment_status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: str = "id",
    descending: bool = False,
    decommissioned: bool | None = False,
) -> tuple[Sequence[Device], int]:
    """Devices matching the filter, online or not (within ``online_window_s``), and whose latest assignment
    has ``assignment_status``, in ``sort`` order (``SORT_KEYS``; ``version`` is semantic). Decommissioned
    devices are left out unless ``decommissioned`` is True (only them) or None (any)."""
    order = _order(sort, descending)
    query = _devices_query(session, f, online, online_window_s, assignment_status, decommissioned)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
    return rows, total


def _devices_query(
    session: Session,
    f: DeviceFilter | None,
    online: bool | None,
    online_window_s: int,
    assignment_status: str | None,
    decommissioned: bool | None,
) -> Select[Any]:
    query = apply_filter(select(Device), f or DeviceFilter(), session, decommissioned=decommissioned)
    if online is not None:
        since = utcnow() - timedelta(seconds=online_window_s)
        seen = Device.last_seen_at >= since
        query = query.where(seen if online else or_(Device.last_seen_at.is_(None), Device.last_seen_at < since))
    if assignment_status:
        latest = (
            select(Assignment.status)
            .where(Assignment.device_id == Device.id)
            .order_by(Assignment.created_at.desc(), Assignment.id.desc())
            .limit(1)
            .correlate(Device)
            .scalar_subquery()
        )
        query = query.where(latest == assignment_status)
    return query


def iter_devices(
    session: Session,
    f: DeviceFilter | None = None,
    *,
    online: bool | None = None,
    online_window_s: int = 130,
    assignment_status: str | None = None,
    sort: str = "id",
    descending: bool = False,
    decommissioned: bool | None = False,
    batch: int = 500,
    ble_timeout_s: int = 180,
) -> Iterator[DeviceOut]:
    """Every matching device as ``DeviceOut``, in ``list_devices``' order, for exports: one query read
    ``batch`` rows at a time (a server-side cursor on PostgreSQL), so memory stays flat whatever the
    fleet's size, and each batch's active assignments in one more query."""
    query = _devices_query(session, f, online, online_window_s, assignment_status, decommissioned)
    result = session.scalars(query.order_by(*_order(sort, descending)).execution_options(yield_per=batch))
    for rows in result.partitions():
        yield from devices_out(session, rows, online_window_s=online_window_s, ble_timeout_s=ble_timeout_s)


def active_assignments_for(session: Session, device_ids: Sequence[str]) -> dict[str, Assignment]:
    if not device_ids:
        return {}
    rows = session.scalars(
        select(Assignment).where(Assignment.device_id.in_(device_ids), Assignment.status.in_(ACTIVE_STATUSES))
    ).all()
    return {a.device_id: a for a in rows}


def device_out(
    device: Device, active: Assignment | None, *, online_window_s: int, ble_timeout_s: int = 180
) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        model=device.model,
        name=device.name,
        created_at=device.created_at,
        firmware_version=device.firmware_version,
        last_seen_at=device.last_seen_at,
        online=devices.is_online(device.last_seen_at, online_window_s),
        recording=device.recording,
        network=device.network,
        battery=device.battery,
        rssi=device.rssi,
        ble_connected=devices.ble_active(device, ble_timeout_s),
        owner=device.owner.email if device.owner else None,
        tags=device.tags,
        active_assignment=AssignmentSummary.model_validate(active) if active else None,
        decommissioned_at=device.decommissioned_at,
    )


def devices_out(
    session: Session, rows: Sequence[Device], *, online_window_s: int, ble_timeout_s: int = 180
) -> list[DeviceOut]:
    """Each device with its active assignment, in one query for all of them."""
    active = active_assignments_for(session, [d.id for d in rows])
    return [device_out(d, active.get(d.id), online_window_s=online_window_s, ble_timeout_s=ble_timeout_s) for d in rows]
