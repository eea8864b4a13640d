"""Fixtures of the simulator tests; the helpers live in tests/support/sim.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.database import PG_URL
from tests.support.server import ServerProcess, cli, server_env
from tests.support.sim import SimServer


@pytest.fixture
def sim_server(tmp_path: Path, database_url: str) -> Iterator[SimServer]:
    env = server_env(
        database_url if PG_URL else None,
        BOTA_OTA_HEARTBEAT_INTERVAL_S="1",
        BOTA_OTA_SIGNED_URL_TTL_S="2",
        BOTA_OTA_SECRET_KEY="sim-secret",
    )
    proc = ServerProcess(data_dir=tmp_path / "srv", env=env)
    proc.start()
    token = (
        cli(env, "token", "create", "--name", "sim", "--role", "operator", "--data-dir", str(proc.data_dir))
        .stdout.strip()
        .splitlines()[-1]
    )
    api = httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        yield SimServer(proc=proc, api=api, token=token, tmp=tmp_path)
    finally:
        api.close()
        proc.stop()
