"""Alembic migrations build exactly the schema the models describe, and can be taken down and up again."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.exc import IntegrityError

from bota_ota.core.database import make_engine
from bota_ota.core.migrate import UNMODELLED_TABLES, alembic_config, include_name, upgrade_to_head
from bota_ota.models import Base

APP_TABLES = {t.name for t in Base.metadata.sorted_tables}


def _diff(url: str, metadata: MetaData = Base.metadata) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, "include_name": include_name}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _heads(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def test_migrated_database_matches_the_models(database_url: str) -> None:
    # The fixture's database was built by `alembic upgrade head` on an empty database.
    assert _tables(database_url) >= APP_TABLES
    assert _diff(database_url) == []


def test_the_comparison_would_notice_drift(database_url: str) -> None:
    # Guard against a vacuous pass: the same check against a model with one more table and one more column fails.
    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    Table("extra_table", drifted, Column("id", Integer, primary_key=True))
    drifted.tables["devices"].append_column(Column("colour", String(16)))
    kinds = {entry[0] if isinstance(entry, tuple) else entry[0][0] for entry in _diff(database_url, drifted)}
    assert {"add_table", "add_column"} <= kinds


def test_database_is_at_the_single_head(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(database_url))
    assert len(script.get_heads()) == 1
    assert _heads(database_url) == set(script.get_heads())


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    cfg = alembic_config(database_url)
    try:
        command.downgrade(cfg, "base")
        assert _tables(database_url) & (APP_TABLES | UNMODELLED_TABLES) == set()
        assert _heads(database_url) == set()
        upgrade_to_head(database_url)
        assert _tables(database_url) >= APP_TABLES
        assert _diff(database_url) == []
        # Upgrading again is a no-op.
        upgrade_to_head(database_url)
        assert _diff(database_url) == []
    finally:
        upgrade_to_head(database_url)  # leave the database usable for the tests after this one


def test_one_active_assignment_per_device_is_enforced_by_the_migrated_schema(database_url: str) -> None:
    # compare_metadata does not compare partial-index predicates; check the index's behaviour instead.
    engine = make_engine(database_url)
    now = "2026-01-01 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO devices (id, model, token_hash, created_at, recording, ble_connected) "
                    "VALUES ('D1', 'bota-pin', 'h1', :now, false, false)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO releases (id, model, version, version_key, notes, released, created_at) "
                    "VALUES ('R1', 'bota-pin', 'v1.0.1', '1.0.1', '', true, :now)"
                ),
                {"now": now},
            )

        def insert(conn: Any, assignment_id: str, status: str) -> None:
            conn.execute(
                text(
                    "INSERT INTO assignments (id, device_id, release_id, version, status, created_at, delivery_count) "
                    "VALUES (:id, 'D1', 'R1', 'v1.0.1', :status, :now, 0)"
                ),
                {"id": assignment_id, "status": status, "now": now},
            )

        with engine.begin() as conn:
            for n, status in enumerate(["applied", "failed", "cancelled", "cancelled", "pending"]):
                insert(conn, f"A{n}", status)
        for n, status in enumerate(["pending", "delivered"]):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                insert(conn, f"B{n}", status)
        with engine.begin() as conn:
            conn.execute(text("UPDATE assignments SET status = 'delivered' WHERE id = 'A4'"))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            insert(conn, "C1", "pending")
        with pytest.raises(IntegrityError), engine.begin() as conn:
            insert(conn, "C2", "bogus")  # the status check constraint
    finally:
        engine.dispose()
