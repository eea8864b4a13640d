from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from bota_ota.accounts.deps import Viewer
from bota_ota.audit import service
from bota_ota.web.deps import SessionDep

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    detail: dict[str, Any]


@router.get("", response_model=list[AuditOut], summary="The audit log, newest first")
def list_audit(
    response: Response,
    session: SessionDep,
    _: Viewer,
    actor: str | None = None,
    action: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AuditOut]:
    rows, total = service.list_entries(
        session, actor=actor, action=action, target_id=target_id, since=since, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return [AuditOut.model_validate(r) for r in rows]
