"""First start: migrate, and on an empty database create the admin account and an admin API token."""

from __future__ import annotations

from dataclasses import dataclass

from bota_ota.accounts import service as accounts
from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
from bota_ota.core.errors import Conflict
from bota_ota.core.migrate import upgrade_to_head
from bota_ota.core.security import new_password
from bota_ota.core.settings import Settings

ADMIN_EMAIL = "admin@localhost"


@dataclass(frozen=True)
class AdminCredentials:
    email: str
    password: str
    api_token: str


def prepare_database(settings: Settings) -> AdminCredentials | None:
    """Apply migrations; return the new admin's credentials if this created them (first start only)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if accounts.count_users(session) > 0:
                return None
            password = new_password()
            try:
                accounts.create_user(
                    session, email=ADMIN_EMAIL, password=password, role="admin", actor="system:bootstrap"
                )
            except Conflict:  # another instance bootstrapped at the same moment
                return None
            _, token = accounts.create_api_token(
                session, name="bootstrap-admin", role="admin", actor="system:bootstrap"
            )
            return AdminCredentials(email=ADMIN_EMAIL, password=password, api_token=token)
    finally:
        engine.dispose()
