"""``serve --demo``'s console: a sign-in that works on every start, and progress lines not buried in the
access log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bota_ota.accounts.service import authenticate_user, list_users
from bota_ota.cli.demo import DEMO_EMAIL, QuietAccessLog, demo_banner, demo_sign_in, quiet_access_log
from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
from bota_ota.core.settings import Settings


def test_every_demo_start_prints_a_sign_in_that_works(database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path / "data")
    first = demo_sign_in(settings)
    second = demo_sign_in(settings)
    assert first[0] == second[0] == DEMO_EMAIL and first[1] != second[1]
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            assert [u.email for u in list_users(session)] == [DEMO_EMAIL]
            assert authenticate_user(session, DEMO_EMAIL, first[1]) is None
            user = authenticate_user(session, DEMO_EMAIL, second[1])
            assert user is not None and user.role == "admin"
    finally:
        engine.dispose()


def test_the_banner_shows_the_portal_and_the_sign_in() -> None:
    console = Console(record=True, width=200)
    console.print(demo_banner("http://127.0.0.1:8000", DEMO_EMAIL, "s3cret-pw", access_log_hidden=True))
    text = console.export_text()
    assert "http://127.0.0.1:8000/" in text
    assert DEMO_EMAIL in text and "s3cret-pw" in text
    assert "--log-level debug" in text


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("uvicorn.access")
    kept = list(logger.filters)
    yield logger
    logger.filters[:] = kept


def _record(level: int) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '127.0.0.1 - "POST /heartbeat" 200', None, None)


def test_the_access_log_is_quiet_during_the_demo(access_logger: logging.Logger) -> None:
    assert quiet_access_log("info") is True
    assert quiet_access_log("info") is True  # a second start adds no second filter
    assert sum(isinstance(f, QuietAccessLog) for f in access_logger.filters) == 1
    assert not access_logger.filter(_record(logging.INFO))
    assert access_logger.filter(_record(logging.WARNING))


def test_debug_keeps_the_access_log(access_logger: logging.Logger) -> None:
    assert quiet_access_log("DEBUG") is False
    assert access_logger.filter(_record(logging.INFO))
