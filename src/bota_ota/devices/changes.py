"""The device change feed: which devices changed, so that every instance can drop what it cached of them.

Each instance keeps a cache of what a routine heartbeat needs to know about a device (``ota/device_cache.py``).
An entry may only be used while nothing it was read from has changed — in any process: another instance,
another ``--workers`` worker, a CLI command. So every transaction that changes a device or one of its
assignments also writes one ``device_changes`` row per device, and every instance reads the new rows
every ``BOTA_OTA_CHANGE_POLL_INTERVAL_S`` (0.5 s) and drops those devices from its cache.

Writing the rows is automatic: a session hook collects the ids of every ``Device`` and ``Assignment``
that a flush inserts, updates or deletes, and inserts the rows just before the transaction commits (so
they commit or roll back with the change). Nothing in the services has to remember to do it. Bulk Core
statements bypass the flush: code that changes devices or assignments that way calls
``note_changed_devices``. A change made outside the application (SQL typed into psql) reaches the caches
when the entry expires (``ota/device_cache.py``: ``MAX_AGE_S``) — or insert ``device_changes`` rows.

Reading "the new rows" must never skip a row that commits late:

* SQLite has one writer at a time and the rows are written at the end of each write transaction, so
  they commit in ``seq`` order: ``seq > last seen`` is exact.
* PostgreSQL hands out sequence numbers at insert time, and transactions commit in any order, so a row
  with a smaller ``seq`` can become visible after a larger one was read. Each row therefore also
  records its transaction id (``pg_current_xact_id()``), and the reader keeps the oldest transaction id
  that was still running at its last read (``pg_snapshot_xmin``): every transaction older than that had
  finished, so its rows were visible then; rows of younger ones are read again (and de-duplicated by
  ``seq``) until they are older than that bound. Exact too, and without clocks.

Rows are deleted after ``RETENTION`` by the sweeps; an instance that could not read the feed for longer
than that drops its whole cache (``ota/device_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, delete, event, func, insert, literal_column, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from bota_ota.db import Base, UTCDateTime, utcnow

# A device's entry leaves every cache within one poll of its change; rows older than this are of no use.
RETENTION = timedelta(minutes=10)

_PENDING_KEY = "bota_ota.changed_devices"
_ON_COMMIT_KEY = "bota_ota.on_devices_changed"


class DeviceChange(Base):
    """One device changed in one committed transaction (see the module docstring)."""

    __tablename__ = "device_changes"
    __table_args__ = (
        Index("ix_device_changes_xid", "xid", postgresql_where=text("xid IS NOT NULL")),
        # Never reuse a number, even after the sweeps deleted every row: readers remember the last one.
        {"sqlite_autoincrement": True},
    )

    # SQLite: INTEGER PRIMARY KEY AUTOINCREMENT, never reused; PostgreSQL: a bigint identity.
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    # The writing transaction's id on PostgreSQL (pg_current_xact_id()); NULL on SQLite.
    xid: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


def _changed_device_ids(objects: Iterable[object]) -> set[str]:
    # Imported here: the models import db, and this module is imported by db users early.
    from bota_ota.devices.models import Device
    from bota_ota.ota.models import Assignment

    ids: set[str] = set()
    for obj in objects:
        if isinstance(obj, Device):
            ids.add(obj.id)
        elif isinstance(obj, Assignment) and obj.device_id:
            ids.add(obj.device_id)
    return ids


def note_changed_devices(session: Session, device_ids: Iterable[str]) -> None:
    """For bulk Core statements (``session.execute(insert(Assignment), rows)``), which no flush sees:
    these devices changed in this transaction; their feed rows are written with it."""
    session.info.setdefault(_PENDING_KEY, set()).update(device_ids)


def _after_flush(session: Session, _flush_context: Any) -> None:
    # After a flush, new/dirty/deleted still show what the flush wrote.
    ids = _changed_device_ids(chain(session.new, session.dirty, session.deleted))
    if ids:
        session.info.setdefault(_PENDING_KEY, set()).update(ids)


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT released: the rows go with the real COMMIT
    session.flush()  # the last flush happens after this hook otherwise; its changes count too
    ids: set[str] | None = session.info.get(_PENDING_KEY)
    if not ids:
        return
    # Written last, just before COMMIT: on SQLite that keeps seq in commit order (one writer at a time).
    bind = session.connection()
    statement = insert(DeviceChange)
    if bind.dialect.name == "postgresql":
        statement = statement.values(xid=literal_column("pg_current_xact_id()::text::bigint"))
    now = utcnow()
    session.execute(statement, [{"device_id": device_id, "at": now} for device_id in sorted(ids)])
    session.info["bota_ota.committing_devices"] = session.info.pop(_PENDING_KEY)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    ids: set[str] | None = session.info.pop("bota_ota.committing_devices", None)
    callback: Callable[[set[str]], None] | None = session.info.get(_ON_COMMIT_KEY)
    if ids and callback is not None:
        callback(ids)


def _after_soft_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():  # the whole transaction, not one SAVEPOINT of it
        _after_rollback(session)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
    session.info.pop("bota_ota.committing_devices", None)


def record_changes_on(target: Any) -> None:
    """Install the hooks on a ``Session`` class or ``sessionmaker`` (done once for ``Session``, below)."""
    event.listen(target, "after_flush", _after_flush)
    event.listen(target, "before_commit", _before_commit)
    event.listen(target, "after_commit", _after_commit)
    event.listen(target, "after_soft_rollback", _after_soft_rollback)


# Every ORM session of every process (server, workers, CLI) records its device changes.
record_changes_on(Session)


def on_commit_info(callback: Callable[[set[str]], None]) -> dict[str, Any]:
    """``sessionmaker(info=...)`` that makes its sessions call ``callback(device_ids)`` after each commit
    that changed devices: the instance drops them from its own cache at once, without waiting for a poll."""
    return {_ON_COMMIT_KEY: callback}


# ---- reading the feed ------------------------------------------------------------------------------


@dataclass
class FeedPosition:
    """Where one instance is in the feed. ``seq``: the last row read (SQLite). ``xmin``: every transaction
    older than this had finished at the last read (PostgreSQL); ``seen``: rows read at or above it."""

    seq: int = 0
    xmin: int | None = None
    seen: set[int] = field(default_factory=set)
    started: bool = False


def _start(conn: Connection, position: FeedPosition) -> None:
    """The first read starts at the end of the feed: the cache is empty, nothing in it can be stale."""
    if conn.dialect.name == "postgresql":
        position.xmin = int(conn.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))
        position.seen = set(conn.scalars(select(DeviceChange.seq).where(DeviceChange.xid >= position.xmin)).all())
    else:
        position.seq = int(conn.scalar(select(func.coalesce(func.max(DeviceChange.seq), 0))) or 0)
    position.started = True


def read_changes(engine: Engine, position: FeedPosition) -> set[str]:
    """The ids of devices changed since ``position`` (which moves on). Empty on the first call."""
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        if not position.started:
            _start(conn, position)
            return set()
        if conn.dialect.name != "postgresql":
            rows = conn.execute(
                select(DeviceChange.seq, DeviceChange.device_id)
                .where(DeviceChange.seq > position.seq)
                .order_by(DeviceChange.seq)
            ).all()
            if rows:
                position.seq = rows[-1][0]
            return {device_id for _seq, device_id in rows}
        # The bound first, then the rows: everything older than the bound is visible to the second read.
        xmin = int(conn.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))
        pg_rows = conn.execute(
            select(DeviceChange.seq, DeviceChange.device_id, DeviceChange.xid).where(DeviceChange.xid >= position.xmin)
        ).all()
        changed = {device_id for seq, device_id, _xid in pg_rows if seq not in position.seen}
        position.seen = {seq for seq, _device_id, xid in pg_rows if xid is not None and xid >= xmin}
        position.xmin = xmin
        return changed


def prune_changes(session: Session, *, now: datetime | None = None) -> int:
    """Delete feed rows older than ``RETENTION``; returns how many."""
    cutoff = (now or utcnow()) - RETENTION
    result = session.execute(delete(DeviceChange).where(DeviceChange.at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
