"""Portal: the device list (live, sorted, paged, exported as CSV), registering a device or a CSV file of them,
and the device page (Overview with the device actions, OTA, Activity)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.core.database import session_scope
from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import csvio
from bota_ota.devices import service as device_service
from bota_ota.devices.schemas import DEVICE_ID_PATTERN, DEVICE_ID_RE, DeviceFilter
from bota_ota.firmware import security
from bota_ota.firmware import service as firmware
from bota_ota.firmware.versions import is_newer
from bota_ota.ota import fleet
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import ASSIGNMENT_STATUSES, Assignment, AssignmentEvent
from bota_ota.ota.schemas import DeviceOut
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import PagingDep, listing, pages, render, require
from bota_ota.portal.forms import actor, field_errors, sentence, split_list
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)

LIST_SORTS = ("id", "name", "last_seen", "version", "model")
# The list's "Decommissioned" filter: hidden by default, shown alone, or shown with the others.
DECOMMISSIONED = {"": False, "only": True, "all": None}
MAX_NAME = 200
# The file travels back in a hidden form field on the second step, and Starlette reads a form field of at most
# 1 MiB: a larger file is split (10,000 lines of id, model, name and tags fit easily).
MAX_IMPORT_BYTES = 1024 * 1024
NO_STORE = {"Cache-Control": "no-store"}


# ---- the device list ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceList:
    """The list's filters as the form shows them, and as the fleet read model takes them."""

    values: dict[str, str]
    device_filter: DeviceFilter | None  # None: a field is invalid (said beside it) and nothing is listed
    errors: dict[str, str]
    online: bool | None
    assignment_status: str | None
    decommissioned: bool | None

    def fetch(
        self, session: Session, settings: Settings, *, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[Sequence[Any], int]:
        return fleet.list_devices(
            session,
            self.device_filter,
            online=self.online,
            online_window_s=settings.online_window_s,
            assignment_status=self.assignment_status,
            decommissioned=self.decommissioned,
            sort=sort,
            descending=descending,
            limit=limit,
            offset=offset,
        )


def device_list(
    q: Annotated[str, Query(max_length=100)] = "",
    model: Annotated[str, Query(max_length=32)] = "",
    version: Annotated[str, Query(max_length=64)] = "",
    online: Annotated[str, Query(max_length=8)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    tag: Annotated[list[str] | None, Query()] = None,
    decommissioned: Annotated[str, Query(max_length=8)] = "",
) -> DeviceList:
    """Read leniently: a value the form never offers is the same as none (a bad tag is said beside the field)."""
    model = model if model in DEVICE_MODELS else ""
    status = status if status in ASSIGNMENT_STATUSES else ""
    online = online if online in ("yes", "no") else ""
    decommissioned = decommissioned if decommissioned in DECOMMISSIONED else ""
    tags = split_list(*(tag or []))  # "beta, eu" or tag=beta&tag=eu
    errors: dict[str, str] = {}
    device_filter: DeviceFilter | None = None
    try:
        device_filter = DeviceFilter(
            model=model or None, q=q.strip() or None, firmware_version=version.strip() or None, tags=tags or None
        )
    except ValidationError as exc:
        by_field = field_errors(exc, lambda loc: "tag" if loc[0] == "tags" else str(loc[0]))
        errors = {name: sentence(message) for name, message in by_field.items()}
    values = {
        "q": q, "model": model, "version": version, "online": online, "status": status, "tag": ", ".join(tags),
        "decommissioned": decommissioned,
    }  # fmt: skip
    return DeviceList(
        values=values,
        device_filter=device_filter,
        errors=errors,
        online={"yes": True, "no": False}.get(online),
        assignment_status=status or None,
        decommissioned=DECOMMISSIONED[decommissioned],
    )


DeviceListDep = Annotated[DeviceList, Depends(device_list)]


def latest_assignments(session: Session, device_ids: Sequence[str]) -> dict[str, Assignment]:
    """Each device's newest assignment, active or not, in one query (a window over the devices' assignments)."""
    if not device_ids:
        return {}
    ranked = (
        select(
            Assignment.id,
            func.row_number()
            .over(partition_by=Assignment.device_id, order_by=(Assignment.created_at.desc(), Assignment.id.desc()))
            .label("n"),
        )
        .where(Assignment.device_id.in_(list(device_ids)))
        .subquery()
    )
    rows = session.scalars(select(Assignment).join(ranked, ranked.c.id == Assignment.id).where(ranked.c.n == 1))
    return {a.device_id: a for a in rows}


@router.get("/devices", response_class=HTMLResponse)
def devices_page(
    request: Request, user: PortalUser, session: SessionDep, settings: SettingsDep, paging: PagingDep, dl: DeviceListDep
) -> HTMLResponse:
    key, descending = paging.order(LIST_SORTS, "id")
    rows: Sequence[Any] = []
    total = 0
    if dl.device_filter is not None:
        for _ in range(2):
            rows, total = dl.fetch(
                session, settings, sort=key, descending=descending, limit=paging.per_page, offset=paging.offset
            )
            last = pages(total, paging.per_page)
            if paging.page <= last:
                break
            paging = replace(paging, page=last)  # past the end (the list shrank, or a typed number): the last page
    devices = fleet.devices_out(
        session, rows, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    return render(
        request, "devices.html", status_code=422 if dl.errors else 200, user=user, devices=devices,
        latest=latest_assignments(session, [d.id for d in devices]), statuses=ASSIGNMENT_STATUSES, errors=dl.errors,
        **listing(total, paging, dl.values, sort=("-" if descending else "") + key),
    )  # fmt: skip


@router.get("/devices/export.csv")
def export_devices(
    user: PortalUser, ctx: CtxDep, settings: SettingsDep, paging: PagingDep, dl: DeviceListDep
) -> Response:
    """Every device the list's filters match, in the list's order (not one page), in the columns the import
    reads. Streamed from a session of its own: the request's closes before the body is sent."""
    key, descending = paging.order(LIST_SORTS, "id")

    def rows() -> Iterator[DeviceOut]:
        if dl.device_filter is None:
            return
        with session_scope(ctx.sessions) as session:
            yield from fleet.iter_devices(
                session,
                dl.device_filter,
                online=dl.online,
                online_window_s=settings.online_window_s,
                assignment_status=dl.assignment_status,
                decommissioned=dl.decommissioned,
                sort=key,
                descending=descending,
                ble_timeout_s=settings.ble_relay_timeout_s,
            )

    return StreamingResponse(
        csvio.write_devices_csv(rows()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="devices.csv"'},
    )


# ---- registering: one device, or a CSV file of them ----------------------------------------------------------


def registration_errors(device_id: str, model: str, name: str) -> dict[str, str]:
    """Every field's problem at once, in the form's words."""
    errors: dict[str, str] = {}
    if not device_id:
        errors["id"] = "Device id is required, e.g. BP-000123."
    elif not DEVICE_ID_RE.match(device_id):
        errors["id"] = (
            "Device id must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit "
            "(e.g. BP-000123)."
        )
    if not model:
        errors["model"] = "Choose a model."
    elif model not in DEVICE_MODELS:
        errors["model"] = f"Model must be one of {', '.join(DEVICE_MODELS.values())}."
    if len(name) > MAX_NAME:
        errors["name"] = f"Name must be at most {MAX_NAME} characters (it has {len(name)})."
    return errors


@router.get("/devices/new", response_class=HTMLResponse)
def register_page(request: Request, user: PortalUser) -> HTMLResponse:
    require(user, "operator")
    return render(request, "register.html", user=user, form={}, errors={}, id_pattern=DEVICE_ID_PATTERN)


@router.post("/devices/new", response_class=HTMLResponse, dependencies=[CsrfChecked])
def register(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    device_id: Annotated[str, Form(alias="id", max_length=500)] = "",
    model: Annotated[str, Form(max_length=500)] = "",
    name: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    require(user, "operator")
    form = {"id": device_id, "model": model, "name": name}
    device_id, name = device_id.strip(), name.strip()
    errors = registration_errors(device_id, model, name)
    if not errors:
        try:
            device, token, claim_code = device_service.register_device(
                session, device_id=device_id, model=model, name=name, actor=actor(user)
            )
            session.commit()
        except Conflict:
            session.rollback()
            errors = {"id": f"A device with the id {device_id} is already registered."}
        except ValidationFailed as exc:
            session.rollback()
            errors = {exc.field or "id": sentence(exc.detail)}
    if errors:
        status = 409 if "already registered" in errors.get("id", "") else 422
        return render(
            request, "register.html", status_code=status, user=user, form=form, errors=errors,
            id_pattern=DEVICE_ID_PATTERN,
        )  # fmt: skip
    response = render(
        request, "registered.html", status_code=201, user=user, device=device, token=token, claim_code=claim_code
    )
    response.headers.update(NO_STORE)
    return response


# ---- the device page -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """One line of the Activity tab: an assignment's event or a device event."""

    at: datetime
    kind: str
    detail: dict[str, Any]
    actor: str | None
    version: str | None = None  # the assignment's, for its events


def device_activity(session: Session, device_id: str, *, limit: int = 100) -> list[Activity]:
    """Everything that happened to the device, newest first: its assignments' events (delivered, state reports,
    applied, failed …) merged with its own events (Bluetooth, ownership)."""
    ota_events = session.execute(
        select(AssignmentEvent, Assignment.version)
        .join(Assignment, Assignment.id == AssignmentEvent.assignment_id)
        .where(Assignment.device_id == device_id)
        .order_by(AssignmentEvent.at.desc(), AssignmentEvent.seq.desc())
        .limit(limit)
    ).all()
    items = [Activity(e.at, e.kind, e.detail or {}, e.actor, version) for e, version in ota_events]
    items += [
        Activity(e.at, e.kind, e.detail or {}, e.actor)
        for e in device_service.list_device_events(session, device_id, limit=limit)
    ]
    items.sort(key=lambda item: item.at, reverse=True)
    return items[:limit]


def ota_key(latest: Assignment | None) -> str:
    """What the OTA tab shows of the latest assignment, in a word: the polled status region sends it back, and a
    different one tells the page (``HX-Trigger: ota-changed``) to refresh its actions and history."""
    if latest is None:
        return "none"
    parts = (latest.id, latest.status, latest.ota_state, latest.progress, latest.attempts, latest.deferred)
    return ":".join("" if p is None else str(p) for p in parts)


def device_page_context(
    session: Session, settings: Settings, device_id: str, tab: str, *, release_id: str = ""
) -> dict[str, Any]:
    device = device_service.get_device(session, device_id)
    active = fleet.active_assignments_for(session, [device.id]).get(device.id)
    out: DeviceOut = fleet.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    latest = active or latest_assignments(session, [device.id]).get(device.id)
    ctx: dict[str, Any] = {
        "device": out, "active": active, "latest": latest, "ota_key": ota_key(latest), "tab": tab,
        "max_attempts": settings.max_attempts, "errors": {}, "form": {"name": out.name or "", "owner": out.owner or ""},
        "tags_value": ", ".join(out.tags), "assign_error": None, "chosen_release": release_id,
    }  # fmt: skip
    if tab == "ota":
        # Only releases newer than the device's reported version are offered: the same version needs no update,
        # and a downgrade needs an admin and "allow_downgrade" (the API or `bota-ota assign --allow-downgrade`).
        releases = [r for r in firmware.list_releases(session, model=device.model) if r.artifact("bin")]
        # Nor is a release nobody may install (a revoked signing key, below the security floor): said in a hint.
        unfit = security.unfit_reasons(session, releases)
        ctx["unfit_hidden"] = [reason for r in releases if (reason := unfit[r.id])]
        releases = [r for r in releases if not unfit[r.id]]
        ctx["releases"] = [r for r in releases if is_newer(r.version, device.firmware_version)]
        ctx["older_hidden"] = len(releases) - len(ctx["releases"])
        history, _ = ota_service.list_assignments(session, device_id=device.id, limit=50)
        ctx["history"] = history
        ctx["events"] = {a.id: ota_service.get_assignment(session, a.id, with_events=True).events for a in history[:10]}
    elif tab == "activity":
        ctx["activity"] = device_activity(session, device.id)
    return ctx


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    tab: Annotated[str, Query(pattern="^(overview|ota|activity)$")] = "overview",
    release_id: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    ctx = device_page_context(session, settings, device_id, tab, release_id=release_id)
    if tab == "ota":
        ctx["assign_error"] = request.session.pop("assign_error", None)
    response = render(request, "device.html", user=user, **ctx)
    seen = request.headers.get("x-ota-seen")
    if seen is not None and seen != ctx["ota_key"]:
        response.headers["HX-Trigger"] = "ota-changed"
    return response


@router.get("/devices/{device_id}/ota-status", response_class=HTMLResponse)
def ota_status(
    request: Request, device_id: str, user: PortalUser, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The OTA tab's status alone (the device's latest assignment), for scripts and tests that want only that."""
    ctx = device_page_context(session, settings, device_id, "status")
    return render(request, "_ota_fragment.html", user=user, **ctx)


def _back_to_ota(device_id: str, release_id: str = "") -> RedirectResponse:
    query = f"&release_id={release_id}" if release_id else ""
    return RedirectResponse(f"/devices/{device_id}?tab=ota{query}", status_code=303)


@router.post("/devices/{device_id}/assign", dependencies=[CsrfChecked])
def assign(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    release_id: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Assign, then back to the OTA tab: a refusal is said beside the dropdown, with the chosen release kept."""
    require(user, "operator")
    device_service.get_device(session, device_id)  # an unknown device is 404, whatever the form says
    try:
        if not release_id:
            raise ValidationFailed("choose a release", field="release_id")
        assignment = ota_service.create_assignment(
            session, device_id=device_id, release_id=release_id, actor=actor(user)
        )
        session.commit()
    except (ValidationFailed, Conflict, NotFound) as exc:
        session.rollback()
        request.session["assign_error"] = sentence(exc.detail)
        flash(request, "Not assigned: the reason is beside the release.", error=True)
        return _back_to_ota(device_id, release_id if release_id.isalnum() else "")
    flash(request, f"Assigned {assignment.version} to {device_id}; it is delivered at the device's next heartbeat.")
    return _back_to_ota(device_id)


@router.post("/assignments/{assignment_id}/cancel", dependencies=[CsrfChecked])
def cancel(request: Request, assignment_id: str, user: PortalUser, session: SessionDep) -> Response:
    require(user, "operator")
    try:
        assignment = ota_service.cancel_assignment(session, assignment_id, actor=actor(user))
        session.commit()
    except Conflict as exc:  # finished meanwhile (the page was stale): say so on the OTA tab
        session.rollback()
        assignment = ota_service.get_assignment(session, assignment_id)
        flash(request, f"Not cancelled: {exc.detail}.", error=True)
    else:
        flash(request, f"Cancelled the update of {assignment.device_id} to {assignment.version}.")
    return _back_to_ota(assignment.device_id)


@router.post("/assignments/{assignment_id}/retry", dependencies=[CsrfChecked])
def retry(request: Request, assignment_id: str, user: PortalUser, session: SessionDep) -> Response:
    """Retry a failed assignment: a new one for the same device and release, linked to it."""
    require(user, "operator")
    old = ota_service.get_assignment(session, assignment_id)
    try:
        new = ota_service.retry_assignment(session, assignment_id, actor=actor(user))
    except (ValidationFailed, Conflict) as exc:  # e.g. assigned again meanwhile, or now a downgrade
        flash(request, f"Not retried: {exc.detail}.", error=True)
    else:
        flash(request, f"Retrying {new.version}: a new assignment is pending.")
    return _back_to_ota(old.device_id)
