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


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # The pragma is a no-op inside a transaction, so it goes to the driver's connection between them.
    assert not connection.in_transaction()
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


def _run(connection: Connection) -> None:
    # SQLite: a batch migration copies a table and drops the old one, and with foreign keys on that drop
    # deletes (ON DELETE CASCADE) or unlinks (SET NULL) every row referring to it, in other tables too.
    # So migrations run with foreign keys off, as Alembic's batch documentation asks, and the result is
    # checked afterwards: a migration that leaves a dangling reference is a bug to hear of at once.
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, on=False)
    try:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, include_name=include_name
        )
        with context.begin_transaction():
            if context.get_context().dialect.name == "postgresql":
                context.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
            context.run_migrations()
        if sqlite:
            dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if dangling:
                raise RuntimeError(f"the migrations left rows whose foreign keys point nowhere: {dangling[:10]}")
    finally:
        if sqlite:
            if connection.in_transaction():
                connection.rollback()
            _sqlite_foreign_keys(connection, on=True)


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
