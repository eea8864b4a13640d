"""The ``bota-ota`` command as an operator uses it (subprocesses, real database files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bota_ota.cli.main import app as cli_app
from tests.support.database import PG_URL
from tests.support.server import cli, server_env


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group``, as the words an operator types."""
    found = [path]
    for name, sub in sorted((getattr(group, "commands", None) or {}).items()):
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(cli_app))


@pytest.mark.slow  # a real `bota-ota` process: seconds each to start
def test_the_installed_command_runs() -> None:
    r = cli(server_env(None), "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and "serve" in r.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bota-ota")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    # In-process (the installed entry point is run above): a subprocess per command costs seconds each.
    r = CliRunner().invoke(cli_app, [*command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output
    words = " ".join(r.output.split())
    leaf: Any = typer.main.get_command(cli_app)
    for word in command:
        leaf = leaf.commands[word]
    assert leaf.help or leaf.short_help, f"{' '.join(command)} has no help text"
    assert (leaf.short_help or leaf.help or "").split()[0] in words


def _env(database_url: str) -> dict[str, str]:
    return server_env(database_url if PG_URL else None)


@pytest.mark.slow  # a real `bota-ota` process: seconds each to start
def test_db_upgrade_then_user_and_token_create(tmp_path: Path, database_url: str) -> None:
    env = _env(database_url)
    data = str(tmp_path / "d")
    up = cli(env, "db", "upgrade", "--data-dir", data)
    assert up.returncode == 0, up.stderr
    assert "latest schema" in up.stdout
    assert cli(env, "db", "upgrade", "--data-dir", data).returncode == 0  # idempotent

    user = cli(
        env,
        "user",
        "create",
        "--email",
        "Ops@Example.com",
        "--role",
        "operator",
        "--password",
        "long-enough-pw",
        "--data-dir",
        data,
    )
    assert user.returncode == 0, user.stderr
    assert "ops@example.com" in user.stdout
    dup = cli(
        env,
        "user",
        "create",
        "--email",
        "ops@example.com",
        "--password",
        "long-enough-pw",
        "--data-dir",
        data,
        check=False,
    )
    assert dup.returncode == 2
    assert "already exists" in dup.stderr
    short = cli(
        env, "user", "create", "--email", "x@example.com", "--password", "short", "--data-dir", data, check=False
    )
    assert short.returncode == 2
    assert "at least 8" in short.stderr

    token = cli(env, "token", "create", "--name", "ci", "--role", "viewer", "--data-dir", data)
    last = token.stdout.strip().splitlines()[-1]
    assert last.startswith("bota_at_") and " " not in last
    bad_role = cli(env, "token", "create", "--name", "ci", "--role", "root", "--data-dir", data, check=False)
    assert bad_role.returncode == 2
    assert "role must be one of" in bad_role.stderr
    if not PG_URL:
        rows = sqlite3.connect(tmp_path / "d" / "bota-ota.db").execute("SELECT token_hash FROM api_tokens").fetchall()
        assert rows and all(last not in row[0] for row in rows)  # only the hash is stored


@pytest.mark.slow  # a real `bota-ota` process: seconds each to start
def test_invalid_settings_name_the_variable(tmp_path: Path) -> None:
    env = server_env(None, BOTA_OTA_HEARTBEAT_INTERVAL_S="never")
    r = cli(env, "db", "upgrade", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2
    assert "heartbeat_interval_s" in r.stderr
