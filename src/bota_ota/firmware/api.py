from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.firmware import service
from bota_ota.firmware.receive import receive_release
from bota_ota.firmware.schemas import ReleaseOut, ReleasePatch
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep, StoreDep

router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])

_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["version", "model"],
                    "properties": {
                        "version": {
                            "type": "string",
                            "example": "v1.0.1",
                            "description": "Semantic version, optional leading v",
                        },
                        "model": {"type": "string", "enum": ["bota-pin", "bota-pin-pro", "bota-note"]},
                        "notes": {"type": "string"},
                        "draft": {
                            "type": "boolean",
                            "description": "Upload as a draft (not offered to apps)",
                        },
                        "bin": {"type": "string", "format": "binary", "description": "HTTP OTA image (.bin)"},
                        "ufw": {
                            "type": "string",
                            "format": "binary",
                            "description": "Bluetooth OTA file (.ufw)",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=ReleaseOut,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Upload a firmware release (multipart: version, model, bin and/or ufw, notes)",
)
async def upload_release(
    request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: Operator, ctx: CtxDep
) -> ReleaseOut:
    return await receive_release(request, session, store, settings, ctx, actor=principal.actor)


@router.get("", response_model=list[ReleaseOut], summary="List releases, newest version first per model")
def list_releases(
    session: SessionDep,
    _: Viewer,
    model: Annotated[str | None, Query(description="bota-pin, bota-pin-pro or bota-note")] = None,
    released: Annotated[bool | None, Query(description="Only released (true) or drafts (false)")] = None,
) -> list[ReleaseOut]:
    return [service.release_out(r) for r in service.list_releases(session, model=model, released=released)]


@router.get("/{release_id}", response_model=ReleaseOut)
def get_release(release_id: str, session: SessionDep, _: Viewer) -> ReleaseOut:
    return service.release_out(service.get_release(session, release_id))


@router.patch(
    "/{release_id}", response_model=ReleaseOut, summary="Mark released/draft, edit notes or the delivery policy"
)
def patch_release(release_id: str, body: ReleasePatch, session: SessionDep, principal: Operator) -> ReleaseOut:
    policy = body.delivery_policy.overrides() if body.delivery_policy is not None else None
    release = service.update_release(
        session, release_id, released=body.released, notes=body.notes, actor=principal.actor, delivery_policy=policy
    )
    return service.release_out(release)


@router.delete("/{release_id}", status_code=204, summary="Delete a release no assignment references")
def delete_release(release_id: str, session: SessionDep, store: StoreDep, principal: Operator) -> Response:
    keys = service.delete_release(session, store, release_id, actor=principal.actor)
    session.commit()
    service.delete_blobs(store, keys)
    return Response(status_code=204)
