"""Dependency aliases that keep handlers short: SessionDep, StoreDep, SettingsDep and the auth subjects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.accounts.service import Principal, authenticate_api_token
from bota_ota.config import Settings
from bota_ota.devices.telemetry import TelemetryBuffer
from bota_ota.errors import Forbidden, Unauthorized
from bota_ota.ota.device_cache import DeviceCache
from bota_ota.storage import BlobStore

if TYPE_CHECKING:
    from bota_ota.ota.heartbeat import InlineSnapshotReader
    from bota_ota.ota.write_batch import WriteBatcher


@dataclass
class AppContext:
    """Everything a request needs that lives as long as the app: kept on ``app.state.ctx``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    # Routine heartbeats' last-seen and readings, written behind in batches (bota_ota.background).
    telemetry: TelemetryBuffer = field(default_factory=TelemetryBuffer)
    # What routine heartbeats need to know of each device, kept fresh by the change feed (ota/device_cache.py).
    device_cache: DeviceCache = field(default_factory=DeviceCache)
    write_gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    db_slots: asyncio.Semaphore = field(init=False)
    # SQLite only: heartbeats that write are committed in groups (ota/write_batch.py).
    write_batcher: WriteBatcher | None = None
    # SQLite only: the heartbeat's cache-miss read on the event loop (ota/heartbeat.py).
    inline_reader: InlineSnapshotReader | None = None

    def __post_init__(self) -> None:
        pool = self.engine.pool
        capacity = pool.size() + getattr(pool, "_max_overflow", 0) if isinstance(pool, QueuePool) else 10
        # Stay below anyio's 40 worker threads so a request holding a connection can always get one.
        self.db_slots = asyncio.Semaphore(max(1, min(capacity, 30)))

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def db_write_gate(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The write gate on SQLite; nothing to wait for on PostgreSQL."""
        return self.write_gate if self.sqlite else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def write_admission(self) -> AsyncIterator[None]:
        """What every writer waits for, in this order: the write gate (SQLite), then a database slot."""
        async with self.db_write_gate(), self.db_slots:
            yield


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_settings(ctx: CtxDep) -> Settings:
    return ctx.settings


def get_store(ctx: CtxDep) -> BlobStore:
    return ctx.store


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
    # The heartbeat admits itself (ota/fast_path.py): a slot for its read (none when cached), and only when
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


def _open_session(ctx: AppContext, request: Request, *, write: bool) -> Session:
    """A session that the request's CloseSessionsMiddleware will close. On SQLite a read-only one begins
    a deferred (read) transaction, so it does not queue behind writers."""
    session = ctx.sessions()
    request.scope.setdefault(SESSIONS_SCOPE_KEY, []).append(session)
    if not write and ctx.sqlite:
        session.connection(execution_options={"sqlite_begin": "DEFERRED"})
    return session


def get_session(ctx: CtxDep, request: Request) -> Iterator[Session]:
    """The request's unit of work: commit when the handler returns, roll back if it raises.

    Used with scope="function" so the commit happens before the response is sent: a client never
    sees a 201 for something that was not stored. Reads on SQLite do not queue behind writers.
    """
    with request_session(ctx, request, write=request.method not in READ_ONLY_METHODS) as session:
        yield session


@contextlib.contextmanager
def request_session(ctx: AppContext, request: Request, *, write: bool) -> Iterator[Session]:
    """One unit of work inside a request: commit on success, roll back on error, always close."""
    session = _open_session(ctx, request, write=write)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="A management API token (bota_at_...)")


def bearer_secret(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    return credentials.credentials


def current_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate_api_token(session, bearer_secret(credentials))
    if principal is None:
        raise Unauthorized("the API token is unknown or revoked")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(role: str) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(role):
            raise Forbidden(f"this action needs the {role} role; your token has {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Operator = Annotated[Principal, Depends(require_role("operator"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def base_url(request: Request, settings: Settings) -> str:
    """The URL devices should use to reach this server (for locally signed download URLs)."""
    return settings.public_url or str(request.base_url)
