"""Portal sign-in: a signed session cookie (Starlette's SessionMiddleware, itsdangerous), CSRF tokens on
every form, and the ``PortalUser`` dependency that sends anonymous visitors to the sign-in page."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request

from bota_ota.accounts import service as accounts
from bota_ota.accounts.models import User
from bota_ota.accounts.service import ROLE_RANK
from bota_ota.core.errors import Forbidden
from bota_ota.web.deps import SessionDep

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class CsrfRejected(Forbidden):
    """A state-changing request without this session's CSRF token (a stale form, or another site's)."""

    title = "The form has expired"


class LoginRequired(Exception):
    """Raised by ``PortalUser`` when nobody is signed in; the app answers with a redirect."""


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return str(token)


async def check_csrf(request: Request) -> None:
    """Every state-changing portal request carries the session's CSRF token (form field or header)."""
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not secrets.compare_digest(str(expected), sent):
        raise CsrfRejected("the form has expired or did not come from this site; reload the page and try again")


CsrfChecked = Depends(check_csrf)


def portal_user(request: Request, session: SessionDep) -> User:
    user_id = request.session.get("user_id")
    user = accounts.get_user(session, user_id) if user_id else None
    if user is None or not user.is_active:
        request.session.pop("user_id", None)
        raise LoginRequired()
    return user


PortalUser = Annotated[User, Depends(portal_user)]


NEXT_MAX_LENGTH = 2000


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this site (one leading ``/``, not ``//``, no scheme, host or
    backslash, which browsers read as a slash), else the dashboard. An open redirect would let a link to
    this site's sign-in page send people to another site."""
    if not value or len(value) > NEXT_MAX_LENGTH or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return value


def login_url(request: Request, *, page: bool = False) -> str:
    """``/login?next=…`` that brings the visitor back: to this URL for a page (GET), to the page a form or an
    HTMX request was sent from (``page=True`` or another method), else the dashboard."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if page or request.method not in ("GET", "HEAD"):
        origin = request.headers.get("hx-current-url") if page else request.headers.get("referer")
        here = "/"
        if origin:
            parts = urlsplit(origin)
            if parts.netloc == request.url.netloc:
                here = parts.path + (f"?{parts.query}" if parts.query else "")
    target = safe_next(here)
    return "/login" if target == "/" else "/login?" + urlencode({"next": target})


def can(user: User, role: str) -> bool:
    return ROLE_RANK[user.role] >= ROLE_RANK[role]


def flash(request: Request, message: str, *, error: bool = False) -> None:
    """A one-time message shown on the next page (kept in the signed session cookie)."""
    request.session["flash"] = {"message": message, "error": error}
