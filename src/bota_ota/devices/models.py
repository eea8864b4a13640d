from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, event, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bota_ota.core.database import Base, UTCDateTime, new_id, utcnow
from bota_ota.devices.version_key import version_key

if TYPE_CHECKING:
    from bota_ota.accounts.models import AppUser

BLE_MODE_WHERE = text("ble_connected")
# Bytewise on PostgreSQL too (devices/version_key.py): a locale's collation would ignore the key's punctuation.
VERSION_KEY_TYPE = String(200).with_variant(String(200, collation="C"), "postgresql")


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint("model in ('bota-pin','bota-pin-pro','bota-note')", name="model"),
        # The BLE-mode timeout sweep looks only at devices in BLE mode: a handful among a million.
        Index(
            "ix_devices_ble_mode_relay",
            "ble_last_relay_at",
            sqlite_where=BLE_MODE_WHERE,
            postgresql_where=BLE_MODE_WHERE,
        ),
        # The device list sorted by version, a page at a time (devices/version_key.py).
        Index("ix_devices_version_key_id", "version_key", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the serial, e.g. BP-000123
    model: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Telemetry, as last reported by the device (or relayed by the app).
    firmware_version: Mapped[str | None] = mapped_column(String(64), index=True)
    # firmware_version's semantic order as text, set with it (the event below; devices/version_key.py).
    version_key: Mapped[str | None] = mapped_column(VERSION_KEY_TYPE)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    recording: Mapped[bool] = mapped_column(Boolean, default=False)
    battery: Mapped[int | None] = mapped_column(Integer)
    network: Mapped[str | None] = mapped_column(String(16))
    rssi: Mapped[int | None] = mapped_column(Integer)
    ble_connected: Mapped[bool] = mapped_column(Boolean, default=False)
    ble_last_relay_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Ownership by an app user: set by an operator, or claimed in the app with the claim code.
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("app_users.id", ondelete="SET NULL"), index=True)
    claim_code_hash: Mapped[str | None] = mapped_column(String(64))
    # Taken out of service: its token and claim code no longer work, it is in no list, count, group or
    # rollout, and it cannot be assigned; its history stays (devices/service.py decommission_device).
    decommissioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    owner: Mapped[AppUser | None] = relationship(lazy="selectin")
    tag_rows: Mapped[list[DeviceTag]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="DeviceTag.tag", passive_deletes=True
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


@event.listens_for(Device.firmware_version, "set")
def _keep_version_key(device: Device, value: str | None, old: object, _initiator: object) -> None:
    """Every ORM write of ``firmware_version`` (the heartbeat's written-at-once path, the app relay,
    registration) keeps ``version_key`` in step. Core statements that write ``firmware_version`` must set
    ``version_key`` themselves (none does: the write-behind flush never writes the version)."""
    if value != old:
        device.version_key = version_key(value)


class DeviceTag(Base):
    """One tag of one device: a row each, so that "all of these tags" and bulk changes are set-based SQL."""

    __tablename__ = "device_tags"
    __table_args__ = (Index("ix_device_tags_tag_device_id", "tag", "device_id"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), primary_key=True)


class DeviceGroup(Base):
    """A saved, named device filter. Membership is evaluated whenever the group is used."""

    __tablename__ = "device_groups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    # The name as compared for uniqueness: two groups may not differ only in case.
    name_key: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeviceEvent(Base):
    """A device's history outside assignments: BLE sessions, BLE transfer attempts, ownership."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_id_seq", "device_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
