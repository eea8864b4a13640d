"""heartbeat write-behind and sweeps: assignments.delivery_expires_at, a partial index of devices in BLE mode

Both changes are "expand" steps: a nullable column (instant on PostgreSQL) and an index. Servers of the
previous release keep working on the new schema, so this runs before a rolling upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 00:39:46.156559
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("delivery_expires_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(
            "ix_devices_ble_mode_relay",
            ["ble_last_relay_at"],
            unique=False,
            sqlite_where=sa.text("ble_connected"),
            postgresql_where=sa.text("ble_connected"),
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_ble_mode_relay")

    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_column("delivery_expires_at")
