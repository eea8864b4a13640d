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
            for n, status in enumerate(["applied", "failed", "cancelled", "superseded", "pending"]):
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


def _count(conn: Any, sql: str) -> int:
    return int(conn.execute(text(sql)).scalar_one())


def test_upgrading_over_existing_rows_keeps_every_row_and_link(database_url: str) -> None:
    # On SQLite 0009 copies the assignments table (a new check constraint): the rows that refer to it (events,
    # rollout members) must survive the old table's drop. Then downgrading turns superseded into cancelled.
    from alembic.script import ScriptDirectory

    cfg = alembic_config(database_url)
    before = ScriptDirectory.from_config(cfg).get_revision("0009").down_revision
    assert isinstance(before, str)
    engine = make_engine(database_url)
    now = "2026-01-01 00:00:00+00:00"
    try:
        command.downgrade(cfg, before)
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
            conn.execute(
                text(
                    "INSERT INTO rollouts (id, name, release_id, model, version, status, target, stages, advance, "
                    "success_threshold_pct, failure_threshold_pct, failure_min_devices, stage_window_s, "
                    "include_new_devices, current_stage, created_at) VALUES ('RO1', 'r', 'R1', 'bota-pin', "
                    "'v1.0.1', 'running', '{}', '[100]', 'auto', 95, 10, 5, 3600, false, 0, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO assignments (id, device_id, release_id, version, status, created_at, "
                    "delivery_count, rollout_id, held) VALUES ('A1', 'D1', 'R1', 'v1.0.1', 'pending', :now, 0, "
                    "'RO1', false)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO assignment_events (assignment_id, at, kind, status, detail) "
                    "VALUES ('A1', :now, 'created', 'pending', '{}')"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO rollout_devices (rollout_id, device_id, stage, state, assignment_id, added_at) "
                    "VALUES ('RO1', 'D1', 0, 'assigned', 'A1', :now)"
                ),
                {"now": now},
            )
        upgrade_to_head(database_url)
        with engine.begin() as conn:
            assert _count(conn, "SELECT count(*) FROM assignment_events WHERE assignment_id = 'A1'") == 1
            assert _count(conn, "SELECT count(*) FROM rollout_devices WHERE assignment_id = 'A1'") == 1
            assert _count(conn, "SELECT count(*) FROM assignments WHERE rollout_id = 'RO1'") == 1
            conn.execute(text("UPDATE assignments SET status = 'superseded' WHERE id = 'A1'"))
        assert _diff(database_url) == []
        command.downgrade(cfg, before)
        with engine.begin() as conn:
            row = conn.execute(text("SELECT status, error FROM assignments WHERE id = 'A1'")).one()
            assert tuple(row) == ("cancelled", "superseded")
            assert _count(conn, "SELECT count(*) FROM assignment_events WHERE assignment_id = 'A1'") == 1
            assert _count(conn, "SELECT count(*) FROM rollout_devices WHERE assignment_id = 'A1'") == 1
            with pytest.raises(IntegrityError), conn.begin_nested():
                conn.execute(text("UPDATE assignments SET status = 'superseded' WHERE id = 'A1'"))
    finally:
        engine.dispose()
        upgrade_to_head(database_url)
