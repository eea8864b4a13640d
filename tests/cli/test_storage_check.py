"""``bota-ota storage check [--fix] [--grace-s N] [--json]`` in-process against a test database and the app's
local blob store: the table of findings, exit code 1 while something is wrong and 0 once nothing is."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bota_ota.cli import common
from bota_ota.cli.main import app as cli_app
from bota_ota.core.settings import Settings
from tests.support.factories import ApiClient, firmware_bytes


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment, as it does beside a running server."""
    for name in [k for k in os.environ if k.startswith("BOTA_OTA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BOTA_OTA_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("BOTA_OTA_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("BOTA_OTA_SECRET_KEY", "test-secret-key")
    # Wide enough that no table cell wraps a storage key, whatever terminal (or none) the run has.
    monkeypatch.setattr(common.console, "_width", 250)


def run(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["storage", "check", *args])


def words(result: Any) -> str:
    return " ".join(result.output.split())


def _key(release: dict[str, Any]) -> str:
    return f"firmware/{release['model']}/{release['id']}/{release['model']}-{release['version'].lstrip('v')}.bin"


def _put(store: Any, tmp_path: Path, key: str, data: bytes, *, age_s: float = 0) -> None:
    source = tmp_path / f"src-{uuid.uuid4().hex}"
    source.write_bytes(data)
    store.put_file(key, source)
    if age_s:
        then = time.time() - age_s
        os.utime(store.path_for(key), (then, then))


@pytest.mark.usefixtures("cli_env")
def test_nothing_wrong_exits_0(admin: ApiClient) -> None:
    admin.release("v1.0.0", bin=firmware_bytes(2000, seed=1))
    r = run()
    assert r.exit_code == 0, r.output
    assert "Checked 1 blob(s)" in words(r) and "against 1 artifact row(s)" in words(r)
    assert "Storage and database agree." in words(r)


@pytest.mark.usefixtures("cli_env")
def test_findings_exit_1_until_fixed(admin: ApiClient, app: Any, tmp_path: Path) -> None:
    store = app.state.ctx.store
    kept = admin.release("v1.0.0", bin=firmware_bytes(2000, seed=1))
    lost = admin.release("v1.1.0", bin=firmware_bytes(2000, seed=2))
    store.delete(_key(lost))
    old_orphan = f"firmware/bota-pin/{uuid.uuid4().hex}/bota-pin-9.0.0.bin"
    _put(store, tmp_path, old_orphan, b"left by a crash", age_s=2 * 3600)
    fresh_orphan = f"firmware/bota-pin/{uuid.uuid4().hex}/bota-pin-9.0.1.bin"
    _put(store, tmp_path, fresh_orphan, b"an upload about to commit")

    r = run()
    assert r.exit_code == 1, r.output
    out = words(r)
    assert "orphan blob" in out and old_orphan in out and fresh_orphan in out
    assert "blob missing" in out and _key(lost) in out and "bota-pin v1.1.0 (bin)" in out
    assert f"delete release {lost['id']}" in out and "upload it again" in out
    assert "3 finding(s) remain." in out
    assert store.exists(old_orphan)  # a check without --fix deletes nothing

    # --fix: the old orphan goes, the fresh one is inside the grace, the missing blob stays reported.
    r = run("--fix", "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["remaining"] == 2
    orphans = {o["key"]: o for o in report["orphans"]}
    assert orphans[old_orphan]["removed"] is True
    assert (
        orphans[fresh_orphan]["removed"] is False and "an upload may still commit it" in orphans[fresh_orphan]["kept"]
    )
    assert [m["key"] for m in report["missing"]] == [_key(lost)]
    assert report["missing"][0]["artifact"] == {
        "release_id": lost["id"],
        "model": "bota-pin",
        "version": "v1.1.0",
        "kind": "bin",
    }
    assert not store.exists(old_orphan) and store.exists(fresh_orphan)

    # The operator does what the report says: deletes the release whose file is gone; --grace-s 0 takes the
    # fresh orphan too. Then nothing remains.
    assert admin.delete(f"/api/v1/firmware/{lost['id']}").status_code == 204
    r = run("--fix", "--grace-s", "0")
    assert r.exit_code == 0, r.output
    assert "Deleted 1 orphan blob(s)." in words(r) and "Storage and database agree." in words(r)
    assert not store.exists(fresh_orphan) and store.exists(_key(kept))
    assert run().exit_code == 0


@pytest.mark.usefixtures("cli_env")
def test_a_size_mismatch_is_reported_and_never_fixed(admin: ApiClient, app: Any, tmp_path: Path) -> None:
    release = admin.release("v2.0.0", bin=firmware_bytes(4096, seed=3))
    _put(app.state.ctx.store, tmp_path, _key(release), b"truncated", age_s=3 * 3600)
    for args in ((), ("--fix", "--grace-s", "0")):
        r = run(*args)
        assert r.exit_code == 1, r.output
        assert "size differs" in words(r) and "9 B, row 4096 B" in words(r)
    report = json.loads(run("--json").stdout)
    assert [(s["expected"], s["actual"]) for s in report["size_mismatches"]] == [(4096, 9)]
    assert app.state.ctx.store.exists(_key(release))


@pytest.mark.usefixtures("cli_env")
def test_a_negative_grace_is_refused(admin: ApiClient) -> None:
    r = run("--fix", "--grace-s", "-1")
    assert r.exit_code == 2
    assert "--grace-s" in r.output
