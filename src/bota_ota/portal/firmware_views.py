"""Portal: the firmware list, the Upload Firmware form, released/draft and delete."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import humanize
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, DomainError, Forbidden
from bota_ota.devices import service as device_service
from bota_ota.firmware import security
from bota_ota.firmware import service as firmware
from bota_ota.firmware.receive import receive_release
from bota_ota.firmware.upload import ParsedForm
from bota_ota.firmware.versions import InvalidVersion, normalize_version
from bota_ota.ota import service as ota_service
from bota_ota.portal.auth import CSRF_FIELD, CSRF_HEADER, CsrfChecked, PortalUser, flash
from bota_ota.portal.common import render, require
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep, StoreDep

router = APIRouter(include_in_schema=False)


def _firmware_context(session: SessionDep) -> dict[str, Any]:
    releases = firmware.list_releases(session)
    unfit = security.unfit_reasons(session, releases)
    revoked = security.revoked_keys(session, {a.key_id for r in releases for a in r.artifacts if a.key_id})
    by_model = {code: [r for r in releases if r.model == code] for code in DEVICE_MODELS}
    running: dict[tuple[str, str], int] = {}
    for model, versions in device_service.firmware_distribution(session).items():
        for version, count in versions:
            try:
                running[(model, normalize_version(version))] = count
            except InvalidVersion:
                continue
    return {
        "by_model": by_model,
        "running": {r.id: running.get((r.model, r.version_key), 0) for r in releases},
        "referenced": ota_service.referenced_release_ids(session, [r.id for r in releases]),
        "unfit": unfit,
        # The reason in a few words, for a badge (security.reason_for says the same at length).
        "unfit_badge": {
            r.id: "signed by a revoked key" if {a.key_id for a in r.artifacts} & revoked else "below the security floor"
            for r in releases
            if unfit[r.id]
        },
        "revoked": revoked,
    }


@router.get("/firmware", response_class=HTMLResponse)
def firmware_page(request: Request, user: PortalUser, session: SessionDep) -> HTMLResponse:
    return render(request, "firmware.html", user=user, **_firmware_context(session))


@router.get("/firmware/upload", response_class=HTMLResponse)
def upload_page(request: Request, user: PortalUser, settings: SettingsDep) -> HTMLResponse:
    require(user, "operator")
    return render(request, "upload.html", user=user, form={}, errors={}, max_bytes=settings.max_upload_bytes)


@router.post("/firmware/upload", response_class=HTMLResponse)
async def upload(
    request: Request, user: PortalUser, session: SessionDep, store: StoreDep, settings: SettingsDep, ctx: CtxDep
) -> Response:
    """The upload form posts here. The page's script sends the body with ``XMLHttpRequest`` (for its
    progress bar), the CSRF token in a header and ``Accept: application/json``, and gets the release (with
    the firmware list's address in ``Location``) or problem JSON back. Without JavaScript the browser posts
    the form itself; the CSRF token then travels as a form field, which the streaming parser only reaches
    after the files, so it is checked after parsing and before anything is stored."""
    require(user, "operator")
    expected = str(request.session.get("csrf") or "")
    header = request.headers.get(CSRF_HEADER)
    if header is not None and not (expected and secrets.compare_digest(expected, header)):
        raise Forbidden("the form has expired or did not come from this site; reload the page and try again")

    typed: dict[str, str] = {}  # what the user typed, to fill the form again after an error

    def check_form(form: ParsedForm) -> None:
        sent = form.fields.pop(CSRF_FIELD, None)
        typed.update(form.fields)
        if header is None and not (expected and sent and secrets.compare_digest(expected, sent)):
            raise Forbidden("the form has expired or did not come from this site; reload the page and try again")
        # A browser posting the form itself sends a file input left empty as a part with filename="" and
        # no content: that means "no file", not an empty firmware file.
        for kind, received in list(form.files.items()):
            if not received.filename and received.size == 0:
                received.path.unlink(missing_ok=True)
                del form.files[kind]
        for name, part in list(form.small.items()):  # the same for a signature's file input
            if part.filename == "" and not part.data:
                del form.small[name]

    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        release = await receive_release(
            request, session, store, settings, ctx, actor=f"user:{user.email}", check_form=check_form
        )
    except DomainError as exc:
        if wants_json or isinstance(exc, Forbidden):
            raise  # problem JSON, naming the field; the page's script shows it beside that field
        errors = {exc.field or "form": exc.detail}
        return render(
            request, "upload.html", status_code=exc.status, user=user, form=typed, errors=errors,
            max_bytes=settings.max_upload_bytes,
        )  # fmt: skip
    # The flash is shown by the firmware list, where both paths end: the browser follows the redirect, the
    # page's script the JSON answer's Location.
    size = sum(a.size for a in (release.bin, release.ufw) if a is not None)
    flash(request, f"Uploaded {release.version} for {DEVICE_MODELS[release.model]} ({humanize.naturalsize(size)}).")
    location = f"/firmware#release-{release.id}"
    if wants_json:
        return JSONResponse(release.model_dump(mode="json"), status_code=201, headers={"Location": location})
    return RedirectResponse(location, status_code=303)


@router.post("/firmware/{release_id}/released", dependencies=[CsrfChecked])
def set_released(
    request: Request, release_id: str, user: PortalUser, session: SessionDep, released: Annotated[bool, Form()]
) -> Response:
    require(user, "operator")
    release = firmware.update_release(session, release_id, released=released, notes=None, actor=f"user:{user.email}")
    state = "released: apps will offer it" if released else "a draft: apps will not offer it"
    flash(request, f"{DEVICE_MODELS[release.model]} {release.version} is now {state}.")
    return RedirectResponse("/firmware", status_code=303)


@router.post("/firmware/{release_id}/delete", dependencies=[CsrfChecked])
def delete(request: Request, release_id: str, user: PortalUser, session: SessionDep, store: StoreDep) -> Response:
    require(user, "operator")
    release = firmware.get_release(session, release_id)
    label = f"{DEVICE_MODELS[release.model]} {release.version}"
    try:
        keys = firmware.delete_release(session, store, release_id, actor=f"user:{user.email}")
    except Conflict as exc:
        flash(request, f"Not deleted: {exc.detail}.", error=True)
        return RedirectResponse("/firmware", status_code=303)
    session.commit()
    firmware.delete_blobs(store, keys)
    flash(request, f"Deleted {label}.")
    return RedirectResponse("/firmware", status_code=303)
