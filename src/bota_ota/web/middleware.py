"""ASGI middlewares that guard the database: admission (so requests never deadlock on threads and
connections) and closing every session a request opened."""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.web.context import AppContext

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSIONS_SCOPE_KEY = "bota_ota.sessions"


class DatabaseAdmissionMiddleware:
    """Admits requests to the database in the event loop, before they take a thread or a connection.

    A request keeps its pooled connection from its first query (often in an auth dependency) until the
    commit after the handler, and between those it needs more worker threads (the handler, response
    validation). If more requests hold connections than there are threads to move them on, or wait for a
    connection while holding every thread, the server deadlocks. So at most ``pool capacity`` requests
    use the database at once (fewer than anyio's 40 worker threads), and the rest wait here holding
    nothing. On SQLite, write requests also queue on a lock: one writer at a time, in arrival order,
    instead of forty threads waiting inside SQLite, whose busy handler sleeps up to 100 ms per retry.

    Downloads and the API docs never touch the database and are not held back. The firmware uploads (API
    and portal) wait for the write lock themselves, only around their database work (a body may take
    minutes to arrive).
    """

    NO_DATABASE_PREFIXES = ("/dl/", "/docs", "/redoc", "/openapi.json", "/static/")
    WRITE_LOCK_EXEMPT = frozenset({"/api/v1/firmware", "/firmware/upload"})
    # The heartbeat admits itself (heartbeat/runtime.py): a slot for its read (none when cached), and only when
    # it has something to write, the write gate and a slot for the write. A routine heartbeat never queues
    # behind writers. (HeartbeatFastPath answers it before this middleware; this covers the plain route.)
    SELF_ADMITTED = frozenset({"/api/device/v1/heartbeat"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(self.NO_DATABASE_PREFIXES)
            or scope["path"] in self.SELF_ADMITTED
        ):
            await self.app(scope, receive, send)
            return
        ctx: AppContext = scope["app"].state.ctx
        writes = scope["method"] not in READ_ONLY_METHODS and scope["path"] not in self.WRITE_LOCK_EXEMPT
        async with contextlib.AsyncExitStack() as stack:
            if writes and ctx.sqlite:
                await stack.enter_async_context(ctx.write_gate)
            await stack.enter_async_context(ctx.db_slots)
            await self.app(scope, receive, send)


class CloseSessionsMiddleware:
    """Closes every session a request opened, whatever happened to the request.

    FastAPI runs the exit of a sync ``yield`` dependency in a worker thread and skips it when the request
    is cancelled (the client went away mid-request): the session, its pooled connection and its open
    transaction (on SQLite, the write lock) would then stay held until garbage collection. By the time
    this ``finally`` runs, the handler's thread has finished (anyio waits for it), so closing here is
    safe; for a request that ended normally the sessions are already closed and this is a no-op.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            for session in scope.get(SESSIONS_SCOPE_KEY, ()):
                session.close()
