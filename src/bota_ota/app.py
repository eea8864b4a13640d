"""create_app(settings): the one place where the parts are assembled — routers, middlewares, problem JSON,
the app context, the heartbeat runtime and the scheduled sweeps."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.middleware.sessions import SessionMiddleware

import bota_ota.models  # noqa: F401  (every model registered before mappers configure)
from bota_ota import __version__
from bota_ota.accounts.api import router as accounts_router
from bota_ota.audit.api import router as audit_router
from bota_ota.core.database import make_engine, make_sessionmaker
from bota_ota.core.settings import Settings
from bota_ota.devices.api import router as devices_router
from bota_ota.firmware.api import keys_router as signing_keys_router
from bota_ota.firmware.api import models_router
from bota_ota.firmware.api import router as firmware_router
from bota_ota.firmware.housekeeping import remove_stale_upload_files, sweep_stale_upload_files
from bota_ota.heartbeat.entrance import HeartbeatEntrance
from bota_ota.heartbeat.entrance import router as device_router
from bota_ota.heartbeat.runtime import HeartbeatRuntime
from bota_ota.mobile.api import mgmt_router as app_users_router
from bota_ota.mobile.api import router as mobile_router
from bota_ota.mobile.sweeps import end_silent_ble_modes
from bota_ota.ota.api import devices_router as fleet_router
from bota_ota.ota.api import groups_router
from bota_ota.ota.api import router as assignments_router
from bota_ota.ota.sweeps import fail_stalled_deliveries
from bota_ota.portal import (
    admin_views,
    device_action_views,
    device_import_views,
    device_views,
    firmware_views,
    group_views,
    rollout_views,
)
from bota_ota.portal.auth import LoginRequired, login_url
from bota_ota.portal.errors import problem_page
from bota_ota.portal.views import router as portal_router
from bota_ota.rollouts.api import router as rollouts_router
from bota_ota.rollouts.engine import tick as rollout_tick
from bota_ota.rollouts.service import withdraw_releases
from bota_ota.storage import make_blob_store
from bota_ota.transparency.api import router as transparency_router
from bota_ota.web.context import AppContext
from bota_ota.web.deps import CtxDep
from bota_ota.web.docs import install_docs
from bota_ota.web.downloads import router as download_router
from bota_ota.web.headers import SecurityHeadersMiddleware
from bota_ota.web.middleware import CloseSessionsMiddleware, DatabaseAdmissionMiddleware
from bota_ota.web.openapi import install_openapi
from bota_ota.web.problems import install_problem_handlers
from bota_ota.web.scheduler import Scheduler

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DESCRIPTION = """
Firmware over-the-air updates for Bota Pin, Bota Pin Pro and Bota Note.

* **Management API** (`/api/v1`): releases, devices, assignments, audit. `Authorization: Bearer <API token>`.
* **Device API** (`/api/device/v1`): the heartbeat the firmware sends; see docs/device-protocol.md.
* Errors are RFC 9457 problem JSON (`application/problem+json`) naming the offending field.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url, max_connections=settings.db_max_connections)
    ctx = AppContext(
        settings=settings, engine=engine, sessions=make_sessionmaker(engine), store=make_blob_store(settings)
    )
    heartbeat = HeartbeatRuntime(ctx)
    scheduler = Scheduler(ctx)
    scheduler.add(
        "ble_modes_ended", lambda s, cfg, now: end_silent_ble_modes(s, timeout_s=cfg.ble_relay_timeout_s, now=now)
    )
    scheduler.add(
        "deliveries_timed_out",
        lambda s, cfg, now: fail_stalled_deliveries(s, timeout_s=cfg.delivery_timeout_s, now=now),
    )
    scheduler.add("stale_uploads_removed", sweep_stale_upload_files)

    # Rollouts react to outcomes within seconds, so they have a loop of their own.
    rollouts = Scheduler(ctx, interval_s=settings.rollout_interval_s, name="rollouts")
    rollouts.add("rollouts_changed", rollout_tick)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        remove_stale_upload_files(settings.upload_tmp_dir, older_than_s=settings.stale_upload_s)
        await heartbeat.start()
        await scheduler.start()
        await rollouts.start()
        try:
            yield
        finally:
            # uvicorn gets here after the last request has finished: nothing more will be buffered.
            await rollouts.stop()
            await scheduler.stop()
            await heartbeat.stop()
            engine.dispose()

    app = FastAPI(
        title="bota-ota",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # /docs and /redoc come from installed files (web/docs.py), not a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.heartbeat = heartbeat
    app.state.scheduler = scheduler
    app.state.rollouts = rollouts
    # A revoked signing key or a raised security floor (firmware/api.py) withdraws releases: their active
    # assignments are cancelled and their rollouts paused, by domains above firmware.
    app.state.release_withdrawal = withdraw_releases
    install_problem_handlers(app, page=problem_page)
    install_openapi(app)
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_middleware(DatabaseAdmissionMiddleware)
    app.add_middleware(CloseSessionsMiddleware)
    # Portal sign-in state lives in a signed cookie (itsdangerous); no server-side session store to share.
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.resolved_secret_key,
        session_cookie="bota_ota_session",
        max_age=12 * 3600,
        same_site="lax",
        https_only=settings.secure_cookies,
    )
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.secure_cookies)
    # Outermost: the heartbeat is answered before sessions, admission and routing (heartbeat/entrance.py).
    app.add_middleware(HeartbeatEntrance, runtime=heartbeat)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "portal" / "static"), name="static")
    install_docs(app)
    for router in (
        firmware_router,
        signing_keys_router,
        models_router,
        fleet_router,
        devices_router,
        groups_router,
        rollouts_router,
        assignments_router,
        device_router,
        accounts_router,
        audit_router,
        download_router,
        mobile_router,
        app_users_router,
        transparency_router,
        portal_router,
        firmware_views.router,
        device_import_views.router,  # before device_views: /devices/import is not a device id
        device_views.router,
        device_action_views.router,
        admin_views.router,
        rollout_views.router,
        group_views.router,
    ):
        app.include_router(router)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        # Browsers ask for /favicon.ico whatever the page links; the portal's icon is an SVG.
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/healthz", tags=["ops"], summary="Liveness and database check")
    def healthz(ctx: CtxDep) -> dict[str, str]:
        with ctx.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app


async def _to_login(request: Request, exc: Exception) -> Response:
    """To the sign-in page, which brings the visitor back here afterwards (an HTMX request: to the page it
    was made from)."""
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": login_url(request, page=True)})
    return RedirectResponse(login_url(request), status_code=303)


# The event loop and the worker threads that do database work share the GIL. A thread gives it up around
# every SQLite or PostgreSQL call and, while the loop is busy answering heartbeats, waits CPython's switch
# interval (5 ms by default) to get it back: a write transaction of ten statements then holds SQLite's one
# write slot for tens of milliseconds (measured in the rollout benchmark: ~9 ms per delivery at 0.7 cores).
SERVER_SWITCH_INTERVAL_S = 0.0005


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``bota-ota serve``, with or without ``--workers N``)."""
    sys.setswitchinterval(SERVER_SWITCH_INTERVAL_S)
    settings = Settings()
    # A worker process is spawned afresh: give it the same log output as ``serve`` (no-op when it has one).
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    return create_app(settings)
