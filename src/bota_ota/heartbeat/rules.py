"""The heartbeat's rules: what one heartbeat means, as a pure function of data.

``plan_heartbeat(device, assignment, heartbeat, now)`` takes what the server knows of the device (a cached
``DeviceSnapshot`` or the locked ORM rows) and what the device says, and returns a ``Plan``: whether the
telemetry must be written at once, what progress to record, and the outcome for the active assignment.
No I/O, no clock of its own: docs/device-protocol.md ("What the server does with a heartbeat") as code,
tested with tables of cases (tests/heartbeat/test_rules.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from bota_ota.firmware.policy import Deferral, DeliveryPolicy, deferral
from bota_ota.firmware.versions import supersedes, versions_equal
from bota_ota.heartbeat.schemas import Heartbeat, OtaReport

# While the device says it is verifying, writing or rebooting, a download URL is of no use to it.
NO_MANIFEST_STATES = frozenset({"verifying", "writing", "rebooting"})
# A report of an assignment that is not the device's active one, in these states, gets an abort: the
# device can still drop the image. Writing or rebooting, it is too late (the device finishes).
ABORTABLE_STATES = frozenset({"downloading", "verifying"})

Outcome = Literal[
    "none", "apply", "supersede", "fail", "rollback", "hold", "withheld", "defer", "deliver", "redeliver", "resend"
]
RECORDED_OUTCOMES = frozenset({"apply", "supersede", "fail", "rollback", "deliver", "redeliver"})
# Outcomes after which the assignment is still active and the deferral reason is what this heartbeat says.
_DEFERRAL_OUTCOMES = frozenset({"hold", "withheld", "defer", "deliver", "redeliver", "resend"})
MANIFEST_OUTCOMES = frozenset({"deliver", "redeliver", "resend"})


@dataclass(frozen=True, slots=True)
class BinRef:
    """The .bin of the assignment's release: what a manifest needs besides a signed URL."""

    storage_key: str
    size: int
    crc32: int
    sha256: str
    signature: str | None  # base64 Ed25519 (firmware/signing.py), or None for an unsigned release
    key_id: str | None
    security_version: int  # the release's


@dataclass(frozen=True, slots=True)
class AssignmentView:
    """The active assignment as a heartbeat plan sees it (ORM ``Assignment`` rows qualify too)."""

    id: str
    version: str
    status: str
    ota_state: str | None
    progress: int | None
    delivery_expires_at: datetime | None
    release_id: str
    held: bool  # its rollout is paused: a pending assignment is not delivered
    downgrade_from: str | None = None  # a downgrade an admin allowed: the version the device was on then
    attempts: int = 0  # failed attempts so far
    retry_at: datetime | None = None  # pending after a failed attempt: not delivered before this
    deferred: str | None = None  # why the last heartbeat did not get it (as recorded)
    policy: dict[str, Any] | None = None  # delivery policy overrides


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device with its active assignment, as read by the heartbeat's read step."""

    id: str
    last_seen_at: datetime | None
    firmware_version: str | None
    recording: bool
    ble_connected: bool
    assignment: AssignmentView | None
    bin: BinRef | None


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
    @property
    def held(self) -> bool: ...
    @property
    def downgrade_from(self) -> str | None: ...
    @property
    def retry_at(self) -> datetime | None: ...
    @property
    def deferred(self) -> str | None: ...
    @property
    def policy(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Plan:
    """What one heartbeat means for the device row and its active assignment."""

    material: bool  # telemetry that is written at once (see material_change)
    progress: OtaReport | None  # a change of reported progress to record
    outcome: Outcome
    # none: no active assignment · apply / supersede / fail: final (supersede: the device reports a newer
    # version than the assignment's) · hold: no manifest while verifying/writing/rebooting
    # withheld: pending and held (its rollout is paused): no manifest, nothing recorded · defer: recording
    # deliver: pending → delivered · redeliver: manifest again, recorded because the last recorded URL has
    # expired · resend: manifest again with a fresh URL, nothing recorded
    # rollback: the device came back from writing/rebooting on its old version (a failed attempt)
    # Only the percentage moved, within the same state: written behind with the telemetry (no event either
    # way), unless the heartbeat writes anyway.
    progress_only: bool = False
    deferral: Deferral | None = None  # with outcome defer: why (the reply's ota_deferred)
    deferral_changed: bool = False  # differs from the assignment's recorded reason: written at once
    abort: str | None = None  # the reply's ota_abort: the device works on an assignment that is not active

    @property
    def writes(self) -> bool:
        return (
            self.material
            or (self.progress is not None and not self.progress_only)
            or self.outcome in RECORDED_OUTCOMES
            or self.deferral_changed
        )


def material_change(device: DeviceState, hb: Heartbeat) -> bool:
    """Telemetry that must not wait for the write-behind flush: it decides deliveries and what people see."""
    return (
        device.last_seen_at is None  # the first heartbeat: "never seen" → online at once
        or device.firmware_version != hb.firmware_version.strip()
        or device.recording != bool(hb.recording)
        or device.ble_connected  # the device speaks for itself again: BLE mode ends (an event)
    )


def plan_heartbeat(
    device: DeviceState,
    assignment: AssignmentState | None,
    hb: Heartbeat,
    now: datetime,
    policy: DeliveryPolicy = DeliveryPolicy(),
    image_size: int | None = None,
) -> Plan:
    """The rules of docs/device-protocol.md ("What the server does with a heartbeat"), without side effects.
    ``policy``: the server's delivery policy (the assignment's overrides are applied here); ``image_size``:
    the size of the .bin a delivery would send (the storage check)."""
    plan = _plan(device, assignment, hb, now, policy, image_size)
    if (
        hb.ota is not None
        and hb.ota.state in ABORTABLE_STATES
        and (assignment is None or hb.ota.assignment_id != assignment.id)
    ):
        # Cancelled (or otherwise ended) while the device works on it: tell it to stop.
        plan = replace(plan, abort=hb.ota.assignment_id)
    if assignment is not None and plan.outcome in _DEFERRAL_OUTCOMES and plan.deferral != assignment.deferred:
        plan = replace(plan, deferral_changed=True)
    return plan


def _plan(
    device: DeviceState,
    assignment: AssignmentState | None,
    hb: Heartbeat,
    now: datetime,
    policy: DeliveryPolicy,
    image_size: int | None,
) -> Plan:
    material = material_change(device, hb)
    if assignment is None:
        return Plan(material, None, "none")
    if versions_equal(hb.firmware_version, assignment.version):
        return Plan(material, None, "apply")
    if supersedes(hb.firmware_version, assignment.version, downgrade_from=assignment.downgrade_from):
        # The device moved past it (installed a newer release some other way): delivering it now would
        # send the device back. Held or not, whatever its progress says.
        return Plan(material, None, "supersede")
    report = hb.ota if hb.ota is not None and hb.ota.assignment_id == assignment.id else None
    progress = None
    only = False
    if assignment.status == "delivered":
        if report is not None and report.state == "failed":
            return Plan(material, None, "fail")
        if assignment.ota_state in NO_MANIFEST_STATES and report is None:
            # It said it was verifying, writing or rebooting, and is back on the old version without a
            # word about it: the new image did not take (the bootloader reverted). A failed attempt.
            return Plan(material, None, "rollback")
    if report is not None and assignment.status == "delivered":
        if (report.state, report.progress) != (assignment.ota_state, assignment.progress):
            progress = report
            only = report.state == assignment.ota_state
        if report.state in NO_MANIFEST_STATES:
            return Plan(material, progress, "hold", only)
    if assignment.status == "pending" and assignment.held:
        # Its rollout is paused: not delivered, and not announced as deferred either (it may never come).
        # Only a pending assignment is held; a delivered one that somehow is goes on (downloads finish).
        return Plan(material, None, "withheld")
    if hb.recording:
        return Plan(material, progress, "defer", only, deferral="recording")
    if assignment.status == "pending":
        if assignment.retry_at is not None and now < assignment.retry_at:
            return Plan(material, progress, "defer", only, deferral="retry_wait")
        reason = deferral(
            policy.with_overrides(assignment.policy),
            battery=hb.battery,
            charging=hb.charging,
            network=hb.network,
            storage_free_kb=hb.storage_free_kb,
            unsynced_recordings=hb.unsynced_recordings,
            image_size=image_size,
        )
        if reason is not None:
            return Plan(material, progress, "defer", only, deferral=reason)
        return Plan(material, progress, "deliver", only)
    if report is None and (assignment.delivery_expires_at is None or now >= assignment.delivery_expires_at):
        # The device is not working on it and the last recorded URL is dead: worth an event. Heartbeats in
        # between get a fresh URL too, but recording each of them would only add noise.
        return Plan(material, progress, "redeliver", only)
    return Plan(material, progress, "resend", only)
