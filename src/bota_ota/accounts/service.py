from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bota_ota.accounts.models import ROLES, ApiToken, LoginAttempt, User
from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, utcnow
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.core.security import hash_password, hash_token, new_token, verify_password

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


def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def authenticate_user(session: Session, email: str, password: str) -> User | None:
    """The active portal user with this e-mail (any case, surrounding spaces ignored) and password, or None."""
    email = email.strip().lower()
    user = session.scalar(select(User).where(User.email == email)) if email else None
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        return None
    return user


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.email)).all()


def _active_admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.is_active)) or 0


def update_user(
    session: Session, user_id: str, *, role: str | None = None, is_active: bool | None = None, actor: str
) -> User:
    """Change a user's role or (de)activate them. The last active admin can be neither demoted nor
    deactivated: someone must always be able to manage users."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    changes: dict[str, object] = {}
    if role is not None and role != user.role:
        _check_role(role)
        changes["role"] = role
    if is_active is not None and is_active != user.is_active:
        changes["is_active"] = is_active
    if not changes:
        return user
    loses_admin = user.role == "admin" and user.is_active and (changes.get("role") or changes.get("is_active") is False)
    if loses_admin and _active_admins(session) <= 1:
        raise Conflict(f"{user.email} is the last active admin", field="role" if "role" in changes else "is_active")
    if "role" in changes:
        user.role = role  # type: ignore[assignment]
    if "is_active" in changes:
        user.is_active = bool(is_active)
    audit.record(session, actor=actor, action="user.update", target_type="user", target_id=user.id, detail=changes)
    session.flush()
    return user


# ---- attempt limits: portal sign-in, app log-in, device claims -------------------------------------------
# Failed attempts are rows (not process memory) so all instances share the count. Each attempt counts against
# several keys ("email:<address>", "ip:<client address>", …), each with its own limit in the same window; the
# client-address limit is ten times the per-account one, so one address cannot try many accounts either, while a
# whole office behind one NAT can still sign in.
IP_FACTOR = 10

Limits = Sequence[tuple[str | None, int]]


def retry_after(session: Session, limits: Limits, *, window_s: int) -> int | None:
    """Seconds until an attempt may be made again (some key has reached its limit in the window), or None."""
    since = utcnow() - timedelta(seconds=window_s)
    for key, limit in limits:
        if key is None:
            continue
        count, oldest = session.execute(
            select(func.count(), func.min(LoginAttempt.at)).where(LoginAttempt.key == key, LoginAttempt.at >= since)
        ).one()
        if count >= limit and oldest is not None:
            return max(1, int((oldest + timedelta(seconds=window_s) - utcnow()).total_seconds()) + 1)
    return None


def record_failure(session: Session, keys: Sequence[str | None], *, window_s: int) -> None:
    for key in keys:
        if key is not None:
            session.add(LoginAttempt(key=key[:300]))
    # Old rows are of no use to anyone: prune them here rather than in a periodic job.
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < utcnow() - timedelta(seconds=window_s)))


def clear_failures(session: Session, keys: Sequence[str]) -> None:
    session.execute(delete(LoginAttempt).where(LoginAttempt.key.in_(keys)))


def _login_keys(email: str, client_ip: str | None, prefix: str = "") -> tuple[str, str | None]:
    return f"{prefix}email:{email.strip().lower()[:254]}", (f"{prefix}ip:{client_ip}" if client_ip else None)


def login_retry_after(
    session: Session, email: str, client_ip: str | None, *, max_failures: int, window_s: int, prefix: str = ""
) -> int | None:
    """Seconds until this e-mail (or client) may try to sign in again, or None. ``prefix`` keeps the app's
    log-ins ("app-") apart from the portal's: they are different accounts."""
    email_key, ip_key = _login_keys(email, client_ip, prefix)
    return retry_after(session, [(email_key, max_failures), (ip_key, max_failures * IP_FACTOR)], window_s=window_s)


def record_login_failure(
    session: Session, email: str, client_ip: str | None, *, window_s: int, prefix: str = ""
) -> None:
    record_failure(session, _login_keys(email, client_ip, prefix), window_s=window_s)


def clear_login_failures(session: Session, email: str, prefix: str = "") -> None:
    clear_failures(session, [_login_keys(email, None, prefix)[0]])
