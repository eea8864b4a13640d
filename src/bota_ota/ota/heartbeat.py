"""The device heartbeat: telemetry in, at most one OTA manifest out.

This is the hot path (every device, every interval). It reads the device and its active assignment,
writes telemetry, and moves the assignment only on a real state change.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from bota_ota.db import utcnow
from bota_ota.devices.models import Device
from bota_ota.devices.service import record_device_event
from bota_ota.errors import NotFound
from bota_ota.firmware.models import Release
from bota_ota.ota import service
from bota_ota.ota.models import Assignment
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply, OtaManifest
from bota_ota.storage import BlobStore

# While the device says it is verifying, writing or rebooting, a download URL is of no use to it.
_NO_MANIFEST_STATES = frozenset({"verifying", "writing", "rebooting"})


@dataclass(frozen=True)
class ManifestSigner:
    store: BlobStore
    base_url: str
    ttl_s: int

    def manifest(self, session: Session, assignment: Assignment) -> OtaManifest:
        release = session.get(Release, assignment.release_id)
        artifact = release.artifact("bin") if release else None
        if artifact is None:  # the release lost its .bin: cannot happen through the API
            raise NotFound(f"release {assignment.release_id} has no .bin file")
        signed = self.store.signed_get_url(
            artifact.storage_key,
            base_url=self.base_url,
            ttl_s=self.ttl_s,
            # The key's own name ({model}-{version}.bin) is plain ASCII: safe in Content-Disposition.
            filename=artifact.storage_key.rsplit("/", 1)[-1],
        )
        return OtaManifest(
            assignment_id=assignment.id,
            version=assignment.version,
            url=signed.url,
            expires_at=signed.expires_at,
            size=artifact.size,
            crc32=artifact.crc32,
            sha256=artifact.sha256,
        )


def apply_telemetry(device: Device, hb: Heartbeat, *, via_ble: bool) -> None:
    device.last_seen_at = utcnow()
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


def handle_heartbeat(
    session: Session, device: Device, hb: Heartbeat, signer: ManifestSigner, *, interval_s: int
) -> HeartbeatReply:
    if device.ble_connected:  # the device speaks for itself again: BLE mode is over
        record_device_event(session, device.id, "ble.disconnected", reason="device heartbeat")
    apply_telemetry(device, hb, via_ble=False)
    reply = HeartbeatReply(heartbeat_interval_s=interval_s, ota=None)
    assignment = service.active_assignment(session, device.id, lock=True)
    if assignment is None:
        return reply

    if service.applied_by_version(assignment, hb.firmware_version):
        service.mark_applied(assignment, reported_version=hb.firmware_version, channel="http")
        return reply

    report = hb.ota if hb.ota is not None and hb.ota.assignment_id == assignment.id else None
    if report is not None and assignment.status == "delivered":
        if report.state == "failed":
            service.mark_failed(assignment, error=(report.error or "unknown").strip() or "unknown", channel="http")
            return reply
        if report.state != assignment.ota_state:
            service.add_event(assignment, "progress", state=report.state, progress=report.progress)
        assignment.ota_state = report.state
        assignment.progress = report.progress
        assignment.progress_at = utcnow()
        if report.state in _NO_MANIFEST_STATES:
            return reply

    if device.recording:
        # No firmware transfer while recording: keep the assignment where it is and say why.
        reply.ota_deferred = "recording"
        return reply

    reply.ota = signer.manifest(session, assignment)
    assignment.delivery_count += 1
    if assignment.status == "pending":
        assignment.status = "delivered"
        assignment.channel = "http"
        assignment.delivered_at = utcnow()
        service.add_event(assignment, "delivered", channel="http", expires_at=reply.ota.expires_at.isoformat())
    elif report is None:
        # Delivered before, and the device is not working on it: the reply was lost or the URL expired.
        service.add_event(assignment, "redelivered", delivery=assignment.delivery_count)
    return reply
