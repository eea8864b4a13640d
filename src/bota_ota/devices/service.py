from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.orm import Session

from bota_ota.accounts.models import AppUser
from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, utcnow
from bota_ota.core.device_models import check_model
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.core.security import hash_claim_code, hash_token, new_claim_code, new_token
from bota_ota.devices.filters import apply_filter
from bota_ota.devices.models import Device, DeviceEvent, DeviceTag
from bota_ota.devices.schemas import DEVICE_ID_MESSAGE, DEVICE_ID_RE, MAX_TAGS_PER_DEVICE, DeviceFilter
from bota_ota.firmware.versions import InvalidVersion, normalize_version, version_sort_key

DEVICE_TOKEN_PREFIX = "bota_dt"


def check_device_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValidationFailed("the serial number is required, e.g. BP-000123", field="id")
    if not DEVICE_ID_RE.match(value):
        raise ValidationFailed(DEVICE_ID_MESSAGE, field="id")
    return value


def new_device(device_id: str, model: str, name: str | None) -> tuple[Device, str, str]:
    """A device row, not added yet, with its token and claim code (both shown once; only hashes stored)."""
    token = new_token(DEVICE_TOKEN_PREFIX)
    claim_code = new_claim_code()
    device = Device(
        claim_code_hash=hash_claim_code(claim_code),
        id=device_id,
        model=check_model(model),
        name=(name or "").strip() or None,
        token_hash=hash_token(token),
    )
    return device, token, claim_code


def register_device(
    session: Session, *, device_id: str, model: str, name: str | None, actor: str
) -> tuple[Device, str, str]:
    """Register a device; returns it with its token and its claim code (both shown once)."""
    if session.get(Device, device_id) is not None:
        raise Conflict(f"device {device_id} is already registered", field="id")
    device, token, claim_code = new_device(device_id, model, name)
    insert_or_raise(session, device, lambda: Conflict(f"device {device_id} is already registered", field="id"))
    audit.record(
        session,
        actor=actor,
        action="device.register",
        target_type="device",
        target_id=device.id,
        detail={"model": model, "name": device.name},
    )
    return device, token, claim_code


def record_device_event(
    session: Session, device_id: str, kind: str, *, actor: str | None = None, **detail: Any
) -> DeviceEvent:
    event = DeviceEvent(device_id=device_id, kind=kind, actor=actor, detail=detail, at=utcnow())
    session.add(event)
    return event


def list_device_events(session: Session, device_id: str, *, limit: int = 100) -> Sequence[DeviceEvent]:
    return session.scalars(
        select(DeviceEvent).where(DeviceEvent.device_id == device_id).order_by(DeviceEvent.seq.desc()).limit(limit)
    ).all()


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    return device


def rotate_token(session: Session, device_id: str, *, actor: str) -> str:
    device = get_device(session, device_id)
    if device.decommissioned_at is not None:
        # A decommissioned device has no working token (the heartbeat finds none by its hash); only
        # recommissioning gives it one.
        raise Conflict(f"device {device.id} is decommissioned; recommission it to give it a new token", field="id")
    token = new_token(DEVICE_TOKEN_PREFIX)
    device.token_hash = hash_token(token)
    audit.record(session, actor=actor, action="device.rotate_token", target_type="device", target_id=device.id)
    session.flush()
    return token


def authenticate_device(session: Session, token: str) -> Device | None:
    return session.scalar(
        select(Device).where(Device.token_hash == hash_token(token), Device.decommissioned_at.is_(None))
    )


# ---- name, owner, decommissioning ------------------------------------------------------------------

MAX_NAME_LENGTH = 200


def check_name(value: str | None) -> str | None:
    """A device's name: trimmed, at most 200 characters, no NUL; empty means none."""
    name = (value or "").strip()
    if "\x00" in name:
        raise ValidationFailed("the name must not contain NUL characters", field="name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"the name is at most {MAX_NAME_LENGTH} characters (it has {len(name)})", field="name")
    return name or None


def rename_device(session: Session, device_id: str, name: str | None, *, actor: str) -> Device:
    """Set (or, with None or blanks, clear) a device's name."""
    new_name = check_name(name)
    device = get_device(session, device_id)
    if device.name != new_name:
        audit.record(
            session,
            actor=actor,
            action="device.rename",
            target_type="device",
            target_id=device.id,
            detail={"before": device.name, "after": new_name},
        )
        device.name = new_name
        session.flush()
    return device


def find_app_user(session: Session, email: str) -> AppUser | None:
    return session.scalar(select(AppUser).where(AppUser.email == email.strip().lower()))


def set_owner(session: Session, device_id: str, email: str | None, *, actor: str) -> Device:
    """Give the device to the app user with this e-mail, or (None or blanks) take it from its owner."""
    device = get_device(session, device_id)
    owner: AppUser | None = None
    if email and email.strip():
        owner = find_app_user(session, email)
        if owner is None:
            raise ValidationFailed(f"no app user has the e-mail {email.strip().lower()}", field="email")
        if device.decommissioned_at is not None:
            raise Conflict(f"device {device.id} is decommissioned; recommission it first", field="email")
    device.owner_id = owner.id if owner else None
    record_device_event(session, device.id, "owner.set", actor=actor, email=owner.email if owner else None)
    audit.record(
        session,
        actor=actor,
        action="device.set_owner",
        target_type="device",
        target_id=device.id,
        detail={"email": owner.email if owner else None},
    )
    session.flush()
    session.refresh(device, ["owner"])
    return device


class DecommissionStep(Protocol):
    """What a domain above this one does when a device is decommissioned, in the same transaction."""

    def __call__(self, session: Session, device: Device, *, actor: str) -> None: ...


# Filled by the domains that hold what a decommissioned device leaves: ``ota`` cancels its active
# assignment, ``rollouts`` takes it out of every unfinished rollout. This domain sits below them and cannot
# import them; each registers its step when it is imported, as every process that serves requests does.
_decommission_steps: list[DecommissionStep] = []


def on_decommission(step: DecommissionStep) -> DecommissionStep:
    """Register ``step`` to run whenever a device is decommissioned (usable as a decorator)."""
    if step not in _decommission_steps:
        _decommission_steps.append(step)
    return step


def _lock_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id, with_for_update=True, populate_existing=True)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    return device


def decommission_device(session: Session, device_id: str, *, actor: str) -> Device:
    """Take a device out of service. Its token and claim code stop working at once (both replaced by
    hashes of secrets nobody holds: the heartbeat caches drop it like a rotated token), its active
    assignment is cancelled and it leaves every unfinished rollout (the registered steps); lists, counts,
    groups, rollouts and the app no longer see it. Its history (assignments, events, audit) stays.
    ``recommission_device`` is the way back."""
    device = _lock_device(session, device_id)
    if device.decommissioned_at is not None:
        raise Conflict(f"device {device.id} is already decommissioned", field="id")
    device.decommissioned_at = utcnow()
    device.token_hash = hash_token(new_token(DEVICE_TOKEN_PREFIX))
    device.claim_code_hash = None
    device.ble_connected = False
    record_device_event(session, device.id, "decommissioned", actor=actor)
    for step in _decommission_steps:
        step(session, device, actor=actor)
    audit.record(session, actor=actor, action="device.decommission", target_type="device", target_id=device.id)
    session.flush()
    return device


def recommission_device(session: Session, device_id: str, *, actor: str) -> tuple[Device, str, str]:
    """Put a decommissioned device back into service with a new token and claim code (shown once); the
    token it had before decommissioning never works again."""
    device = _lock_device(session, device_id)
    if device.decommissioned_at is None:
        raise Conflict(f"device {device.id} is not decommissioned", field="id")
    token = new_token(DEVICE_TOKEN_PREFIX)
    claim_code = new_claim_code()
    device.decommissioned_at = None
    device.token_hash = hash_token(token)
    device.claim_code_hash = hash_claim_code(claim_code)
    record_device_event(session, device.id, "recommissioned", actor=actor)
    audit.record(session, actor=actor, action="device.recommission", target_type="device", target_id=device.id)
    session.flush()
    return device, token, claim_code


# ---- tags ------------------------------------------------------------------------------------------


def set_tags(session: Session, device_id: str, tags: list[str], *, actor: str) -> Device:
    """Replace a device's tags (already checked and normalized by the request schema)."""
    device = get_device(session, device_id)
    if len(tags) > MAX_TAGS_PER_DEVICE:
        raise ValidationFailed(f"a device has at most {MAX_TAGS_PER_DEVICE} tags", field="tags")
    before = device.tags
    if before != tags:
        device.tag_rows = [DeviceTag(device_id=device.id, tag=tag) for tag in tags]
        audit.record(
            session,
            actor=actor,
            action="device.tags",
            target_type="device",
            target_id=device.id,
            detail={"before": before, "after": tags},
        )
        session.flush()
    return device


def bulk_tags(session: Session, f: DeviceFilter, *, add: list[str], remove: list[str], actor: str) -> tuple[int, int]:
    """Add and remove tags on every device matching ``f``, in set-based statements. Returns
    (devices matched, devices whose tags changed). Refused as a whole if a device would pass the limit."""
    if not add and not remove:
        raise ValidationFailed("give tags to add, to remove, or both", field="add")
    both = sorted(set(add) & set(remove))
    if both:
        raise ValidationFailed(f"a tag cannot be both added and removed: {', '.join(both)}", field="remove")
    matched_ids = apply_filter(select(Device.id), f, session).scalar_subquery()
    matched = int(session.scalar(apply_filter(select(func.count()).select_from(Device), f, session)) or 0)
    changed_ids: set[str] = set()
    if add:
        # Devices that would pass the limit: the tags they have, plus the new ones they lack, minus the
        # ones removed.
        lacking = len(add) - func.count().filter(DeviceTag.tag.in_(add))
        removed = func.count().filter(DeviceTag.tag.in_(remove)) if remove else 0
        over = session.scalar(
            select(func.count()).select_from(
                select(Device.id)
                .where(Device.id.in_(matched_ids))
                .outerjoin(DeviceTag, DeviceTag.device_id == Device.id)
                .group_by(Device.id)
                .having(func.count(DeviceTag.tag) + lacking - removed > MAX_TAGS_PER_DEVICE)
                .subquery()
            )
        )
        if over:
            raise ValidationFailed(
                f"{over} matching devices would have more than {MAX_TAGS_PER_DEVICE} tags", field="add"
            )
        # Adding first cannot change which devices match (the filter's tags are "all of"; only matching
        # devices gain tags), so the removal below still sees the same devices.
        for tag in add:  # one INSERT ... SELECT per tag (at most 20), not one per device
            missing = select(Device.id, literal(tag)).where(
                Device.id.in_(matched_ids),
                ~Device.id.in_(select(DeviceTag.device_id).where(DeviceTag.tag == tag)),
            )
            new = session.scalars(missing.with_only_columns(Device.id)).all()
            changed_ids.update(new)
            if new:
                session.execute(insert(DeviceTag).from_select(["device_id", "tag"], missing))
    if remove:
        gone = session.scalars(
            select(DeviceTag.device_id)
            .where(DeviceTag.device_id.in_(matched_ids), DeviceTag.tag.in_(remove))
            .distinct()
        ).all()
        changed_ids.update(gone)
        session.execute(
            # One statement: its subquery is evaluated once, before any row goes (a snapshot on PostgreSQL,
            # a materialized IN list on SQLite), so removing a filtered-on tag still removes it everywhere.
            delete(DeviceTag).where(DeviceTag.device_id.in_(matched_ids), DeviceTag.tag.in_(remove)),
            execution_options={"synchronize_session": False},
        )
    audit.record(
        session,
        actor=actor,
        action="device.tags.bulk",
        target_type="device",
        target_id=None,
        detail={"filter": f.as_json(), "add": add, "remove": remove, "matched": matched, "changed": len(changed_ids)},
    )
    session.expire_all()
    return matched, len(changed_ids)


def is_online(last_seen_at: datetime | None, window_s: int, now: datetime | None = None) -> bool:
    if last_seen_at is None:
        return False
    return (now or utcnow()) - last_seen_at <= timedelta(seconds=window_s)


def ble_active(device: Device, timeout_s: int, now: datetime | None = None) -> bool:
    """BLE mode ends on the app's word, on the device's own heartbeat, or after ``timeout_s`` with no relay."""
    if not device.ble_connected or device.ble_last_relay_at is None:
        return False
    return (now or utcnow()) - device.ble_last_relay_at <= timedelta(seconds=timeout_s)


def fleet_counts(session: Session, *, online_window_s: int) -> tuple[int, int]:
    """(devices registered, devices online now)."""
    since = utcnow() - timedelta(seconds=online_window_s)
    total, online = session.execute(
        select(func.count(), func.count().filter(Device.last_seen_at >= since))
        .select_from(Device)
        .where(Device.decommissioned_at.is_(None))
    ).one()
    return int(total), int(online or 0)


def firmware_distribution(session: Session) -> dict[str, list[tuple[str, int]]]:
    """Devices per reported firmware version for each model, newest version first ("unknown" last).

    Versions that differ only in spelling (``1.2.0`` and ``v1.2.0``) count as one, shown as reported by
    most devices. One GROUP BY over the devices table: cheap even for a large fleet.
    """
    rows = session.execute(
        select(Device.model, Device.firmware_version, func.count())
        .where(Device.decommissioned_at.is_(None))
        .group_by(Device.model, Device.firmware_version)
    ).all()
    merged: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for model, version, count in rows:
        try:
            key = normalize_version(version) if version else "unknown"
        except InvalidVersion:
            key = str(version)
        merged.setdefault(model, {}).setdefault(key, []).append((int(count), version or "unknown"))
    out: dict[str, list[tuple[str, int]]] = {}
    for model, by_key in merged.items():
        items = [(max(spellings)[1], sum(c for c, _ in spellings)) for spellings in by_key.values()]
        items.sort(key=lambda item: _version_order(item[0]), reverse=True)
        out[model] = items
    return out


def _version_order(version: str) -> tuple[int, Any]:
    try:
        return (1, version_sort_key(version))
    except InvalidVersion:
        return (0, version)  # unknown and unparseable versions sort last
