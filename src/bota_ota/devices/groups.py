"""Device groups: saved, named device filters. Membership is the filter evaluated when the group is used,
so a device that is tagged, registered or updated later belongs to it from then on."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, utcnow
from bota_ota.core.errors import Conflict, NotFound
from bota_ota.devices.filters import count_devices, parse_filter
from bota_ota.devices.models import DeviceGroup
from bota_ota.devices.schemas import DeviceFilter, GroupCreate, GroupOut, GroupUpdate


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a group named {name!r} already exists", field="name")


def create_group(session: Session, body: GroupCreate, *, actor: str) -> DeviceGroup:
    now = utcnow()
    group = DeviceGroup(
        name=body.name,
        name_key=body.name.lower(),
        description=(body.description or "").strip() or None,
        filter=body.filter.as_json(),
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    insert_or_raise(session, group, lambda: _name_taken(body.name))
    audit.record(
        session,
        actor=actor,
        action="group.create",
        target_type="group",
        target_id=group.id,
        detail={"name": group.name, "filter": group.filter},
    )
    return group


def get_group(session: Session, group_id: str) -> DeviceGroup:
    group = session.get(DeviceGroup, group_id)
    if group is None:
        raise NotFound(f"group {group_id} not found")
    return group


def list_groups(session: Session, *, limit: int = 100, offset: int = 0) -> tuple[Sequence[DeviceGroup], int]:
    total = session.scalar(select(func.count()).select_from(DeviceGroup)) or 0
    rows = session.scalars(select(DeviceGroup).order_by(DeviceGroup.name_key).limit(limit).offset(offset)).all()
    return rows, int(total)


def update_group(session: Session, group_id: str, body: GroupUpdate, *, actor: str) -> DeviceGroup:
    group = get_group(session, group_id)
    changes: dict[str, object] = {}
    if body.name is not None and body.name != group.name:
        key = body.name.lower()
        if key != group.name_key and session.scalar(select(DeviceGroup.id).where(DeviceGroup.name_key == key)):
            raise _name_taken(body.name)
        changes["name"] = {"before": group.name, "after": body.name}
        group.name, group.name_key = body.name, key
    if "description" in body.model_fields_set:
        description = (body.description or "").strip() or None
        if description != group.description:
            changes["description"] = {"before": group.description, "after": description}
            group.description = description
    if body.filter is not None and body.filter.as_json() != group.filter:
        changes["filter"] = {"before": group.filter, "after": body.filter.as_json()}
        group.filter = body.filter.as_json()
    if changes:
        group.updated_at = utcnow()
        audit.record(
            session, actor=actor, action="group.update", target_type="group", target_id=group.id, detail=changes
        )
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:
            raise _name_taken(group.name) from None  # a concurrent rename won the unique name
    return group


def delete_group(session: Session, group_id: str, *, actor: str) -> None:
    group = get_group(session, group_id)
    audit.record(
        session,
        actor=actor,
        action="group.delete",
        target_type="group",
        target_id=group.id,
        detail={"name": group.name, "filter": group.filter},
    )
    session.delete(group)
    session.flush()


def group_filter(group: DeviceGroup) -> DeviceFilter:
    return parse_filter(group.filter)


def group_out(session: Session, group: DeviceGroup) -> GroupOut:
    return GroupOut(
        id=group.id,
        name=group.name,
        description=group.description,
        filter=group.filter,
        device_count=count_devices(session, group_filter(group)),
        created_by=group.created_by,
        created_at=group.created_at,
        updated_at=group.updated_at,
    )
