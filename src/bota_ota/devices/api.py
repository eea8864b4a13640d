"""Management API for the device registry: token rotation and the device's own event history.

Registering, listing and showing devices answer with each device's active assignment, so those routes
live with that read model in ``ota/api.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.devices import service
from bota_ota.devices.schemas import DeviceEventOut, DeviceToken
from bota_ota.web.deps import SessionDep

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


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
