"""Portal: sign-in, the dashboard, assignments across the fleet and the audit log.

Views call the same services as the API; templates only see what a view hands them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from bota_ota.accounts import service as accounts
from bota_ota.accounts.models import ApiToken, User
from bota_ota.audit import service as audit_log
from bota_ota.core.audit import AuditEntry
from bota_ota.core.errors import NotFound
from bota_ota.devices import service as device_service
from bota_ota.devices.models import Device, DeviceGroup
from bota_ota.firmware import service as firmware
from bota_ota.firmware.models import Release
from bota_ota.ota import service as ota_service
from bota_ota.ota import stats
from bota_ota.ota.models import ASSIGNMENT_STATUSES, Assignment
from bota_ota.portal.auth import CsrfChecked, PortalUser, can, csrf_token, safe_next
from bota_ota.portal.common import Paging, PagingDep, listing, render
from bota_ota.portal.rollout_views import open_rollouts
from bota_ota.rollouts import service as rollouts
from bota_ota.rollouts.models import Rollout
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep, request_session

router = APIRouter(include_in_schema=False)

UNREPORTED = "unknown"  # firmware_distribution's label for devices that never reported a version


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next_path: Annotated[str, Query(alias="next", max_length=4000)] = "") -> HTMLResponse:
    return render(request, "login.html", email="", errors={}, next=safe_next(next_path))


@router.post("/login", response_class=HTMLResponse, dependencies=[CsrfChecked])
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=4000)] = "",
) -> Response:
    destination = safe_next(next_path)
    client_ip = request.client.host if request.client else None
    retry_after = accounts.login_retry_after(
        session, email, client_ip, max_failures=settings.login_max_failures, window_s=settings.login_window_s
    )
    if retry_after is not None:
        minutes = -(-retry_after // 60)
        errors = {"password": f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes > 1 else ''}."}
        response = render(request, "login.html", status_code=429, email=email, errors=errors, next=destination)
        response.headers["Retry-After"] = str(retry_after)
        return response
    user = accounts.authenticate_user(session, email, password)
    if user is None:
        accounts.record_login_failure(session, email, client_ip, window_s=settings.login_window_s)
        session.commit()
        errors = {"password": "Wrong e-mail or password."}
        return render(request, "login.html", status_code=401, email=email, errors=errors, next=destination)
    accounts.clear_login_failures(session, email)
    session.commit()
    request.session.clear()  # a new session on sign-in: no fixation
    request.session["user_id"] = user.id
    csrf_token(request)
    return RedirectResponse(destination, status_code=303)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: PortalUser, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The fleet at a glance; its regions re-render themselves every few seconds (``live`` in the template)."""
    total, online = device_service.fleet_counts(session, online_window_s=settings.online_window_s)
    by_status = ota_service.count_by_status(session)
    versions: dict[str, list[tuple[str, int, str]]] = {}
    unreported: dict[str, int] = {}
    for model, counts in device_service.firmware_distribution(session).items():
        # Devices that never reported a version are a line of their own, not a bar that dwarfs the others.
        unreported[model] = sum(count for version, count in counts if version == UNREPORTED)
        versions[model] = [(version, count, "version") for version, count in counts if version != UNREPORTED]
    return render(
        request,
        "dashboard.html",
        user=user,
        total=total,
        online=online,
        updating=stats.updating(session),
        failing=stats.failing_devices(session),
        distribution=versions,
        unreported=unreported,
        status_rows=[(status, by_status[status], f"status-{status}") for status in ASSIGNMENT_STATUSES],
        failures=stats.recent_failures(session, limit=10),
        open_rollouts=open_rollouts(session),
    )


ASSIGNMENT_SORT_KEYS = tuple(stats.ASSIGNMENT_SORTS)
AssignmentStatus = Annotated[str, Query(max_length=16)]
ReleaseId = Annotated[str, Query(max_length=64)]
RolloutId = Annotated[str, Query(max_length=64)]


def _assignment_filters(status: str, release_id: str, rollout_id: str) -> dict[str, str]:
    """The list's filters as the page shows them: a status it does not know is no filter."""
    return {
        "status": status if status in stats.ASSIGNMENT_FILTERS else "",
        "release_id": release_id,
        "rollout_id": rollout_id,
    }


@dataclass(frozen=True)
class AssignmentFilter:
    """The list's filters as the query takes them: a status it does not know is no filter."""

    status: str | None
    release_id: str | None
    rollout_id: str | None

    @classmethod
    def of(cls, filters: dict[str, str]) -> AssignmentFilter:
        return cls(filters["status"] or None, filters["release_id"] or None, filters["rollout_id"] or None)


@router.get("/assignments", response_class=HTMLResponse)
def assignments_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    paging: PagingDep,
    status: AssignmentStatus = "",
    release_id: ReleaseId = "",
    rollout_id: RolloutId = "",
) -> HTMLResponse:
    filters = _assignment_filters(status, release_id, rollout_id)
    key, descending = paging.order(ASSIGNMENT_SORT_KEYS, "-created")
    f = AssignmentFilter.of(filters)
    rows, total = stats.list_assignments(
        session,
        status=f.status,
        release_id=f.release_id,
        rollout_id=f.rollout_id,
        sort=key,
        descending=descending,
        limit=paging.per_page,
        offset=paging.offset,
    )
    rollout = None
    if rollout_id:  # an unknown id lists nothing, as the API does; the page says it is unknown
        try:
            rollout = rollouts.get_rollout(session, rollout_id)
        except NotFound:
            rollout = None
    return render(
        request,
        "assignments.html",
        user=user,
        assignments=rows,
        statuses=stats.ASSIGNMENT_FILTERS,
        by_status=ota_service.count_by_status(session),
        releases=firmware.list_releases(session),
        rollout=rollout,
        **listing(total, paging, filters, sort=("-" if descending else "") + key),
    )


ASSIGNMENT_CSV_COLUMNS = (
    "id", "device_id", "version", "status", "error", "attempts", "created_at", "updated_at", "rollout_id",
)  # fmt: skip


def _csv_line(values: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else v for v in values])
    return out.getvalue()


def _iso(dt: datetime | None) -> str:
    return dt.astimezone(UTC).isoformat() if dt else ""


@router.get("/assignments/export.csv")
def assignments_csv(
    request: Request,
    user: PortalUser,
    ctx: CtxDep,
    paging: PagingDep,
    status: AssignmentStatus = "",
    release_id: ReleaseId = "",
    rollout_id: RolloutId = "",
) -> StreamingResponse:
    """Every assignment the list shows with these filters, in its order, as CSV (no page limit). Streamed
    from a session of its own that lives as long as the response."""
    f = AssignmentFilter.of(_assignment_filters(status, release_id, rollout_id))
    key, descending = paging.order(ASSIGNMENT_SORT_KEYS, "-created")

    def lines() -> Iterator[str]:
        yield _csv_line(ASSIGNMENT_CSV_COLUMNS)
        with request_session(ctx, request, write=False) as session:
            rows = stats.iter_assignments(
                session,
                status=f.status,
                release_id=f.release_id,
                rollout_id=f.rollout_id,
                sort=key,
                descending=descending,
            )
            for a in rows:
                updated = a.finished_at or a.progress_at or a.delivered_at or a.created_at
                yield _csv_line(
                    (a.id, a.device_id, a.version, a.status, a.error, a.attempts or 0, _iso(a.created_at),
                     _iso(updated), a.rollout_id)
                )  # fmt: skip

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="assignments.csv"'},
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    paging: PagingDep,
    actor: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    target: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:

    def entries(at: Paging) -> tuple[Sequence[AuditEntry], int]:
        return audit_log.list_entries(
            session,
            actor=actor.strip() or None,
            action=action.strip() or None,
            target_id=target.strip() or None,
            limit=at.per_page,
            offset=at.offset,
        )

    rows, total = entries(paging)
    last = max(1, -(-total // paging.per_page))
    if paging.page > last:  # past the end (entries pruned, a typed page number): show the last page
        paging = replace(paging, page=last)
        rows, total = entries(paging)
    return render(
        request,
        "audit.html",
        user=user,
        entries=rows,
        links=audit_target_links(session, rows, admin=can(user, "admin")),
        **listing(total, paging, {"actor": actor, "action": action, "target": target}),
    )


def audit_target_links(session: Session, entries: Sequence[AuditEntry], *, admin: bool) -> dict[int, str]:
    """The portal page of each entry's target, for the targets that still exist (by entry id). An
    assignment's page is its device's OTA tab; users and API tokens are linked for admins only."""
    wanted: dict[str, set[str]] = {}
    for e in entries:
        if e.target_id:
            wanted.setdefault(e.target_type, set()).add(e.target_id)
    found: dict[tuple[str, str], str] = {}

    def existing(kind: str, column: Any, href: Callable[[str], str]) -> None:
        if ids := wanted.get(kind):
            for (target_id,) in session.execute(select(column).where(column.in_(ids))):
                found[(kind, target_id)] = href(target_id)

    existing("device", Device.id, lambda i: f"/devices/{quote(i, safe='')}")
    existing("release", Release.id, lambda i: f"/firmware#release-{i}")
    existing("rollout", Rollout.id, lambda i: f"/rollouts/{i}")
    existing("group", DeviceGroup.id, lambda i: f"/groups/{i}")
    if admin:
        existing("user", User.id, lambda i: f"/users#user-{i}")
        existing("api_token", ApiToken.id, lambda i: f"/tokens#token-{i}")
    if ids := wanted.get("assignment"):
        for assignment_id, device_id in session.execute(
            select(Assignment.id, Assignment.device_id).where(Assignment.id.in_(ids))
        ):
            found[("assignment", assignment_id)] = f"/devices/{quote(device_id, safe='')}?tab=ota"
    return {e.id: found[key] for e in entries if (key := (e.target_type, e.target_id or "")) in found}
