"""Keeping every instance's device cache honest.

An entry in ``cache.py`` may be used only while nothing it was read from has changed, in any process.

* **This instance's own commits** drop the devices they changed at once, before the request that made
  the change answers: hooks on the app's own session factory collect the ids of every ``Device`` and
  ``Assignment`` a flush wrote, and drop them after COMMIT. Bulk Core statements, which no flush sees,
  name their devices with ``note_changed_devices``.
* **Everyone else's commits** (another instance, another ``--workers`` worker, a CLI command, SQL typed
  into psql) reach the cache through the database itself: see ``listen_for_changes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.devices.models import Device
from bota_ota.ota.models import Assignment

_PENDING_KEY = "bota_ota.changed_devices"


def _changed_device_ids(objects: Iterable[object]) -> set[str]:
    ids: set[str] = set()
    for obj in objects:
        if isinstance(obj, Device):
            ids.add(obj.id)
        elif isinstance(obj, Assignment) and obj.device_id:
            ids.add(obj.device_id)
    return ids


def note_changed_devices(session: Session, device_ids: Iterable[str]) -> None:
    """For bulk Core statements (``session.execute(insert(Assignment), rows)``), which no flush sees:
    these devices changed in this transaction; this instance drops them from its cache after COMMIT."""
    session.info.setdefault(_PENDING_KEY, set()).update(device_ids)


def drop_own_commits(sessions: sessionmaker[Session], drop: Callable[[set[str]], None]) -> None:
    """Make every session of ``sessions`` call ``drop(device_ids)`` after each COMMIT that changed devices."""

    def after_flush(session: Session, _flush_context: Any) -> None:
        # After a flush, new/dirty/deleted still show what the flush wrote.
        ids = _changed_device_ids(chain(session.new, session.dirty, session.deleted))
        if ids:
            session.info.setdefault(_PENDING_KEY, set()).update(ids)

    def after_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a SAVEPOINT released: the real COMMIT comes later
        ids: set[str] | None = session.info.pop(_PENDING_KEY, None)
        if ids:
            drop(ids)

    def after_soft_rollback(session: Session, _previous: Any) -> None:
        if not session.in_transaction():  # the whole transaction, not one SAVEPOINT of it
            session.info.pop(_PENDING_KEY, None)

    event.listen(sessions, "after_flush", after_flush)
    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_soft_rollback", after_soft_rollback)


class ChangeListener:
    """Hears of other processes' commits and drops those devices from the cache (``listen_for_changes``).

    Until cross-process notification is in place this listener trusts the cache while the app runs."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    async def start(self) -> None:
        self.cache.trust()

    async def stop(self) -> None:
        self.cache.distrust()


def make_change_listener(ctx: Any, cache: Any) -> ChangeListener:
    return ChangeListener(cache)
