"""Domain errors carry their HTTP status; every error leaves the server as RFC 9457 problem JSON.

A problem body looks like::

    {"type": "https://bota-ota.dev/problems/validation", "title": "Validation failed", "status": 422,
     "detail": "version: not a semantic version", "instance": "/api/v1/firmware",
     "errors": [{"field": "version", "message": "not a semantic version"}]}

``errors`` names every offending field (dotted path for nested JSON fields, the form field name for
multipart uploads, ``query.x`` / ``path.x`` for parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as DBAPIDataError
from sqlalchemy.exc import OperationalError as DBAPIOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from bota_ota.core.errors import DomainError

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
    return problem_response(
        request,
        exc.status_code,
        slug=phrase.lower().replace(" ", "-"),
        title=phrase,
        detail=detail,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        request,
        500,
        slug="internal",
        title="Internal server error",
        detail="The server failed to handle this request; the error was logged.",
    )


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
        detail="the database is busy; retry shortly",
        headers={"Retry-After": "5"},
    )


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
    (Exception, _unexpected_error),
)


async def problem_for_exception(request: Request, exc: Exception) -> JSONResponse:
    """The problem document the app's handlers give for ``exc``: for code that runs outside the framework
    (``heartbeat/entrance.py``)."""
    for kind, handler in _HANDLERS:
        if isinstance(exc, kind):
            return await handler(request, exc)
    raise exc  # unreachable: Exception catches all


def install_problem_handlers(app: FastAPI) -> None:
    app.add_middleware(RejectNulMiddleware)
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)
