"""Engine, sessions and the declarative base.

Services only ``flush()``; the request (or CLI command) that opened the session commits on success
and rolls back on error (see ``session_scope``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, MetaData, TypeDecorator, cast, create_engine, event, func, literal
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _py_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


BUCKETS = 10_000


def stable_bucket(key: str, item: str) -> int:
    """A stable, evenly spread number in [0, 10000) for (key, item): the first 32 bits of
    MD5("key:item"). The same in Python, in SQLite (``bota_bucket``, registered below) and in PostgreSQL
    (``bucket_sql``), so that a set-based statement and a preview computed here agree."""
    return int(hashlib.md5(f"{key}:{item}".encode(), usedforsecurity=False).hexdigest()[:8], 16) % BUCKETS


def bucket_sql(dialect_name: str, key: Any, item: Any) -> Any:
    """SQL for ``stable_bucket(key, item)``; ``key`` and ``item`` are SQL expressions."""
    if dialect_name == "postgresql":
        first_32_bits = func.substr(func.md5(key.concat(":").concat(item)), 1, 8)
        return cast(cast(literal("x").concat(first_32_bits), BIT(32)), BigInteger) % BUCKETS
    return func.bota_bucket(key, item)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) issue BEGIN itself instead of pysqlite's implicit one.
    dbapi_connection.isolation_level = None
    # SQLite's built-in lower() folds ASCII only; searches must match "Ärzte" with "ärzte" as on PostgreSQL.
    dbapi_connection.create_function("lower", 1, _py_lower, deterministic=True)
    dbapi_connection.create_function("bota_bucket", 2, stable_bucket, deterministic=True)
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    # connection wrote in between (WAL snapshot rule), whatever the busy timeout. So transactions take
    # the write lock up front; read-only requests opt out with execution_options(sqlite_begin="DEFERRED").
    # Write requests of one process queue before they get here (deps.SqliteWriteGateMiddleware).
    mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    if mode == "NONE":
        return  # a single read statement, atomic on its own: SQLite's autocommit mode, no BEGIN round trip
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, max_connections: int = 30, **kwargs: Any) -> Engine:
    """An engine for ``url``. On PostgreSQL the pool keeps up to 10 connections and opens at most
    ``max_connections`` (BOTA_OTA_DB_MAX_CONNECTIONS): with several instances and workers, their sum must
    stay below the server's ``max_connections``."""
    if url.startswith("sqlite"):
        if "poolclass" not in kwargs:
            # As many connections as request threads (anyio's default pool is 40): SQLite serialises the
            # writes anyway, but readers should not wait for a pooled connection.
            kwargs.setdefault("pool_size", 20)
            kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", min(10, max_connections))
        kwargs.setdefault("max_overflow", max_connections - kwargs["pool_size"])
    # No pre-ping: it is a round trip on every checkout, and the heartbeat's cache-miss read is one
    # statement. A connection that died (PostgreSQL restarted) fails its statement instead; SQLAlchemy then
    # discards the whole pool and that request gets a 503 with Retry-After (web/problems.py). Connections are
    # replaced after 30 minutes anyway.
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine, *, info: dict[str, Any] | None = None) -> sessionmaker[Session]:
    """``info`` goes to every session (``devices/changes.py`` keeps its after-commit callback there)."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False, info=info)


CHANGED_DEVICES_KEY = "bota_ota.changed_devices"


def note_changed_devices(session: Session, device_ids: Iterable[str]) -> None:
    """For bulk Core statements (``insert(...).from_select``, ``update(...)``), which no ORM flush sees:
    these devices changed in this transaction. After COMMIT this instance drops them from its heartbeat
    cache (``heartbeat/invalidation.py``, which reads ``session.info[CHANGED_DEVICES_KEY]``).

    Needed on SQLite: there this process's own changes count as accounted for, so a change it does not
    name would stay in its cache. (PostgreSQL's NOTIFY reaches every process anyway.) Use ``RETURNING``
    to learn the devices a set-based statement touched."""
    session.info.setdefault(CHANGED_DEVICES_KEY, set()).update(device_ids)


def insert_or_raise(session: Session, obj: Base, conflict: Callable[[], Exception]) -> None:
    """Insert ``obj`` in a savepoint; if a unique constraint refuses it, raise ``conflict()``.

    The add sits inside the savepoint, so a refused insert rolls back only the savepoint and the caller's
    transaction stays usable (on PostgreSQL, adding outside it would poison the whole transaction).
    """
    try:
        with session.begin_nested():
            session.add(obj)
            session.flush()
    except IntegrityError:
        raise conflict() from None


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
