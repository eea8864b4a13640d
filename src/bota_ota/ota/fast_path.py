"""The heartbeat's own entrance: ``POST /api/device/v1/heartbeat`` answered in front of the framework.

Every device sends a heartbeat every interval, so this request is the server's throughput. Through FastAPI
it paid for routing (a regular expression per route until one matches), the dependency graph, five
middlewares, request/response validation and two thread hops — about 1.8 ms of CPU, 60 times a bare ASGI
endpoint (docs/performance.md). This ASGI middleware sits outermost and answers the heartbeat itself:

* the body is read here (at most ``MAX_BODY_BYTES``) and validated by pydantic-core straight from JSON;
* the device's snapshot comes from this instance's cache (``ota/device_cache.py``), so a routine heartbeat
  runs entirely on the event loop with no database; on a miss, one Core query in a worker thread;
* only a heartbeat that writes takes the write transaction (``ota/heartbeat.py``), admitted like every
  other database request (the write gate on SQLite, then a database slot).

The FastAPI route in ``ota/device_api.py`` stays: it documents the endpoint in /docs and answers through
the same ``answer_heartbeat`` when the app is mounted without this middleware. Errors are the same RFC 9457
problem documents as everywhere else (``errors.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.db import utcnow
from bota_ota.deps import AppContext, base_url
from bota_ota.errors import PayloadTooLarge, Unauthorized, problem_for_exception, validation_problem
from bota_ota.ota.heartbeat import (
    NOT_READ,
    HeartbeatCall,
    ManifestSigner,
    NotRead,
    heartbeat_with_writes,
    read_snapshot,
    routine_reply,
)
from bota_ota.ota.schemas import Heartbeat, HeartbeatReply
from bota_ota.security import hash_token

HEARTBEAT_PATH = "/api/device/v1/heartbeat"
# A heartbeat is a few hundred bytes; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024


async def answer_heartbeat(
    ctx: AppContext, token: str, hb: Heartbeat, base_url_of_request: Callable[[], str]
) -> HeartbeatReply:
    """The whole heartbeat: from the cache or one read when nothing needs writing, else the write step."""
    token_hash = hash_token(token)
    received_at = utcnow()
    cache = ctx.device_cache
    snapshot = cache.get(token_hash)
    if snapshot is None:
        generation = cache.begin_read()
        inline = ctx.inline_reader.read(token_hash) if ctx.inline_reader is not None else NOT_READ
        if isinstance(inline, NotRead):
            async with ctx.db_slots:
                snapshot = await run_in_threadpool(read_snapshot, ctx.engine, token_hash)
        else:
            snapshot = inline
        if snapshot is None:
            raise Unauthorized("the device token is unknown (rotated or never issued)")
        cache.put(token_hash, snapshot, generation)
    settings = ctx.settings
    call = HeartbeatCall(
        token_hash=token_hash,
        hb=hb,
        signer=ManifestSigner(store=ctx.store, base_url=base_url_of_request, ttl_s=settings.signed_url_ttl_s),
        buffer=ctx.telemetry,
        interval_s=settings.heartbeat_interval_s,
        received_at=received_at,
        known_bin=(snapshot.assignment.release_id, snapshot.bin)
        if snapshot.assignment is not None and snapshot.bin is not None
        else None,
    )
    reply = routine_reply(snapshot, call, received_at)
    if reply is not None:
        return reply
    batcher = ctx.write_batcher
    if batcher is not None and batcher.running:
        return await batcher.submit(call)  # SQLite: committed together with the others waiting

    def write() -> HeartbeatReply:
        with ctx.sessions() as session, session.begin():
            return heartbeat_with_writes(session, call, call.received_at)

    async with ctx.write_admission():
        return await run_in_threadpool(write)


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the device token as 'Authorization: Bearer <token>'")
    return token


class HeartbeatFastPath:
    """ASGI middleware: answers ``POST /api/device/v1/heartbeat``, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._plain_replies: dict[int, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        ctx: AppContext = scope["app"].state.ctx
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
            reply = await answer_heartbeat(ctx, token, hb, lambda: base_url(Request(scope), ctx.settings))
        except Exception as exc:  # the same problem documents as the app's exception handlers
            response = await problem_for_exception(Request(scope), exc)
            await response(scope, receive, send)
            return
        await self._send(send, self._encode(reply))

    def _encode(self, reply: HeartbeatReply) -> bytes:
        if reply.ota is None and reply.ota_deferred is None:
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
