from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict

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


def _not_a_number(value: Any) -> Any:
    # pydantic would read a number as Unix seconds; the document promises a date-time.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("a date-time like 2026-12-01T00:00:00Z, not a number")
    return value


@router.get("", response_model=list[AuditOut], summary="The audit log, newest first")
def list_audit(
    response: Response,
    session: SessionDep,
    _: Viewer,
    actor: str | None = None,
    action: str | None = None,
    target_id: str | None = None,
    since: Annotated[
        datetime | None,
        BeforeValidator(_not_a_number),
        Query(description="Entries at or after this RFC 3339 date-time (e.g. 2026-12-01T00:00:00Z)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AuditOut]:
    rows, total = service.list_entries(
        session, actor=actor, action=action, target_id=target_id, since=since, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return [AuditOut.model_validate(r) for r in rows]
