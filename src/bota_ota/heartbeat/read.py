"""The heartbeat's read step: the device (by token hash), its active assignment and that release's .bin
(with its signature and the release's security version) in one indexed SQLAlchemy Core query, on a worker
thread (``read_snapshot``) or, on SQLite, on the event loop itself (``InlineSnapshotReader``)."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import and_, bindparam, select, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError

from bota_ota.devices.models import Device
from bota_ota.firmware.models import Artifact, Release
from bota_ota.heartbeat.rules import AssignmentView, BinRef, DeviceSnapshot
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment

_ACTIVE_SQL = "(" + ", ".join(f"'{status}'" for status in ACTIVE_STATUSES) + ")"

# The read step in one statement: SQLAlchemy Core (no ORM identity map or attribute instrumentation on the
# hot path), compiled once and cached by the engine.
_SNAPSHOT = (
    select(
        Device.id,
        Device.last_seen_at,
        Device.firmware_version,
        Device.recording,
        Device.ble_connected,
        Assignment.id.label("a_id"),
        Assignment.version,
        Assignment.status,
        Assignment.ota_state,
        Assignment.progress,
        Assignment.delivery_expires_at,
        Assignment.release_id,
        Assignment.held,
        Assignment.downgrade_from,
        Assignment.attempts,
        Assignment.retry_at,
        Assignment.deferred,
        Assignment.policy,
        Artifact.storage_key,
        Artifact.size,
        Artifact.crc32,
        Artifact.sha256,
        Artifact.signature,
        Artifact.key_id,
        Release.security_version,
    )
    .select_from(Device)
    # Constants as SQL literals: an expanding IN parameter is re-rendered on every execution (a fifth of
    # this read's time on SQLite).
    .outerjoin(Assignment, and_(Assignment.device_id == Device.id, text(f"assignments.status IN {_ACTIVE_SQL}")))
    .outerjoin(Artifact, and_(Artifact.release_id == Assignment.release_id, text("artifacts.kind = 'bin'")))
    .outerjoin(Release, Release.id == Artifact.release_id)
    .where(Device.token_hash == bindparam("token_hash"))
)


def read_snapshot(engine: Engine, token_hash: str) -> DeviceSnapshot | None:
    """The device with this token, its active assignment and that release's .bin; None: unknown token."""
    # One statement, atomic on its own: no BEGIN/ROLLBACK round trips around it (SQLite: no BEGIN;
    # PostgreSQL: autocommit).
    with engine.connect().execution_options(sqlite_begin="NONE", isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_SNAPSHOT, {"token_hash": token_hash}).first()
    return _snapshot(row)


def _snapshot(row: Row[Any] | Any | None) -> DeviceSnapshot | None:
    if row is None:
        return None
    assignment = None
    if row.a_id is not None:
        assignment = AssignmentView(
            id=row.a_id,
            version=row.version,
            status=row.status,
            ota_state=row.ota_state,
            progress=row.progress,
            delivery_expires_at=row.delivery_expires_at,
            release_id=row.release_id,
            held=bool(row.held),
            downgrade_from=row.downgrade_from,
            attempts=row.attempts,
            retry_at=row.retry_at,
            deferred=row.deferred,
            policy=row.policy,
        )
    bin_ref = None
    if row.storage_key is not None:
        bin_ref = BinRef(
            storage_key=row.storage_key,
            size=row.size,
            crc32=row.crc32,
            sha256=row.sha256,
            signature=row.signature,
            key_id=row.key_id,
            security_version=row.security_version or 0,
        )
    return DeviceSnapshot(
        id=row.id,
        last_seen_at=row.last_seen_at,
        firmware_version=row.firmware_version,
        recording=bool(row.recording),
        ble_connected=bool(row.ble_connected),
        assignment=assignment,
        bin=bin_ref,
    )


class NotRead:
    """The type of ``NOT_READ``."""


NOT_READ = NotRead()  # the inline reader could not answer: read in a worker thread instead


class InlineSnapshotReader:
    """SQLite only: the read step on the event loop itself, on one connection of its own.

    A cache miss costs about 0.1 ms of SQLite and Python, less than handing it to a worker thread and
    back, which under load also queues behind the GIL. A WAL reader never waits for the writer, so this
    cannot stall the loop in normal operation; for the rare busy cases (a checkpoint restarting the WAL,
    recovery after a crash) its busy timeout is 20 ms, after which the heartbeat takes the thread path.
    """

    BUSY_TIMEOUT_MS = 20

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def read(self, token_hash: str) -> DeviceSnapshot | NotRead | None:
        try:
            if self._conn is None:
                conn = self._engine.connect().execution_options(sqlite_begin="NONE")
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
                self._conn = conn
            row = self._conn.execute(_SNAPSHOT, {"token_hash": token_hash}).first()
            if self._conn.in_transaction():
                self._conn.rollback()  # nothing to end (no BEGIN); keeps SQLAlchemy's view in step
        except DBAPIError:
            self.close()
            return NOT_READ
        return _snapshot(row)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
