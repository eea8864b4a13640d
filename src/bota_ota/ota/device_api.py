"""The device API: the contract the firmware implements (docs/device-protocol.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from bota_ota.db import utcnow
from bota_ota.deps import CtxDep, base_url, bearer_secret, request_session
from bota_ota.ota.heartbeat import HeartbeatCall, ManifestSigner, heartbeat_with_writes, routine_heartbeat
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply
from bota_ota.security import hash_token

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
    """A read first; a write transaction only when the heartbeat changes something (see ota/heartbeat.py).

    Admitted here rather than by DatabaseAdmissionMiddleware: a database slot around each step, and the
    write gate (SQLite's one writer) only around the write, so a routine heartbeat never waits for writers.
    """
    settings = ctx.settings
    call = HeartbeatCall(
        token_hash=hash_token(bearer_secret(credentials)),
        hb=body,
        signer=ManifestSigner(store=ctx.store, base_url=base_url(request, settings), ttl_s=settings.signed_url_ttl_s),
        buffer=ctx.telemetry,
        interval_s=settings.heartbeat_interval_s,
    )

    def read() -> HeartbeatReply | None:
        with request_session(ctx, request, write=False) as session:
            return routine_heartbeat(session, call, utcnow())

    def write() -> HeartbeatReply:
        with request_session(ctx, request, write=True) as session:
            return heartbeat_with_writes(session, call, utcnow())

    async with ctx.db_slots:
        reply = await run_in_threadpool(read)
    if reply is None:
        # Same order as every other writer (DatabaseAdmissionMiddleware): the write gate, then a slot.
        async with ctx.db_write_gate(), ctx.db_slots:
            reply = await run_in_threadpool(write)
    return reply
