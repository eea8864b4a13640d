"""HTML error pages for the portal: no dead ends for a person in a browser.

Every error leaves the server as RFC 9457 problem JSON (``web/problems.py``). When the request is a browser's
request for a portal page, ``problem_page`` renders the same problem as ``error.html`` instead: the status, a
title in plain words, the detail sentence, the main navigation when someone is signed in, and links back to the
dashboard and to the list the URL belongs to. Which requests get a page:

- the path is a portal page: not the APIs (``/api/…``: management, device, app, transparency), not downloads
  (``/dl/…``), static files, the API docs (``/docs``, ``/redoc``, ``/openapi.json``), ``/healthz`` or
  ``/.well-known/…``;
- the client says it accepts ``text/html`` (a browser's navigation and form posts do; ``curl``, httpx and
  ``upload.js``, which asks for ``application/json``, do not: they keep problem JSON);
- an HTMX request (``HX-Request``) gets no page to swap into its region: it gets a one-line fragment with
  ``HX-Retarget: #live-error``, ``HX-Reswap: innerHTML`` and ``HX-Reselect: unset``, so the message lands in the
  page's error area (``#live-error`` in base.html) and the region the request came from is left as it was.
  HTMX does not swap a 4xx/5xx reply by itself; portal.js lets exactly these replies (the ones retargeted to
  ``#live-error``) be swapped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bota_ota.accounts import service as accounts
from bota_ota.accounts.models import User
from bota_ota.portal.auth import CsrfRejected, login_url
from bota_ota.portal.common import render
from bota_ota.web.context import AppContext

log = logging.getLogger(__name__)

NOT_PORTAL_PREFIXES = ("/api/", "/dl/", "/static/", "/docs", "/redoc", "/openapi.json", "/healthz", "/.well-known/")
LIVE_ERROR_TARGET = "#live-error"
_NOT_COPIED_HEADERS = frozenset({"content-type", "content-length", "www-authenticate"})


@dataclass(frozen=True)
class Section:
    """A list page of the portal: where a URL under ``prefix`` belongs."""

    prefix: str
    href: str
    label: str
    noun: str  # what a 404 under it is missing: "No such device"


SECTIONS = (
    Section("/firmware", "/firmware", "Firmware", "release"),
    Section("/devices", "/devices", "Devices", "device"),
    Section("/groups", "/groups", "Groups", "group"),
    Section("/rollouts", "/rollouts", "Rollouts", "rollout"),
    Section("/assignments", "/assignments", "Assignments", "assignment"),
    Section("/audit", "/audit", "Audit log", "audit entry"),
    Section("/users", "/users", "Users", "user"),
    Section("/tokens", "/tokens", "API tokens", "API token"),
)

TITLES = {
    400: "That request is not valid",
    401: "Please sign in",
    403: "You do not have permission",
    404: "No such page",
    405: "That cannot be done here",
    409: "That conflicts with the current state",
    413: "That is too large",
    415: "That kind of content is not accepted",
    422: "That request is not valid",
    429: "Too many attempts",
    500: "Something went wrong on the server",
    503: "The server is busy",
    507: "The server is out of storage space",
}


def is_portal_page(request: Request) -> bool:
    path = request.url.path
    return not path.startswith(NOT_PORTAL_PREFIXES)


def accepts_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "").lower()


def section_of(path: str) -> Section | None:
    for section in SECTIONS:
        if path == section.prefix or path.startswith(section.prefix + "/"):
            return section
    return None


def title_for(status: int, path: str, *, domain_not_found: bool) -> str:
    """The page's heading in plain words. A 404 raised by a view (an unknown id) names what is missing; a 404
    from routing (no such URL at all) is "No such page"."""
    section = section_of(path)
    if status == 404 and domain_not_found and section is not None and path != section.prefix:
        return f"No such {section.noun}"
    if status in TITLES:
        return TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Something went wrong"


def _signed_in_user(ctx: AppContext, user_id: str) -> User | None:
    session = ctx.sessions()
    try:
        if ctx.sqlite:
            session.connection(execution_options={"sqlite_begin": "DEFERRED"})
        user = accounts.get_user(session, user_id)
        return user if user is not None and user.is_active else None
    finally:
        session.close()  # the user's loaded attributes stay readable for the template


async def current_user(request: Request) -> User | None:
    """Who is signed in, for the navigation; None when nobody is, or when the database cannot say."""
    if "session" not in request.scope:  # errors raised outside the session middleware
        return None
    user_id = request.session.get("user_id")
    if not user_id:
        return None
    try:
        return await run_in_threadpool(_signed_in_user, request.app.state.ctx, str(user_id))
    except Exception:  # the page explains the first error; this one only costs the navigation
        log.warning("error page: cannot read the signed-in user", exc_info=True)
        return None


def htmx_error(status: int, title: str, detail: str, headers: dict[str, str]) -> HTMLResponse:
    response = HTMLResponse(
        f'<p class="flash flash-error" role="alert">{_escape(title)}: {_escape(detail)}</p>',
        status_code=status,
        headers=headers,
    )
    response.headers["HX-Retarget"] = LIVE_ERROR_TARGET
    response.headers["HX-Reswap"] = "innerHTML"
    response.headers["HX-Reselect"] = "unset"  # the region's hx-select must not pick from this fragment
    return response


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


async def problem_page(request: Request, exc: Exception, problem: JSONResponse) -> Response | None:
    """The HTML page (or HTMX fragment) for ``problem``, or None when the client keeps problem JSON."""
    if not is_portal_page(request):
        return None
    htmx = request.headers.get("hx-request") == "true"
    if not htmx and not accepts_html(request):
        return None
    body = json.loads(bytes(problem.body))
    status = int(body.get("status", problem.status_code))
    path = request.url.path
    domain_not_found = body.get("type", "").endswith("/not-found") and not _is_routing_404(exc)
    title = (
        CsrfRejected.title
        if isinstance(exc, CsrfRejected)
        else title_for(status, path, domain_not_found=domain_not_found)
    )
    detail = _sentence(str(body.get("detail", "")), status)
    # Keep what the problem said in headers (Retry-After, Allow), not its content type or length.
    headers = {k: v for k, v in problem.headers.items() if k.lower() not in _NOT_COPIED_HEADERS}
    if htmx:
        return htmx_error(status, title, detail, headers)
    user = await current_user(request)
    section = section_of(path)
    links = [("/", "Dashboard")]
    if user is not None and section is not None and not (status == 403 and section.prefix in {"/users", "/tokens"}):
        links.append((section.href, section.label))
    if user is None:
        # A form sent after the session ended: back to the form's page after signing in.
        links = [("/login" if request.method in ("GET", "HEAD") else login_url(request), "Sign in")]
    response = render(
        request,
        "error.html",
        status_code=status,
        user=user,
        status=status,
        title=title,
        detail=detail,
        links=links,
    )
    response.headers.update(headers)
    return response


def _is_routing_404(exc: Exception) -> bool:
    """Starlette's own 404 for a URL no route matches (its detail is the bare phrase)."""
    return isinstance(exc, HTTPException) and exc.status_code == 404 and exc.detail == "Not Found"


def _sentence(detail: str, status: int) -> str:
    """The problem's detail as a sentence for a person: capitalised, with a full stop."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    if not detail or detail == phrase:
        return DEFAULT_DETAILS.get(status, "The server could not handle this request.")
    text = detail[0].upper() + detail[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


DEFAULT_DETAILS = {
    404: "There is nothing at this address. It may have been deleted, or the link is mistyped.",
    405: "This address does not take that kind of request.",
    500: "The server failed to handle this request; the error was logged.",
}
