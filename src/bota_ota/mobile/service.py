"""The mobile app's side: app users, device ownership, update discovery, BLE relay and BLE transfers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.accounts.models import AppToken, AppUser
from bota_ota.accounts.service import check_credentials
from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, utcnow
from bota_ota.core.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from bota_ota.core.security import hash_claim_code, hash_password, hash_token, new_token, verify_password
from bota_ota.devices.models import Device
from bota_ota.devices.service import ble_active, record_device_event
from bota_ota.devices.service import set_owner as set_owner  # the registry's; the owner API and the CLI use it here
from bota_ota.firmware.models import Release
from bota_ota.firmware.security import check_installable, security_floor, unfit_reason
from bota_ota.firmware.versions import is_newer, version_sort_key
from bota_ota.heartbeat.presence import apply_telemetry
from bota_ota.heartbeat.schemas import Heartbeat
from bota_ota.mobile.schemas import AppDevice, AssignedUpdate, BleOta, FirmwareUpdate, UfwRelease
from bota_ota.ota import service as ota
from bota_ota.ota.models import Assignment
from bota_ota.storage import BlobStore
from bota_ota.transparency import service as transparency
from bota_ota.transparency.logkey import LogKey

_DUMMY_HASH = hash_password("not-a-real-password")

APP_TOKEN_PREFIX = "bota_ap"


# ---- app users and sessions ------------------------------------------------------------------------


def create_app_user(session: Session, *, email: str, password: str, actor: str) -> AppUser:
    email = check_credentials(email, password)
    user = AppUser(email=email, password_hash=hash_password(password), created_by=actor)
    insert_or_raise(session, user, lambda: Conflict(f"an app user with e-mail {email} already exists", field="email"))
    audit.record(
        session,
        actor=actor,
        action="app_user.create",
        target_type="app_user",
        target_id=user.id,
        detail={"email": email},
    )
    return user


def list_app_users(session: Session) -> list[tuple[AppUser, int]]:
    rows = session.execute(
        select(Device.owner_id, func.count()).where(Device.owner_id.is_not(None)).group_by(Device.owner_id)
    ).all()
    counts = {owner_id: count for owner_id, count in rows}
    users = session.scalars(select(AppUser).order_by(AppUser.email)).all()
    return [(u, int(counts.get(u.id, 0))) for u in users]


def login(session: Session, *, email: str, password: str, ttl_s: int) -> tuple[str, AppToken]:
    user = session.scalar(select(AppUser).where(AppUser.email == email.strip().lower()))
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same work either way: no user enumeration by timing
        raise Unauthorized("wrong e-mail or password")
    if not verify_password(user.password_hash, password):
        raise Unauthorized("wrong e-mail or password")
    secret = new_token(APP_TOKEN_PREFIX)
    token = AppToken(user_id=user.id, token_hash=hash_token(secret), expires_at=utcnow() + timedelta(seconds=ttl_s))
    session.add(token)
    session.flush()
    return secret, token


def authenticate_app_token(session: Session, secret: str) -> AppUser | None:
    token = session.scalar(select(AppToken).where(AppToken.token_hash == hash_token(secret)))
    if token is None or token.expires_at <= utcnow():
        return None
    return session.get(AppUser, token.user_id)


def owned_devices(session: Session, user: AppUser) -> list[Device]:
    return list(
        session.scalars(
            select(Device).where(Device.owner_id == user.id, Device.decommissioned_at.is_(None)).order_by(Device.id)
        ).all()
    )


# ---- ownership ---------------------------------------------------------------------------------------


def owned_device(session: Session, user: AppUser, device_id: str, *, lock: bool = False) -> Device:
    # A decommissioned device is gone for the app: neither listed nor offered anything.
    query = select(Device).where(Device.id == device_id, Device.owner_id == user.id, Device.decommissioned_at.is_(None))
    if lock:
        query = query.with_for_update()
    device = session.scalar(query)
    if device is None:  # not there, or not this user's: the app cannot tell the difference
        raise NotFound(f"device {device_id} not found")
    return device


def claim_device(session: Session, user: AppUser, device_id: str, claim_code: str) -> Device:
    device = session.scalar(select(Device).where(Device.id == device_id).with_for_update())
    if device is None or not device.claim_code_hash or device.claim_code_hash != hash_claim_code(claim_code):
        raise NotFound("no device with that id and claim code", field="claim_code")
    if device.owner_id not in (None, user.id):
        raise Conflict(f"device {device_id} already has an owner", field="id")
    device.owner_id = user.id
    record_device_event(session, device.id, "owner.claimed", actor=f"app:{user.email}")
    session.flush()
    return device


def app_device(device: Device, *, ble_timeout_s: int) -> AppDevice:
    return AppDevice(
        id=device.id,
        model=device.model,
        name=device.name,
        firmware_version=device.firmware_version,
        last_seen_at=device.last_seen_at,
        recording=device.recording,
        battery=device.battery,
        ble_connected=ble_active(device, ble_timeout_s),
    )


# ---- update discovery ----------------------------------------------------------------------------------


def is_held(assignment: Assignment) -> bool:
    """Pending and held (its rollout is paused): not delivered, offered or started. Only pending assignments
    are held; a delivered one that is goes on (a download or transfer under way finishes)."""
    return assignment.status == "pending" and assignment.held


def _no_update() -> FirmwareUpdate:
    return FirmwareUpdate(update_available=False, reason=None, assignment_id=None, release=None)


def firmware_update(
    session: Session, device: Device, store: BlobStore, *, base_url: str, ttl_s: int, log_key: LogKey
) -> FirmwareUpdate:
    """What the app should offer (``_update_offer``), marked blocked while the device records."""
    offer = _update_offer(session, device, store, _OfferContext(base_url=base_url, ttl_s=ttl_s, log_key=log_key))
    if offer.update_available and device.recording:
        offer.blocked = "recording"
        offer.message = "The device is recording: the update can start once the recording ends."
    return offer


@dataclass(frozen=True)
class _OfferContext:
    base_url: str
    ttl_s: int
    log_key: LogKey


def _update_offer(session: Session, device: Device, store: BlobStore, ctx: _OfferContext) -> FirmwareUpdate:
    """What the app should offer: the active assignment's .ufw, else the newest newer released .ufw.

    While the device has an active assignment no other release is offered: one installed meanwhile would
    be overwritten by the assignment, or, newer than it, supersede it. An assignment whose release has no
    .ufw is told of (``assignment_http_only``): only the device itself can install it, over WiFi/4G.

    A held assignment (pending, its rollout paused) is not offered, and nothing else is offered instead: its
    release offered as a newer release would deliver it after all, and another release installed meanwhile
    would be overwritten by the assignment once the rollout resumes. A delivered assignment is offered even
    if held (only pending ones are held; a transfer under way may finish).

    A release below its model's security floor or signed by a revoked key is never offered
    (``firmware.security.unfit_reason``): an assignment of one is told of as ``blocked: "security"`` and
    nothing else is offered in its place; among newer releases the newest fit one is offered."""
    active = ota.active_assignment(session, device.id)
    if active is not None and is_held(active):
        return _no_update()
    if active is not None:
        if ota.superseded_by_version(active, device.firmware_version or ""):
            # Older than what the device runs, and not a downgrade an admin asked for: never offered (its
            # next report ends it as superseded).
            return _no_update()
        release = session.get(Release, active.release_id)
        ufw = release.artifact("ufw") if release is not None else None
        notice = AssignedUpdate(
            id=active.id,
            version=active.version,
            status="delivered" if active.status == "delivered" else "pending",
            over_ble=ufw is not None,
        )
        unfit = unfit_reason(session, release) if release is not None else None
        if unfit is not None:
            return FirmwareUpdate(
                update_available=False,
                reason="assignment",
                assignment_id=active.id,
                release=None,
                assignment=notice,
                blocked="security",
                message=f"{active.version} is assigned to this device but cannot be installed: {unfit}. "
                "Ask the device's operator for another update.",
            )
        if release is None or ufw is None:
            return FirmwareUpdate(
                update_available=False,
                reason="assignment_http_only",
                assignment_id=active.id,
                release=None,
                assignment=notice,
                message=f"{active.version} is assigned to this device and can only be installed over WiFi/4G: "
                "the device downloads it by itself when it is online. There is nothing to install over Bluetooth.",
            )
        return _offer(session, release, "assignment", store, ctx, assignment=notice)
    released = session.scalars(select(Release).where(Release.model == device.model, Release.released.is_(True))).all()
    newer = [r for r in released if r.artifact("ufw") is not None and is_newer(r.version, device.firmware_version)]
    floor = security_floor(session, device.model) if newer else 0
    for candidate in sorted(newer, key=lambda r: version_sort_key(r.version), reverse=True):
        if unfit_reason(session, candidate, floor=floor) is None:
            return _offer(session, candidate, "newer_release", store, ctx, assignment=None)
    return _no_update()


def _offer(
    session: Session,
    release: Release,
    reason: Literal["assignment", "newer_release"],
    store: BlobStore,
    ctx: _OfferContext,
    *,
    assignment: AssignedUpdate | None,
) -> FirmwareUpdate:
    ufw = release.artifact("ufw")
    assert ufw is not None
    signed = store.signed_get_url(
        ufw.storage_key, base_url=ctx.base_url, ttl_s=ctx.ttl_s, filename=ufw.storage_key.rsplit("/", 1)[-1]
    )
    return FirmwareUpdate(
        update_available=True,
        reason=reason,
        assignment_id=assignment.id if assignment is not None else None,
        release=UfwRelease(
            id=release.id,
            version=release.version,
            size=ufw.size,
            crc32=ufw.crc32,
            sha256=ufw.sha256,
            url=signed.url,
            expires_at=signed.expires_at,
            signature=ufw.signature,
            key_id=ufw.key_id,
            security_version=release.security_version,
            transparency=transparency.release_in_log(session, release.id, ctx.log_key),
        ),
        assignment=assignment,
    )


# ---- BLE relay and transfers ----------------------------------------------------------------------------


def relay(session: Session, device: Device, hb: Heartbeat, *, actor: str) -> None:
    """A heartbeat relayed by the app. Records status; never delivers, never applies a pending assignment.

    A delivered assignment (a BLE transfer started) is applied when the relayed version matches it. An
    active one, pending or delivered, is superseded when the relayed version is newer than its own.
    """
    if not device.ble_connected:
        record_device_event(session, device.id, "ble.connected", actor=actor)
    apply_telemetry(device, hb, via_ble=True)
    device.ble_last_relay_at = utcnow()
    active = ota.active_assignment(session, device.id, lock=True)
    if active is None:
        return
    # The event's channel says how the version was reported (as the heartbeat's says "http"); the
    # assignment keeps the channel it was delivered on.
    if active.status == "delivered" and ota.applied_by_version(active, hb.firmware_version):
        ota.mark_applied(active, reported_version=hb.firmware_version, channel="ble", actor=actor)
    elif ota.superseded_by_version(active, hb.firmware_version):
        # The device moved past it (e.g. a newer release installed over Bluetooth): the heartbeat must not
        # bring it back to this older version.
        ota.mark_superseded(active, reported_version=hb.firmware_version, channel="ble", actor=actor)


def set_ble_mode(session: Session, device: Device, connected: bool, *, actor: str) -> None:
    if connected and not device.ble_connected:
        record_device_event(session, device.id, "ble.connected", actor=actor)
        device.ble_last_relay_at = utcnow()
    if not connected and device.ble_connected:
        record_device_event(session, device.id, "ble.disconnected", actor=actor)
    device.ble_connected = connected


# Bluetooth results (docs/ble-ota.md) that end an assignment: the device refused the image, not the transfer.
REFUSED_IMAGE_ERRORS = frozenset({"signature_invalid", "rollback_refused"})


def record_ble_ota(session: Session, device: Device, body: BleOta, *, actor: str) -> tuple[str | None, str | None]:
    """Record one BLE transfer attempt; returns (assignment id, its status) when it concerns one."""
    release = session.get(Release, body.release_id)
    if release is None:
        raise NotFound(f"release {body.release_id} not found", field="release_id")
    if release.model != device.model:
        raise ValidationFailed(
            f"release {release.version} is for {release.model}, not {device.model}", field="release_id"
        )
    if release.artifact("ufw") is None:
        raise ValidationFailed(f"release {release.version} has no .ufw file", field="release_id")
    if body.state == "started" and device.recording:
        # No firmware transfer while recording, over Bluetooth either: the device's last known state (its
        # heartbeat or the app's relay) says it records.
        raise Conflict(
            "the device is recording: a Bluetooth update cannot start until the recording ends",
            field="state",
            reason="recording",
        )
    if body.state == "started":
        # A revoked signing key or a security version below the floor: never installed, by any path.
        check_installable(session, release)
    error = (body.error or "").strip() or None
    if body.state == "failed" and error is None:
        error = "unknown"
    assignment = None
    if body.assignment_id:
        try:
            assignment = ota.get_assignment(session, body.assignment_id, lock=True)
        except NotFound:
            assignment = None
        if assignment is None or assignment.device_id != device.id:  # unknown and someone else's look the same
            raise NotFound(f"assignment {body.assignment_id} not found", field="assignment_id")
        if assignment.release_id != release.id:
            raise ValidationFailed("the assignment is for another release", field="assignment_id")
        if assignment.status not in ("pending", "delivered"):
            raise Conflict(f"the assignment is already {assignment.status}", field="assignment_id")
        if body.state == "started" and is_held(assignment):
            raise Conflict(
                "the assignment is held because its rollout is paused: it cannot be started until the rollout"
                " is resumed",
                field="assignment_id",
            )
    record_device_event(
        session,
        device.id,
        f"ble_ota.{body.state}",
        actor=actor,
        release_id=release.id,
        version=release.version,
        assignment_id=body.assignment_id,
        error=error,
    )
    if assignment is None:
        return None, None
    if body.state == "started" and assignment.status == "pending":
        assignment.status = "delivered"
        assignment.channel = "ble"
        assignment.delivered_at = utcnow()
        ota.add_event(assignment, "delivered", actor=actor, channel="ble")
    elif body.state == "failed" and error is not None and error.lower() in REFUSED_IMAGE_ERRORS:
        # The device refused the image itself (its signature, or a security version below its counter):
        # another Bluetooth attempt with the same image cannot go differently.
        ota.add_event(assignment, "ble_failed", actor=actor, channel="ble", error=error)
        ota.mark_failed(assignment, error=error.lower(), channel="ble", actor=actor)
    else:
        # Recorded on the assignment, which stays active: a failed BLE attempt may be retried, and only the
        # device reporting the assigned version makes it applied. An attempt is progress: it holds off the
        # stalled-delivery timeout (ota/sweeps.py).
        ota.add_event(assignment, f"ble_{body.state}", actor=actor, channel="ble", error=error)
        assignment.progress_at = utcnow()
    session.flush()
    return assignment.id, assignment.status
