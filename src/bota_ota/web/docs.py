"""The API docs pages, /docs (Swagger UI) and /redoc (ReDoc), from files installed with the server.

FastAPI's own pages load both libraries from a CDN at a floating version, without integrity, and start
Swagger UI with an inline script. These pages load the files of the pinned ``fastapi-offline`` package
(served under /docs/static/) and start Swagger UI from a static script, so they need no network and hold
under the Content-Security-Policy (web/headers.py).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

VENDOR_DIR = Path(str(importlib.resources.files("fastapi_offline") / "static"))
OWN_DIR = Path(__file__).parent / "static"

_SWAGGER = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · API docs</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/own/swagger-init.js"></script>
</body>
</html>
"""

_REDOC = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · API reference</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<redoc spec-url="{openapi_url}"></redoc>
<script src="/docs/static/redoc.standalone.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc on an app created with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount("/docs/static", StaticFiles(directory=VENDOR_DIR), name="docs-vendor")
    app.mount("/docs/own", StaticFiles(directory=OWN_DIR), name="docs-own")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(_SWAGGER.format(title=app.title, openapi_url=openapi_url))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC.format(title=app.title, openapi_url=openapi_url))
