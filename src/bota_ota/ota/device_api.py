"""The device API: the contract the firmware implements (docs/device-protocol.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bota_ota.deps import SessionDep, SettingsDep, StoreDep, base_url, bearer_secret
from bota_ota.devices.models import Device
from bota_ota.devices.service import authenticate_device
from bota_ota.errors import Unauthorized
from bota_ota.ota.heartbeat import ManifestSigner, handle_heartbeat
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply

router = APIRouter(prefix="/api/device/v1", tags=["device"])

_device_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="DeviceToken",
    description="The device token issued at registration (bota_dt_...)",
)


def current_device(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_device_bearer)]
) -> Device:
    device = authenticate_device(session, bearer_secret(credentials))
    if device is None:
        raise Unauthorized("the device token is unknown (rotated or never issued)")
    return device


CurrentDevice = Annotated[Device, Depends(current_device)]


@router.post(
    "/heartbeat",
    response_model=HeartbeatReply,
    response_model_exclude_none=False,
    summary="Report status; the reply may carry an OTA manifest",
)
def heartbeat(
    body: Heartbeat,
    request: Request,
    device: CurrentDevice,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> HeartbeatReply:
    signer = ManifestSigner(store=store, base_url=base_url(request, settings), ttl_s=settings.signed_url_ttl_s)
    return handle_heartbeat(session, device, body, signer, interval_s=settings.heartbeat_interval_s)
