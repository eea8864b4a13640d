"""rollouts: stages, members and events; assignments carry their rollout and can be held while it is paused

``assignments.held`` is something the heartbeat cache holds (a held assignment is not delivered), so the
assignments' UPDATE trigger of 0006 is made again with ``held`` in its condition. On SQLite the foreign
key to rollouts means copying the table, which drops its triggers: all three are made again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ASSIGNMENT_CHANGED = (
    "OLD.device_id {ne} NEW.device_id OR OLD.status {ne} NEW.status OR OLD.ota_state {ne} NEW.ota_state"
    " OR OLD.delivery_expires_at {ne} NEW.delivery_expires_at OR OLD.version {ne} NEW.version"
    " OR OLD.release_id {ne} NEW.release_id"
)
_WITH_HELD = _ASSIGNMENT_CHANGED + " OR OLD.held {ne} NEW.held"


def _assignment_update_trigger(condition: str) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS assignments_cache_update ON assignments")
        op.execute(
            "CREATE TRIGGER assignments_cache_update AFTER UPDATE ON assignments FOR EACH ROW "
            f"WHEN ({condition.format(ne='IS DISTINCT FROM')}) EXECUTE FUNCTION bota_ota_assignments_changed()"
        )
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS assignments_cache_update")
        op.execute(
            "CREATE TRIGGER assignments_cache_update AFTER UPDATE ON assignments "
            f"WHEN {condition.format(ne='IS NOT')} BEGIN UPDATE cache_epoch SET n = n + 1; END"
        )


def _sqlite_insert_delete_triggers() -> None:
    for action in ("INSERT", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS assignments_cache_{action.lower()}")
        op.execute(
            f"CREATE TRIGGER assignments_cache_{action.lower()} AFTER {action} ON assignments "
            "BEGIN UPDATE cache_epoch SET n = n + 1; END"
        )


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("advance", sa.String(length=8), nullable=False),
        sa.Column("success_threshold_pct", sa.Float(), nullable=False),
        sa.Column("failure_threshold_pct", sa.Float(), nullable=False),
        sa.Column("failure_min_devices", sa.Integer(), nullable=False),
        sa.Column("stage_window_s", sa.Integer(), nullable=False),
        sa.Column("include_new_devices", sa.Boolean(), nullable=False),
        sa.Column("start_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("current_stage", sa.Integer(), nullable=False),
        sa.Column("members_checked_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("advance in ('auto','manual')", name=op.f("ck_rollouts_advance")),
        sa.CheckConstraint(
            "status in ('scheduled','running','paused','completed','cancelled')", name=op.f("ck_rollouts_status")
        ),
        sa.ForeignKeyConstraint(
            ["release_id"], ["releases.id"], name=op.f("fk_rollouts_release_id_releases"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_status", ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_release_id"), ["release_id"], unique=False)
    op.create_table(
        "rollout_stages",
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("done_reason", sa.String(length=16), nullable=True),
        sa.CheckConstraint("status in ('waiting','running','done')", name=op.f("ck_rollout_stages_status")),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_stages_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rollout_id", "index", name=op.f("pk_rollout_stages")),
    )
    op.create_table(
        "rollout_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_events_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_rollout_events")),
    )
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_events_rollout_id_seq", ["rollout_id", "seq"], unique=False)

    if op.get_bind().dialect.name == "sqlite":
        # A foreign key cannot be added to an existing SQLite table: it is copied, which drops its
        # triggers; they are made again below.
        with op.batch_alter_table("assignments", schema=None, recreate="always") as batch_op:
            batch_op.add_column(sa.Column("rollout_id", sa.String(length=32), nullable=True))
            batch_op.add_column(sa.Column("held", sa.Boolean(), server_default=sa.false(), nullable=False))
            batch_op.create_foreign_key(
                batch_op.f("fk_assignments_rollout_id_rollouts"),
                "rollouts",
                ["rollout_id"],
                ["id"],
                ondelete="SET NULL",
            )
            batch_op.create_index(batch_op.f("ix_assignments_rollout_id"), ["rollout_id"], unique=False)
        _sqlite_insert_delete_triggers()
    else:
        op.add_column("assignments", sa.Column("rollout_id", sa.String(length=32), nullable=True))
        op.add_column("assignments", sa.Column("held", sa.Boolean(), server_default=sa.false(), nullable=False))
        op.create_foreign_key(
            op.f("fk_assignments_rollout_id_rollouts"),
            "assignments",
            "rollouts",
            ["rollout_id"],
            ["id"],
            ondelete="SET NULL",
        )
        op.create_index(op.f("ix_assignments_rollout_id"), "assignments", ["rollout_id"], unique=False)
    _assignment_update_trigger(_WITH_HELD)

    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("assignment_id", sa.String(length=32), nullable=True),
        sa.Column("added_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state in ('waiting','assigned','busy','up_to_date')", name=op.f("ck_rollout_devices_state")
        ),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name=op.f("fk_rollout_devices_assignment_id_assignments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_rollout_devices_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_devices_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_rollout_devices")),
    )
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_devices_rollout_id_state", ["rollout_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_devices_device_id"), ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_devices_device_id"))
        batch_op.drop_index("ix_rollout_devices_rollout_id_state")
    op.drop_table("rollout_devices")
    if op.get_bind().dialect.name == "postgresql":
        _assignment_update_trigger(_ASSIGNMENT_CHANGED)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("assignments", schema=None, recreate="always") as batch_op:
            batch_op.drop_index(batch_op.f("ix_assignments_rollout_id"))
            batch_op.drop_constraint(batch_op.f("fk_assignments_rollout_id_rollouts"), type_="foreignkey")
            batch_op.drop_column("held")
            batch_op.drop_column("rollout_id")
        _sqlite_insert_delete_triggers()
        _assignment_update_trigger(_ASSIGNMENT_CHANGED)
    else:
        op.drop_index(op.f("ix_assignments_rollout_id"), "assignments")
        op.drop_constraint(op.f("fk_assignments_rollout_id_rollouts"), "assignments", type_="foreignkey")
        op.drop_column("assignments", "held")
        op.drop_column("assignments", "rollout_id")
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_events_rollout_id_seq")
    op.drop_table("rollout_events")
    op.drop_table("rollout_stages")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_release_id"))
        batch_op.drop_index("ix_rollouts_status")
    op.drop_table("rollouts")
