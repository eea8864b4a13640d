"""The device heartbeat: telemetry in, at most one OTA manifest out.

This is the hot path (every device, every interval), so it runs in up to two steps:

1. A read (``read_snapshot``, or this instance's cache of it, ``ota/device_cache.py``): the device (by token
   hash), its active assignment and that release's .bin in one indexed query, then a plan of what the
   heartbeat means (``plan_heartbeat``). Most heartbeats change nothing material; their last-seen time and
   readings go to the instance's write-behind buffer (``devices/telemetry.py``) and the reply is built from
   what was read, a fresh manifest for an already delivered assignment included (``routine_reply``). No
   write, no row lock, and with a cached snapshot no database at all.
2. Only when the plan writes something (the first heartbeat, another firmware version, ``recording``
   flipped, BLE mode ending, an assignment delivered, applied, failed or making progress) does a write
   transaction (``heartbeat_with_writes``) lock the device and its active assignment, plan again from the
   locked rows (another request may have moved them meanwhile) and store everything at once.

``ota/fast_path.py`` runs these steps for ``POST /api/device/v1/heartbeat`` (``answer_heartbeat``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import and_, bindparam, select, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, lazyload

from bota_ota.db import utcnow
from bota_ota.devices.models import Device
from bota_ota.devices.service import record_device_event
from bota_ota.devices.telemetry import PendingTelemetry, TelemetryBuffer
from bota_ota.errors import NotFound, Unauthorized
from bota_ota.firmware.models import Artifact, Release
from bota_ota.firmware.versions import versions_equal
from bota_ota.ota import service
from bota_ota.ota.device_cache import AssignmentView, BinRef, DeviceSnapshot
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply, OtaManifest, OtaReport
from bota_ota.storage import BlobStore

# While the device says it is verifying, writing or rebooting, a download URL is of no use to it.
_NO_MANIFEST_STATES = frozenset({"verifying", "writing", "rebooting"})

Outcome = Literal["none", "apply", "fail", "hold", "defer", "deliver", "redeliver", "resend"]
_RECORDED_OUTCOMES = frozenset({"apply", "fail", "deliver", "redeliver"})
_MANIFEST_OUTCOMES = frozenset({"deliver", "redeliver", "resend"})


class DeviceState(Protocol):
    """What a plan reads of a device: an ORM ``Device`` or a cached ``DeviceSnapshot``."""

    @property
    def last_seen_at(self) -> datetime | None: ...
    @property
    def firmware_version(self) -> str | None: ...
    @property
    def recording(self) -> bool: ...
    @property
    def ble_connected(self) -> bool: ...


class AssignmentState(Protocol):
    """What a plan reads of the active assignment: an ORM ``Assignment`` or an ``AssignmentView``."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def ota_state(self) -> str | None: ...
    @property
    def progress(self) -> int | None: ...
    @property
    def delivery_expires_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class ManifestSigner:
    store: BlobStore
    base_url: Callable[[], str]  # called only when a manifest is signed (local storage needs it)
    ttl_s: int

    def manifest(self, assignment: AssignmentState, bin_ref: BinRef | None) -> OtaManifest:
        if bin_ref is None:  # the release lost its .bin: cannot happen through the API
            raise NotFound(f"the release of assignment {assignment.id} has no .bin file")
        signed = self.store.signed_get_url(
            bin_ref.storage_key,
            base_url=self.base_url(),
            ttl_s=self.ttl_s,
            # The key's own name ({model}-{version}.bin) is plain ASCII: safe in Content-Disposition.
            filename=bin_ref.storage_key.rsplit("/", 1)[-1],
        )
        return OtaManifest(
            assignment_id=assignment.id,
            version=assignment.version,
            url=signed.url,
            expires_at=signed.expires_at,
            size=bin_ref.size,
            crc32=bin_ref.crc32,
            sha256=bin_ref.sha256,
        )


@dataclass(frozen=True)
class Plan:
    """What one heartbeat means for the device row and its active assignment."""

    material: bool  # telemetry that is written at once (see material_change)
    progress: OtaReport | None  # a change of reported progress to record
    outcome: Outcome
    # none: no active assignment · apply / fail: final · hold: no manifest while verifying/writing/rebooting
    # defer: recording · deliver: pending → delivered · redeliver: manifest again, recorded because the last
    # recorded URL has expired · resend: manifest again with a fresh URL, nothing recorded
    # Only the percentage moved, within the same state: written behind with the telemetry (no event either
    # way), unless the heartbeat writes anyway.
    progress_only: bool = False

    @property
    def writes(self) -> bool:
        return (
            self.material
            or (self.progress is not None and not self.progress_only)
            or self.outcome in _RECORDED_OUTCOMES
        )


def material_change(device: DeviceState, hb: Heartbeat) -> bool:
    """Telemetry that must not wait for the write-behind flush: it decides deliveries and what people see."""
    return (
        device.last_seen_at is None  # the first heartbeat: "never seen" → online at once
        or device.firmware_version != hb.firmware_version.strip()
        or device.recording != bool(hb.recording)
        or device.ble_connected  # the device speaks for itself again: BLE mode ends (an event)
    )


def plan_heartbeat(device: DeviceState, assignment: AssignmentState | None, hb: Heartbeat, now: datetime) -> Plan:
    """The rules of docs/device-protocol.md ("What the server does with a heartbeat"), without side effects."""
    material = material_change(device, hb)
    if assignment is None:
        return Plan(material, None, "none")
    if versions_equal(hb.firmware_version, assignment.version):
        return Plan(material, None, "apply")
    report = hb.ota if hb.ota is not None and hb.ota.assignment_id == assignment.id else None
    progress = None
    only = False
    if report is not None and assignment.status == "delivered":
        if report.state == "failed":
            return Plan(material, None, "fail")
        if (report.state, report.progress) != (assignment.ota_state, assignment.progress):
            progress = report
            only = report.state == assignment.ota_state
        if report.state in _NO_MANIFEST_STATES:
            return Plan(material, progress, "hold", only)
    if hb.recording:
        return Plan(material, progress, "defer", only)
    if assignment.status == "pending":
        return Plan(material, progress, "deliver", only)
    if report is None and (assignment.delivery_expires_at is None or now >= assignment.delivery_expires_at):
        # The device is not working on it and the last recorded URL is dead: worth an event. Heartbeats in
        # between get a fresh URL too, but recording each of them would only add noise.
        return Plan(material, progress, "redeliver", only)
    return Plan(material, progress, "resend", only)


def _reply(
    assignment: AssignmentState | None, bin_ref: BinRef | None, plan: Plan, signer: ManifestSigner, interval_s: int
) -> HeartbeatReply:
    reply = HeartbeatReply(heartbeat_interval_s=interval_s, ota=None)
    if plan.outcome == "defer":
        # No firmware transfer while recording: keep the assignment where it is and say why.
        reply.ota_deferred = "recording"
    elif plan.outcome in _MANIFEST_OUTCOMES:
        assert assignment is not None
        reply.ota = signer.manifest(assignment, bin_ref)
    return reply


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


@dataclass(frozen=True)
class HeartbeatCall:
    """One device heartbeat as it reached the server: who sent it (token hash), what it says, and what the
    reply needs (the URL signer, the interval). ``buffer`` is this instance's write-behind buffer."""

    token_hash: str
    hb: Heartbeat
    signer: ManifestSigner
    buffer: TelemetryBuffer
    interval_s: int
    received_at: datetime  # "now" for both steps, whenever the write step runs
    # The .bin the read step found for this release (releases never change their files): the write step
    # signs a delivery with it instead of loading the release again.
    known_bin: tuple[str, BinRef] | None = None

    def reading(self, now: datetime, progress: OtaReport | None = None) -> PendingTelemetry:
        return PendingTelemetry(
            seen_at=now,
            battery=self.hb.battery,
            network=self.hb.network,
            rssi=self.hb.rssi,
            ota=(progress.assignment_id, progress.state, progress.progress) if progress is not None else None,
        )


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
        Artifact.storage_key,
        Artifact.size,
        Artifact.crc32,
        Artifact.sha256,
    )
    .select_from(Device)
    # Constants as SQL literals: an expanding IN parameter is re-rendered on every execution (a fifth of
    # this read's time on SQLite).
    .outerjoin(Assignment, and_(Assignment.device_id == Device.id, text(f"assignments.status IN {_ACTIVE_SQL}")))
    .outerjoin(Artifact, and_(Artifact.release_id == Assignment.release_id, text("artifacts.kind = 'bin'")))
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
        )
    bin_ref = None
    if row.storage_key is not None:
        bin_ref = BinRef(storage_key=row.storage_key, size=row.size, crc32=row.crc32, sha256=row.sha256)
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


def routine_reply(snapshot: DeviceSnapshot, call: HeartbeatCall, now: datetime) -> HeartbeatReply | None:
    """The reply to a heartbeat that writes nothing (its telemetry goes to the buffer), or None when the
    heartbeat has something to write: then call ``heartbeat_with_writes`` in a write transaction."""
    plan = plan_heartbeat(snapshot, snapshot.assignment, call.hb, now)
    if plan.writes:
        return None
    reply = _reply(snapshot.assignment, snapshot.bin, plan, call.signer, call.interval_s)
    call.buffer.add(snapshot.id, call.reading(now, plan.progress))  # plan.progress: a percentage only
    return reply


def heartbeat_with_writes(session: Session, call: HeartbeatCall, now: datetime) -> HeartbeatReply:
    """The whole heartbeat, written at once, with the device and its active assignment locked."""
    device = session.scalar(
        select(Device).where(Device.token_hash == call.token_hash).options(lazyload(Device.owner)).with_for_update()
    )
    if device is None:
        raise Unauthorized("the device token is unknown (rotated or never issued)")
    hb = call.hb
    assignment = service.active_assignment(session, device.id, lock=True)
    plan = plan_heartbeat(device, assignment, hb, now)
    if device.ble_connected:  # the device speaks for itself again: BLE mode is over
        record_device_event(session, device.id, "ble.disconnected", reason="device heartbeat")
    apply_telemetry(device, hb, via_ble=False, now=now, pending=call.buffer.peek(device.id))
    bin_ref = None
    if assignment is not None and plan.outcome in _MANIFEST_OUTCOMES:
        if call.known_bin is not None and call.known_bin[0] == assignment.release_id:
            bin_ref = call.known_bin[1]
        else:
            release = session.get(Release, assignment.release_id)
            artifact = release.artifact("bin") if release else None
            if artifact is not None:
                bin_ref = BinRef(artifact.storage_key, artifact.size, artifact.crc32, artifact.sha256)
    reply = _reply(assignment, bin_ref, plan, call.signer, call.interval_s)
    if assignment is not None:
        _record(assignment, hb, plan, reply.ota, now)
    return reply


def _record(assignment: Assignment, hb: Heartbeat, plan: Plan, manifest: OtaManifest | None, now: datetime) -> None:
    """Write what the plan says happened to the assignment (its row is locked)."""
    if plan.outcome == "apply":
        service.mark_applied(assignment, reported_version=hb.firmware_version, channel="http")
        return
    if plan.outcome == "fail":
        assert hb.ota is not None
        service.mark_failed(assignment, error=(hb.ota.error or "unknown").strip() or "unknown", channel="http")
        return
    if plan.progress is not None:
        if plan.progress.state != assignment.ota_state:
            service.add_event(assignment, "progress", state=plan.progress.state, progress=plan.progress.progress)
        assignment.ota_state = plan.progress.state
        assignment.progress = plan.progress.progress
        assignment.progress_at = now
    if plan.outcome in ("deliver", "redeliver"):
        assert manifest is not None
        assignment.delivery_count += 1
        assignment.delivery_expires_at = manifest.expires_at
        if plan.outcome == "deliver":
            assignment.status = "delivered"
            assignment.channel = "http"
            assignment.delivered_at = now
            service.add_event(assignment, "delivered", channel="http", expires_at=manifest.expires_at.isoformat())
        else:
            expires_at = manifest.expires_at.isoformat()
            service.add_event(assignment, "redelivered", delivery=assignment.delivery_count, expires_at=expires_at)
