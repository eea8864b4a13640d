"""Security headers on every reply: what the browser may load, frame, sniff, send as a referrer and cache.

The portal has no inline script and no inline style (its charts are SVG rectangles sized by attributes), so its
Content-Security-Policy allows scripts, styles and connections from the server itself only. The API docs pages
(Swagger UI and ReDoc, served from the installed ``fastapi-offline`` package's files) are the one exception for
styles: both libraries write ``<style>`` elements at run time, so their pages allow inline styles (never inline
script).

Nothing a server answers is worth caching except static files, firmware downloads and the public release log:
everything else says ``Cache-Control: no-store``, which covers every reply that shows a secret once (device
tokens, claim codes, API tokens, app sessions) without a list to keep up to date.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PORTAL_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; font-src 'self' data:; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
# JSON, CSV and files: nothing in them may run or be framed.
DATA_CSP = "default-src 'none'; frame-ancestors 'none'"

DOCS_PATHS = ("/docs", "/redoc")
CACHEABLE_PREFIXES = ("/static/", "/docs/static/", "/dl/", "/.well-known/", "/api/transparency/")
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(path: str, content_type: str, *, hsts: bool) -> dict[str, str]:
    """The headers a reply to ``path`` with ``content_type`` gets (those the handler set itself win)."""
    if path.startswith(DOCS_PATHS):
        csp = DOCS_CSP
    elif content_type.startswith("text/html"):
        csp = PORTAL_CSP
    else:
        csp = DATA_CSP
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if not path.startswith(CACHEABLE_PREFIXES):
        headers["Cache-Control"] = "no-store"
    if hsts:
        headers["Strict-Transport-Security"] = HSTS
    return headers


class SecurityHeadersMiddleware:
    """Adds ``security_headers`` to every HTTP reply. HSTS only when the portal cookie is HTTPS-only
    (``BOTA_OTA_SECURE_COOKIES``), i.e. when the server is known to be behind TLS."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(path, headers.get("content-type", ""), hsts=self.hsts).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
