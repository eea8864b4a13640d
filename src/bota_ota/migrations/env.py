"""Alembic environment. The URL comes from the caller (``bota_ota.core.migrate``) or from Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from bota_ota.core.database import make_engine
from bota_ota.core.migrate import include_name
from bota_ota.core.settings import Settings
from bota_ota.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True, include_name=include_name
    )
    with context.begin_transaction():
        context.run_migrations()


# Several instances may start (and migrate) at once: on PostgreSQL they take turns on this lock.
_MIGRATION_LOCK_ID = 0x60_7A_07A


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, include_name=include_name
    )
    with context.begin_transaction():
        if context.get_context().dialect.name == "postgresql":
            context.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
