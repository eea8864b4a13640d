"""``bota-ota serve --demo`` as a newcomer runs it: 20 simulated devices take a fresh release, twice."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.database import PG_URL
from tests.support.server import ServerProcess, server_env

pytestmark = pytest.mark.e2e

STATUS_LINE = re.compile(
    r"demo assignments \((\d+) s\): pending (\d+)\s+delivered (\d+)\s+applied (\d+)\s+failed (\d+)"
)
FINISHED = re.compile(r"all (\d+) assignments finished (\d+) s after they were made")


def _run_demo(proc: ServerProcess, timeout: float = 150) -> str:
    """Start the demo and wait until it says all its assignments finished; the server keeps running."""
    proc.start("--demo")
    deadline = time.monotonic() + timeout
    while not FINISHED.search(proc.output()):
        if time.monotonic() > deadline:
            proc.stop()
            raise AssertionError(proc.output()[-3000:])
        time.sleep(0.5)
    return proc.output()


def test_the_demo_takes_twenty_devices_from_pending_to_applied_on_every_start(
    tmp_path: Path, database_url: str
) -> None:
    env = server_env(database_url if PG_URL else None, BOTA_OTA_HEARTBEAT_INTERVAL_S="2")
    proc = ServerProcess(data_dir=tmp_path / "demo", env=env)

    first = _run_demo(proc)
    proc.stop()
    assert "release v1.0.1 assigned to 20 of them" in first
    counts = [tuple(map(int, m.groups()[1:])) for m in STATUS_LINE.finditer(first)]
    assert counts[0] == (20, 0, 0, 0), first
    assert counts[-1] == (0, 0, 20, 0), first
    assert any(delivered for _, delivered, _, _ in counts), first  # seen on the way
    assert FINISHED.search(first).group(1) == "20"  # type: ignore[union-attr]

    # The next start reuses the 20 devices, uploads v1.0.2 and counts only its own assignments (the 20
    # applied ones of the first run are not shown as applied at once).
    try:
        second = _run_demo(proc)
        token = re.search(r"Bearer (bota_at_\S+)'", second)
        assert token is not None, second
        devices = httpx.get(
            proc.url + "/api/v1/devices",
            params={"q": "DEMO-PIN-"},
            headers={"Authorization": f"Bearer {token.group(1)}"},
        ).json()
    finally:
        proc.stop()
    assert "release v1.0.2 assigned to 20 of them" in second
    counts = [tuple(map(int, m.groups()[1:])) for m in STATUS_LINE.finditer(second)]
    assert counts[0][2] == 0 and counts[-1] == (0, 0, 20, 0), second
    assert len(devices) == 20
    assert {d["firmware_version"] for d in devices} == {"v1.0.2"}
