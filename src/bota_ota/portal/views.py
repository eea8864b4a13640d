"""Portal: sign-in, the dashboard, assignments across the fleet and the audit log.

Views call the same services as the API; templates only see what a view hands them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bota_ota.accounts import service as accounts
from bota_ota.audit import service as audit_log
from bota_ota.core.errors import NotFound
from bota_ota.devices import service as device_service
from bota_ota.firmware import service as firmware
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import ASSIGNMENT_STATUSES
from bota_ota.portal.auth import CsrfChecked, PortalUser, csrf_token
from bota_ota.portal.common import PAGE_SIZE, listing, render
from bota_ota.portal.rollout_views import open_rollouts
from bota_ota.rollouts import service as rollouts
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", email="", errors={})


@router.post("/login", response_class=HTMLResponse, dependencies=[CsrfChecked])
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    client_ip = request.client.host if request.client else None
    limits = {"max_failures": settings.login_max_failures, "window_s": settings.login_window_s}
    retry_after = accounts.login_retry_after(session, email, client_ip, **limits)
    if retry_after is not None:
        minutes = -(-retry_after // 60)
        errors = {"password": f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes > 1 else ''}."}
        response = render(request, "login.html", status_code=429, email=email, errors=errors)
        response.headers["Retry-After"] = str(retry_after)
        return response
    user = accounts.authenticate_user(session, email, password)
    if user is None:
        accounts.record_login_failure(session, email, client_ip, window_s=settings.login_window_s)
        session.commit()
        errors = {"password": "Wrong e-mail or password."}
        return render(request, "login.html", status_code=401, email=email, errors=errors)
    accounts.clear_login_failures(session, email)
    session.commit()
    request.session.clear()  # a new session on sign-in: no fixation
    request.session["user_id"] = user.id
    csrf_token(request)
    return RedirectResponse("/", status_code=303)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: PortalUser, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    total, online = device_service.fleet_counts(session, online_window_s=settings.online_window_s)
    failures, _ = ota_service.list_assignments(session, status="failed", limit=10)
    by_status = ota_service.count_by_status(session)
    distribution = {
        model: [(version, count, "version") for version, count in versions]
        for model, versions in device_service.firmware_distribution(session).items()
    }
    return render(
        request,
        "dashboard.html",
        user=user,
        total=total,
        online=online,
        distribution=distribution,
        by_status=by_status,
        status_rows=[(status, by_status[status], f"status-{status}") for status in ASSIGNMENT_STATUSES],
        failures=failures,
        open_rollouts=open_rollouts(session),
    )


@router.get("/assignments", response_class=HTMLResponse)
def assignments_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    status: Annotated[str, Query(max_length=16)] = "",
    release_id: Annotated[str, Query(max_length=64)] = "",
    rollout_id: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    status_filter = status if status in ASSIGNMENT_STATUSES else None
    rows, total = ota_service.list_assignments(
        session,
        status=status_filter,
        release_id=release_id or None,
        rollout_id=rollout_id or None,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    rollout = None
    if rollout_id:  # an unknown id lists nothing, as the API does; the page says it is unknown
        try:
            rollout = rollouts.get_rollout(session, rollout_id)
        except NotFound:
            rollout = None
    filters = {"status": status_filter or "", "release_id": release_id, "rollout_id": rollout_id}
    return render(
        request,
        "assignments.html",
        user=user,
        assignments=rows,
        statuses=ASSIGNMENT_STATUSES,
        by_status=ota_service.count_by_status(session),
        releases=firmware.list_releases(session),
        rollout=rollout,
        **listing(total, page, filters),
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    actor: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    target: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    rows, total = audit_log.list_entries(
        session,
        actor=actor.strip() or None,
        action=action.strip() or None,
        target_id=target.strip() or None,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    filters = {"actor": actor, "action": action, "target": target}
    return render(request, "audit.html", user=user, entries=rows, **listing(total, page, filters))
