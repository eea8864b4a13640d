"""signed firmware: trusted signing keys, per-model settings (require_signed), each artifact's signature and
key id, each release's security version and floor mark; the public release transparency log

Nothing here is watched by the heartbeat cache's triggers: a manifest's signature comes with the artifact
the cache loads with its release, and artifacts are only ever inserted with it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("created_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("revoked_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "model_settings",
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("require_signed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_settings")),
    )
    op.create_table(
        "transparency_log",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=True),
        sa.Column("leaf", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_transparency_log")),
    )
    with op.batch_alter_table("transparency_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transparency_log_release_id"), ["release_id"], unique=False)
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_artifacts_key_id"), ["key_id"], unique=False)
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("security_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("security_floor", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("security_floor")
        batch_op.drop_column("security_version")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifacts_key_id"))
        batch_op.drop_column("key_id")
        batch_op.drop_column("signature")
    with op.batch_alter_table("transparency_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transparency_log_release_id"))
    op.drop_table("transparency_log")
    op.drop_table("model_settings")
    op.drop_table("signing_keys")
