"""A 503 says what happened to the database: unreachable, busy, or out of connections."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from bota_ota.app import create_app
from bota_ota.core.settings import Settings
from bota_ota.web.problems import database_trouble
from tests.support.factories import assert_problem


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_with_postgresql_down_the_503_says_it_cannot_be_reached(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://bota@127.0.0.1:{_closed_port()}/bota"
    settings = Settings(data_dir=tmp_path, database_url=url, secret_key="k", _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        r = client.get("/api/v1/devices", headers={"Authorization": "Bearer bota_at_whatever"})
    assert_problem(r, 503)
    assert r.headers["Retry-After"] == "5"
    assert "cannot be reached" in r.json()["detail"]
    assert "busy" not in r.json()["detail"]


def test_a_locked_sqlite_database_is_busy_and_a_full_pool_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    try:
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("insert into t values (1)")
        except sqlite3.OperationalError as exc:
            locked = exc
        finally:
            other.close()
    finally:
        holder.execute("rollback")
        holder.close()
    assert "busy with other writes" in database_trouble(locked)
    assert "connection of this server is in use" in database_trouble(PoolTimeoutError("QueuePool limit reached"))
