"""Management API for assignments, and for devices shown with their active assignment (``fleet.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.core.errors import Forbidden
from bota_ota.devices import groups
from bota_ota.devices import service as devices
from bota_ota.devices.schemas import (
    BulkTags,
    BulkTagsResult,
    DeviceCreate,
    GroupCreate,
    GroupOut,
    GroupUpdate,
    TagsUpdate,
)
from bota_ota.ota import device_api, fleet, service
from bota_ota.ota.device_api import ListOptionsDep, QueryFilter
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
# Its routes first: "/export.csv" must not be taken for a device id by GET "/{device_id}" below.
devices_router.include_router(device_api.router)
groups_router = APIRouter(prefix="/api/v1/groups", tags=["groups"])


@router.post(
    "/api/v1/devices/{device_id}/assignments",
    status_code=201,
    response_model=AssignmentOut,
    summary="Assign a release to a device (delivered on its next heartbeat)",
)
def create_assignment(
    device_id: str, body: AssignmentCreate, session: SessionDep, principal: Operator
) -> AssignmentOut:
    if body.allow_downgrade and not principal.has_role("admin"):
        raise Forbidden(
            f"allow_downgrade needs the admin role; your token has {principal.role}", field="allow_downgrade"
        )
    assignment = service.create_assignment(
        session,
        device_id=device_id,
        release_id=body.release_id,
        actor=principal.actor,
        allow_downgrade=body.allow_downgrade,
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
    rollout_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="Only this rollout's assignments (an unknown id matches none)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AssignmentOut]:
    rows, total = service.list_assignments(
        session, status=status, release_id=release_id, rollout_id=rollout_id, limit=limit, offset=offset
    )
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


@router.post(
    "/api/v1/assignments/{assignment_id}/retry",
    status_code=201,
    response_model=AssignmentOut,
    summary="Retry a failed assignment: a new one for the same device and release, linked by retry_of",
)
def retry_assignment(assignment_id: str, session: SessionDep, principal: Operator) -> AssignmentOut:
    return AssignmentOut.model_validate(service.retry_assignment(session, assignment_id, actor=principal.actor))


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
    f: QueryFilter,
    options: ListOptionsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[DeviceOut]:
    devices, total = fleet.list_devices(
        session,
        f,
        online=options.online,
        online_window_s=settings.online_window_s,
        assignment_status=options.assignment_status,
        limit=limit,
        offset=offset,
        sort=options.sort,
        descending=options.descending,
        decommissioned=options.decommissioned,
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


@devices_router.put("/{device_id}/tags", response_model=DeviceOut, summary="Replace a device's tags")
def set_device_tags(
    device_id: str, body: TagsUpdate, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceOut:
    device = devices.set_tags(session, device_id, body.tags, actor=principal.actor)
    active = fleet.active_assignments_for(session, [device.id]).get(device.id)
    return fleet.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )


@devices_router.post(
    "/tags", response_model=BulkTagsResult, summary="Add and remove tags on every device matching a filter"
)
def bulk_device_tags(body: BulkTags, session: SessionDep, principal: Operator) -> BulkTagsResult:
    matched, changed = devices.bulk_tags(session, body.filter, add=body.add, remove=body.remove, actor=principal.actor)
    return BulkTagsResult(matched=matched, changed=changed)


# ---- groups: saved device filters ------------------------------------------------------------------


@groups_router.post("", status_code=201, response_model=GroupOut, summary="Save a named device filter")
def create_group(body: GroupCreate, session: SessionDep, principal: Operator) -> GroupOut:
    return groups.group_out(session, groups.create_group(session, body, actor=principal.actor))


@groups_router.get("", response_model=list[GroupOut], summary="Groups by name, each with its device count now")
def list_groups(
    response: Response,
    session: SessionDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[GroupOut]:
    rows, total = groups.list_groups(session, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [groups.group_out(session, g) for g in rows]


@groups_router.get("/{group_id}", response_model=GroupOut)
def get_group(group_id: str, session: SessionDep, _: Viewer) -> GroupOut:
    return groups.group_out(session, groups.get_group(session, group_id))


@groups_router.patch("/{group_id}", response_model=GroupOut, summary="Rename a group or change its filter")
def update_group(group_id: str, body: GroupUpdate, session: SessionDep, principal: Operator) -> GroupOut:
    return groups.group_out(session, groups.update_group(session, group_id, body, actor=principal.actor))


@groups_router.delete("/{group_id}", status_code=204, summary="Delete a group (its devices stay as they are)")
def delete_group(group_id: str, session: SessionDep, principal: Operator) -> Response:
    groups.delete_group(session, group_id, actor=principal.actor)
    return Response(status_code=204)


@groups_router.get(
    "/{group_id}/devices", response_model=list[DeviceOut], summary="The group's devices now (count in X-Total-Count)"
)
def group_devices(
    group_id: str,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[DeviceOut]:
    group = groups.get_group(session, group_id)
    rows, total = fleet.list_devices(
        session, groups.group_filter(group), online_window_s=settings.online_window_s, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return fleet.devices_out(
        session, rows, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
