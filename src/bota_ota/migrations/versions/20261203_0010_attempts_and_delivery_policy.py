"""assignments: attempts, retry_at, the deferral reason, delivery policy overrides and retry_of; releases and
rollouts: delivery policy overrides

``attempts``, ``retry_at`` and ``deferred`` decide what a heartbeat gets, so the heartbeat cache holds them
and the assignments' UPDATE trigger (0006, 0008) watches them too. ``policy`` and ``retry_of`` are written
once, at insert (the insert trigger reports the row). On SQLite the new foreign key means copying the
table (with foreign keys off, ``migrations/env.py``), which drops its triggers: all three are made again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 11:00:00
"""

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = (
    "OLD.device_id {ne} NEW.device_id OR OLD.status {ne} NEW.status OR OLD.ota_state {ne} NEW.ota_state"
    " OR OLD.delivery_expires_at {ne} NEW.delivery_expires_at OR OLD.version {ne} NEW.version"
    " OR OLD.release_id {ne} NEW.release_id OR OLD.held {ne} NEW.held"
)
_AFTER = (
    _BEFORE + " OR OLD.attempts {ne} NEW.attempts OR OLD.retry_at {ne} NEW.retry_at OR OLD.deferred {ne} NEW.deferred"
)


def _triggers(condition: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS assignments_cache_update ON assignments")
        op.execute(
            "CREATE TRIGGER assignments_cache_update AFTER UPDATE ON assignments FOR EACH ROW "
            f"WHEN ({condition.format(ne='IS DISTINCT FROM')}) EXECUTE FUNCTION bota_ota_assignments_changed()"
        )
        return
    for action in ("INSERT", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS assignments_cache_{action.lower()}")
        op.execute(
            f"CREATE TRIGGER assignments_cache_{action.lower()} AFTER {action} ON assignments "
            "BEGIN UPDATE cache_epoch SET n = n + 1; END"
        )
    op.execute("DROP TRIGGER IF EXISTS assignments_cache_update")
    op.execute(
        "CREATE TRIGGER assignments_cache_update AFTER UPDATE ON assignments "
        f"WHEN {condition.format(ne='IS NOT')} BEGIN UPDATE cache_epoch SET n = n + 1; END"
    )


def upgrade() -> None:
    recreate: Literal["always", "auto"] = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("assignments", schema=None, recreate=recreate) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("retry_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("deferred", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("retry_of", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_assignments_retry_of_assignments"), "assignments", ["retry_of"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_policy", sa.JSON(), nullable=True))
    _triggers(_AFTER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _triggers(_BEFORE)  # the trigger's condition names the columns dropped below
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("delivery_policy")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("delivery_policy")
    recreate: Literal["always", "auto"] = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("assignments", schema=None, recreate=recreate) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_assignments_retry_of_assignments"), type_="foreignkey")
        batch_op.drop_column("retry_of")
        batch_op.drop_column("policy")
        batch_op.drop_column("deferred")
        batch_op.drop_column("retry_at")
        batch_op.drop_column("attempts")
    if op.get_bind().dialect.name == "sqlite":
        _triggers(_BEFORE)  # copying the table dropped them
