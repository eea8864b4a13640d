"""Keeping every instance's device cache honest.

An entry in ``cache.py`` may be used only while nothing it was read from has changed, in any process.

* **This instance's own commits** drop the devices they changed at once, before the request that made
  the change answers: hooks on the app's own session factory collect the ids of every ``Device`` and
  ``Assignment`` a flush wrote, and drop them after COMMIT (``drop_own_commits``). Bulk Core statements,
  which no flush sees, name their devices with ``core.database.note_changed_devices``.
* **Everyone else's commits** (another instance, another ``--workers`` worker, a CLI command, SQL typed
  into psql or the sqlite3 shell) reach the cache through the database itself: triggers on ``devices``
  and ``assignments`` (migration 0006) report every committed change of what the cache holds, and nothing
  else (the write-behind flush stays silent).

  - PostgreSQL (``PgChangeListener``): the triggers ``NOTIFY`` the device's id; each process keeps one
    LISTEN connection and drops each device it hears of, within milliseconds of the COMMIT.
  - SQLite (``SqliteEpochWatcher``): SQLite has no NOTIFY, so the triggers count changed rows in
    ``cache_epoch.n``; a count this process cannot account for as its own empties its cache.

The cache is used only while one of these is listening (``DeviceCache.trust``); whenever it stops or starts
again the cache is emptied, so a change made while nobody listened cannot survive in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from bota_ota.core.database import CHANGED_DEVICES_KEY
from bota_ota.devices.models import Device
from bota_ota.heartbeat.cache import DeviceCache
from bota_ota.ota.models import Assignment
from bota_ota.web.context import AppContext

log = logging.getLogger(__name__)


# The channel the PostgreSQL triggers notify (migration 0006). The payload is a device id, or EVERY_DEVICE
# after a TRUNCATE (device ids never contain "*").
CHANNEL = "bota_ota_devices"
EVERY_DEVICE = "*"


def _changed_device_ids(objects: Iterable[object]) -> set[str]:
    ids: set[str] = set()
    for obj in objects:
        if isinstance(obj, Device):
            ids.add(obj.id)
        elif isinstance(obj, Assignment) and obj.device_id:
            ids.add(obj.device_id)
    return ids


def drop_own_commits(sessions: sessionmaker[Session], drop: Callable[[set[str]], None]) -> None:
    """Make every session of ``sessions`` call ``drop(device_ids)`` after each COMMIT that changed devices."""

    def after_flush(session: Session, _flush_context: Any) -> None:
        # After a flush, new/dirty/deleted still show what the flush wrote.
        ids = _changed_device_ids(chain(session.new, session.dirty, session.deleted))
        if ids:
            session.info.setdefault(CHANGED_DEVICES_KEY, set()).update(ids)

    def after_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a SAVEPOINT released: the real COMMIT comes later
        ids: set[str] | None = session.info.pop(CHANGED_DEVICES_KEY, None)
        if ids:
            drop(ids)

    def after_soft_rollback(session: Session, _previous: Any) -> None:
        if not session.in_transaction():  # the whole transaction, not one SAVEPOINT of it
            session.info.pop(CHANGED_DEVICES_KEY, None)

    event.listen(sessions, "after_flush", after_flush)
    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_soft_rollback", after_soft_rollback)


class ChangeListener:
    """Hears of other processes' commits and keeps the cache trusted only while it can."""

    def __init__(self, cache: DeviceCache) -> None:
        self.cache = cache

    async def start(self) -> None:
        """Nothing else can change the data (no database that others share): trust the cache."""
        self.cache.trust()

    async def stop(self) -> None:
        self.cache.distrust()


# ---- PostgreSQL: LISTEN ---------------------------------------------------------------------------------


def listen_conninfo(engine: Engine) -> str:
    """A libpq connection string for the engine's database, with the engine's own connection parameters.

    Built by the dialect from the URL (not by rewriting the URL's text, which keeps e.g. a space in a
    password unescaped and then fails to parse), plus what a connection that mostly waits needs."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    params.pop("context", None)  # psycopg's adapters for the engine's sync connections: not a libpq parameter
    params.setdefault("application_name", "bota-ota cache invalidation")  # shows in pg_stat_activity
    params.setdefault("connect_timeout", 10)
    # This connection mostly waits. A silently dead link (a lost NAT entry, a failed-over server) looks
    # like a quiet database until TCP keepalive notices, after two hours of silence by the kernel's
    # default; with these within about 25 s, and the cache is emptied and distrusted until LISTEN is back.
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    return make_conninfo("", **params)


class PgChangeListener(ChangeListener):
    """One dedicated LISTEN connection per process (psycopg's asyncio API, on the event loop): each
    notification drops its device. Whenever LISTEN is (re)established the cache starts empty and is trusted;
    when the connection is lost it is distrusted at once, and the listener reconnects with backoff."""

    RETRY_MIN_S = 0.5
    RETRY_MAX_S = 10.0
    FIRST_CONNECT_WAIT_S = 5.0

    def __init__(self, conninfo: str, cache: DeviceCache) -> None:
        super().__init__(cache)
        self.conninfo = conninfo
        self.backend_pid: int | None = None  # of the LISTEN connection while it is up
        self.connects = 0  # how often LISTEN became active
        self.failures = 0  # connection attempts that failed, and connections lost
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._run(first_attempt), name="bota-ota cache invalidation (LISTEN)")
        # A server starting on a healthy database answers from its cache at once; one whose database is not
        # there yet starts anyway (every heartbeat reads) and keeps trying in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_attempt.wait(), timeout=self.FIRST_CONNECT_WAIT_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.cache.distrust()

    async def _run(self, first_attempt: asyncio.Event) -> None:
        delay = self.RETRY_MIN_S
        outage_since: float | None = None
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                up_since = time.monotonic()
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # From here on every commit notifies this connection: only now may entries be trusted.
                    self.cache.trust()
                    self.backend_pid = conn.info.backend_pid
                    if outage_since is not None:
                        log.info(
                            "cache invalidation: listening again after %.1f s; the heartbeat cache is back on",
                            time.monotonic() - outage_since,
                        )
                        outage_since = None
                    self.connects += 1
                    first_attempt.set()
                    async for notify in conn.notifies():
                        if notify.payload == EVERY_DEVICE:
                            self.cache.clear()
                        else:
                            self.cache.drop({notify.payload})
                    raise psycopg.OperationalError("the LISTEN connection was closed")
                finally:
                    # At once, before anything else: from now on a change could be missed.
                    self.cache.distrust()
                    self.backend_pid = None
                    if time.monotonic() - up_since >= self.RETRY_MAX_S:
                        delay = self.RETRY_MIN_S  # it was up for a while: a new outage, not the same one flapping
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.cache.distrust()
                self.failures += 1
                if outage_since is None:  # once per outage: retries are not news
                    outage_since = time.monotonic()
                    log.warning(
                        "cache invalidation: LISTEN connection lost or refused (%s); the heartbeat cache is off "
                        "(every heartbeat reads the database) until it is back; retrying with backoff",
                        str(exc).strip() or type(exc).__name__,
                    )
            first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RETRY_MAX_S)


# ---- SQLite: the change counter -------------------------------------------------------------------------

_OWN_TX_KEY = "bota_ota.epoch_own_transaction"
_WRITE_BEGINS = ("IMMEDIATE", "EXCLUSIVE")


class SqliteEpochWatcher(ChangeListener):
    """SQLite: ``cache_epoch.n`` goes up by one for every committed row change the cache cares about
    (triggers, migration 0006). A rise this process did not make itself empties its cache.

    Telling its own rises apart is exact because SQLite has one writer and the app's write transactions
    take the write lock at BEGIN (``BEGIN IMMEDIATE``, core/database.py): right after BEGIN nobody else can
    change ``n`` until our COMMIT, so

    * after BEGIN, ``n`` must still be what this process last saw; if not, someone else committed since:
      empty the cache (``_after_begin``);
    * just before COMMIT, ``n`` is what our commit will leave (``_before_commit``): those rises are ours,
      and their devices are dropped by ``drop_own_commits``.

    Between our writes, a check every ``CHECK_INTERVAL_S`` on a connection of its own catches everyone
    else's commits. Measured on this machine: one check (``SELECT n``, in WAL mode) costs about 10 µs, and
    ``PRAGMA data_version`` just as much, so a check on every cached heartbeat (about 150 µs) would add 7 %;
    ten checks a second cost 0.01 % of a core and bound the delay at 0.1 s. The counter alone, not
    ``data_version``, because that changes with every commit, this process's own and the telemetry
    flush's included.
    """

    CHECK_INTERVAL_S = 0.1
    BUSY_TIMEOUT_MS = 20  # as the inline reader: a WAL reader does not wait for the writer

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], cache: DeviceCache) -> None:
        super().__init__(cache)
        self._engine = engine
        self._lock = threading.Lock()
        self._known: int | None = None  # n as of the last check or write of ours; None: not known
        # n as our last write transaction leaves it; set just before its COMMIT, until the next check or
        # write sees it (between COMMIT and that, n == _own is our own change, not someone else's).
        self._own: int | None = None
        self._active = False  # the hooks do nothing until start()
        self._trusting = False
        self._outage = False
        self._raw: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.checks = 0
        event.listen(sessions, "after_begin", self._after_begin)
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_soft_rollback", self._after_soft_rollback)
        event.listen(engine, "commit", self._before_commit)
        event.listen(engine, "rollback", self._on_rollback)

    @staticmethod
    def _read(dbapi_connection: Any) -> int:
        return int(dbapi_connection.execute("SELECT n FROM cache_epoch").fetchone()[0])

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        # A plain DBAPI connection of its own: not the pool's (its busy timeout is 30 s) and not seen by the
        # engine's statement events, and the check costs no SQLAlchemy.
        fairy = self._engine.raw_connection()
        fairy.detach()
        raw: Any = fairy.dbapi_connection
        raw.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
        self._raw = raw
        self._active = True
        self.check()
        self._task = asyncio.create_task(self._loop(), name="bota-ota cache invalidation (SQLite)")

    async def stop(self) -> None:
        self._active = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with self._lock:
            self.cache.distrust()
            self._trusting = False
            self._known = self._own = None
            if self._raw is not None:
                with contextlib.suppress(Exception):
                    self._raw.close()
                self._raw = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_INTERVAL_S)
            self.check()

    def check(self) -> None:
        """Has anyone else committed a change since we last looked? Then empty the cache."""
        with self._lock:  # one decision at a time, against the hooks of our own write transactions
            if self._raw is None:
                return
            try:
                n = self._read(self._raw)
            except sqlite3.Error as exc:
                if not self._outage:  # once per outage, not ten times a second
                    self._outage = True
                    log.warning("cache invalidation: cannot read cache_epoch (%s); the heartbeat cache is off", exc)
                self._trusting = False
                self._known = self._own = None
                self.cache.distrust()
                return
            if not self._trusting:  # the first check, or the first after a failure: start from empty
                if self._outage:
                    self._outage = False
                    log.info("cache invalidation: cache_epoch is readable again; the heartbeat cache is back on")
                self._trusting = True
                self._known, self._own = n, None
                self.cache.trust()
            elif n == self._known:
                pass  # nothing new (or our write has not committed yet: _own stays)
            elif n == self._own:
                self._known, self._own = n, None  # our own commit; drop_own_commits dropped its devices
            else:
                self._known, self._own = n, None  # someone else's commit: which devices, n does not say
                self.cache.clear()
            self.checks += 1

    # ---- our own write transactions ----------------------------------------------------------------
    def _after_begin(self, session: Session, transaction: SessionTransaction, connection: Connection) -> None:
        if not self._active or transaction.nested:
            return
        if connection.get_execution_options().get("sqlite_begin", "IMMEDIATE") not in _WRITE_BEGINS:
            return  # a read transaction: it holds no write lock, so it cannot tell whose a change is
        try:
            n: int | None = self._read(connection.connection.dbapi_connection)
        except Exception:
            n = None  # then nothing can be accounted for: treat it as someone else's change
        with self._lock:
            # We hold the write lock, so our previous write has committed or failed: _own is settled.
            if n is None or (n != self._known and n != self._own):
                self.cache.clear()
            self._known, self._own = n, None
        if n is not None:
            connection.info[_OWN_TX_KEY] = True
            session.info[_OWN_TX_KEY] = True

    def _before_commit(self, connection: Connection) -> None:
        """Engine event, just before the DBAPI COMMIT (a session's ``before_commit`` comes before its last
        flush, too early)."""
        if not connection.info.pop(_OWN_TX_KEY, False):
            return
        try:
            n: int | None = self._read(connection.connection.dbapi_connection)
        except Exception:
            n = None  # after COMMIT the check sees a change it cannot account for: it empties the cache
        with self._lock:
            self._own = n

    def _on_rollback(self, connection: Connection) -> None:
        connection.info.pop(_OWN_TX_KEY, None)  # rolled back before COMMIT: nothing of it to account for

    def _after_commit(self, session: Session) -> None:
        if not session.in_nested_transaction():
            session.info.pop(_OWN_TX_KEY, None)

    def _after_soft_rollback(self, session: Session, _previous: Any) -> None:
        if session.in_transaction() or not session.info.pop(_OWN_TX_KEY, False):
            return
        # Rolled back, perhaps after _before_commit (a failed COMMIT): n did not rise, and a rise by someone
        # else to the value we expected must not be taken for ours.
        with self._lock:
            self._own = None


def make_change_listener(ctx: AppContext, cache: DeviceCache) -> ChangeListener:
    if ctx.engine.dialect.name == "postgresql":
        return PgChangeListener(listen_conninfo(ctx.engine), cache)
    if ctx.sqlite:
        return SqliteEpochWatcher(ctx.engine, ctx.sessions, cache)
    return ChangeListener(cache)
