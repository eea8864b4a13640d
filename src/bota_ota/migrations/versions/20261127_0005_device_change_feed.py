"""device change feed: device_changes, read by every instance to keep its heartbeat cache fresh

An "expand" step (a new table nobody else reads): servers of the previous release keep working on the
new schema, so this runs before a rolling upgrade. Old servers do not write the feed, so during the
upgrade a new server may serve a heartbeat from a cache entry that an old server's change made stale,
until the entry is dropped for another reason. Finish a rolling upgrade within minutes, or restart the
new instances once the last old one is gone (docs/deploy.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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


def downgrade() -> None:
    with op.batch_alter_table("device_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_device_changes_xid", postgresql_where=sa.text("xid IS NOT NULL"))
        batch_op.drop_index(batch_op.f("ix_device_changes_at"))
    op.drop_table("device_changes")
