"""Portal, admins only: portal users (create, change role, deactivate) and management API tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from bota_ota.accounts import service as accounts
from bota_ota.accounts.models import ROLES, User
from bota_ota.core.errors import Conflict, ValidationFailed
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import render, require
from bota_ota.web.deps import SessionDep

router = APIRouter(include_in_schema=False)


def _users_context(session: Session) -> dict[str, Any]:
    return {"users": accounts.list_users(session), "roles": ROLES, "form": {}, "errors": {}}


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, user: PortalUser, session: SessionDep) -> HTMLResponse:
    require(user, "admin")
    return render(request, "users.html", user=user, **_users_context(session))


@router.post("/users", response_class=HTMLResponse, dependencies=[CsrfChecked])
def create_user(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "viewer",
) -> Response:
    require(user, "admin")
    try:
        created = accounts.create_user(session, email=email, password=password, role=role, actor=f"user:{user.email}")
        session.commit()
    except (ValidationFailed, Conflict) as exc:
        context = _users_context(session)
        context.update(form={"email": email, "role": role}, errors={exc.field or "email": exc.detail})
        return render(request, "users.html", status_code=exc.status, user=user, **context)
    flash(request, f"Created {created.email} ({created.role}).")
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{user_id}", dependencies=[CsrfChecked])
def update_user(
    request: Request,
    user_id: str,
    user: PortalUser,
    session: SessionDep,
    role: Annotated[str | None, Form(max_length=16)] = None,
    active: Annotated[bool | None, Form()] = None,
) -> Response:
    require(user, "admin")
    try:
        changed: User = accounts.update_user(session, user_id, role=role, is_active=active, actor=f"user:{user.email}")
    except (ValidationFailed, Conflict) as exc:
        flash(request, f"Not changed: {exc.detail}.", error=True)
        return RedirectResponse("/users", status_code=303)
    session.commit()
    state = "active" if changed.is_active else "deactivated"
    flash(request, f"{changed.email} is now {changed.role}, {state}.")
    return RedirectResponse("/users", status_code=303)


@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, user: PortalUser, session: SessionDep) -> HTMLResponse:
    require(user, "admin")
    return render(
        request, "tokens.html", user=user, tokens=accounts.list_api_tokens(session), roles=ROLES, form={}, errors={}
    )


@router.post("/tokens", response_class=HTMLResponse, dependencies=[CsrfChecked])
def create_token(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "viewer",
) -> Response:
    require(user, "admin")
    try:
        token, secret = accounts.create_api_token(session, name=name, role=role, actor=f"user:{user.email}")
        session.commit()
    except ValidationFailed as exc:
        return render(
            request, "tokens.html", status_code=exc.status, user=user, tokens=accounts.list_api_tokens(session),
            roles=ROLES, form={"name": name, "role": role}, errors={exc.field or "name": exc.detail},
        )  # fmt: skip
    # The secret is shown on this response only (it is stored as a hash), and no cache keeps a copy of it.
    response = render(
        request, "tokens.html", status_code=201, user=user, tokens=accounts.list_api_tokens(session),
        roles=ROLES, form={}, errors={}, created=token, secret=secret,
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/tokens/{token_id}/revoke", dependencies=[CsrfChecked])
def revoke_token(request: Request, token_id: str, user: PortalUser, session: SessionDep) -> Response:
    require(user, "admin")
    token = accounts.revoke_api_token(session, token_id, actor=f"user:{user.email}")
    session.commit()
    flash(request, f"Revoked the token {token.name}.")
    return RedirectResponse("/tokens", status_code=303)
