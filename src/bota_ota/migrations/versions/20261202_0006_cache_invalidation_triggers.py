"""cache invalidation from the database: drop the polled device_changes feed

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


def upgrade() -> None:
    with op.batch_alter_table("device_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_device_changes_xid", postgresql_where=sa.text("xid IS NOT NULL"))
        batch_op.drop_index(batch_op.f("ix_device_changes_at"))
    op.drop_table("device_changes")


def downgrade() -> None:
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
