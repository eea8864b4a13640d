"""The auth subjects of the management API: the API token's principal and its role checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bota_ota.accounts.service import Principal, authenticate_api_token
from bota_ota.core.errors import Forbidden, Unauthorized
from bota_ota.web.deps import SessionDep, bearer_secret

_bearer = HTTPBearer(auto_error=False, description="A management API token (bota_at_...)")


def current_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate_api_token(session, bearer_secret(credentials))
    if principal is None:
        raise Unauthorized("the API token is unknown or revoked")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(role: str) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(role):
            raise Forbidden(f"this action needs the {role} role; your token has {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Operator = Annotated[Principal, Depends(require_role("operator"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
