"""Management API for rollouts (docs/api.md, docs/rollouts.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.rollouts import service
from bota_ota.rollouts.schemas import (
    Preview,
    PreviewRequest,
    RetryResult,
    RolloutCreate,
    RolloutDetail,
    RolloutOut,
    RolloutStatus,
)
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


@router.post(
    "",
    status_code=201,
    response_model=RolloutDetail,
    summary="Roll a release out to a group or filter",
    responses={404: {"description": "No such release or group"}},
)
def create_rollout(
    body: RolloutCreate, session: SessionDep, settings: SettingsDep, principal: Operator
) -> RolloutDetail:
    rollout = service.create_rollout(session, body, settings, actor=principal.actor)
    return service.rollout_detail(session, rollout)


@router.post(
    "/preview",
    response_model=Preview,
    summary="What a rollout would do now: matching devices, skipped ones, about how many per stage",
    responses={404: {"description": "No such release or group"}},
)
def preview_rollout(body: PreviewRequest, session: SessionDep, _: Viewer) -> Preview:
    return service.preview(session, body)


@router.get("", response_model=list[RolloutOut], summary="Rollouts, newest first (total in X-Total-Count)")
def list_rollouts(
    response: Response,
    session: SessionDep,
    _: Viewer,
    status: RolloutStatus | None = None,
    release_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[RolloutOut]:
    rows, total = service.list_rollouts(session, status=status, release_id=release_id, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [service.rollout_out(session, r) for r in rows]


@router.get("/{rollout_id}", response_model=RolloutDetail, summary="A rollout with its stages and event history")
def get_rollout(rollout_id: str, session: SessionDep, _: Viewer) -> RolloutDetail:
    return service.rollout_detail(session, service.get_rollout(session, rollout_id))


@router.post("/{rollout_id}/pause", response_model=RolloutDetail, summary="Hold its pending assignments")
def pause_rollout(rollout_id: str, session: SessionDep, principal: Operator) -> RolloutDetail:
    return service.rollout_detail(session, service.pause(session, rollout_id, actor=principal.actor))


@router.post("/{rollout_id}/resume", response_model=RolloutDetail, summary="Release the held assignments and go on")
def resume_rollout(rollout_id: str, session: SessionDep, settings: SettingsDep, principal: Operator) -> RolloutDetail:
    return service.rollout_detail(session, service.resume(session, rollout_id, settings, actor=principal.actor))


@router.post(
    "/{rollout_id}/cancel", response_model=RolloutDetail, summary="Cancel every pending and delivered assignment"
)
def cancel_rollout(rollout_id: str, session: SessionDep, principal: Operator) -> RolloutDetail:
    return service.rollout_detail(session, service.cancel(session, rollout_id, actor=principal.actor))


@router.post("/{rollout_id}/advance", response_model=RolloutDetail, summary="Start the next stage now")
def advance_rollout(rollout_id: str, session: SessionDep, settings: SettingsDep, principal: Operator) -> RolloutDetail:
    return service.rollout_detail(session, service.advance(session, rollout_id, settings, actor=principal.actor))


@router.post("/{rollout_id}/retry-failed", response_model=RetryResult, summary="Assign the failed devices again")
def retry_failed(rollout_id: str, session: SessionDep, principal: Operator) -> RetryResult:
    return RetryResult(retried=service.retry_failed(session, rollout_id, actor=principal.actor))
