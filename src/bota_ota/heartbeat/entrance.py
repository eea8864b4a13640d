"""The heartbeat's entrance: ``POST /api/device/v1/heartbeat``, answered in front of the framework.

Every device sends a heartbeat every interval, so this request is the server's throughput. Through FastAPI
it would pay for routing (a regular expression per route until one matches), the dependency graph, five
middlewares, request/response validation and two thread hops — about 1.8 ms of CPU, 60 times a bare ASGI
endpoint (docs/performance.md). ``HeartbeatEntrance``, an ASGI middleware that sits outermost, answers
the heartbeat itself:

* the body is read here (at most ``MAX_BODY_BYTES``) and validated by pydantic-core straight from JSON;
* ``HeartbeatRuntime.answer`` (``runtime.py``) does the rest: the cache or the read step, the rules, the
  reply or the write step;
* errors are the same RFC 9457 problem documents as everywhere else (``web/problems.py``).

The FastAPI route below (``router``) documents the endpoint in /docs and answers through the same
runtime where the app is mounted without the middleware.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.core.errors import PayloadTooLarge, Unauthorized
from bota_ota.heartbeat.runtime import HeartbeatRuntime
from bota_ota.heartbeat.schemas import Heartbeat, HeartbeatReply
from bota_ota.web.deps import base_url, bearer_secret
from bota_ota.web.problems import problem_for_exception, validation_problem

HEARTBEAT_PATH = "/api/device/v1/heartbeat"
# A heartbeat is a few hundred bytes; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the device token as 'Authorization: Bearer <token>'")
    return token


class HeartbeatEntrance:
    """ASGI middleware: answers ``POST /api/device/v1/heartbeat``, passes everything else on."""

    def __init__(self, app: ASGIApp, runtime: HeartbeatRuntime) -> None:
        self.app = app
        self.runtime = runtime
        self._plain_replies: dict[int, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        authorization = declared = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = bytes(value).decode("latin-1")
            elif key == b"content-length":
                declared = bytes(value).decode("latin-1")
        try:
            body = await self._read_body(declared, receive)
            if body is None:
                return  # the client went away
            token = bearer_token(authorization)
            try:
                hb = Heartbeat.model_validate_json(body)
            except ValidationError as exc:
                await validation_problem(Request(scope), exc.errors(), empty_body=not body)(scope, receive, send)
                return
            reply = await runtime.answer(token, hb, lambda: base_url(Request(scope), runtime.settings))
        except Exception as exc:  # the same problem documents as the app's exception handlers
            response = await problem_for_exception(Request(scope), exc)
            await response(scope, receive, send)
            return
        await self._send(send, self._encode(reply))

    def _encode(self, reply: HeartbeatReply) -> bytes:
        if reply.ota is None and reply.ota_deferred is None and reply.ota_abort is None:
            # The routine reply: the same bytes every time for a given interval.
            cached = self._plain_replies.get(reply.heartbeat_interval_s)
            if cached is None:
                cached = self._plain_replies[reply.heartbeat_interval_s] = reply.model_dump_json().encode()
            return cached
        return reply.model_dump_json().encode()

    @staticmethod
    async def _read_body(declared: str | None, receive: Receive) -> bytes | None:
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"a heartbeat body must be under {MAX_BODY_BYTES} bytes", field="body")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"a heartbeat body must be under {MAX_BODY_BYTES} bytes", field="body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _send(send: Send, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---- the documented route ---------------------------------------------------------------------------

router = APIRouter(prefix="/api/device/v1", tags=["device"])

_device_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="DeviceToken",
    description="The device token issued at registration (bota_dt_...)",
)

DeviceCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_device_bearer)]


def get_runtime(request: Request) -> HeartbeatRuntime:
    runtime: HeartbeatRuntime = request.app.state.heartbeat
    return runtime


@router.post(
    "/heartbeat",
    response_model=HeartbeatReply,
    response_model_exclude_none=False,
    summary="Report status; the reply may carry an OTA manifest",
    responses={413: {"description": "The body is 64 KiB or more (field body)"}},
)
async def heartbeat(
    body: Heartbeat,
    request: Request,
    runtime: Annotated[HeartbeatRuntime, Depends(get_runtime)],
    credentials: DeviceCredentials,
) -> HeartbeatReply:
    """In the app, ``HeartbeatEntrance`` answers this path before routing; this route documents it and
    answers the same way where the router is mounted without that middleware."""
    return await runtime.answer(bearer_secret(credentials), body, lambda: base_url(request, runtime.settings))
