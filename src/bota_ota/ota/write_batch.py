"""Group commit for heartbeats that write, on SQLite.

SQLite has one writer at a time, so during a rollout — thousands of devices each being delivered,
reporting progress, being applied — heartbeat writes queue for the write slot one transaction each:
BEGIN, the device and assignment reads, the updates, the event, the feed row, COMMIT, each statement a
hop between the worker thread and the busy event loop. Instead, this instance collects the heartbeats
waiting to write and runs them in one transaction, each inside its own SAVEPOINT (a heartbeat that fails
rolls back alone and gets its own error), and commits once. A heartbeat's reply is sent only after the
COMMIT that stored it, exactly as before; under light load a batch is one heartbeat.

PostgreSQL runs writes side by side, so there each heartbeat keeps its own short transaction (a batch
would hold its row locks longer and order them by arrival, not by id, across instances).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from anyio import to_thread
from sqlalchemy.orm import Session

from bota_ota.ota.heartbeat import HeartbeatCall, heartbeat_with_writes
from bota_ota.ota.schemas import HeartbeatReply

log = logging.getLogger(__name__)

MAX_BATCH = 200  # heartbeats per transaction: bounds the time the write slot is held


Job = tuple[HeartbeatCall, "asyncio.Future[HeartbeatReply]"]


def write_batch(session: Session, calls: list[HeartbeatCall]) -> list[HeartbeatReply | Exception]:
    """Each call in its own savepoint of one transaction (the caller commits). Exceptions are returned,
    not raised: one bad heartbeat must not fail the others."""
    results: list[HeartbeatReply | Exception] = []
    for call in calls:
        try:
            with session.begin_nested():
                results.append(heartbeat_with_writes(session, call, call.received_at))
        except Exception as exc:
            results.append(exc)
    return results


class WriteBatcher:
    """One per app instance; ``run`` is started by the lifespan (``background.py``)."""

    def __init__(self, sessions: Callable[[], Session], admit: Callable[[], AbstractAsyncContextManager[None]]) -> None:
        self._sessions = sessions
        self._admit = admit  # the write gate and a database slot, as for every other writer
        self._queue: list[Job] = []
        self._wake = asyncio.Event()
        self.running = False
        self.batches = 0
        self.written = 0
        self.in_flight = 0  # heartbeats of the batch being written

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def submit(self, call: HeartbeatCall) -> HeartbeatReply:
        future: asyncio.Future[HeartbeatReply] = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._write(batch)
        finally:
            self.running = False
            for _call, future in self._queue:  # stopped (shutdown): nothing is left waiting for ever
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
            self._queue = []

    async def _write(self, batch: list[Job]) -> None:
        calls = [call for call, _future in batch]
        self.in_flight = len(batch)

        def work() -> list[HeartbeatReply | Exception]:
            with self._sessions() as session, session.begin():
                return write_batch(session, calls)

        try:
            async with self._admit():
                results: list[HeartbeatReply | Exception] = await to_thread.run_sync(work)
        except Exception as exc:  # BEGIN or COMMIT failed: none of them was stored
            log.warning("a batch of %d heartbeat writes failed: %s", len(batch), exc)
            results = [exc] * len(batch)
        self.batches += 1
        self.written += len(batch)
        self.in_flight = 0
        for (_call, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled meanwhile (the client went away)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
