"""The device API: the contract the firmware implements (docs/device-protocol.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bota_ota.deps import CtxDep, base_url, bearer_secret
from bota_ota.ota.fast_path import answer_heartbeat
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply

router = APIRouter(prefix="/api/device/v1", tags=["device"])

_device_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="DeviceToken",
    description="The device token issued at registration (bota_dt_...)",
)

DeviceCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_device_bearer)]


@router.post(
    "/heartbeat",
    response_model=HeartbeatReply,
    response_model_exclude_none=False,
    summary="Report status; the reply may carry an OTA manifest",
)
async def heartbeat(body: Heartbeat, request: Request, ctx: CtxDep, credentials: DeviceCredentials) -> HeartbeatReply:
    """In the app, ``HeartbeatFastPath`` (ota/fast_path.py) answers this path before routing; this route
    documents it and answers the same way where the router is mounted without that middleware."""
    return await answer_heartbeat(ctx, bearer_secret(credentials), body, lambda: base_url(request, ctx.settings))
