"""Domain errors carry their HTTP status; every error leaves the server as RFC 9457 problem JSON.

A problem body looks like::

    {"type": "https://bota-ota.dev/problems/validation", "title": "Validation failed", "status": 422,
     "detail": "version: not a semantic version", "instance": "/api/v1/firmware",
     "errors": [{"field": "version", "message": "not a semantic version"}]}

``errors`` names every offending field (dotted path for nested JSON fields, the form field name for
multipart uploads, ``query.x`` / ``path.x`` for parameters).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError as DBAPIDataError
from sqlalchemy.exc import OperationalError as DBAPIOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.core.errors import DomainError, TooManyRequests

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://bota-ota.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_response(
    request: Request,
    status: int,
    *,
    slug: str,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) if parts else "body"


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return problem_response(
        request,
        exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        errors=errors,
        headers=headers,
        **exc.extra,
    )


def validation_problem(request: Request, raw_errors: Sequence[Any], *, empty_body: bool = False) -> JSONResponse:
    """422 naming each offending field, from pydantic's errors (FastAPI's, or a model validated directly)."""
    errors = []
    if empty_body:
        errors.append({"field": "body", "message": "a JSON body is required"})
    else:
        for err in raw_errors:
            msg = str(err.get("msg", "invalid"))
            # pydantic prefixes messages of custom validators with "Value error, "; people don't need it.
            msg = msg.removeprefix("Value error, ")
            loc = err.get("loc", ())
            if err.get("type") == "json_invalid":
                loc = ()  # FastAPI puts the character offset in loc; the field is the body itself
            errors.append({"field": _field_name(loc), "message": msg})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem_response(request, 422, slug="validation", title="Validation failed", detail=detail, errors=errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(request, exc.errors())


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "Error"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route whose path matched; a path served by several
        # routes (GET and HEAD of a download) allows the methods of all of them.
        allowed = _allowed_methods(request)
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
    return problem_response(
        request,
        exc.status_code,
        slug=phrase.lower().replace(" ", "-"),
        title=phrase,
        detail=detail,
        headers=headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path, asked of the routes themselves (``matches``)."""
    routes = getattr(request.app, "routes", [])
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        request,
        500,
        slug="internal",
        title="Internal server error",
        detail="The server failed to handle this request; the error was logged.",
    )


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    # A full disk (or quota) is the server's condition, not a bug: 507, and whatever wrote the file has removed
    # its partial output on the way out (uploads, blob stores).
    assert isinstance(exc, OSError)
    if exc.errno in NO_SPACE:
        log.error("no space left on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request,
            507,
            slug="insufficient-storage",
            title="Insufficient storage",
            detail="the server's disk is full: nothing from this request was stored; retry when space is freed",
        )
    return await _unexpected_error(request, exc)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # Last line of defence: input validation should have caught this with the field's name.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request,
        422,
        slug="validation",
        title="Validation failed",
        detail="a value in this request cannot be stored (too long, out of range or with invalid characters)",
    )


async def _operational_error(request: Request, exc: Exception) -> JSONResponse:
    # The database is there but could not serve this request in time (SQLite's write lock held past
    # the busy timeout, no pooled connection free in time, a PostgreSQL connection dropped): tell the
    # client to come back, don't crash.
    log.warning("database busy or unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request,
        503,
        slug="unavailable",
        title="Service unavailable",
        detail=database_trouble(exc),
        headers={"Retry-After": "5"},
    )


# Words in the drivers' messages (psycopg, sqlite3) that tell an unreachable database from a busy one.
_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "connection failed",
    "server closed the connection",
    "terminating connection",
    "the database system is",  # starting up / shutting down / in recovery mode
    "no such host",
    "name or service not known",
    "timeout expired",
    "connection is closed",
    "unable to open database file",
)


def database_trouble(exc: Exception) -> str:
    """What a 503 says happened: the database cannot be reached, every connection is in use, or it is busy."""
    if isinstance(exc, PoolTimeoutError):
        return "every database connection of this server is in use; retry shortly"
    text = str(exc).lower()
    if any(words in text for words in _UNREACHABLE):
        return "the database cannot be reached (down, restarting or unreachable over the network); retry shortly"
    if "locked" in text or "busy" in text:
        return "the database is busy with other writes; retry shortly"
    return "the database could not serve this request; retry shortly"


class RejectNulMiddleware:
    """Refuse NUL characters in the path or query string before any handler or database sees them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            field = None
            if "\x00" in scope.get("path", ""):
                field = "path"
            else:
                for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
                    if "\x00" in name or "\x00" in value:
                        field = f"query.{name.replace(chr(0), '')}"
                        break
            if field is not None:
                request = Request(scope)
                response = problem_response(
                    request,
                    422,
                    slug="validation",
                    title="Validation failed",
                    detail=f"{field}: must not contain NUL characters",
                    errors=[{"field": field, "message": "must not contain NUL characters"}],
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_HANDLERS: tuple[tuple[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]], ...] = (
    (DBAPIDataError, _data_error),
    (DBAPIOperationalError, _operational_error),
    (PoolTimeoutError, _operational_error),
    (DomainError, _domain_error),
    (RequestValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
    (OSError, _os_error),
    (Exception, _unexpected_error),
)


async def problem_for_exception(request: Request, exc: Exception) -> JSONResponse:
    """The problem document the app's handlers give for ``exc``: for code that runs outside the framework
    (``heartbeat/entrance.py``)."""
    for kind, handler in _HANDLERS:
        if isinstance(exc, kind):
            return await handler(request, exc)
    raise exc  # unreachable: Exception catches all


ProblemPage = Callable[[Request, Exception, JSONResponse], Awaitable[Response | None]]
"""Another rendering of a problem for some requests (the portal's HTML error pages), or None to keep the JSON."""


def _with_page(
    handler: Callable[[Request, Exception], Awaitable[JSONResponse]], page: ProblemPage
) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        problem = await handler(request, exc)
        return await page(request, exc, problem) or problem

    return handle


def install_problem_handlers(app: FastAPI, *, page: ProblemPage | None = None) -> None:
    """Problem JSON for every error; ``page`` may answer a request with something else (it sits above this
    layer: the portal renders its error pages for browsers)."""
    app.add_middleware(RejectNulMiddleware)
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, _with_page(handler, page) if page else handler)
