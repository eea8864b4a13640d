"""Domain errors: each carries the HTTP status, problem type and title it is reported with.

Services raise these; they know nothing of the web framework. ``web/problems.py`` turns them (and every
other error) into RFC 9457 problem JSON naming the offending field.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class NotFound(DomainError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, slug, title = 409, "conflict", "Conflict"


class ValidationFailed(DomainError):
    status, slug, title = 422, "validation", "Validation failed"


class Unauthorized(DomainError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(DomainError):
    status, slug, title = 403, "forbidden", "Forbidden"


class PayloadTooLarge(DomainError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(DomainError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class TooManyRequests(DomainError):
    """Too many failed attempts (sign-in, log-in, claim): answered with ``Retry-After``."""

    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(detail, field=field, retry_after=retry_after)
        self.retry_after = retry_after


class InsufficientStorage(DomainError):
    """The server's storage has no room for what the request would store; nothing was stored."""

    status, slug, title = 507, "insufficient-storage", "Insufficient storage"
