"""``bota-ota simulate`` and ``bota-ota assign`` as a user runs them, against a real server process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.sim.signed import SIGNER, STRANGER, public_pem, random_image, signed_release, trust_key
from tests.support.sim import SimServer

pytestmark = pytest.mark.e2e

BOTA = str(Path(sys.executable).parent / "bota-ota")


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BOTA, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_register_assign_simulate_until_done(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    common = [
        "--server",
        sim_server.url,
        "--api-token",
        sim_server.token,
        "--state-file",
        str(tmp_path / "st.json"),
        "--flash-dir",
        str(tmp_path / "flash"),
        "--no-live",
        "--reboot-s",
        "0.3",
    ]
    # The first run registers the devices, with the live view on (Rich prints its last frame when the
    # output is not a terminal).
    live = [a for a in common if a != "--no-live"]
    first = run("simulate", "--devices", "6", "--duration", "2", *live, env=env)
    assert first.returncode == 0, first.stderr
    assert "bota-ota simulator — 6 devices" in first.stdout
    assert "device state" in first.stdout and "assignment status" in first.stdout
    assert "assignments (server-wide)" in first.stdout
    assert "Simulation summary" in first.stdout
    devices = sim_server.api.get("/api/v1/devices", params={"q": "SIM-PIN-"}).json()
    assert len(devices) == 6

    release = sim_server.release("v3.0.0")
    assigned = run(
        "assign",
        "--server",
        sim_server.url,
        "--api-token",
        sim_server.token,
        "--release",
        release["id"],
        "--model",
        "bota-pin",
        env=env,
    )
    assert assigned.returncode == 0, assigned.stderr
    assert "assigned                 │ 6" in assigned.stdout
    again = run(
        "assign",
        "--server",
        sim_server.url,
        "--api-token",
        sim_server.token,
        "--release",
        release["id"],
        "--model",
        "bota-pin",
        env=env,
    )
    assert "skipped (already active) │ 6" in again.stdout

    # Reuses the six devices (their tokens are in the state file) and stops when all are done.
    done = run("simulate", "--devices", "6", "--until-done", "--faults", "drop=0.5", "--seed", "4", *common, env=env)
    assert done.returncode == 0, done.stderr
    assert "updates applied" in done.stdout
    assert "v3.0.0: 6" in done.stdout
    assert len(sim_server.api.get("/api/v1/devices", params={"q": "SIM-PIN-"}).json()) == 6
    applied = sim_server.api.get("/api/v1/assignments", params={"status": "applied"})
    assert applied.headers["X-Total-Count"] == "6"

    # Tokens lost (another state file): the same six devices get new tokens by rotation, not new ids.
    lost = [a if a != str(tmp_path / "st.json") else str(tmp_path / "other.json") for a in common]
    rotated = run("simulate", "--devices", "6", "--register-only", *lost, env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert len(sim_server.api.get("/api/v1/devices", params={"q": "SIM-PIN-"}).json()) == 6
    old = json.loads((tmp_path / "st.json").read_text())["tokens"]
    new = json.loads((tmp_path / "other.json").read_text())["tokens"]
    assert old.keys() == new.keys() and not set(old.values()) & set(new.values())
    beat = {"firmware_version": "v3.0.0"}
    heartbeat = f"{sim_server.url}/api/device/v1/heartbeat"
    assert (
        httpx.post(heartbeat, json=beat, headers={"Authorization": f"Bearer {new['SIM-PIN-00001']}"}).status_code == 200
    )
    assert (
        httpx.post(heartbeat, json=beat, headers={"Authorization": f"Bearer {old['SIM-PIN-00001']}"}).status_code == 401
    )


def test_simulate_release_until_done_ignores_other_releases(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    common = ["--server", sim_server.url, "--api-token", sim_server.token, "--prefix", "REL", "--devices", "3"]
    common += ["--state-file", str(tmp_path / "st.json"), "--flash-dir", str(tmp_path / "flash"), "--reboot-s", "0.3"]
    registered = run("simulate", "--register-only", *common, env=env)
    assert registered.returncode == 0, registered.stderr
    ours, theirs = sim_server.release("v4.0.0", size=50_000), sim_server.release("v4.1.0", size=50_000)
    mine = sim_server.assign_all(["REL-PIN-00001", "REL-PIN-00002", "REL-PIN-00003"], ours["id"])
    # A device outside the simulated fleet: its assignment of another release stays pending throughout.
    assert sim_server.api.post("/api/v1/devices", json={"id": "ELSE-PIN-1", "model": "bota-pin"}).status_code == 201
    [pending] = sim_server.assign_all(["ELSE-PIN-1"], theirs["id"]).values()

    # --duration only as a backstop: --until-done must end the run well before it (the live view is on).
    done = run("simulate", "--until-done", "--release", ours["id"], "--duration", "25", *common, env=env)
    assert done.returncode == 0, done.stderr
    wall = re.search(r"wall time\s*│\s*([\d.]+) s", done.stdout)
    assert wall is not None and float(wall.group(1)) < 24, done.stdout
    assert "assignments (release v4.0.0)" in done.stdout
    assert "v4.0.0: 3" in done.stdout
    assert sim_server.statuses(list(mine.values())) == dict.fromkeys(mine.values(), "applied")
    assert sim_server.assignment(pending)["status"] == "pending"


def test_assign_from_a_file_counts_each_outcome(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    for device_id, model in (("F-PIN-1", "bota-pin"), ("F-PIN-2", "bota-pin"), ("F-NOTE-1", "bota-note")):
        r = sim_server.api.post("/api/v1/devices", json={"id": device_id, "model": model})
        assert r.status_code == 201, r.text
    release = sim_server.release("v5.0.0")
    sim_server.assign_all(["F-PIN-2"], release["id"])  # already has an active assignment
    ids = tmp_path / "ids.txt"
    ids.write_text("# devices for v5.0.0\nF-PIN-1\nF-PIN-2\n\nF-NOTE-1\nF-NOPE-9\n")
    common = ["assign", "--server", sim_server.url, "--api-token", sim_server.token, "--release", release["id"]]

    out = run(*common, "--devices", str(ids), env=env)
    assert out.returncode == 0, out.stderr
    for row in ("assigned                 │ 1", "skipped (already active) │ 1", "wrong model              │ 1"):
        assert row in out.stdout, out.stdout
    assert "not found                │ 1" in out.stdout and "other errors             │ 0" in out.stdout
    assert sim_server.api.get("/api/v1/devices/F-PIN-1").json()["active_assignment"] is not None

    # '-' reads the ids from stdin.
    again = subprocess.run(
        [BOTA, *common, "--devices", "-"], env=env, input="F-PIN-1\n", capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "skipped (already active) │ 1" in again.stdout

    # A release without a .bin cannot go out over HTTP OTA: refused before any device is touched.
    r = sim_server.api.post(
        "/api/v1/firmware", data={"version": "v5.1.0", "model": "bota-pin"}, files={"ufw": ("x.ufw", b"u" * 1000)}
    )
    assert r.status_code == 201, r.text
    no_bin = run(*common[:-1], r.json()["id"], "--model", "bota-pin", env=env)
    assert no_bin.returncode == 2
    assert "has no .bin file" in no_bin.stderr


def test_assign_skips_devices_on_a_newer_version_unless_an_admin_allows_the_downgrade(
    sim_server: SimServer, tmp_path: Path
) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    for device_id, version in (("DG-PIN-NEW", "v2.0.0"), ("DG-PIN-OLD", "v0.9.0")):
        r = sim_server.api.post("/api/v1/devices", json={"id": device_id, "model": "bota-pin"})
        assert r.status_code == 201, r.text
        beat = httpx.post(
            f"{sim_server.url}/api/device/v1/heartbeat",
            json={"firmware_version": version},
            headers={"Authorization": f"Bearer {r.json()['token']}"},
        )
        assert beat.status_code == 200, beat.text
    release = sim_server.release("v1.0.0")
    ids = tmp_path / "ids.txt"
    ids.write_text("DG-PIN-NEW\nDG-PIN-OLD\n")
    common = ["assign", "--server", sim_server.url, "--release", release["id"], "--devices", str(ids)]

    out = run(*common, "--api-token", sim_server.token, env=env)
    assert out.returncode == 0, out.stderr
    assert "assigned                 │ 1" in out.stdout and "skipped (newer version)  │ 1" in out.stdout, out.stdout
    # The flag needs an admin token: an operator's is refused at the first device, nothing more is tried.
    refused = run(*common, "--api-token", sim_server.token, "--allow-downgrade", env=env)
    assert refused.returncode == 2
    assert "403" in refused.stderr and "admin" in refused.stderr
    created = run(
        "token", "create", "--name", "dg-admin", "--role", "admin", "--data-dir", str(sim_server.proc.data_dir), env=env
    )
    assert created.returncode == 0, created.stderr
    admin_token = created.stdout.strip().splitlines()[-1]
    allowed = run(*common, "--api-token", admin_token, "--allow-downgrade", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "assigned                 │ 1" in allowed.stdout and "skipped (already active) │ 1" in allowed.stdout
    [downgrade] = sim_server.api.get("/api/v1/devices/DG-PIN-NEW/assignments").json()
    assert (downgrade["version"], downgrade["downgrade_from"]) == ("v1.0.0", "v2.0.0")


def test_simulate_refuses_bad_faults_and_tokens(sim_server: SimServer) -> None:
    env = sim_server.proc.env
    bad = run("simulate", "--server", sim_server.url, "--api-token", sim_server.token, "--faults", "drop=7", env=env)
    assert bad.returncode == 2
    assert "between 0 and 1" in bad.stderr
    unknown = run("simulate", "--server", sim_server.url, "--api-token", "bota_at_nope", env=env)
    assert unknown.returncode == 2
    assert "401" in unknown.stderr
    nope = run("simulate", "--server", sim_server.url, "--api-token", sim_server.token, "--release", "0" * 32, env=env)
    assert nope.returncode == 2
    assert "--release" in nope.stderr and "404" in nope.stderr
    both = run("assign", "--server", sim_server.url, "--api-token", sim_server.token, "--release", "x", env=env)
    assert both.returncode == 2
    assert "exactly one of --model or --devices" in both.stderr
    garbage = sim_server.tmp / "garbage.pub"
    garbage.write_text("not a key\n")
    for path in (garbage, sim_server.tmp / "missing.pub"):
        key = run(
            "simulate", "--server", sim_server.url, "--api-token", sim_server.token, "--trusted-key", str(path), env=env
        )
        assert key.returncode == 2
        assert f"--trusted-key {path}" in " ".join(key.stderr.split())


def test_simulate_with_a_trusted_key_installs_a_signed_release(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    trust_key(sim_server)
    release = signed_release(sim_server, "v6.0.0", security_version=3, bin=random_image(60_000))
    (tmp_path / "release.pub").write_text(public_pem(SIGNER))
    common = ["--server", sim_server.url, "--api-token", sim_server.token, "--prefix", "SGN", "--devices", "3"]
    common += ["--state-file", str(tmp_path / "st.json"), "--flash-dir", str(tmp_path / "flash"), "--reboot-s", "0.3"]
    registered = run("simulate", "--register-only", *common, env=env)
    assert registered.returncode == 0, registered.stderr
    mine = sim_server.assign_all(["SGN-PIN-00001", "SGN-PIN-00002", "SGN-PIN-00003"], release["id"])
    keyed = ["--trusted-key", str(tmp_path / "release.pub"), "--security-version", "2"]
    done = run("simulate", "--until-done", "--release", release["id"], "--no-live", *keyed, *common, env=env)
    assert done.returncode == 0, done.stderr
    assert "v6.0.0: 3" in done.stdout, done.stdout
    assert sim_server.statuses(list(mine.values())) == dict.fromkeys(mine.values(), "applied")


@pytest.mark.ble
def test_app_sim_updates_a_device_over_bluetooth(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "160"}
    device = sim_server.api.post("/api/v1/devices", json={"id": "BP-APP-1", "model": "bota-pin"}).json()
    r = run(
        "app-user",
        "create",
        "--email",
        "ana@example.com",
        "--password",
        "ana-password",
        "--owns",
        "BP-APP-1",
        "--data-dir",
        str(sim_server.proc.data_dir),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    r = sim_server.api.post(
        "/api/v1/firmware",
        data={"version": "v2.0.0", "model": "bota-pin"},
        files={"ufw": ("fw.ufw", b"\x5a" * 150_000)},
    )
    assert r.status_code == 201, r.text
    common = [
        "--server",
        sim_server.url,
        "--user",
        "ana@example.com",
        "--password",
        "ana-password",
        "--device",
        "BP-APP-1",
        "--device-token",
        device["token"],
        "--reboot-s",
        "0.3",
        "--rate",
        "0",
    ]
    done = run("app-sim", *common, "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied" in done.stdout and "v2.0.0" in done.stdout
    assert sim_server.api.get("/api/v1/devices/BP-APP-1").json()["firmware_version"] == "v2.0.0"
    again = run("app-sim", *common, "--yes", env=env)
    assert again.returncode == 0 and "up_to_date" in again.stdout
    wrong = run("app-sim", *common[:4], "--password", "nope", *common[6:], env=env)
    assert wrong.returncode == 2 and "401" in wrong.stderr


@pytest.mark.ble
def test_app_sim_checks_the_release_log_and_its_device_the_signature(sim_server: SimServer, tmp_path: Path) -> None:
    env = {**sim_server.proc.env, "COLUMNS": "200"}
    device = sim_server.api.post("/api/v1/devices", json={"id": "BP-SIG-1", "model": "bota-pin"}).json()
    r = run(
        "app-user", "create", "--email", "ana@example.com", "--password", "ana-password", "--owns", "BP-SIG-1",
        "--data-dir", str(sim_server.proc.data_dir), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    trust_key(sim_server)
    signed_release(sim_server, "v2.0.0", security_version=1, ufw=random_image(40_000))
    (tmp_path / "release.pub").write_text(public_pem(SIGNER))
    (tmp_path / "stranger.pub").write_text(public_pem(STRANGER))
    (tmp_path / "log.pem").write_text(httpx.get(f"{sim_server.url}/.well-known/bota-ota-log-key.pem").text)
    common = [
        "--server", sim_server.url, "--user", "ana@example.com", "--password", "ana-password", "--device", "BP-SIG-1",
        "--device-token", device["token"], "--reboot-s", "0.3", "--rate", "0", "--yes",
        "--trusted-key", str(tmp_path / "release.pub"),
    ]  # fmt: skip
    # The app knows another log key: it refuses before anything is sent, and says why.
    refused = run("app-sim", *common, "--log-key", str(tmp_path / "stranger.pub"), env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = " ".join(refused.stdout.split())
    assert "refused" in out and "the tree head is signed by key" in out, out
    # The device trusts another release key: it refuses the image (SIGNATURE_INVALID).
    stranger = [a if a != str(tmp_path / "release.pub") else str(tmp_path / "stranger.pub") for a in common]
    untrusted = run("app-sim", *stranger, "--log-key", str(tmp_path / "log.pem"), env=env)
    assert untrusted.returncode == 1 and "SIGNATURE_INVALID" in untrusted.stdout, untrusted.stdout
    assert sim_server.api.get("/api/v1/devices/BP-SIG-1").json()["firmware_version"] in (None, "v0.0.0")
    # The right keys: the proof holds, the signature verifies, the release is applied.
    done = run("app-sim", *common, "--log-key", str(tmp_path / "log.pem"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied" in done.stdout and "v2.0.0" in done.stdout
