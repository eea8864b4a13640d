"""The mobile-app API (/api/app/v1), documented exactly in docs/app-api.md, and its management routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bota_ota.accounts import service as accounts
from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.accounts.models import AppUser
from bota_ota.core.errors import NotFound, TooManyRequests, Unauthorized
from bota_ota.heartbeat.schemas import Heartbeat
from bota_ota.mobile import service
from bota_ota.mobile.schemas import (
    AppDevice,
    AppUserCreate,
    AppUserOut,
    BleMode,
    BleOta,
    BleOtaReply,
    Claim,
    FirmwareUpdate,
    Login,
    LoginReply,
    OwnerSet,
    RelayReply,
)
from bota_ota.ota.fleet import active_assignments_for, device_out
from bota_ota.ota.schemas import DeviceOut
from bota_ota.transparency.logkey import log_key
from bota_ota.web.deps import SessionDep, SettingsDep, StoreDep, base_url, bearer_secret

router = APIRouter(prefix="/api/app/v1", tags=["mobile app"])
mgmt_router = APIRouter(prefix="/api/v1", tags=["app users"])

_app_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AppToken",
    description="A mobile-app session token from /api/app/v1/auth/login (bota_ap_...)",
)


def current_app_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_app_bearer)]
) -> AppUser:
    user = service.authenticate_app_token(session, bearer_secret(credentials))
    if user is None:
        raise Unauthorized("the app session is unknown or has expired; log in again")
    return user


AppUserDep = Annotated[AppUser, Depends(current_app_user)]


def _actor(user: AppUser) -> str:
    return f"app:{user.email}"


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _refuse_while_locked(seconds: int | None, what: str) -> None:
    if seconds is not None:
        minutes = -(-seconds // 60)
        raise TooManyRequests(
            f"too many failed {what}; try again in {minutes} minute{'s' if minutes > 1 else ''}", retry_after=seconds
        )


@router.post(
    "/auth/login",
    response_model=LoginReply,
    summary="Log in; the token authorises the other calls",
    responses={
        401: {"description": "Wrong e-mail address or password"},
        429: {"description": "Too many failed log-ins for this e-mail address or client; see Retry-After"},
    },
)
def login(body: Login, request: Request, session: SessionDep, settings: SettingsDep) -> LoginReply:
    # The same shared (database) limit as the portal's sign-in, on keys of its own: app users are other accounts.
    ip, window = _client_ip(request), settings.login_window_s
    locked = accounts.login_retry_after(
        session, body.email, ip, max_failures=settings.app_login_max_failures, window_s=window, prefix="app-"
    )
    _refuse_while_locked(locked, "log-ins")
    try:
        secret, token = service.login(session, email=body.email, password=body.password, ttl_s=settings.app_token_ttl_s)
    except Unauthorized:
        session.rollback()
        accounts.record_login_failure(session, body.email, ip, window_s=window, prefix="app-")
        session.commit()  # the failure counts even though this request fails
        raise
    accounts.clear_login_failures(session, body.email, prefix="app-")
    return LoginReply(token=secret, expires_at=token.expires_at)


@router.get("/devices", response_model=list[AppDevice], summary="The devices this user owns")
def my_devices(user: AppUserDep, session: SessionDep, settings: SettingsDep) -> list[AppDevice]:
    return [
        service.app_device(d, ble_timeout_s=settings.ble_relay_timeout_s) for d in service.owned_devices(session, user)
    ]


@router.post(
    "/devices/claim",
    response_model=AppDevice,
    summary="Claim a device with its claim code",
    responses={
        404: {"description": "No device with this id and claim code"},
        429: {"description": "Too many wrong claim codes for this device, user or client; see Retry-After"},
    },
)
def claim(body: Claim, request: Request, user: AppUserDep, session: SessionDep, settings: SettingsDep) -> AppDevice:
    # Claim codes carry about 40 bits: wrong guesses are limited per device (whoever guesses), per user and per
    # client address (ten times as many), shared by all instances.
    device_id, ip, window = body.id.strip(), _client_ip(request), settings.login_window_s
    keys = [f"claim-device:{device_id}", f"claim-user:{user.id}", f"claim-ip:{ip}" if ip else None]
    limit = settings.claim_max_failures
    limits = [(keys[0], limit), (keys[1], limit), (keys[2], limit * accounts.IP_FACTOR)]
    _refuse_while_locked(accounts.retry_after(session, limits, window_s=window), "claims")
    try:
        device = service.claim_device(session, user, device_id, body.claim_code)
    except NotFound:
        session.rollback()
        accounts.record_failure(session, keys, window_s=window)
        session.commit()
        raise
    return service.app_device(device, ble_timeout_s=settings.ble_relay_timeout_s)


@router.get("/devices/{device_id}", response_model=AppDevice)
def get_device(device_id: str, user: AppUserDep, session: SessionDep, settings: SettingsDep) -> AppDevice:
    return service.app_device(
        service.owned_device(session, user, device_id), ble_timeout_s=settings.ble_relay_timeout_s
    )


@router.get(
    "/devices/{device_id}/firmware-update",
    response_model=FirmwareUpdate,
    summary="Is there firmware to install over Bluetooth? (.ufw with a signed download URL)",
)
def firmware_update(
    device_id: str, request: Request, user: AppUserDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> FirmwareUpdate:
    device = service.owned_device(session, user, device_id)
    return service.firmware_update(
        session,
        device,
        store,
        base_url=base_url(request, settings),
        ttl_s=settings.signed_url_ttl_s,
        log_key=log_key(settings),
    )


@router.post(
    "/devices/{device_id}/relay",
    response_model=RelayReply,
    summary="Relay the BLE-connected device's heartbeat (never returns an OTA manifest)",
)
def relay(device_id: str, body: Heartbeat, user: AppUserDep, session: SessionDep, settings: SettingsDep) -> RelayReply:
    device = service.owned_device(session, user, device_id, lock=True)
    service.relay(session, device, body, actor=_actor(user))
    return RelayReply(heartbeat_interval_s=settings.heartbeat_interval_s, ota=None, ble_connected=True)


@router.post("/devices/{device_id}/ble", response_model=AppDevice, summary="Start or end BLE mode")
def ble_mode(device_id: str, body: BleMode, user: AppUserDep, session: SessionDep, settings: SettingsDep) -> AppDevice:
    device = service.owned_device(session, user, device_id, lock=True)
    service.set_ble_mode(session, device, body.connected, actor=_actor(user))
    return service.app_device(device, ble_timeout_s=settings.ble_relay_timeout_s)


@router.post(
    "/devices/{device_id}/ble-ota",
    response_model=BleOtaReply,
    summary="Record a Bluetooth transfer attempt (started, completed or failed)",
)
def ble_ota(device_id: str, body: BleOta, user: AppUserDep, session: SessionDep) -> BleOtaReply:
    device = service.owned_device(session, user, device_id, lock=True)
    assignment_id, status = service.record_ble_ota(session, device, body, actor=_actor(user))
    return BleOtaReply(recorded=True, assignment_id=assignment_id, assignment_status=status)


# ---- management side ----------------------------------------------------------------------------------


@mgmt_router.post("/app-users", status_code=201, response_model=AppUserOut, summary="Create a mobile-app user")
def create_app_user(body: AppUserCreate, session: SessionDep, principal: Operator) -> AppUserOut:
    user = service.create_app_user(session, email=body.email, password=body.password, actor=principal.actor)
    return AppUserOut(id=user.id, email=user.email, created_at=user.created_at, devices=0)


@mgmt_router.get(
    "/app-users", response_model=list[AppUserOut], summary="Mobile-app users and how many devices each owns"
)
def list_app_users(session: SessionDep, _: Viewer) -> list[AppUserOut]:
    return [
        AppUserOut(id=u.id, email=u.email, created_at=u.created_at, devices=n)
        for u, n in service.list_app_users(session)
    ]


@mgmt_router.put("/devices/{device_id}/owner", response_model=DeviceOut, summary="Set (or clear) a device's owner")
def set_owner(
    device_id: str, body: OwnerSet, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceOut:
    device = service.set_owner(session, device_id, body.email, actor=principal.actor)
    active = active_assignments_for(session, [device.id]).get(device.id)
    session.refresh(device)
    return device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
