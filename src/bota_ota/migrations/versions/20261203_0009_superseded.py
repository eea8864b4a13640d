"""assignments: the final status superseded, and downgrade_from for a downgrade an admin asked for

``superseded``: the device reported a version newer than the assignment's, which therefore ends and is
never delivered again. ``downgrade_from``: the version a device reported when an admin assigned it an older
release (``allow_downgrade``); the device reporting that version again does not supersede the downgrade.

The status check constraint changes. On SQLite that means copying the table, which drops its triggers: all
three are made again exactly as 0008 left them. ``downgrade_from`` is written once, when the assignment is
inserted (the insert trigger reports it), so the update trigger's condition stays as it is. The copy runs
with foreign keys off (``migrations/env.py``): dropping the old table would otherwise delete every
assignment event (``ON DELETE CASCADE``) and unlink rollout members.

Downgrading turns superseded assignments into cancelled ones (with error ``superseded``): final either
way, and never delivered again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES_BEFORE = "status in ('pending','delivered','applied','failed','cancelled')"
_STATUSES = "status in ('pending','delivered','applied','failed','cancelled','superseded')"

# As 0008 made them: the heartbeat cache's invalidation depends on these three triggers (migration 0006).
_ASSIGNMENT_CHANGED = (
    "OLD.device_id IS NOT NEW.device_id OR OLD.status IS NOT NEW.status OR OLD.ota_state IS NOT NEW.ota_state"
    " OR OLD.delivery_expires_at IS NOT NEW.delivery_expires_at OR OLD.version IS NOT NEW.version"
    " OR OLD.release_id IS NOT NEW.release_id OR OLD.held IS NOT NEW.held"
)


def _sqlite_triggers() -> None:
    for action in ("INSERT", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS assignments_cache_{action.lower()}")
        op.execute(
            f"CREATE TRIGGER assignments_cache_{action.lower()} AFTER {action} ON assignments "
            "BEGIN UPDATE cache_epoch SET n = n + 1; END"
        )
    op.execute("DROP TRIGGER IF EXISTS assignments_cache_update")
    op.execute(
        "CREATE TRIGGER assignments_cache_update AFTER UPDATE ON assignments "
        f"WHEN {_ASSIGNMENT_CHANGED} BEGIN UPDATE cache_epoch SET n = n + 1; END"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("assignments", schema=None, recreate="always") as batch_op:
            batch_op.add_column(sa.Column("downgrade_from", sa.String(length=64), nullable=True))
            batch_op.drop_constraint(batch_op.f("ck_assignments_status"), type_="check")
            batch_op.create_check_constraint(batch_op.f("ck_assignments_status"), sa.text(_STATUSES))
        _sqlite_triggers()
    else:
        op.add_column("assignments", sa.Column("downgrade_from", sa.String(length=64), nullable=True))
        op.drop_constraint(op.f("ck_assignments_status"), "assignments", type_="check")
        op.create_check_constraint(op.f("ck_assignments_status"), "assignments", sa.text(_STATUSES))


def downgrade() -> None:
    op.execute(
        "UPDATE assignments SET status = 'cancelled', error = COALESCE(error, 'superseded') WHERE status = 'superseded'"
    )
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("assignments", schema=None, recreate="always") as batch_op:
            batch_op.drop_constraint(batch_op.f("ck_assignments_status"), type_="check")
            batch_op.create_check_constraint(batch_op.f("ck_assignments_status"), sa.text(_STATUSES_BEFORE))
            batch_op.drop_column("downgrade_from")
        _sqlite_triggers()
    else:
        op.drop_constraint(op.f("ck_assignments_status"), "assignments", type_="check")
        op.create_check_constraint(op.f("ck_assignments_status"), "assignments", sa.text(_STATUSES_BEFORE))
        op.drop_column("assignments", "downgrade_from")
