"""``bota-ota transparency verify`` against a real server process: a log that checks out, growth since a
saved head, and what it must catch — a wrong log key, a saved head the log does not extend, history
rewritten in the database, an entry whose text no longer gives its hash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
from bota_ota.transparency import service
from bota_ota.transparency.logkey import load_or_create
from bota_ota.transparency.models import LogEntry
from tests.support.server import ServerProcess, cli, server_env
from tests.transparency.support import fake_release

pytestmark = pytest.mark.e2e


@pytest.fixture
def db(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path / "srv" / "data", env=server_env(database_url))
    proc.start()
    yield proc
    proc.stop()


def _publish(db: sessionmaker[Session], *numbers: int) -> None:
    with session_scope(db) as session:
        for n in numbers:
            service.record_release(session, fake_release(n))


def _verify(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    r = cli(server.env, "transparency", "verify", "--server", server.url, *args, check=False)
    return r.returncode, " ".join(r.stdout.split()), " ".join(r.stderr.split())


def test_verify_checks_the_log_and_its_growth(server: ServerProcess, db: sessionmaker[Session], tmp_path: Path) -> None:
    _publish(db, 1, 2, 3)
    state = tmp_path / "head.json"
    code, out, err = _verify(server, "--state", str(state))
    assert code == 0, out + err
    assert "size 3" in out and "3 release" in out and "matches" in out and "valid" in out
    assert "trusts the server" in err  # no pinned key: the warning says so
    saved = json.loads(state.read_text())
    assert saved["tree_size"] == 3 and saved["server"] == server.url

    # An owner checks the version their device runs: it is among the verified entries, with its hashes.
    code, out, err = _verify(server, "--version", "1.0.2", "--model", "bota-pin")
    assert code == 0, out + err
    assert "entry 1 bota-pin v1.0.2 published" in out and f".bin sha256 {2:064x}" in out
    code, out, err = _verify(server, "--version", "v9.9.9")
    assert code == 1 and "v9.9.9 is not in the log" in err

    pem = tmp_path / "log-key.pem"
    pem.write_bytes(httpx.get(server.url + "/.well-known/bota-ota-log-key.pem").content)
    _publish(db, 4)
    with session_scope(db) as session:
        service.record_withdrawal(session, fake_release(2), "recalled")
    code, out, err = _verify(server, "--state", str(state), "--log-key", str(pem))
    assert code == 0, out + err
    assert "trusts the server" not in err
    assert "4 release" in out and "1 withdrawal" in out
    assert "from 3 to 5: proof valid, old root recomputed" in out
    assert json.loads(state.read_text())["tree_size"] == 5

    # A log key that is not the one that signs this log.
    other = tmp_path / "other.pem"
    other.write_text(load_or_create(tmp_path / "other-private.pem").public_pem)
    code, out, err = _verify(server, "--log-key", str(other))
    assert code == 1 and "INVALID" in out and "signature is not valid" in err

    # A saved head this log does not extend (here: a root it never had).
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**json.loads(state.read_text()), "tree_size": 4, "root_hash": "00" * 32}))
    before = forged.read_text()
    code, out, err = _verify(server, "--state", str(forged), "--log-key", str(pem))
    assert code == 1 and "from 4 to 5: INCONSISTENT" in out and "consistency proof from 4 to 5" in err
    assert forged.read_text() == before  # a failed check saves nothing

    # A saved head larger than the log: the log shrank.
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({**json.loads(state.read_text()), "tree_size": 9}))
    code, out, err = _verify(server, "--state", str(bigger), "--log-key", str(pem))
    assert code == 1 and "the log shrank" in err


def test_verify_catches_history_rewritten_in_the_database(
    server: ServerProcess, db: sessionmaker[Session], tmp_path: Path
) -> None:
    _publish(db, 1, 2, 3, 4)
    state = tmp_path / "head.json"
    assert _verify(server, "--state", str(state))[0] == 0
    server.stop()
    # Entry 1 is replaced by another, and the hash column with it: the log is self-consistent again, but it
    # is not the log the saved head describes.
    forged = '{"kind":"release","release_id":"x","version":"v6.6.6"}'
    with session_scope(db) as session:
        session.execute(
            update(LogEntry).where(LogEntry.idx == 1).values(leaf=forged, leaf_hash=service.leaf_hash_hex(forged))
        )
    _publish(db, 5)
    server.start()
    code, out, err = _verify(server, "--state", str(state))
    assert code == 1, out + err
    assert "matches" in out  # the served log is consistent with itself...
    assert "from 4 to 5: INCONSISTENT" in out  # ...but not with what was seen before
    assert "do not give the saved root" in err
    assert json.loads(state.read_text())["tree_size"] == 4

    # An entry's text changed under its hash: the root recomputed from the entries no longer matches.
    with session_scope(db) as session:
        session.execute(update(LogEntry).where(LogEntry.idx == 0).values(leaf='{"kind":"release"}'))
    code, out, err = _verify(server)
    assert code == 1 and "DOES NOT MATCH" in out and "entry 0: leaf_hash" in err


def test_verify_cannot_reach_the_server(tmp_path: Path) -> None:
    r = cli(server_env(None), "transparency", "verify", "--server", "http://127.0.0.1:9", check=False)
    assert r.returncode == 2 and "cannot reach the server" in " ".join(r.stderr.split())
