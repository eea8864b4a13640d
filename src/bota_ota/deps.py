"""Dependency aliases that keep handlers short: SessionDep, StoreDep, SettingsDep and the auth subjects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.accounts.service import Principal, authenticate_api_token
from bota_ota.config import Settings
from bota_ota.errors import Forbidden, Unauthorized
from bota_ota.storage import BlobStore


@dataclass
class AppContext:
    """Everything a request needs that lives as long as the app: kept on ``app.state.ctx``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    write_gate: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def db_write_gate(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The write gate on SQLite; nothing to wait for on PostgreSQL."""
        return self.write_gate if self.sqlite else contextlib.nullcontext()


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


class SqliteWriteGateMiddleware:
    """On SQLite, lets one write request at a time of this process at the database, in arrival order.

    SQLite has one writer. When forty request threads all wait inside SQLite for its lock, its busy
    handler puts them to sleep for up to 100 ms per retry and throughput collapses under load. Here
    writers wait on an asyncio lock instead — in the event loop, holding no thread, no pooled connection
    and no transaction — so there is no contention inside SQLite and nothing to deadlock on. Reads never
    wait. The firmware upload is exempt (its body may take minutes to arrive): it takes the gate itself,
    only around its database work. Other processes (``--workers``) still meet at SQLite's own lock.
    """

    EXEMPT = frozenset({"/api/v1/firmware"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in READ_ONLY_METHODS
            or scope["path"] in self.EXEMPT
            or not scope["app"].state.ctx.sqlite
        ):
            await self.app(scope, receive, send)
            return
        async with scope["app"].state.ctx.write_gate:
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


def get_session(ctx: CtxDep, request: Request) -> Iterator[Session]:
    """The request's unit of work: commit when the handler returns, roll back if it raises.

    Used with scope="function" so the commit happens before the response is sent: a client never
    sees a 201 for something that was not stored. Reads on SQLite do not queue behind writers.
    """
    session = ctx.sessions()
    request.scope.setdefault(SESSIONS_SCOPE_KEY, []).append(session)
    if request.method in READ_ONLY_METHODS and ctx.engine.dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_begin": "DEFERRED"})
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
