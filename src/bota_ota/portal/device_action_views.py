"""Portal: the device actions of a device's Overview tab — rename, owner, tags, token rotation, decommission
and recommission (secrets shown once)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from bota_ota.accounts.models import User
from bota_ota.core.errors import Conflict, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import service as device_service
from bota_ota.devices.schemas import TagsUpdate
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import render, require
from bota_ota.portal.device_views import MAX_NAME, NO_STORE, device_page_context
from bota_ota.portal.forms import actor, field_errors, sentence, split_list
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)


# ---- the device actions of the Overview tab ---------------------------------------------------------------------


def _overview_refused(
    request: Request, user: User, session: Session, settings: Settings, device_id: str, errors: dict[str, str],
    form: dict[str, str], status: int = 422,
) -> HTMLResponse:  # fmt: skip
    """The Overview again, the message beside the field and what was typed kept."""
    session.rollback()
    ctx = device_page_context(session, settings, device_id, "overview")
    ctx["form"].update(form)
    ctx["errors"] = errors
    if "tags" in form:
        ctx["tags_value"] = form["tags"]
    return render(request, "device.html", status_code=status, user=user, **ctx)


@router.post("/devices/{device_id}/name", response_class=HTMLResponse, dependencies=[CsrfChecked])
def rename(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    require(user, "operator")
    device_service.get_device(session, device_id)
    name = name.strip()
    if len(name) > MAX_NAME:
        error = f"Name must be at most {MAX_NAME} characters (it has {len(name)})."
        return _overview_refused(request, user, session, settings, device_id, {"name": error}, {"name": name})
    try:
        device_service.rename_device(session, device_id, name, actor=actor(user))
        session.commit()
    except (ValidationFailed, Conflict) as exc:
        errors = {"name": sentence(exc.detail)}
        return _overview_refused(request, user, session, settings, device_id, errors, {"name": name}, exc.status)
    flash(request, f"Renamed {device_id} to “{name}”." if name else f"Removed the name of {device_id}.")
    return RedirectResponse(f"/devices/{device_id}", status_code=303)


@router.post("/devices/{device_id}/owner", response_class=HTMLResponse, dependencies=[CsrfChecked])
def set_owner(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    owner: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Set the owner by an app user's e-mail; an empty field clears it."""
    require(user, "operator")
    device_service.get_device(session, device_id)
    email = owner.strip()
    error = ""
    if email and ("@" not in email or len(email) > 254 or " " in email):
        error = "Owner's e-mail must be an e-mail address, e.g. name@example.com."
    else:
        try:
            device_service.set_owner(session, device_id, email or None, actor=actor(user))
            session.commit()
        except (ValidationFailed, Conflict) as exc:  # no app user with that e-mail; decommissioned meanwhile
            error = sentence(exc.detail)
    if error:
        return _overview_refused(request, user, session, settings, device_id, {"owner": error}, {"owner": owner})
    flash(request, f"{device_id} belongs to {email.lower()}." if email else f"{device_id} has no owner now.")
    return RedirectResponse(f"/devices/{device_id}", status_code=303)


@router.post("/devices/{device_id}/tags", response_class=HTMLResponse, dependencies=[CsrfChecked])
def set_tags(
    request: Request,
    device_id: str,
    user: PortalUser,
    session: SessionDep,
    settings: SettingsDep,
    tags: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The tags, comma-separated, replace the device's (empty removes them)."""
    require(user, "operator")
    device_service.get_device(session, device_id)  # an unknown device is 404, whatever the form says
    try:
        body = TagsUpdate(tags=split_list(tags))
        device = device_service.set_tags(session, device_id, body.tags, actor=actor(user))
        session.commit()
    except ValidationError as exc:
        errors = {k: sentence(v) for k, v in field_errors(exc, lambda loc: "tags").items()}
        return _overview_refused(request, user, session, settings, device_id, errors, {"tags": tags})
    except ValidationFailed as exc:
        errors = {"tags": sentence(exc.detail)}
        return _overview_refused(request, user, session, settings, device_id, errors, {"tags": tags})
    flash(request, f"Tags of {device.id}: {', '.join(device.tags) if device.tags else 'none'}.")
    return RedirectResponse(f"/devices/{device_id}", status_code=303)


def _secrets_page(request: Request, user: User, device_id: str, token: str, claim_code: str | None) -> Response:
    """A new token (and claim code) shown this once, never cached."""
    response = render(request, "token_shown.html", user=user, device_id=device_id, token=token, claim_code=claim_code)
    response.headers.update(NO_STORE)
    return response


@router.post("/devices/{device_id}/token", response_class=HTMLResponse, dependencies=[CsrfChecked])
def rotate_token(request: Request, device_id: str, user: PortalUser, session: SessionDep) -> Response:
    """A new device token; the old one stops working at once."""
    require(user, "operator")
    try:
        token = device_service.rotate_token(session, device_id, actor=actor(user))
        session.commit()
    except Conflict as exc:  # decommissioned meanwhile (a stale page)
        session.rollback()
        flash(request, f"Not rotated: {exc.detail}.", error=True)
        return RedirectResponse(f"/devices/{device_id}", status_code=303)
    return _secrets_page(request, user, device_id, token, None)


@router.post("/devices/{device_id}/decommission", dependencies=[CsrfChecked])
def decommission(request: Request, device_id: str, user: PortalUser, session: SessionDep) -> Response:
    require(user, "operator")
    try:
        device_service.decommission_device(session, device_id, actor=actor(user))
        session.commit()
    except (Conflict, ValidationFailed) as exc:
        session.rollback()
        flash(request, f"Not decommissioned: {exc.detail}.", error=True)
    else:
        flash(request, f"Decommissioned {device_id}: its token no longer works and it is hidden from the device list.")
    return RedirectResponse(f"/devices/{device_id}", status_code=303)


@router.post("/devices/{device_id}/recommission", response_class=HTMLResponse, dependencies=[CsrfChecked])
def recommission(request: Request, device_id: str, user: PortalUser, session: SessionDep) -> Response:
    """Back in service with a new token and claim code (the old ones stay invalid)."""
    require(user, "operator")
    try:
        _, token, claim_code = device_service.recommission_device(session, device_id, actor=actor(user))
        session.commit()
    except (Conflict, ValidationFailed) as exc:
        session.rollback()
        flash(request, f"Not recommissioned: {exc.detail}.", error=True)
        return RedirectResponse(f"/devices/{device_id}", status_code=303)
    return _secrets_page(request, user, device_id, token, claim_code)
