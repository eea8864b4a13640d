"""Appending to the release transparency log and reading it: tree heads, entries, proofs.

**Appending.** ``append`` writes one row with the next index in the caller's transaction. Indexes must run
0, 1, 2, ... with no gap and no repeat even when several server instances append at once: on PostgreSQL
the transaction first takes a transaction-scoped advisory lock (``pg_advisory_xact_lock`` with a constant
key), so appenders queue there until the previous one commits or rolls back, and ``max(idx)`` read after
the lock sees every committed entry. Entries therefore also become visible in index order: a reader never
sees entry n+1 without entry n. SQLite has one writer at a time (the app's transactions take the write lock
at BEGIN). The primary key on ``idx`` is the last guard.

**Reading.** Each process keeps the leaf hashes it has read, per database engine: the log only grows, so a
read asks only for the rows from the last cached index on (``idx >= size - 1``: the last known row is read
again and must still have the cached hash) and appends the new tail, which another instance may have
written. A tail that does not match (a database restored from a backup, a test that emptied the tables)
drops the cache and reads the whole log again. A session that appended itself does not feed the cache (its
rows are not committed yet).

**Releases.** ``record_release`` and ``record_withdrawal`` build the entries for a firmware release; the
firmware service calls them when a release is published or withdrawn (``transparency`` sits below
``firmware``, so a release is accepted structurally: ``ReleaseLike``).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from bota_ota.core.database import utcnow
from bota_ota.transparency import merkle
from bota_ota.transparency.logkey import LogKey
from bota_ota.transparency.models import LogEntry
from bota_ota.transparency.schemas import ReleaseInLog, SignedTreeHead

Kind = Literal["release", "withdrawal"]
KINDS: tuple[Kind, ...] = ("release", "withdrawal")
# pg_advisory_xact_lock key of the log's append lock: "botalog" in ASCII.
APPEND_LOCK_KEY = 0x62_6F_74_61_6C_6F_67
MAX_PAGE = 1000
_APPENDED = "bota_ota.transparency.appended"


class ArtifactLike(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def signature(self) -> str | None: ...
    @property
    def key_id(self) -> str | None: ...


class ReleaseLike(Protocol):
    """What the log needs of a firmware release (``firmware.models.Release`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def security_version(self) -> int: ...
    def artifact(self, kind: str) -> ArtifactLike | None: ...


# ---- the leaf ----------------------------------------------------------------------------------------


def canonical_json(entry: dict[str, Any]) -> str:
    """The leaf text: JSON with sorted keys, no whitespace, non-ASCII as is (hashed as UTF-8)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 UTC to the second with a ``Z``, as every time in the log is written."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaf_hash_hex(leaf: str) -> str:
    return merkle.leaf_hash(leaf.encode("utf-8")).hex()


# ---- appending ---------------------------------------------------------------------------------------


def _lock_for_append(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})


def append(session: Session, kind: Kind, entry: dict[str, Any], release_id: str | None) -> LogEntry:
    """Append one entry (its ``kind`` is set from ``kind``) as the next leaf, in the caller's transaction."""
    if kind not in KINDS:
        raise ValueError(f"unknown log entry kind {kind!r}")
    if entry.get("kind", kind) != kind:
        raise ValueError(f"the entry says kind {entry['kind']!r}, appended as {kind!r}")
    leaf = canonical_json({**entry, "kind": kind})
    _lock_for_append(session)
    last = session.scalar(select(func.max(LogEntry.idx)))
    row = LogEntry(
        idx=0 if last is None else int(last) + 1,
        kind=kind,
        release_id=release_id,
        leaf=leaf,
        leaf_hash=leaf_hash_hex(leaf),
    )
    session.add(row)
    session.flush()
    session.info[_APPENDED] = session.get_transaction()
    return row


def _artifact_entry(artifact: ArtifactLike | None) -> dict[str, Any] | None:
    if artifact is None:
        return None
    return {
        "size": artifact.size,
        "sha256": artifact.sha256,
        "signature": artifact.signature,
        "key_id": artifact.key_id,
    }


def release_entry(release: ReleaseLike, *, now: datetime | None = None) -> dict[str, Any]:
    return {
        "kind": "release",
        "model": release.model,
        "version": release.version,
        "security_version": release.security_version,
        "release_id": release.id,
        "time": iso_utc(now or utcnow()),
        "bin": _artifact_entry(release.artifact("bin")),
        "ufw": _artifact_entry(release.artifact("ufw")),
    }


def latest_entry(session: Session, release_id: str, kind: Kind | None = None) -> LogEntry | None:
    query = select(LogEntry).where(LogEntry.release_id == release_id)
    if kind is not None:
        query = query.where(LogEntry.kind == kind)
    return session.scalar(query.order_by(LogEntry.idx.desc()).limit(1))


def _without_time(leaf: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(leaf)
    data.pop("time", None)
    return data


def record_release(session: Session, release: ReleaseLike, *, now: datetime | None = None) -> LogEntry:
    """Log that ``release`` is published (created as released, or released again after a withdrawal).

    Idempotent: when the release's latest entry already says exactly this (all but the time), that entry is
    returned and nothing is appended, so a caller need not know whether it logged the release before. A
    release whose files, signatures or security version differ from its last entry gets a new entry."""
    entry = release_entry(release, now=now)
    _lock_for_append(session)  # before reading the latest entry: two instances must not both decide to append
    latest = latest_entry(session, release.id)
    if (
        latest is not None
        and latest.kind == "release"
        and _without_time(latest.leaf) == _without_time(canonical_json(entry))
    ):
        return latest
    return append(session, "release", entry, release.id)


def record_withdrawal(
    session: Session, release: ReleaseLike, reason: str, *, now: datetime | None = None
) -> LogEntry | None:
    """Log that a published release was withdrawn (``released`` turned off, or deleted). Nothing is appended
    (None) when the release is not published in the log: never logged, or its latest entry is a withdrawal."""
    _lock_for_append(session)
    latest = latest_entry(session, release.id)
    if latest is None or latest.kind != "release":
        return None
    entry = {
        "kind": "withdrawal",
        "model": release.model,
        "version": release.version,
        "release_id": release.id,
        "time": iso_utc(now or utcnow()),
        "reason": reason,
    }
    return append(session, "withdrawal", entry, release.id)


# ---- the leaf hashes, cached per process -------------------------------------------------------------


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    hashes: tuple[bytes, ...] = ()
    roots: dict[tuple[int, bytes], bytes] = field(default_factory=dict)


_caches: weakref.WeakKeyDictionary[Engine, _Cache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache_for(session: Session) -> _Cache:
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = _Cache()
        return cache


def _read_all(session: Session) -> tuple[bytes, ...]:
    rows = session.execute(select(LogEntry.idx, LogEntry.leaf_hash).order_by(LogEntry.idx)).all()
    for position, (idx, _) in enumerate(rows):
        if idx != position:
            raise RuntimeError(f"the transparency log has no entry {position} (next is {idx})")
    return tuple(bytes.fromhex(h) for _, h in rows)


def _leaf_hashes(session: Session) -> tuple[bytes, ...]:
    """Every leaf hash this session can see, in order."""
    cache = _cache_for(session)
    known = cache.hashes
    result: tuple[bytes, ...] | None = None
    if known:
        k = len(known) - 1
        rows = session.execute(
            select(LogEntry.idx, LogEntry.leaf_hash).where(LogEntry.idx >= k).order_by(LogEntry.idx)
        ).all()
        if rows and rows[0][0] == k and bytes.fromhex(rows[0][1]) == known[k]:
            tail = rows[1:]
            if all(idx == len(known) + i for i, (idx, _) in enumerate(tail)):
                result = known + tuple(bytes.fromhex(h) for _, h in tail)
        elif not rows:
            # This session sees fewer entries than the cache holds (a read that began before another
            # thread's) — or the log is gone. Its own view is a prefix of the cache, if it is one at all.
            size = int(session.scalar(select(func.count()).select_from(LogEntry)) or 0)
            if size == 0:
                result = ()
            else:
                last = session.scalar(select(LogEntry.leaf_hash).where(LogEntry.idx == size - 1))
                if last is not None and size <= len(known) and bytes.fromhex(last) == known[size - 1]:
                    return known[:size]
    reloaded = result is None
    if result is None:
        result = _read_all(session)
    appended = session.info.get(_APPENDED) is not None and session.info.get(_APPENDED) is session.get_transaction()
    if not appended:  # never cache what this transaction wrote: it may yet be rolled back
        with cache.lock:
            if reloaded:  # a different log than the cached one (restored, emptied): start again from it
                cache.hashes = result
                cache.roots.clear()
            elif len(result) > len(cache.hashes) and cache.hashes == result[: len(cache.hashes)]:
                cache.hashes = result
    return result


@dataclass(frozen=True)
class Tree:
    """The log as one session saw it: its leaf hashes, in order."""

    hashes: tuple[bytes, ...]
    _cache: _Cache | None = None

    @property
    def size(self) -> int:
        return len(self.hashes)

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if size == 0 or self._cache is None:
            return merkle.root(self.hashes, size)
        key = (size, self.hashes[size - 1])
        with self._cache.lock:
            memo = self._cache.roots.get(key)
        if memo is None:
            memo = merkle.root(self.hashes, size)
            with self._cache.lock:
                if len(self._cache.roots) > 64:
                    self._cache.roots.clear()
                self._cache.roots[key] = memo
        return memo

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(self.hashes, index, size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return merkle.consistency_proof(self.hashes, first, second)

    def signed_head(self, key: LogKey, *, now: datetime | None = None) -> SignedTreeHead:
        root_hex = self.root().hex()
        timestamp = iso_utc(now or utcnow())
        return SignedTreeHead(
            tree_size=self.size,
            root_hash=root_hex,
            timestamp=timestamp,
            key_id=key.key_id,
            signature=key.sign_tree_head(self.size, root_hex, timestamp),
        )


def tree(session: Session) -> Tree:
    return Tree(_leaf_hashes(session), _cache_for(session))


def tree_head(session: Session, key: LogKey) -> SignedTreeHead:
    return tree(session).signed_head(key)


def entry(session: Session, index: int) -> LogEntry | None:
    return session.get(LogEntry, index)


def entries(session: Session, start: int, end: int) -> Sequence[LogEntry]:
    """Entries ``start`` to ``end - 1`` (at most ``MAX_PAGE``), in order."""
    end = min(end, start + MAX_PAGE)
    query = select(LogEntry).where(LogEntry.idx >= start, LogEntry.idx < end).order_by(LogEntry.idx)
    return session.scalars(query).all()


def release_in_log(session: Session, release_id: str, key: LogKey) -> ReleaseInLog | None:
    """The release's latest ``release`` entry with its inclusion proof in the current signed tree head;
    None when the release was never published in the log."""
    row = latest_entry(session, release_id, "release")
    if row is None:
        return None
    view = tree(session)
    if row.idx >= view.size:  # cannot happen: the row was read first and the log only grows
        return None
    return ReleaseInLog(
        leaf_index=row.idx,
        leaf=row.leaf,
        inclusion_proof=[h.hex() for h in view.inclusion_proof(row.idx)],
        tree_head=view.signed_head(key),
    )
