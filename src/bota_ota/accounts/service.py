from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.accounts.models import ROLES, ApiToken, User
from bota_ota.audit import service as audit
from bota_ota.db import insert_or_raise, utcnow
from bota_ota.errors import Conflict, NotFound, ValidationFailed
from bota_ota.security import hash_password, hash_token, new_token

API_TOKEN_PREFIX = "bota_at"
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    """Who is calling the management API: an API token (and the user who made it) or a signed-in user."""

    kind: str  # "token" or "user"
    id: str
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _check_role(role: str) -> None:
    if role not in ROLE_RANK:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}", field="role")


def create_api_token(session: Session, *, name: str, role: str, actor: str) -> tuple[ApiToken, str]:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("name must be 1 to 100 characters", field="name")
    _check_role(role)
    secret = new_token(API_TOKEN_PREFIX)
    token = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(secret),
        prefix=secret[: len(API_TOKEN_PREFIX) + 5],
        created_by=actor,
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="token.create",
        target_type="api_token",
        target_id=token.id,
        detail={"name": name, "role": role},
    )
    return token, secret


def list_api_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc())).all()


def revoke_api_token(session: Session, token_id: str, *, actor: str) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"API token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(
            session,
            actor=actor,
            action="token.revoke",
            target_type="api_token",
            target_id=token.id,
            detail={"name": token.name},
        )
    return token


def authenticate_api_token(session: Session, secret: str) -> Principal | None:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or token.revoked_at is not None:
        return None
    return Principal(kind="token", id=token.id, name=token.name, role=token.role)


def check_credentials(email: str, password: str) -> str:
    """Validate a new account's e-mail and password (portal and app users alike); return the e-mail normalised."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 254:
        raise ValidationFailed("email must be an e-mail address", field="email")
    if len(password) < 8:
        raise ValidationFailed("password must be at least 8 characters", field="password")
    return email


def create_user(session: Session, *, email: str, password: str, role: str, actor: str) -> User:
    email = check_credentials(email, password)
    _check_role(role)
    user = User(email=email, password_hash=hash_password(password), role=role)
    insert_or_raise(session, user, lambda: Conflict(f"a user with e-mail {email} already exists", field="email"))
    audit.record(
        session,
        actor=actor,
        action="user.create",
        target_type="user",
        target_id=user.id,
        detail={"email": email, "role": role},
    )
    return user


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0
