"""cache invalidation from the database: drop the polled device_changes feed; triggers name changed devices

Every server process caches, per device, what a routine heartbeat needs (heartbeat/cache.py). These
triggers report every committed change of exactly those columns, whoever makes it (another instance, a CLI
command, SQL typed into psql or the sqlite3 shell):

* PostgreSQL: ``pg_notify('bota_ota_devices', <device id>)``, heard by each process's LISTEN connection;
  ``'*'`` after a TRUNCATE (every device).
* SQLite: a one-row counter, ``cache_epoch.n``, one up per changed row; each process compares it with what
  it last saw (heartbeat/invalidation.py).

Only changes of what the cache holds count: the write-behind flush (``last_seen_at`` moving forward,
battery, network, rssi, a progress percentage) changes none of it and must stay silent, or every flush
would empty the caches it exists to keep warm. ``artifacts`` never change for a release.

On SQLite a later migration that rebuilds ``devices`` or ``assignments`` (``batch_alter_table`` copies the
table) drops their triggers with the old table: it must create them again (``_sqlite_triggers``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "bota_ota_devices"

# The columns of each table that the heartbeat cache holds (heartbeat/read.py reads exactly these), as the
# condition "this UPDATE changed one of them". ``last_seen_at``: only whether it is set.
_DEVICE_CHANGED = (
    "OLD.id {ne} NEW.id OR OLD.token_hash {ne} NEW.token_hash OR OLD.firmware_version {ne} NEW.firmware_version"
    " OR OLD.recording {ne} NEW.recording OR OLD.ble_connected {ne} NEW.ble_connected"
    " OR (OLD.last_seen_at IS NULL) <> (NEW.last_seen_at IS NULL)"
)
_ASSIGNMENT_CHANGED = (
    "OLD.device_id {ne} NEW.device_id OR OLD.status {ne} NEW.status OR OLD.ota_state {ne} NEW.ota_state"
    " OR OLD.delivery_expires_at {ne} NEW.delivery_expires_at OR OLD.version {ne} NEW.version"
    " OR OLD.release_id {ne} NEW.release_id"
)

# (table, the column naming the device, the UPDATE condition)
_TABLES = (("devices", "id", _DEVICE_CHANGED), ("assignments", "device_id", _ASSIGNMENT_CHANGED))


def _postgresql_function(table: str, device_column: str) -> str:
    return f"""
        CREATE FUNCTION bota_ota_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('{CHANNEL}', '*');
                RETURN NULL;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', NEW.{device_column});
            END IF;
            IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{device_column} <> NEW.{device_column}) THEN
                PERFORM pg_notify('{CHANNEL}', OLD.{device_column});
            END IF;
            RETURN NULL;
        END
        $$
    """


def _postgresql_upgrade() -> None:
    for table, device_column, changed in _TABLES:
        op.execute(_postgresql_function(table, device_column))
        function = f"bota_ota_{table}_changed()"
        op.execute(
            f"CREATE TRIGGER {table}_cache_insert_delete AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}"
        )
        op.execute(
            f"CREATE TRIGGER {table}_cache_update AFTER UPDATE ON {table} "
            f"FOR EACH ROW WHEN ({changed.format(ne='IS DISTINCT FROM')}) EXECUTE FUNCTION {function}"
        )
        op.execute(f"CREATE TRIGGER {table}_cache_truncate AFTER TRUNCATE ON {table} EXECUTE FUNCTION {function}")


def _postgresql_downgrade() -> None:
    for table, _device_column, _changed in _TABLES:
        for trigger in ("insert_delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_cache_{trigger} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS bota_ota_{table}_changed()")


_BUMP = "UPDATE cache_epoch SET n = n + 1;"


def _sqlite_triggers() -> list[str]:
    statements = []
    for table, _device_column, changed in _TABLES:
        for action in ("INSERT", "DELETE"):
            statements.append(
                f"CREATE TRIGGER {table}_cache_{action.lower()} AFTER {action} ON {table} BEGIN {_BUMP} END"
            )
        statements.append(
            f"CREATE TRIGGER {table}_cache_update AFTER UPDATE ON {table} "
            f"WHEN {changed.format(ne='IS NOT')} BEGIN {_BUMP} END"
        )
    return statements


def _sqlite_upgrade() -> None:
    # Not a model: no application code writes or maps it; only the triggers and the invalidation check use it.
    op.execute("CREATE TABLE cache_epoch (n INTEGER NOT NULL)")
    op.execute("INSERT INTO cache_epoch (n) VALUES (0)")
    for statement in _sqlite_triggers():
        op.execute(statement)


def _sqlite_downgrade() -> None:
    for table, _device_column, _changed in _TABLES:
        for action in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_cache_{action}")
    op.execute("DROP TABLE IF EXISTS cache_epoch")


def upgrade() -> None:
    with op.batch_alter_table("device_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_device_changes_xid", postgresql_where=sa.text("xid IS NOT NULL"))
        batch_op.drop_index(batch_op.f("ix_device_changes_at"))
    op.drop_table("device_changes")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _postgresql_upgrade()
    elif dialect == "sqlite":
        _sqlite_upgrade()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _postgresql_downgrade()
    elif dialect == "sqlite":
        _sqlite_downgrade()
    op.create_table(
        "device_changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("xid", sa.BigInteger(), nullable=True),
        sa.Column("at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_device_changes")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("device_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_changes_at"), ["at"], unique=False)
        batch_op.create_index(
            "ix_device_changes_xid", ["xid"], unique=False, postgresql_where=sa.text("xid IS NOT NULL")
        )
