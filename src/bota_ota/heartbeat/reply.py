"""The heartbeat's reply: the OTA manifest with a freshly signed URL, and the routine reply built from a
snapshot with no database at all (its telemetry goes to the write-behind buffer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from bota_ota.core.errors import NotFound
from bota_ota.firmware.policy import DeliveryPolicy
from bota_ota.heartbeat.presence import PendingTelemetry, TelemetryBuffer
from bota_ota.heartbeat.rules import (
    MANIFEST_OUTCOMES,
    AssignmentState,
    BinRef,
    DeviceSnapshot,
    Plan,
    plan_heartbeat,
)
from bota_ota.heartbeat.schemas import Heartbeat, HeartbeatReply, OtaManifest, OtaReport
from bota_ota.ota.service import AttemptRules
from bota_ota.storage import BlobStore


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
            signature=bin_ref.signature,
            key_id=bin_ref.key_id,
            security_version=bin_ref.security_version,
        )


def build_reply(
    assignment: AssignmentState | None, bin_ref: BinRef | None, plan: Plan, signer: ManifestSigner, interval_s: int
) -> HeartbeatReply:
    reply = HeartbeatReply(heartbeat_interval_s=interval_s, ota=None, ota_abort=plan.abort)
    if plan.outcome == "defer":
        # Not now (recording, waiting between attempts, the delivery policy): it stays where it is; say why.
        reply.ota_deferred = plan.deferral
    elif plan.outcome in MANIFEST_OUTCOMES:
        assert assignment is not None
        reply.ota = signer.manifest(assignment, bin_ref)
    return reply


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
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)  # the server's delivery policy
    attempts: AttemptRules = field(default_factory=AttemptRules)

    def reading(self, now: datetime, progress: OtaReport | None = None) -> PendingTelemetry:
        return PendingTelemetry(
            seen_at=now,
            battery=self.hb.battery,
            network=self.hb.network,
            rssi=self.hb.rssi,
            ota=(progress.assignment_id, progress.state, progress.progress) if progress is not None else None,
        )


def routine_reply(snapshot: DeviceSnapshot, call: HeartbeatCall, now: datetime) -> HeartbeatReply | None:
    """The reply to a heartbeat that writes nothing (its telemetry goes to the buffer), or None when the
    heartbeat has something to write: then call ``heartbeat_with_writes`` in a write transaction."""
    size = snapshot.bin.size if snapshot.bin is not None else None
    plan = plan_heartbeat(snapshot, snapshot.assignment, call.hb, now, call.policy, size)
    if plan.writes:
        return None
    reply = build_reply(snapshot.assignment, snapshot.bin, plan, call.signer, call.interval_s)
    call.buffer.add(snapshot.id, call.reading(now, plan.progress))  # plan.progress: a percentage only
    return reply
