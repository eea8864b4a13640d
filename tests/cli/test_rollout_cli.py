"""``bota-ota rollout`` against a running server: create, list, show, pause, resume, advance, cancel, and the
errors an operator can make."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.server import cli
from tests.support.sim import SimServer, sim_server_running

pytestmark = pytest.mark.e2e


def test_rollout_commands_steer_a_rollout_of_a_running_server(tmp_path: Path, database_url: str) -> None:
    with sim_server_running(tmp_path, database_url) as server:
        _scenario(server)


def _scenario(server: SimServer) -> None:
    release = server.release("v2.0.0", size=10_000)
    for n in range(4):
        r = server.api.post("/api/v1/devices", json={"id": f"BP-CLI-{n}", "model": "bota-pin"})
        assert r.status_code == 201, r.text
    env = {**server.proc.env, "BOTA_OTA_API_TOKEN": server.token}

    def rollout(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(env, "rollout", *args, "--server", server.url, check=False)

    created = rollout(
        "create", "--release", release["id"], "--model", "bota-pin", "--stages", "50,100", "--manual", "--name", "cli"
    )
    assert created.returncode == 0, created.stderr
    m = re.search(r"rollout ([0-9a-f]{32}) running", created.stdout)
    assert m, created.stdout
    rid = m.group(1)
    assert server.api.get(f"/api/v1/rollouts/{rid}").json()["advance"] == "manual"

    listed = rollout("list")
    assert listed.returncode == 0 and rid in listed.stdout and "cli" in listed.stdout, listed.stdout
    shown = rollout("show", rid)
    assert shown.returncode == 0, shown.stderr
    assert "stage 1 (50 %)" in shown.stdout and "stage 2 (100 %)" in shown.stdout and "running" in shown.stdout

    assert "paused" in rollout("pause", rid).stdout
    assert server.api.get(f"/api/v1/rollouts/{rid}").json()["status"] == "paused"
    assert "running" in rollout("resume", rid).stdout
    assert rollout("advance", rid).returncode == 0
    assert server.api.get(f"/api/v1/rollouts/{rid}").json()["current_stage"] == 1  # the second stage, by hand
    assert "cancelled" in rollout("cancel", rid).stdout
    pending = server.api.get("/api/v1/assignments", params={"rollout_id": rid, "status": "pending"})
    assert pending.headers["X-Total-Count"] == "0"
    watched = rollout("show", rid, "--watch")  # an ended rollout: shows it once and returns
    assert watched.returncode == 0 and "cancelled" in watched.stdout, watched.stdout

    # A group by name.
    assert server.api.post("/api/v1/groups", json={"name": "Pins", "filter": {"model": "bota-pin"}}).status_code == 201
    by_group = rollout(
        "create", "--release", release["id"], "--group", "pins", "--stages", "100", "--wifi-only", "--min-battery", "60"
    )
    assert by_group.returncode == 0, by_group.stderr
    gid = re.search(r"rollout ([0-9a-f]{32})", by_group.stdout)
    assert gid, by_group.stdout
    made = server.api.get(f"/api/v1/rollouts/{gid.group(1)}").json()
    assert made["delivery_policy"] == {"networks": ["wifi"], "min_battery": 60}

    # Mistakes: a clear message and exit code 2, nothing created.
    before = server.api.get("/api/v1/rollouts").headers["X-Total-Count"]
    for args, message in [
        (("--group", "nobody"), "no group named 'nobody'"),
        ((), "give exactly one of --group or --model"),
        (("--model", "bota-pin", "--stages", "50,10"), "stages"),
        (("--model", "bota-pin", "--stages", "half"), "comma-separated percentages"),
    ]:
        bad = rollout("create", "--release", release["id"], *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert message in bad.stderr + bad.stdout, (args, bad.stderr)
    assert server.api.get("/api/v1/rollouts").headers["X-Total-Count"] == before
    unknown = rollout("pause", "0" * 32)
    assert unknown.returncode == 2 and "not found" in unknown.stderr, unknown.stderr
    no_token = cli({**env, "BOTA_OTA_API_TOKEN": ""}, "rollout", "list", "--server", server.url, check=False)
    assert no_token.returncode == 2 and "--api-token" in no_token.stderr
