"""Management API for assignments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.devices.service import get_device
from bota_ota.ota import service
from bota_ota.ota.schemas import AssignmentCreate, AssignmentDetail, AssignmentOut, AssignmentStatus
from bota_ota.web.deps import SessionDep

router = APIRouter(tags=["assignments"])


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
    get_device(session, device_id)
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
