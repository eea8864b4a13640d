"""devices: decommissioned_at (a device taken out of service) and version_key (the reported version's
semantic order as text, for sorting the device list in the database; devices/version_key.py)

Plain ``ADD COLUMN`` on both databases: SQLite does not copy the table, so the cache triggers of 0006 stay.
Neither column is watched by them: decommissioning also replaces the device's token hash, which they
watch, and ``version_key`` changes only with ``firmware_version``, which they watch too. ``version_key``
is backfilled from the distinct reported versions (a fleet reports tens of versions, not thousands).

Downgrading drops both columns: decommissioned devices then show in lists again, still with a token that
no device holds (decommissioning replaced it).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bota_ota.core.database
from bota_ota.devices.version_key import version_key

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VERSION_KEY_TYPE = sa.String(length=200).with_variant(sa.String(length=200, collation="C"), "postgresql")


def upgrade() -> None:
    op.add_column(
        "devices", sa.Column("decommissioned_at", bota_ota.core.database.UTCDateTime(timezone=True), nullable=True)
    )
    op.add_column("devices", sa.Column("version_key", _VERSION_KEY_TYPE, nullable=True))
    devices = sa.table("devices", sa.column("firmware_version", sa.String), sa.column("version_key", sa.String))
    bind = op.get_bind()
    reported = bind.execute(
        sa.select(devices.c.firmware_version).where(devices.c.firmware_version.is_not(None)).distinct()
    ).scalars()
    for version in list(reported):
        bind.execute(
            sa.update(devices).where(devices.c.firmware_version == version).values(version_key=version_key(version))
        )
    op.create_index("ix_devices_version_key_id", "devices", ["version_key", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_devices_version_key_id", table_name="devices")
    op.drop_column("devices", "version_key")
    op.drop_column("devices", "decommissioned_at")
