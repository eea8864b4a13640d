"""Run Alembic migrations programmatically (``bota-ota db upgrade`` and start-up use this)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config

# Tables the migrations create on purpose without a model: SQLite's trigger-kept change counter (migration
# 0006), read with plain SQL by heartbeat/invalidation.py. Autogenerate and the drift check leave them be.
UNMODELLED_TABLES = frozenset({"cache_epoch"})


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Alembic's ``include_name`` hook: compare everything except the tables no model describes."""
    return not (type_ == "table" and name in UNMODELLED_TABLES)


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "bota_ota:migrations")
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
