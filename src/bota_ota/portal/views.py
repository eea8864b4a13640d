"""Server-rendered portal pages (Jinja2 + HTMX). Views call the same services as the API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from bota_ota.deps import SessionDep
from bota_ota.devices.models import DEVICE_MODELS
from bota_ota.firmware import service as firmware
from bota_ota.portal.auth import CsrfChecked, PortalUser, can, csrf_token, find_user
from bota_ota.security import verify_password

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", None)
    context["csrf_token"] = csrf_token(request)
    context["can"] = can
    return templates.TemplateResponse(request, name, context, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", email="", errors={})


@router.post("/login", response_class=HTMLResponse, dependencies=[CsrfChecked])
def login(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    user = find_user(session, email) if email else None
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        errors = {"password": "Wrong e-mail or password."}
        return render(request, "login.html", status_code=401, email=email, errors=errors)
    request.session.clear()  # a new session on sign-in: no fixation
    request.session["user_id"] = user.id
    csrf_token(request)
    return RedirectResponse("/", status_code=303)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def home(user: PortalUser) -> Response:
    return RedirectResponse("/firmware", status_code=303)


@router.get("/firmware", response_class=HTMLResponse)
def firmware_page(request: Request, user: PortalUser, session: SessionDep) -> HTMLResponse:
    releases = firmware.list_releases(session)
    by_model = {code: [r for r in releases if r.model == code] for code in DEVICE_MODELS}
    return render(request, "firmware.html", user=user, by_model=by_model, models=DEVICE_MODELS)
