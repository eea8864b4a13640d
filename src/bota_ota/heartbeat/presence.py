"""Write-behind telemetry: routine heartbeats are remembered here and written to the database in batches.

A routine heartbeat (nothing to deliver, nothing material changed) only moves ``last_seen_at`` and the
battery/network/rssi readings. Writing those at once would cost one transaction per heartbeat (about
16,700 a second for a million devices at one a minute), so each instance keeps the latest values per
device in memory and a background task writes them in one batched ``UPDATE`` every few seconds
(``BOTA_OTA_TELEMETRY_FLUSH_INTERVAL_S``), sooner when many devices are waiting, and on shutdown.

Every instance has its own buffer. The ``UPDATE`` only moves a row forward in time
(``last_seen_at < :seen_at``), so a late flush from one instance never overwrites what another instance
(or a synchronous write) stored for a newer heartbeat of the same device. The flush loop is the
runtime's (``runtime.py``); ``apply_telemetry`` stores a heartbeat's telemetry on a locked device row for
the write step and for the app's relay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, or_, update
from sqlalchemy.engine import Engine

from bota_ota.core.database import UTCDateTime, utcnow
from bota_ota.devices.models import Device
from bota_ota.heartbeat.schemas import Heartbeat
from bota_ota.ota.models import Assignment

log = logging.getLogger(__name__)

FLUSH_BATCH_ROWS = 1000  # rows per UPDATE transaction: short row locks, bounded statement size


@dataclass(frozen=True)
class PendingTelemetry:
    """The newest routine telemetry of one device that is not in the database yet."""

    seen_at: datetime
    battery: int | None = None
    network: str | None = None
    rssi: int | None = None
    # A download's percentage moving within the same reported state: (assignment id, state, progress).
    ota: tuple[str, str, int | None] | None = None

    def merged_over(self, older: PendingTelemetry) -> PendingTelemetry:
        """This (newer) reading on top of an older one: omitted fields keep their older value."""
        if self.battery is not None and self.network is not None and self.rssi is not None and self.ota is not None:
            return self  # nothing to merge
        return PendingTelemetry(
            seen_at=self.seen_at,
            battery=self.battery if self.battery is not None else older.battery,
            network=self.network if self.network is not None else older.network,
            rssi=self.rssi if self.rssi is not None else older.rssi,
            ota=self.ota if self.ota is not None else older.ota,
        )


class TelemetryBuffer:
    """Per-instance buffer, keyed by device id; the latest reading wins. Thread-safe (handlers run in threads).

    ``on_full`` is called once (from whichever thread added the entry) when ``flush_at`` devices are
    waiting, so the flusher can write early instead of letting the buffer grow until its next turn.
    """

    def __init__(self, *, flush_at: int = 5000, on_full: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, PendingTelemetry] = {}
        self._full_signalled = False
        self.flush_at = flush_at
        self.on_full = on_full

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, device_id: str, reading: PendingTelemetry) -> None:
        with self._lock:
            older = self._pending.get(device_id)
            if older is not None and older.seen_at > reading.seen_at:
                reading, older = older, reading
            self._pending[device_id] = reading.merged_over(older) if older is not None else reading
            signal = len(self._pending) >= self.flush_at and not self._full_signalled
            if signal:
                self._full_signalled = True
        if signal and self.on_full is not None:
            self.on_full()

    def peek(self, device_id: str) -> PendingTelemetry | None:
        with self._lock:
            return self._pending.get(device_id)

    def take_all(self) -> dict[str, PendingTelemetry]:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._full_signalled = False
        return pending

    def restore(self, entries: dict[str, PendingTelemetry]) -> None:
        """Put back what a failed flush took (newer readings that arrived meanwhile win)."""
        for device_id, reading in entries.items():
            self.add(device_id, reading)


_FLUSH = (
    update(Device)
    .where(
        Device.id == bindparam("b_id"),
        # Only forward in time: never overwrite a newer heartbeat stored by another instance or written at once.
        or_(Device.last_seen_at.is_(None), Device.last_seen_at < bindparam("b_seen_at", type_=UTCDateTime)),
    )
    .values(
        last_seen_at=bindparam("b_seen_at", type_=UTCDateTime),
        battery=func.coalesce(bindparam("b_battery"), Device.battery),
        network=func.coalesce(bindparam("b_network"), Device.network),
        rssi=func.coalesce(bindparam("b_rssi"), Device.rssi),
    )
)


# Progress percentages: only onto the same delivered assignment in the same state, and only forward in time.
_FLUSH_PROGRESS = (
    update(Assignment)
    .where(
        Assignment.id == bindparam("b_aid"),
        Assignment.status == "delivered",
        Assignment.ota_state == bindparam("b_state"),
        or_(Assignment.progress_at.is_(None), Assignment.progress_at < bindparam("b_at", type_=UTCDateTime)),
    )
    .values(progress=bindparam("b_progress"), progress_at=bindparam("b_at", type_=UTCDateTime))
)


def write_telemetry(engine: Engine, entries: dict[str, PendingTelemetry]) -> int:
    """Write buffered readings in batched UPDATEs (executemany), in device-id order so that two instances
    flushing overlapping devices take row locks in the same order and cannot deadlock. Returns rows written."""
    rows = [
        {"b_id": device_id, "b_seen_at": r.seen_at, "b_battery": r.battery, "b_network": r.network, "b_rssi": r.rssi}
        for device_id, r in sorted(entries.items())
    ]
    progress = sorted(
        (
            {"b_aid": r.ota[0], "b_state": r.ota[1], "b_progress": r.ota[2], "b_at": r.seen_at}
            for r in entries.values()
            if r.ota
        ),
        key=lambda row: str(row["b_aid"]),
    )
    written = 0
    for start in range(0, len(rows), FLUSH_BATCH_ROWS):
        with engine.begin() as conn:
            result = conn.execute(_FLUSH, rows[start : start + FLUSH_BATCH_ROWS])
            written += max(result.rowcount, 0)
    for start in range(0, len(progress), FLUSH_BATCH_ROWS):
        with engine.begin() as conn:
            conn.execute(_FLUSH_PROGRESS, progress[start : start + FLUSH_BATCH_ROWS])
    return written


def apply_telemetry(
    device: Device,
    hb: Heartbeat,
    *,
    via_ble: bool,
    now: datetime | None = None,
    pending: PendingTelemetry | None = None,
) -> None:
    """Store a heartbeat's telemetry on the row. ``pending`` is this instance's buffered, not yet written
    reading of the device: its values count where this heartbeat leaves a field out."""
    if pending is not None and (device.last_seen_at is None or pending.seen_at > device.last_seen_at):
        device.battery = pending.battery if pending.battery is not None else device.battery
        device.network = pending.network if pending.network is not None else device.network
        device.rssi = pending.rssi if pending.rssi is not None else device.rssi
    device.last_seen_at = now or utcnow()
    device.firmware_version = hb.firmware_version.strip()
    device.recording = bool(hb.recording)
    if hb.battery is not None:
        device.battery = hb.battery
    if hb.network is not None:
        device.network = hb.network
    if hb.rssi is not None:
        device.rssi = hb.rssi
    # The device's own heartbeat means it is no longer in BLE mode; a relayed one means it is.
    device.ble_connected = via_ble
