"""Appending to the log and reading it back: entries, the release and withdrawal entries, the per-process
cache of leaf hashes (another instance's appends, a rolled-back append, a restored database), a restart,
concurrent appends."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.app import create_app
from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
from bota_ota.core.settings import Settings
from bota_ota.firmware.models import Release
from bota_ota.transparency import merkle, service
from bota_ota.transparency.models import LogEntry
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, firmware_bytes
from tests.transparency.support import fake_release, head_is_signed, leaf_json, log_release, public_key_of

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _append(sessions: sessionmaker[Session], n: int, start: int = 0) -> None:
    with session_scope(sessions) as session:
        for i in range(start, start + n):
            service.record_release(session, fake_release(i))


def _indexes(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(LogEntry.idx).order_by(LogEntry.idx)))


def test_entries_are_numbered_from_0_and_their_leaf_is_canonical_json(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        first = service.append(session, "release", {"model": "bota-pin", "note": "Größe ✓", "b": 1}, "r1")
        second = service.append(session, "withdrawal", {"kind": "withdrawal", "reason": "x"}, "r1")
        assert (first.idx, second.idx) == (0, 1)
        assert first.leaf == '{"b":1,"kind":"release","model":"bota-pin","note":"Größe ✓"}'
        assert first.leaf_hash == hashlib.sha256(b"\x00" + first.leaf.encode("utf-8")).hexdigest()
        with pytest.raises(ValueError):
            service.append(session, "release", {"kind": "withdrawal"}, None)
        with pytest.raises(ValueError):
            service.append(session, "other", {}, None)  # type: ignore[arg-type]
    with sessions() as session:
        view = service.tree(session)
        assert view.size == 2
        assert view.root() == merkle.root([bytes.fromhex(first.leaf_hash), bytes.fromhex(second.leaf_hash)])


def test_a_release_entry_and_its_withdrawal(admin: ApiClient, sessions: sessionmaker[Session]) -> None:
    bin_data, ufw_data = firmware_bytes(1000, seed=1), firmware_bytes(3000, seed=2)
    release = admin.release("v1.2.0", bin=bin_data, ufw=ufw_data)
    with session_scope(sessions) as session:
        row = session.get(Release, release["id"])
        assert row is not None
        row.security_version = 7
        ufw = row.artifact("ufw")
        assert ufw is not None
        ufw.signature, ufw.key_id = "c2lnbmF0dXJl", "0123456789abcdef"
        entry = service.record_release(session, row, now=datetime(2026, 12, 3, 14, 0, 5, 123, tzinfo=UTC))
    data = leaf_json(entry.leaf)
    assert data == {
        "kind": "release",
        "model": "bota-pin",
        "version": "v1.2.0",
        "security_version": 7,
        "release_id": release["id"],
        "time": "2026-12-03T14:00:05Z",
        "bin": {"size": 1000, "sha256": hashlib.sha256(bin_data).hexdigest(), "signature": None, "key_id": None},
        "ufw": {
            "size": 3000,
            "sha256": hashlib.sha256(ufw_data).hexdigest(),
            "signature": "c2lnbmF0dXJl",
            "key_id": "0123456789abcdef",
        },
    }
    assert (entry.kind, entry.release_id) == ("release", release["id"])
    # Logging it again changes nothing (whoever calls it, however often) ...
    assert log_release(sessions, release["id"]) == entry.idx
    # ... until what the entry says changes.
    with session_scope(sessions) as session:
        row = session.get(Release, release["id"])
        assert row is not None
        row.security_version = 8
        changed = service.record_release(session, row)
        assert changed.idx == entry.idx + 1 and leaf_json(changed.leaf)["security_version"] == 8
        assert TIME.match(leaf_json(changed.leaf)["time"])
        withdrawal = service.record_withdrawal(session, row, "released turned off by ops@example.com")
        assert withdrawal is not None and withdrawal.idx == changed.idx + 1
        assert leaf_json(withdrawal.leaf) == {
            "kind": "withdrawal",
            "model": "bota-pin",
            "version": "v1.2.0",
            "release_id": release["id"],
            "time": leaf_json(withdrawal.leaf)["time"],
            "reason": "released turned off by ops@example.com",
        }
        assert service.record_withdrawal(session, row, "again") is None  # withdrawn already
        assert service.latest_entry(session, release["id"], "release") is changed
        # Published again: a new release entry, and proofs name it.
        again = service.record_release(session, row)
        assert again.idx == withdrawal.idx + 1
    draft = admin.release("v1.3.0", extra={"draft": "true"})
    with session_scope(sessions) as session:
        row = session.get(Release, draft["id"])
        assert row is not None
        assert service.record_withdrawal(session, row, "deleted") is None  # never published: nothing to withdraw


def test_the_log_read_by_one_instance_grows_with_another_instances_appends(database_url: str) -> None:
    one, two = make_engine(database_url), make_engine(database_url)
    try:
        a, b = make_sessionmaker(one), make_sessionmaker(two)
        _append(b, 3)
        with a() as session:
            assert service.tree(session).size == 3  # read whole, now cached for engine one
        _append(b, 2, start=3)
        with a() as session:
            grown = service.tree(session)
        with b() as session:
            assert grown.hashes == service._read_all(session)
        assert grown.size == 5

        # The database is replaced (a restored backup, say) by a different log of the same length: the
        # cached tail no longer matches, so instance one reads the whole log again.
        with session_scope(b) as session:
            session.execute(text("DELETE FROM transparency_log"))
        _append(b, 5, start=100)
        with a() as session:
            replaced = service.tree(session)
        with b() as session:
            assert replaced.hashes == service._read_all(session)
        assert replaced.hashes != grown.hashes
    finally:
        one.dispose()
        two.dispose()


def test_a_rolled_back_append_is_forgotten(sessions: sessionmaker[Session]) -> None:
    _append(sessions, 2)
    with sessions() as session:
        before = service.tree(session)
    with sessions() as session:
        service.record_release(session, fake_release(50))
        assert service.tree(session).size == 3  # the session sees its own entry
        session.rollback()
    with sessions() as session:
        assert service.tree(session).hashes == before.hashes
    _append(sessions, 1, start=60)  # another entry takes index 2
    with sessions() as session:
        after = service.tree(session)
        assert after.size == 3 and after.hashes[:2] == before.hashes
        assert after.hashes[2] == bytes.fromhex(leaf_hash_of(session, 2))


def leaf_hash_of(session: Session, idx: int) -> str:
    row = session.get(LogEntry, idx)
    assert row is not None
    return row.leaf_hash


def test_a_restart_keeps_the_log_and_the_key(settings: Settings, sessions: sessionmaker[Session]) -> None:
    _append(sessions, 5)
    with TestClient(create_app(settings)) as first:
        head = first.get("/api/transparency/v1/tree-head").json()
        key = public_key_of(first)
    assert settings.resolved_log_key_file.stat().st_mode & 0o777 == 0o600
    with TestClient(create_app(settings)) as second:  # a new process on the same database and data dir
        again = second.get("/api/transparency/v1/tree-head").json()
        assert public_key_of(second).public_bytes_raw() == key.public_bytes_raw()
    assert (again["tree_size"], again["root_hash"], again["key_id"]) == (5, head["root_hash"], head["key_id"])
    assert head_is_signed(again, key)


def test_a_changed_entry_changes_the_root_and_breaks_consistency(settings: Settings, client: TestClient) -> None:
    sessions = client.app.state.ctx.sessions  # type: ignore[attr-defined]
    _append(sessions, 6)
    old = client.get("/api/transparency/v1/tree-head").json()
    with session_scope(sessions) as session:  # someone rewrites history in the database
        forged = '{"kind":"release","version":"v6.6.6"}'
        session.execute(
            update(LogEntry).where(LogEntry.idx == 2).values(leaf=forged, leaf_hash=service.leaf_hash_hex(forged))
        )
    _append(sessions, 1, start=6)
    with TestClient(create_app(settings)) as restarted:  # a process that reads the rewritten log
        new = restarted.get("/api/transparency/v1/tree-head").json()
        proof = restarted.get("/api/transparency/v1/proof/consistency", params={"first": 6}).json()
    assert new["tree_size"] == 7
    assert not merkle.verify_consistency(
        6,
        7,
        bytes.fromhex(old["root_hash"]),
        bytes.fromhex(new["root_hash"]),
        [bytes.fromhex(h) for h in proof["consistency_proof"]],
    )


def _append_concurrently(
    sessions: sessionmaker[Session], workers: int, each: int, base: int = 0
) -> list[BaseException]:
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            barrier.wait()
            for i in range(each):
                with session_scope(sessions) as session:
                    service.record_release(session, fake_release(base + 1000 * w + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_concurrent_appends_leave_no_gap(sessions: sessionmaker[Session]) -> None:
    assert _append_concurrently(sessions, workers=4, each=10) == []
    assert _indexes(sessions) == list(range(40))


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL: appends of several instances at once")
def test_concurrent_appends_of_two_instances_on_postgresql_wait_for_each_other(database_url: str) -> None:
    one, two = make_engine(database_url), make_engine(database_url)
    try:
        a, b = make_sessionmaker(one), make_sessionmaker(two)
        # Instance one holds the append lock in an open transaction; instance two must wait for its commit,
        # then take the next index (without the lock both would read max(idx) = none and take 0).
        first = a()
        service.record_release(first, fake_release(1))
        done = threading.Event()
        result: dict[str, Any] = {}

        def second() -> None:
            with session_scope(b) as session:
                result["idx"] = service.record_release(session, fake_release(2)).idx
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(1.0), "the second append did not wait for the first transaction"
        first.commit()
        first.close()
        thread.join(timeout=30)
        assert result["idx"] == 1
        # And many at once, across the two engines.
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=lambda s=s, n=n: errors.extend(_append_concurrently(s, 3, 8, base=10_000 * (n + 1)))
            )
            for n, s in enumerate((a, b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert _indexes(a) == list(range(2 + 48))
        with a() as session:
            leaves = session.scalars(select(LogEntry.leaf)).all()
        assert len(set(leaves)) == len(leaves)
    finally:
        one.dispose()
        two.dispose()
