from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bota_ota.db import Base, UTCDateTime, utcnow

DEVICE_MODELS: dict[str, str] = {
    "bota-pin": "Bota Pin",
    "bota-pin-pro": "Bota Pin Pro",
    "bota-note": "Bota Note",
}


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (CheckConstraint("model in ('bota-pin','bota-pin-pro','bota-note')", name="model"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the serial, e.g. BP-000123
    model: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Telemetry, as last reported by the device (or relayed by the app).
    firmware_version: Mapped[str | None] = mapped_column(String(64), index=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    recording: Mapped[bool] = mapped_column(Boolean, default=False)
    battery: Mapped[int | None] = mapped_column(Integer)
    network: Mapped[str | None] = mapped_column(String(16))
    rssi: Mapped[int | None] = mapped_column(Integer)
    ble_connected: Mapped[bool] = mapped_column(Boolean, default=False)
