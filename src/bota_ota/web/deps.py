"""Dependency aliases that keep handlers short: the request's unit of work (``SessionDep``), the settings,
the blob store, and helpers for bearer credentials and the server's public URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from bota_ota.core.errors import Unauthorized
from bota_ota.core.settings import Settings
from bota_ota.storage import BlobStore
from bota_ota.web.context import AppContext
from bota_ota.web.middleware import READ_ONLY_METHODS, SESSIONS_SCOPE_KEY


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_settings(ctx: CtxDep) -> Settings:
    return ctx.settings


def get_store(ctx: CtxDep) -> BlobStore:
    return ctx.store


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


def bearer_secret(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    return credentials.credentials


def base_url(request: Request, settings: Settings) -> str:
    """The URL devices should use to reach this server (for locally signed download URLs)."""
    return settings.public_url or str(request.base_url)
