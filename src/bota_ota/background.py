"""What each instance does beside answering requests: the write-behind flush, reading the device change
feed into the heartbeat cache, and the periodic sweeps.

Started and stopped by the app's lifespan, so every ``bota-ota serve`` process (and every ``--workers``
worker) runs its own. Nothing here needs another instance: the flush only moves rows forward in time
(``devices/telemetry.py``) and the sweeps lock what they change with ``SKIP LOCKED`` (``ota/sweeps.py``,
``mobile/sweeps.py``), so any number of instances may run them at once.

Database work runs in worker threads, admitted like a request: on SQLite it waits for the write gate,
then (everywhere) for a database slot, in the same order as ``DatabaseAdmissionMiddleware``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from anyio import to_thread
from sqlalchemy.orm import Session

from bota_ota.db import session_scope, utcnow
from bota_ota.deps import AppContext
from bota_ota.devices.changes import RETENTION, FeedPosition, prune_changes, read_changes
from bota_ota.devices.telemetry import write_telemetry
from bota_ota.mobile.sweeps import end_silent_ble_modes
from bota_ota.ota.sweeps import fail_stalled_deliveries

log = logging.getLogger(__name__)

T = TypeVar("T")

# An instance that could not read the change feed for this long may have missed rows the sweeps deleted.
FEED_MAX_GAP_S = RETENTION.total_seconds() / 2
CACHE_REPORT_S = 60.0


class BackgroundWork:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def wake_flusher() -> None:  # called from a request's worker thread when the buffer is full
            loop.call_soon_threadsafe(self._wake.set)

        self.ctx.telemetry.on_full = wake_flusher
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="bota-ota telemetry flush"),
            asyncio.create_task(self._sweep_loop(), name="bota-ota sweeps"),
        ]
        if self.ctx.device_cache.enabled:
            self._tasks.append(asyncio.create_task(self._feed_loop(), name="bota-ota change feed"))
        if self.ctx.write_batcher is not None:
            self._tasks.append(asyncio.create_task(self.ctx.write_batcher.run(), name="bota-ota heartbeat writes"))

    async def stop(self) -> None:
        """Stop the loops, then write what is still buffered (graceful shutdown: SIGTERM, Ctrl-C)."""
        self._stopping.set()
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.ctx.device_cache.stop()
        pending = len(self.ctx.telemetry)
        try:
            await self.flush()
        except Exception:
            log.error("shutdown: %d devices' telemetry could not be written", pending)
            return
        if pending:
            log.info("shutdown: wrote the telemetry of %d devices", pending)

    # ---- write-behind ------------------------------------------------------------------------------
    async def flush(self) -> int:
        """Write everything buffered now; returns rows written. On failure the readings go back into
        the buffer (newer ones win) for the next attempt, and the error is raised."""
        async with self._flush_lock:
            entries = self.ctx.telemetry.take_all()
            if not entries:
                return 0
            try:
                return await self._run_db(write_telemetry, self.ctx.engine, entries)
            except Exception:
                self.ctx.telemetry.restore(entries)
                log.exception("telemetry flush of %d devices failed; kept for the next attempt", len(entries))
                raise

    async def _flush_loop(self) -> None:
        interval = self.ctx.settings.telemetry_flush_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            if self._stopping.is_set():
                return  # stop() writes the rest
            try:
                await self.flush()
            except Exception:
                # Logged by flush(). Wait a whole interval before the next attempt, even with a full buffer:
                # no tight loop against a database that is down.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    # ---- the change feed ---------------------------------------------------------------------------
    async def _feed_loop(self) -> None:
        """Drop the devices other processes changed from this instance's heartbeat cache, every poll."""
        interval = self.ctx.settings.change_poll_interval_s
        cache = self.ctx.device_cache
        position = FeedPosition()
        failing = False
        loop = asyncio.get_running_loop()
        report_at = loop.time() + CACHE_REPORT_S
        hits = misses = 0
        while not self._stopping.is_set():
            if loop.time() >= report_at:  # one line a minute: is the cache doing its job?
                new_hits, new_misses = cache.hits - hits, cache.misses - misses
                hits, misses = cache.hits, cache.misses
                report_at = loop.time() + CACHE_REPORT_S
                if new_hits + new_misses:
                    log.info(
                        "heartbeat cache: %d devices; %d of %d heartbeats in the last minute answered from it (%.0f%%)",
                        len(cache),
                        new_hits,
                        new_hits + new_misses,
                        100 * new_hits / (new_hits + new_misses),
                    )
            try:
                changed = await self._run_read(read_changes, self.ctx.engine, position)
            except Exception:
                if not failing:  # once per outage, not twice a second
                    log.exception("reading the device change feed failed; heartbeats skip the cache until it works")
                failing = True
            else:
                if failing:
                    log.info("reading the device change feed works again")
                failing = False
                cache.drop(changed)
                cache.fed(max_gap_s=FEED_MAX_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    # ---- sweeps ------------------------------------------------------------------------------------
    async def sweep(self) -> dict[str, int]:
        """Run each timeout sweep once, each in its own transaction; returns how many rows each changed."""
        settings = self.ctx.settings
        now = utcnow()
        return {
            "ble_modes_ended": await self._in_session(
                lambda s: end_silent_ble_modes(s, timeout_s=settings.ble_relay_timeout_s, now=now)
            ),
            "deliveries_timed_out": await self._in_session(
                lambda s: fail_stalled_deliveries(s, timeout_s=settings.delivery_timeout_s, now=now)
            ),
            "changes_pruned": await self._in_session(lambda s: prune_changes(s, now=now)),
        }

    async def _sweep_loop(self) -> None:
        interval = self.ctx.settings.sweep_interval_s
        while True:
            # Jitter: instances started together do not sweep in lockstep (they would only skip each
            # other's locked rows, but there is no need to contend).
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                done = await self.sweep()
            except Exception:
                log.exception("sweep failed; trying again at the next interval")
                continue
            if done["ble_modes_ended"] or done["deliveries_timed_out"]:
                log.info("sweep: %s", " ".join(f"{k}={v}" for k, v in done.items()))

    # ---- helpers -----------------------------------------------------------------------------------
    async def _in_session(self, work: Callable[[Session], int]) -> int:
        def run() -> int:
            with session_scope(self.ctx.sessions) as session:
                return work(session)

        return await self._run_db(run)

    async def _run_db(self, fn: Callable[..., T], *args: object) -> T:
        async with self.ctx.db_write_gate(), self.ctx.db_slots:
            return await to_thread.run_sync(fn, *args)

    async def _run_read(self, fn: Callable[..., T], *args: object) -> T:
        async with self.ctx.db_slots:
            return await to_thread.run_sync(fn, *args)
