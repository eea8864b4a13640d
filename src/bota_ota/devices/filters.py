"""The device filter: one JSON shape wherever a set of devices is chosen (bulk tags, groups, rollouts,
the device list's query parameters), and the SQL it becomes.

Every key narrows the set (AND). An unknown key or a bad value is refused with the key's name.
``firmware_below`` compares semantic versions, which SQL cannot order; the reported versions are few
(tens, not thousands), so the distinct versions among the other conditions' devices are read once,
compared in Python, and the condition becomes an indexable ``firmware_version IN (...)``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from bota_ota.core.database import utcnow
from bota_ota.devices.models import Device, DeviceTag
from bota_ota.devices.schemas import DeviceFilter
from bota_ota.firmware.versions import InvalidVersion, normalize_version, parse_version


def parse_filter(raw: dict[str, Any] | None) -> DeviceFilter:
    """A stored filter, read back (stored filters were validated when saved)."""
    return DeviceFilter.model_validate(raw or {})


def version_spellings(version: str) -> list[str]:
    """The ways devices may report one version: ``1.0.1``, ``v1.0.1`` and ``V1.0.1`` are the same release
    (an IN list keeps the filter an indexable comparison). Unparseable text is matched as typed."""
    version = version.strip()
    try:
        canonical = normalize_version(version)
    except InvalidVersion:
        return [version]
    return sorted({version, canonical, f"v{canonical}", f"V{canonical}"})


def has_all_tags(tags: list[str]) -> Any:
    """SQL condition: the device has every one of these tags."""
    having = (
        select(DeviceTag.device_id)
        .where(DeviceTag.tag.in_(tags))
        .group_by(DeviceTag.device_id)
        .having(func.count() == len(tags))
    )
    return Device.id.in_(having)


def apply_filter(
    query: Select[Any], f: DeviceFilter, session: Session | None = None, *, decommissioned: bool | None = False
) -> Select[Any]:
    """Narrow a query over ``Device`` to the filter's devices. ``firmware_below`` needs ``session``.

    Decommissioned devices are left out unless ``decommissioned`` is True (only them) or None (any): so
    groups, rollouts, bulk tags and counts never reach a device taken out of service."""
    if decommissioned is not None:
        query = query.where(
            Device.decommissioned_at.is_not(None) if decommissioned else Device.decommissioned_at.is_(None)
        )
    if f.model:
        query = query.where(Device.model == f.model)
    if f.ids is not None:
        query = query.where(Device.id.in_(f.ids))
    if f.tags:
        query = query.where(has_all_tags(f.tags))
    if f.firmware_version:
        query = query.where(Device.firmware_version.in_(version_spellings(f.firmware_version)))
    if f.seen_within_s is not None:
        query = query.where(Device.last_seen_at >= utcnow() - timedelta(seconds=f.seen_within_s))
    if f.network:
        query = query.where(Device.network == f.network)
    if f.q:
        needle = f.q.strip().lower()
        # autoescape: "_" and "%" in the search are literal characters, not wildcards.
        query = query.where(
            or_(
                func.lower(Device.id).contains(needle, autoescape=True),
                func.lower(Device.name).contains(needle, autoescape=True),
            )
        )
    if f.firmware_below:
        if session is None:
            raise TypeError("firmware_below needs a session to read the reported versions")
        query = query.where(Device.firmware_version.in_(versions_below(session, query, f.firmware_below)))
    return query


def versions_below(session: Session, query: Select[Any], bound: str) -> list[str]:
    """The distinct reported versions among ``query``'s devices that are lower than ``bound``."""
    limit = parse_version(bound).replace(build=None)
    reported = session.scalars(
        query.with_only_columns(Device.firmware_version)
        .where(Device.firmware_version.is_not(None))
        .distinct()
        .order_by(None)
    ).all()
    below: list[str] = []
    for version in reported:
        if version is None:
            continue
        try:
            if parse_version(version).replace(build=None).compare(limit) < 0:
                below.append(version)
        except InvalidVersion:
            continue
    return below


def select_devices(session: Session, f: DeviceFilter) -> Select[Any]:
    """``SELECT devices`` matching the filter."""
    return apply_filter(select(Device), f, session)


def count_devices(session: Session, f: DeviceFilter) -> int:
    query = apply_filter(select(func.count()).select_from(Device), f, session)
    return int(session.scalar(query) or 0)
