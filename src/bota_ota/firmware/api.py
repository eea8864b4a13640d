from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from bota_ota.accounts.deps import Admin, Operator, Viewer
from bota_ota.core.errors import Forbidden
from bota_ota.firmware import keys, service
from bota_ota.firmware.keys import ReleaseWithdrawal
from bota_ota.firmware.receive import receive_release
from bota_ota.firmware.schemas import (
    ModelOut,
    ModelPatch,
    ReleaseOut,
    ReleasePatch,
    SigningKeyCreate,
    SigningKeyOut,
    SigningKeyRevoked,
)
from bota_ota.firmware.signing import MAX_SECURITY_VERSION
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep, StoreDep

# The names of core/device_models.py DEVICE_MODELS, as a type the OpenAPI document shows as an enum.
ModelName = Literal["bota-pin", "bota-pin-pro", "bota-note"]

router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])
keys_router = APIRouter(prefix="/api/v1/signing-keys", tags=["signing"])
models_router = APIRouter(prefix="/api/v1/models", tags=["signing"])

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
                        "bin_sig": {
                            "type": "string",
                            "format": "binary",
                            "description": "The .bin's signature (bota-ota sign): base64 or hex text, or 64 raw bytes",
                        },
                        "ufw_sig": {
                            "type": "string",
                            "format": "binary",
                            "description": "The .ufw's signature, as bin_sig",
                        },
                        "security_version": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_SECURITY_VERSION,
                            "default": 0,
                            "description": "Anti-rollback counter; part of the signed bytes",
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
    summary="Upload a firmware release (multipart: version, model, bin and/or ufw, their signatures, notes)",
    responses={
        413: {"description": "A file (or the whole body) is larger than the upload limit"},
        415: {"description": "The body is not multipart/form-data"},
        507: {"description": "The server's disk is full: nothing was stored"},
    },
)
async def upload_release(
    request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: Operator, ctx: CtxDep
) -> ReleaseOut:
    return await receive_release(request, session, store, settings, ctx, actor=principal.actor)


@router.get("", response_model=list[ReleaseOut], summary="List releases, newest version first per model")
def list_releases(
    session: SessionDep,
    _: Viewer,
    model: Annotated[ModelName | None, Query(description="bota-pin, bota-pin-pro or bota-note")] = None,
    released: Annotated[bool | None, Query(description="Only released (true) or drafts (false)")] = None,
) -> list[ReleaseOut]:
    return service.release_outs(session, service.list_releases(session, model=model, released=released))


@router.get("/{release_id}", response_model=ReleaseOut)
def get_release(release_id: str, session: SessionDep, _: Viewer) -> ReleaseOut:
    return service.release_out(session, service.get_release(session, release_id))


def release_withdrawal(request: Request) -> ReleaseWithdrawal:
    """How releases that became unfit are withdrawn (cancel, pause): wired by the app (``app.py``), since
    assignments and rollouts are domains above this one."""
    withdraw: ReleaseWithdrawal = request.app.state.release_withdrawal
    return withdraw


WithdrawalDep = Annotated[ReleaseWithdrawal, Depends(release_withdrawal)]


@router.patch(
    "/{release_id}",
    response_model=ReleaseOut,
    summary="Mark released/draft, edit notes or the delivery policy, mark the security floor (admin)",
)
def patch_release(
    release_id: str, body: ReleasePatch, session: SessionDep, principal: Operator, withdraw: WithdrawalDep
) -> ReleaseOut:
    if body.security_floor is not None and not principal.has_role("admin"):
        raise Forbidden(f"security_floor needs the admin role; your token has {principal.role}", field="security_floor")
    policy = body.delivery_policy.overrides() if body.delivery_policy is not None else None
    release = service.update_release(
        session,
        release_id,
        released=body.released,
        notes=body.notes,
        actor=principal.actor,
        delivery_policy=policy,
        security_floor=body.security_floor,
        withdraw=withdraw,
    )
    return service.release_out(session, release)


@router.delete("/{release_id}", status_code=204, summary="Delete a release no assignment references")
def delete_release(release_id: str, session: SessionDep, store: StoreDep, principal: Operator) -> Response:
    keys = service.delete_release(session, store, release_id, actor=principal.actor)
    session.commit()
    service.delete_blobs(store, keys)
    return Response(status_code=204)


# ---- trusted signing keys ------------------------------------------------------------------------------


@keys_router.post(
    "", status_code=201, response_model=SigningKeyOut, summary="Trust a public key for release signatures (admin)"
)
def add_signing_key(body: SigningKeyCreate, session: SessionDep, principal: Admin) -> SigningKeyOut:
    key = keys.add_signing_key(
        session, name=body.name, public_key=body.public_key, models=body.models, actor=principal.actor
    )
    return SigningKeyOut.model_validate(key)


@keys_router.get("", response_model=list[SigningKeyOut], summary="Signing keys, revoked ones included")
def list_signing_keys(session: SessionDep, _: Viewer) -> list[SigningKeyOut]:
    return [SigningKeyOut.model_validate(k) for k in keys.list_signing_keys(session)]


@keys_router.get("/{key_id}", response_model=SigningKeyOut)
def get_signing_key(key_id: str, session: SessionDep, _: Viewer) -> SigningKeyOut:
    return SigningKeyOut.model_validate(keys.get_signing_key(session, key_id))


@keys_router.post(
    "/{key_id}/revoke",
    response_model=SigningKeyRevoked,
    summary="Revoke a signing key (admin): its releases can no longer be assigned; active ones are cancelled",
)
def revoke_signing_key(
    key_id: str, session: SessionDep, principal: Admin, withdraw: WithdrawalDep
) -> SigningKeyRevoked:
    key, withdrawn = keys.revoke_signing_key(session, key_id, actor=principal.actor, withdraw=withdraw)
    return SigningKeyRevoked(
        **SigningKeyOut.model_validate(key).model_dump(),
        assignments_cancelled=withdrawn.assignments_cancelled,
        rollouts_paused=withdrawn.rollouts_paused,
    )


# ---- per-model settings --------------------------------------------------------------------------------


@models_router.get("", response_model=list[ModelOut], summary="Device models with their signing settings")
def list_models(session: SessionDep, _: Viewer) -> list[ModelOut]:
    return keys.models_out(session)


@models_router.patch("/{model}", response_model=ModelOut, summary="Require signed releases for a model (admin)")
def patch_model(model: str, body: ModelPatch, session: SessionDep, principal: Admin) -> ModelOut:
    return keys.set_require_signed(session, model, body.require_signed, actor=principal.actor)
