"""Shared fixtures: a migrated database per test (SQLite or PostgreSQL), the app, and API clients.

The database under test is SQLite unless BOTA_OTA_TEST_DATABASE_URL points at a PostgreSQL server
(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres); then each pytest worker gets its own
database on that server, migrated once, and every test starts from empty tables.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher, profiles
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from bota_ota.app import create_app
from bota_ota.core import security
from bota_ota.core.database import Base, make_engine, session_scope
from bota_ota.core.migrate import upgrade_to_head
from bota_ota.core.settings import Settings
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, make_token
from tests.support.s3rver import S3rverError, S3rverInfo, S3rverProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/sim drives the simulators; `make test-fast` leaves them out by this marker.
    sim_dir = Path(__file__).parent / "sim"
    for item in items:
        if sim_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.sim)


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"bota-ota database under test: {'PostgreSQL ' + make_url(PG_URL).render_as_string() if PG_URL else 'SQLite'}"
    )


@pytest.fixture(scope="session", autouse=True)
def production_password_hasher() -> Iterator[PasswordHasher]:
    """Passwords are hashed with real argon2id at argon2-cffi's test profile (CHEAPEST) while tests run.

    The production cost (64 MiB, 3 passes, 4 lanes) takes about 0.3 s of CPU per hash and per check: most of
    the time of every test that creates a user and signs in. Yields the production hasher, which
    tests/core/test_security.py checks. Processes the tests start (CLI, servers) keep the production cost.
    """
    production = security._hasher
    security._hasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
    yield production
    security._hasher = production


@pytest.fixture(scope="session")
def worker_id_str(request: pytest.FixtureRequest) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def _template_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "bota-ota.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _pg_database(worker_id_str: str) -> Iterator[str]:
    assert PG_URL
    server = make_url(PG_URL)
    name = f"bota_ota_test_{worker_id_str}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade_to_head(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_all(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if PG_URL:
        url: str = request.getfixturevalue("_pg_database")
        engine = make_engine(url)
        _truncate_all(engine)
        engine.dispose()
        return url
    template: Path = request.getfixturevalue("_template_sqlite")
    target = tmp_path / "data" / "bota-ota.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret-key",
        max_upload_bytes=1024 * 1024,
        # The rollout engine's loop would change rollouts at moments a test does not choose; tests run
        # the engine themselves (app.state.rollouts.run_once()), and the end-to-end tests run the loop.
        rollout_interval_s=600,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def sessions(app):  # type: ignore[no-untyped-def]
    return app.state.ctx.sessions


@pytest.fixture
def admin(client: TestClient, sessions) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(client, make_token(sessions, "admin"))


@pytest.fixture
def operator(client: TestClient, sessions) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(client, make_token(sessions, "operator"))


@pytest.fixture
def viewer(client: TestClient, sessions) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(client, make_token(sessions, "viewer"))


@pytest.fixture
def session_scope_factory(sessions):  # type: ignore[no-untyped-def]
    return lambda: session_scope(sessions)


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3rverInfo]:
    """One s3rver (node) process for the whole session, on 127.0.0.1 and a port the OS picked."""
    server = S3rverProcess(tmp_path_factory.mktemp("s3rver"))
    try:
        info = server.start()
    except S3rverError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield info
    finally:
        server.stop()
