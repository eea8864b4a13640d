from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.core.settings import Settings
from bota_ota.devices import service
from bota_ota.devices.models import Device
from bota_ota.devices.schemas import DeviceCreate, DeviceCreated, DeviceEventOut, DeviceOut, DeviceToken
from bota_ota.ota.models import Assignment
from bota_ota.ota.schemas import AssignmentStatus
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


def _out(device: Device, active: Assignment | None, settings: Settings) -> DeviceOut:
    return service.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )


@router.post(
    "",
    status_code=201,
    response_model=DeviceCreated,
    summary="Register a device; the reply carries its token, shown only this once",
)
def register_device(
    body: DeviceCreate, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceCreated:
    device, token, claim_code = service.register_device(
        session, device_id=body.id, model=body.model, name=body.name, actor=principal.actor
    )
    out = service.device_out(
        device, None, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    return DeviceCreated(**out.model_dump(), token=token, claim_code=claim_code)


@router.get("", response_model=list[DeviceOut], summary="List devices (total count in X-Total-Count)")
def list_devices(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    _: Viewer,
    model: Annotated[str | None, Query(description="bota-pin, bota-pin-pro or bota-note")] = None,
    q: Annotated[str | None, Query(max_length=100, description="Search in id and name")] = None,
    firmware_version: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    assignment_status: Annotated[
        AssignmentStatus | None, Query(description="Status of each device's latest assignment")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[DeviceOut]:
    devices, total = service.list_devices(
        session,
        model=model,
        q=q,
        firmware_version=firmware_version,
        online=online,
        online_window_s=settings.online_window_s,
        assignment_status=assignment_status,
        limit=limit,
        offset=offset,
    )
    active = service.active_assignments_for(session, [d.id for d in devices])
    response.headers["X-Total-Count"] = str(total)
    return [
        service.device_out(
            d, active.get(d.id), online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
        )
        for d in devices
    ]


@router.get("/{device_id}", response_model=DeviceOut)
def get_device(device_id: str, session: SessionDep, settings: SettingsDep, _: Viewer) -> DeviceOut:
    device = service.get_device(session, device_id)
    active = service.active_assignments_for(session, [device.id]).get(device.id)
    return service.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )


@router.post(
    "/{device_id}/token",
    response_model=DeviceToken,
    summary="Rotate the device token; the old one stops working at once",
)
def rotate_device_token(device_id: str, session: SessionDep, principal: Operator) -> DeviceToken:
    token = service.rotate_token(session, device_id, actor=principal.actor)
    return DeviceToken(id=device_id, token=token)


@router.get(
    "/{device_id}/events",
    response_model=list[DeviceEventOut],
    summary="The device's history outside assignments (BLE sessions and transfers, ownership), newest first",
)
def device_events(
    device_id: str, session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[DeviceEventOut]:
    service.get_device(session, device_id)
    return [DeviceEventOut.model_validate(e) for e in service.list_device_events(session, device_id, limit=limit)]
