"""Fixtures of the simulator tests; the helpers live in tests/support/sim.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sim import SimServer, sim_server_running


@pytest.fixture
def sim_server(tmp_path: Path, database_url: str) -> Iterator[SimServer]:
    with sim_server_running(tmp_path, database_url) as server:
        yield server
