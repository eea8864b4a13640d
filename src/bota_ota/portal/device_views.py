"""Portal: the device list, registering a device, and the device page (Overview, OTA, Activity)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import service as device_service
from bota_ota.devices.schemas import DEVICE_ID_PATTERN, DeviceFilter, TagsUpdate
from bota_ota.firmware import security
from bota_ota.firmware import service as firmware
from bota_ota.firmware.versions import is_strictly_newer
from bota_ota.ota import fleet
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import ASSIGNMENT_STATUSES
from bota_ota.ota.schemas import DeviceOut
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import PAGE_SIZE, listing, render, require
from bota_ota.portal.forms import field_errors, split_list
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)


@router.get("/devices", response_class=HTMLResponse)
def devices_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=100)] = "",
    model: Annotated[str, Query(max_length=32)] = "",
    version: Annotated[str, Query(max_length=64)] = "",
    online: Annotated[str, Query(pattern="^(|yes|no)$")] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    tag: Annotated[list[str] | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    model_filter = model if model in DEVICE_MODELS else None
    status_filter = status if status in ASSIGNMENT_STATUSES else None
    tags = split_list(*(tag or []))  # "beta, eu" or tag=beta&tag=eu
    errors: dict[str, str] = {}
    devices: list[DeviceOut] = []
    total = 0
    try:
        f = DeviceFilter(
            model=model_filter, q=q.strip() or None, firmware_version=version.strip() or None, tags=tags or None
        )
    except ValidationError as exc:  # a bad tag: said beside the field, and nothing listed
        errors = field_errors(exc, lambda loc: "tag" if loc[0] == "tags" else str(loc[0]))
    else:
        rows, total = fleet.list_devices(
            session,
            f,
            online={"yes": True, "no": False}.get(online),
            online_window_s=settings.online_window_s,
            assignment_status=status_filter,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        devices = fleet.devices_out(
            session, rows, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
        )
    filters = {
        "q": q, "model": model_filter or "", "version": version, "online": online, "status": status_filter or "",
        "tag": ", ".join(tags),
    }  # fmt: skip
    return render(
        request, "devices.html", status_code=422 if errors else 200, user=user, devices=devices,
        statuses=ASSIGNMENT_STATUSES, errors=errors, **listing(total, page, filters),
    )  # fmt: skip


@router.get("/devices/new", response_class=HTMLResponse)
def register_page(request: Request, user: PortalUser) -> HTMLResponse:
    require(user, "operator")
    return render(request, "register.html", user=user, form={}, errors={}, id_pattern=DEVICE_ID_PATTERN)


@router.post("/devices/new", response_class=HTMLResponse, dependencies=[CsrfChecked])
def register(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    device_id: Annotated[str, Form(alias="id", max_length=200)] = "",
    model: Annotated[str, Form(max_length=64)] = "",
    name: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    require(user, "operator")
    form = {"id": device_id, "model": model, "name": name}
    try:
        device_id = device_service.check_device_id(device_id)
        if len(name.strip()) > 200:
            raise ValidationFailed("the name must be at most 200 characters", field="name")
        device, token, claim_code = device_service.register_device(
            session, device_id=device_id, model=model, name=name, actor=f"user:{user.email}"
        )
        session.commit()
    except (ValidationFailed, Conflict) as exc:
        errors = {exc.field or "id": exc.detail}
        return render(
            request, "register.html", status_code=exc.status, user=user, form=form, errors=errors,
            id_pattern=DEVICE_ID_PATTERN,
        )  # fmt: skip
    return render(
        request, "registered.html", status_code=201, user=user, device=device, token=token, claim_code=claim_code
    )


def _device_context(session: Session, settings: Settings, device_id: str) -> dict[str, Any]:
    device = device_service.get_device(session, device_id)
    active = fleet.active_assignments_for(session, [device.id]).get(device.id)
    out = fleet.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    return {"device": out, "active": active, "max_attempts": settings.max_attempts}


def _device_page(session: Session, settings: Settings, device_id: str, tab: str) -> dict[str, Any]:
    ctx = _device_context(session, settings, device_id)
    device = ctx["device"]
    ctx.update(tab=tab, error=None, tag_errors={}, tags_value=", ".join(device.tags))
    if tab == "ota":
        # A release older than the device's reported version is not offered: a downgrade needs an admin and
        # "allow_downgrade" (the API or `bota-ota assign --allow-downgrade`).
        releases = [r for r in firmware.list_releases(session, model=device.model) if r.artifact("bin")]
        # Nor is a release nobody may install (a revoked signing key, below the security floor): said in a hint.
        unfit = security.unfit_reasons(session, releases)
        ctx["unfit_hidden"] = [reason for r in releases if (reason := unfit[r.id])]
        releases = [r for r in releases if not unfit[r.id]]
        ctx["releases"] = [r for r in releases if not is_strictly_newer(device.firmware_version, r.version)]
        ctx["older_hidden"] = len(releases) - len(ctx["releases"])
        history, _ = ota_service.list_assignments(session, device_id=device.id, limit=50)
        ctx["history"] = history
        ctx["events"] = {a.id: ota_service.get_assignment(session, a.id, with_events=True).events for a in history[:10]}
    elif tab == "activity":
        ctx["activity"] = device_service.list_device_events(session, device.id, limit=100)
    return ctx


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    tab: Annotated[str, Query(pattern="^(overview|ota|activity)$")] = "overview",
) -> HTMLResponse:
    return render(request, "device.html", user=user, **_device_page(session, settings, device_id, tab))


@router.get("/devices/{device_id}/ota-status", response_class=HTMLResponse)
def ota_status(
    request: Request, device_id: str, user: PortalUser, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The live status badge of the OTA tab; HTMX polls it, so the page never needs a reload."""
    ctx = _device_context(session, settings, device_id)
    latest, _ = ota_service.list_assignments(session, device_id=device_id, limit=1)
    return render(request, "_ota_status.html", user=user, latest=latest[0] if latest else None, **ctx)


@router.post("/devices/{device_id}/assign", response_class=HTMLResponse, dependencies=[CsrfChecked])
def assign(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    release_id: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    require(user, "operator")
    try:
        if not release_id:
            raise ValidationFailed("Choose a release.", field="release_id")
        ota_service.create_assignment(session, device_id=device_id, release_id=release_id, actor=f"user:{user.email}")
    except (ValidationFailed, Conflict) as exc:  # shown beside the release dropdown
        context = {**_device_page(session, settings, device_id, "ota"), "error": exc.detail}
        return render(request, "device.html", status_code=exc.status, user=user, **context)
    return RedirectResponse(f"/devices/{device_id}?tab=ota", status_code=303)


@router.post("/assignments/{assignment_id}/cancel", dependencies=[CsrfChecked])
def cancel(request: Request, assignment_id: str, user: PortalUser, session: SessionDep) -> Response:
    require(user, "operator")
    try:
        assignment = ota_service.cancel_assignment(session, assignment_id, actor=f"user:{user.email}")
    except Conflict as exc:  # finished meanwhile (the page was stale): say so on the OTA tab
        assignment = ota_service.get_assignment(session, assignment_id)
        flash(request, f"Not cancelled: {exc.detail}.", error=True)
    return RedirectResponse(f"/devices/{assignment.device_id}?tab=ota", status_code=303)


@router.post("/assignments/{assignment_id}/retry", dependencies=[CsrfChecked])
def retry(request: Request, assignment_id: str, user: PortalUser, session: SessionDep) -> Response:
    """Retry a failed assignment: a new one for the same device and release, linked to it."""
    require(user, "operator")
    old = ota_service.get_assignment(session, assignment_id)
    try:
        new = ota_service.retry_assignment(session, assignment_id, actor=f"user:{user.email}")
    except (ValidationFailed, Conflict) as exc:  # e.g. assigned again meanwhile, or now a downgrade
        flash(request, f"Not retried: {exc.detail}.", error=True)
    else:
        flash(request, f"Retrying {new.version}: a new assignment is pending.")
    return RedirectResponse(f"/devices/{old.device_id}?tab=ota", status_code=303)


@router.post("/devices/{device_id}/tags", response_class=HTMLResponse, dependencies=[CsrfChecked])
def set_tags(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    tags: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The Overview tab's tag form: the tags, comma-separated, replace the device's (empty removes them)."""
    require(user, "operator")
    device_service.get_device(session, device_id)  # an unknown device is 404, whatever the form says
    try:
        body = TagsUpdate(tags=split_list(tags))
        device = device_service.set_tags(session, device_id, body.tags, actor=f"user:{user.email}")
        session.commit()
    except (ValidationError, ValidationFailed) as exc:
        if isinstance(exc, ValidationError):
            errors = field_errors(exc, lambda loc: "tags")
        else:
            session.rollback()
            errors = {"tags": exc.detail}
        context = {**_device_page(session, settings, device_id, "overview"), "tag_errors": errors, "tags_value": tags}
        return render(request, "device.html", status_code=422, user=user, **context)
    flash(request, f"Tags of {device.id}: {', '.join(device.tags) if device.tags else 'none'}.")
    return RedirectResponse(f"/devices/{device_id}", status_code=303)
