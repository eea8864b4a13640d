"""Start-up behaviour for running many instances: settings, stale upload files, several workers."""

from __future__ import annotations

import os
import time

from fastapi.testclient import TestClient

from bota_ota.app import create_app
from bota_ota.core.settings import Settings
from tests.support.database import PG_URL


def test_start_up_removes_stale_upload_files_and_keeps_those_in_use(settings: Settings) -> None:
    tmp = settings.upload_tmp_dir
    tmp.mkdir(parents=True, exist_ok=True)
    crashed, in_use = tmp / "upload-bin-crashed", tmp / "upload-bin-another-instance-is-writing"
    crashed.write_bytes(b"x" * 10)
    in_use.write_bytes(b"y" * 10)
    long_ago = time.time() - settings.stale_upload_s - 60
    os.utime(crashed, (long_ago, long_ago))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert not crashed.exists()
    assert in_use.exists()


def test_database_connections_per_process_are_capped(settings: Settings) -> None:
    # N instances x W workers x this cap must fit PostgreSQL's max_connections (docs/deploy.md).
    app = create_app(settings.model_copy(update={"db_max_connections": 4}))
    ctx = app.state.ctx
    if PG_URL:
        assert ctx.engine.pool.size() + ctx.engine.pool._max_overflow == 4
    # Requests (and the background work) are admitted to at most that many connections at once.
    assert ctx.db_slots._value == (4 if PG_URL else 30)
    ctx.engine.dispose()
