"""Portal: device groups — the list, creating one, its page with its devices, editing and deleting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from bota_ota.core.errors import Conflict, ValidationFailed
from bota_ota.devices import groups as group_service
from bota_ota.devices.models import DeviceGroup
from bota_ota.devices.schemas import GroupCreate, GroupUpdate
from bota_ota.ota import fleet
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import Paging, PagingDep, listing, pages, render, require
from bota_ota.portal.forms import FILTER_FIELDS, field_errors, filter_from_form
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}


FormData = Annotated[dict[str, str], Depends(_form)]


def _name_for(loc: tuple[Any, ...]) -> str:
    if loc[0] == "filter":
        return str(loc[1]) if len(loc) > 1 else "model"
    return str(loc[0])


def _body(form: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": form.get("name", ""),
        "description": form.get("description", "").strip() or None,
        "filter": filter_from_form(form),
    }


def _form_of(group: DeviceGroup) -> dict[str, str]:
    values = {"name": group.name, "description": group.description or ""}
    for key in FILTER_FIELDS:
        value = group.filter.get(key)
        if value is not None:
            values[key] = ", ".join(value) if isinstance(value, list) else str(value)
    return values


def _last_page(total: int, paging: Paging) -> int:
    """The offset of the last page."""
    return (pages(total, paging.per_page) - 1) * paging.per_page


@router.get("/groups", response_class=HTMLResponse)
def groups_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    paging: PagingDep,
) -> HTMLResponse:
    rows, total = group_service.list_groups(session, limit=paging.per_page, offset=paging.offset)
    if not rows and total:  # a page past the end shows the last one
        rows, total = group_service.list_groups(session, limit=paging.per_page, offset=_last_page(total, paging))
    groups = [group_service.group_out(session, g) for g in rows]
    return render(request, "groups.html", user=user, groups=groups, **listing(total, paging, {}))


@router.get("/groups/new", response_class=HTMLResponse)
def new_group_page(request: Request, user: PortalUser) -> HTMLResponse:
    require(user, "operator")
    return render(request, "group_form.html", user=user, group=None, form={}, errors={})


@router.post("/groups/new", response_class=HTMLResponse, dependencies=[CsrfChecked])
def create_group(request: Request, user: PortalUser, session: SessionDep, form: FormData) -> Response:
    require(user, "operator")
    try:
        body = GroupCreate.model_validate(_body(form))
    except ValidationError as exc:
        errors = field_errors(exc, _name_for)
        return render(request, "group_form.html", status_code=422, user=user, group=None, form=form, errors=errors)
    try:
        group = group_service.create_group(session, body, actor=f"user:{user.email}")
        session.commit()
    except (Conflict, ValidationFailed) as exc:
        session.rollback()
        errors = {exc.field or "name": exc.detail}
        return render(
            request, "group_form.html", status_code=exc.status, user=user, group=None, form=form, errors=errors
        )
    flash(request, f"Group “{group.name}” created.")
    return RedirectResponse(f"/groups/{group.id}", status_code=303)


@router.get("/groups/{group_id}", response_class=HTMLResponse)
def group_page(
    request: Request,
    group_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    paging: PagingDep,
) -> HTMLResponse:
    group = group_service.get_group(session, group_id)
    members = group_service.group_filter(group)
    window = settings.online_window_s
    rows, total = fleet.list_devices(
        session, members, online_window_s=window, limit=paging.per_page, offset=paging.offset
    )
    if not rows and total:  # a page past the end shows the last one
        offset = _last_page(total, paging)
        rows, total = fleet.list_devices(session, members, online_window_s=window, limit=paging.per_page, offset=offset)
    devices = fleet.devices_out(
        session, rows, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )
    return render(request, "group.html", user=user, group=group, devices=devices, **listing(total, paging, {}))


@router.get("/groups/{group_id}/edit", response_class=HTMLResponse)
def edit_group_page(request: Request, group_id: str, user: PortalUser, session: SessionDep) -> HTMLResponse:
    require(user, "operator")
    group = group_service.get_group(session, group_id)
    return render(request, "group_form.html", user=user, group=group, form=_form_of(group), errors={})


@router.post("/groups/{group_id}/edit", response_class=HTMLResponse, dependencies=[CsrfChecked])
def edit_group(request: Request, group_id: str, user: PortalUser, session: SessionDep, form: FormData) -> Response:
    require(user, "operator")
    group = group_service.get_group(session, group_id)
    try:
        body = GroupUpdate.model_validate(_body(form))
        if body.name is None:  # the form always sends a name; an empty one is refused by the schema
            raise ValidationFailed("give the group a name", field="name")
        group = group_service.update_group(session, group_id, body, actor=f"user:{user.email}")
        session.commit()
    except ValidationError as exc:
        errors = field_errors(exc, _name_for)
        return render(request, "group_form.html", status_code=422, user=user, group=group, form=form, errors=errors)
    except (Conflict, ValidationFailed) as exc:
        session.rollback()
        group = group_service.get_group(session, group_id)
        errors = {exc.field or "name": exc.detail}
        return render(
            request, "group_form.html", status_code=exc.status, user=user, group=group, form=form, errors=errors
        )
    flash(request, f"Group “{group.name}” saved.")
    return RedirectResponse(f"/groups/{group.id}", status_code=303)


@router.post("/groups/{group_id}/delete", dependencies=[CsrfChecked])
def delete_group(request: Request, group_id: str, user: PortalUser, session: SessionDep) -> Response:
    require(user, "operator")
    name = group_service.get_group(session, group_id).name
    group_service.delete_group(session, group_id, actor=f"user:{user.email}")
    session.commit()
    flash(request, f"Group “{name}” deleted; its devices are unchanged.")
    return RedirectResponse("/groups", status_code=303)
