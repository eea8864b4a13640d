"""The fleet as operators see it: each device with its active assignment.

A read model across two domains, owned by ``ota`` because ota owns the assignments and may read devices
(``devices`` never reads assignments). The management API, the app API and the portal list and show
devices through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from bota_ota.core.database import utcnow
from bota_ota.devices import service as devices
from bota_ota.devices.filters import apply_filter
from bota_ota.devices.models import Device
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment
from bota_ota.ota.schemas import AssignmentSummary, DeviceOut


def list_devices(
    session: Session,
    f: DeviceFilter | None = None,
    *,
    online: bool | None = None,
    online_window_s: int = 130,
    assignment_status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Device], int]:
    """Devices by id: those matching the filter, online or not (within ``online_window_s``), and whose
    latest assignment has ``assignment_status``."""
    query = apply_filter(select(Device), f or DeviceFilter(), session)
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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Device.id).limit(limit).offset(offset)).all()
    return rows, total


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
    )


def devices_out(
    session: Session, rows: Sequence[Device], *, online_window_s: int, ble_timeout_s: int = 180
) -> list[DeviceOut]:
    """Each device with its active assignment, in one query for all of them."""
    active = active_assignments_for(session, [d.id for d in rows])
    return [device_out(d, active.get(d.id), online_window_s=online_window_s, ble_timeout_s=ble_timeout_s) for d in rows]
