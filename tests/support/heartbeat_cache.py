"""Heartbeat device-cache test helpers: waiting for invalidation, and SQL from outside the application."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from bota_ota.heartbeat.cache import DeviceCache
from bota_ota.heartbeat.invalidation import CHANNEL, PgChangeListener, SqliteEpochWatcher, listen_conninfo


def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def listening_cache(app: Any) -> DeviceCache:
    """The app's device cache, once its invalidation listens (the cache is usable)."""
    cache: DeviceCache = app.state.heartbeat.cache
    until(cache.usable, "invalidation to listen")
    return cache


@contextlib.contextmanager
def outside_sql(app: Any) -> Iterator[Any]:
    """A connection of the test's own, as psql or the sqlite3 shell would be: not the app's engine, no hooks."""
    engine = app.state.ctx.engine
    if engine.dialect.name == "postgresql":
        with psycopg.connect(listen_conninfo(engine), application_name="test: outside sql") as conn:
            yield conn
    else:
        conn = sqlite3.connect(app.state.ctx.engine.url.database, timeout=30)
        try:
            yield conn
        finally:
            conn.close()


def settle(app: Any) -> None:
    """Let invalidation catch up with everything committed so far, this instance's own commits included.

    PostgreSQL also notifies this instance of its own commits, a moment after it dropped the device itself:
    a heartbeat that re-read the device in between would be dropped again. Notifications arrive in commit
    order, so once a marker sent now is heard, all earlier ones have been. SQLite: one check, now."""
    listener = app.state.heartbeat.listener
    cache = listening_cache(app)
    if isinstance(listener, SqliteEpochWatcher):
        listener.check()
        return
    assert isinstance(listener, PgChangeListener)
    marker = f"marker-{uuid.uuid4().hex}"
    heard = threading.Event()
    drop = cache.drop

    def spy(device_ids: set[str] | frozenset[str]) -> None:
        drop(device_ids)
        if marker in device_ids:
            heard.set()

    cache.drop = spy  # type: ignore[method-assign]
    try:
        with outside_sql(app) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, marker))
            conn.commit()
        assert heard.wait(10), "the marker notification was not heard"
    finally:
        del cache.drop
