from __future__ import annotations

from fastapi import APIRouter

from bota_ota.accounts import service
from bota_ota.accounts.deps import Admin, CurrentPrincipal
from bota_ota.accounts.schemas import Me, TokenCreate, TokenCreated, TokenOut, UserCreate, UserOut
from bota_ota.web.deps import SessionDep

router = APIRouter(prefix="/api/v1", tags=["accounts"])


@router.get("/me", response_model=Me, summary="Who this token is and what it may do")
def me(principal: CurrentPrincipal) -> Me:
    return Me(kind=principal.kind, name=principal.name, role=principal.role)


@router.post("/tokens", status_code=201, response_model=TokenCreated, summary="Create an API token (admin)")
def create_token(body: TokenCreate, session: SessionDep, principal: Admin) -> TokenCreated:
    token, secret = service.create_api_token(session, name=body.name, role=body.role, actor=principal.actor)
    return TokenCreated(**TokenOut.model_validate(token).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut], summary="List API tokens (admin)")
def list_tokens(session: SessionDep, _: Admin) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.list_api_tokens(session)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut, summary="Revoke an API token (admin)")
def revoke_token(token_id: str, session: SessionDep, principal: Admin) -> TokenOut:
    return TokenOut.model_validate(service.revoke_api_token(session, token_id, actor=principal.actor))


@router.post("/users", status_code=201, response_model=UserOut, summary="Create a portal user (admin)")
def create_user(body: UserCreate, session: SessionDep, principal: Admin) -> UserOut:
    user = service.create_user(session, email=body.email, password=body.password, role=body.role, actor=principal.actor)
    return UserOut.model_validate(user)


@router.get("/users", response_model=list[UserOut], summary="List portal users (admin)")
def list_users(session: SessionDep, _: Admin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in service.list_users(session)]
