"""The BLE-mode timeout: a device whose app stopped relaying is no longer in BLE mode.

Reads already treat BLE mode as over once no relay came for ``BOTA_OTA_BLE_RELAY_TIMEOUT_S``
(``devices.service.ble_active``). This sweep makes it so in the database as well, and records the end
(``ble.disconnected`` with reason ``relay timeout``) once, when it happens, instead of at the device's
next heartbeat. Every instance runs it; ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) and the re-checked
condition mean a device's BLE session is ended, and its event written, by exactly one of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, lazyload

from bota_ota.devices.models import BLE_MODE_WHERE, Device
from bota_ota.devices.service import record_device_event

SWEEP_ACTOR = "system:ble-timeout"


def end_silent_ble_modes(session: Session, *, timeout_s: int, now: datetime, limit: int = 500) -> int:
    """End BLE mode for up to ``limit`` devices whose app relayed nothing for ``timeout_s``. Flushes only."""
    cutoff = now - timedelta(seconds=timeout_s)
    silent = session.scalars(
        select(Device)
        .where(BLE_MODE_WHERE, or_(Device.ble_last_relay_at.is_(None), Device.ble_last_relay_at < cutoff))
        .order_by(Device.id)
        .limit(limit)
        .options(lazyload(Device.owner))
        .with_for_update(skip_locked=True)
    ).all()
    for device in silent:
        device.ble_connected = False
        record_device_event(
            session,
            device.id,
            "ble.disconnected",
            actor=SWEEP_ACTOR,
            reason="relay timeout",
            last_relay_at=device.ble_last_relay_at.isoformat() if device.ble_last_relay_at else None,
        )
    session.flush()
    return len(silent)
