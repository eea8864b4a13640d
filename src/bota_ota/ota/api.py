"""Management API for assignments, and for devices shown with their active assignment (``fleet.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.devices import service as devices
from bota_ota.devices.schemas import DeviceCreate
from bota_ota.ota import fleet, service
from bota_ota.ota.schemas import (
    AssignmentCreate,
    AssignmentDetail,
    AssignmentOut,
    AssignmentStatus,
    DeviceCreated,
    DeviceOut,
)
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(tags=["assignments"])
devices_router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


@router.post(
    "/api/v1/devices/{device_id}/assignments",
    status_code=201,
    response_model=AssignmentOut,
    summary="Assign a release to a device (delivered on its next heartbeat)",
)
def create_assignment(
    device_id: str, body: AssignmentCreate, session: SessionDep, principal: Operator
) -> AssignmentOut:
    assignment = service.create_assignment(
        session, device_id=device_id, release_id=body.release_id, actor=principal.actor
    )
    return AssignmentOut.model_validate(assignment)


@router.get(
    "/api/v1/devices/{device_id}/assignments",
    response_model=list[AssignmentOut],
    summary="A device's assignments, newest first",
)
def device_assignments(
    device_id: str,
    response: Response,
    session: SessionDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AssignmentOut]:
    devices.get_device(session, device_id)
    rows, total = service.list_assignments(session, device_id=device_id, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [AssignmentOut.model_validate(a) for a in rows]


@router.get("/api/v1/assignments", response_model=list[AssignmentOut], summary="Assignments across the fleet")
def list_assignments(
    response: Response,
    session: SessionDep,
    _: Viewer,
    status: AssignmentStatus | None = None,
    release_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="Only this release's assignments (an unknown id matches none)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AssignmentOut]:
    rows, total = service.list_assignments(session, status=status, release_id=release_id, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [AssignmentOut.model_validate(a) for a in rows]


@router.get(
    "/api/v1/assignments/{assignment_id}",
    response_model=AssignmentDetail,
    summary="One assignment with its event history",
)
def get_assignment(assignment_id: str, session: SessionDep, _: Viewer) -> AssignmentDetail:
    return AssignmentDetail.model_validate(service.get_assignment(session, assignment_id, with_events=True))


@router.post(
    "/api/v1/assignments/{assignment_id}/cancel",
    response_model=AssignmentOut,
    summary="Cancel a pending or delivered assignment",
)
def cancel_assignment(assignment_id: str, session: SessionDep, principal: Operator) -> AssignmentOut:
    return AssignmentOut.model_validate(service.cancel_assignment(session, assignment_id, actor=principal.actor))


# ---- devices with their active assignment -----------------------------------------------------------


@devices_router.post(
    "",
    status_code=201,
    response_model=DeviceCreated,
    summary="Register a device; the reply carries its token, shown only this once",
)
def register_device(
    body: DeviceCreate, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceCreated:
    device, token, claim_code = devices.register_device(
        session, device_id=body.id, model=body.model, name=body.name, actor=principal.actor
    )
    out = fleet.device_out(
        device, None, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    return DeviceCreated(**out.model_dump(), token=token, claim_code=claim_code)


@devices_router.get("", response_model=list[DeviceOut], summary="List devices (total count in X-Total-Count)")
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
    devices, total = fleet.list_devices(
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
    response.headers["X-Total-Count"] = str(total)
    return fleet.devices_out(
        session, devices, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )


@devices_router.get("/{device_id}", response_model=DeviceOut)
def get_device(device_id: str, session: SessionDep, settings: SettingsDep, _: Viewer) -> DeviceOut:
    device = devices.get_device(session, device_id)
    active = fleet.active_assignments_for(session, [device.id]).get(device.id)
    return fleet.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
