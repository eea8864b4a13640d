"""One object that owns everything the heartbeat keeps per instance, with ``start()`` and ``stop()``.

* the device cache (``cache.py``) and what keeps it honest (``invalidation.py``);
* the write-behind buffer of routine telemetry and its flush loop (``presence.py``);
* on SQLite, the inline reader (``read.py``) and the group-commit writer (``write.py``).

``answer`` is the whole heartbeat: from the cache or one read when nothing needs writing (the routine
reply, ``reply.py``), else the write step. The entrance (``entrance.py``) calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from anyio import to_thread
from starlette.concurrency import run_in_threadpool

from bota_ota.core.database import utcnow
from bota_ota.core.errors import Unauthorized
from bota_ota.core.security import hash_token
from bota_ota.core.settings import Settings
from bota_ota.firmware.policy import default_policy
from bota_ota.heartbeat.cache import DeviceCache
from bota_ota.heartbeat.invalidation import ChangeListener, drop_own_commits, make_change_listener
from bota_ota.heartbeat.presence import TelemetryBuffer, write_telemetry
from bota_ota.heartbeat.read import NOT_READ, InlineSnapshotReader, NotRead, read_snapshot
from bota_ota.heartbeat.reply import HeartbeatCall, ManifestSigner, routine_reply
from bota_ota.heartbeat.schemas import Heartbeat, HeartbeatReply
from bota_ota.heartbeat.write import WriteBatcher, heartbeat_with_writes
from bota_ota.ota.service import AttemptRules
from bota_ota.web.context import AppContext

log = logging.getLogger(__name__)

CACHE_REPORT_S = 60.0


class HeartbeatRuntime:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings: Settings = ctx.settings
        self.cache = DeviceCache(max_entries=ctx.settings.device_cache_size)
        self.policy = default_policy(ctx.settings)
        self.attempts = AttemptRules.of(ctx.settings)
        self.buffer = TelemetryBuffer()
        # SQLite only: the cache-miss read on the event loop, and heartbeats that write committed in groups.
        self.reader = InlineSnapshotReader(ctx.engine) if ctx.sqlite else None
        self.batcher = WriteBatcher(ctx.sessions, ctx.write_admission) if ctx.sqlite else None
        # This instance's own commits drop the devices they changed from its cache at once.
        drop_own_commits(ctx.sessions, lambda device_ids: self.cache.drop(device_ids))
        self.listener: ChangeListener = make_change_listener(ctx, self.cache)
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def wake_flusher() -> None:  # called from a request's worker thread when the buffer is full
            loop.call_soon_threadsafe(self._wake.set)

        self.buffer.on_full = wake_flusher
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._flush_loop(), name="bota-ota telemetry flush")]
        if self.cache.enabled:
            await self.listener.start()
            self._tasks.append(asyncio.create_task(self._report_loop(), name="bota-ota cache report"))
        if self.batcher is not None:
            self._tasks.append(asyncio.create_task(self.batcher.run(), name="bota-ota heartbeat writes"))

    async def stop(self) -> None:
        """Stop the loops, then write what is still buffered (graceful shutdown: SIGTERM, Ctrl-C)."""
        self._stopping.set()
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.cache.enabled:
            await self.listener.stop()
        self.cache.distrust()
        pending = len(self.buffer)
        try:
            await self.flush()
        except Exception:
            log.error("shutdown: %d devices' telemetry could not be written", pending)
        else:
            if pending:
                log.info("shutdown: wrote the telemetry of %d devices", pending)
        if self.reader is not None:
            self.reader.close()

    # ---- the heartbeat -----------------------------------------------------------------------------
    async def answer(self, token: str, hb: Heartbeat, base_url_of_request: Callable[[], str]) -> HeartbeatReply:
        """The whole heartbeat: from the cache or one read when nothing needs writing, else the write step."""
        ctx = self.ctx
        token_hash = hash_token(token)
        received_at = utcnow()
        snapshot = self.cache.get(token_hash)
        if snapshot is None:
            generation = self.cache.begin_read()
            inline = self.reader.read(token_hash) if self.reader is not None else NOT_READ
            if isinstance(inline, NotRead):
                async with ctx.db_slots:
                    snapshot = await run_in_threadpool(read_snapshot, ctx.engine, token_hash)
            else:
                snapshot = inline
            if snapshot is None:
                raise Unauthorized("the device token is unknown (rotated or never issued)")
            self.cache.put(token_hash, snapshot, generation)
        settings = self.settings
        call = HeartbeatCall(
            token_hash=token_hash,
            hb=hb,
            signer=ManifestSigner(store=ctx.store, base_url=base_url_of_request, ttl_s=settings.signed_url_ttl_s),
            buffer=self.buffer,
            interval_s=settings.heartbeat_interval_s,
            received_at=received_at,
            policy=self.policy,
            attempts=self.attempts,
            known_bin=(snapshot.assignment.release_id, snapshot.bin)
            if snapshot.assignment is not None and snapshot.bin is not None
            else None,
        )
        reply = routine_reply(snapshot, call, received_at)
        if reply is not None:
            return reply
        if self.batcher is not None and self.batcher.running:
            return await self.batcher.submit(call)  # SQLite: committed together with the others waiting

        def write() -> HeartbeatReply:
            with ctx.sessions() as session, session.begin():
                return heartbeat_with_writes(session, call, call.received_at)

        async with ctx.write_admission():
            return await run_in_threadpool(write)

    # ---- write-behind ------------------------------------------------------------------------------
    async def flush(self) -> int:
        """Write everything buffered now; returns rows written. On failure the readings go back into
        the buffer (newer ones win) for the next attempt, and the error is raised."""
        async with self._flush_lock:
            entries = self.buffer.take_all()
            if not entries:
                return 0
            try:
                async with self.ctx.write_admission():
                    return await to_thread.run_sync(write_telemetry, self.ctx.engine, entries)
            except Exception:
                self.buffer.restore(entries)
                log.exception("telemetry flush of %d devices failed; kept for the next attempt", len(entries))
                raise

    async def _flush_loop(self) -> None:
        interval = self.settings.telemetry_flush_interval_s
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

    async def _report_loop(self) -> None:
        """One log line a minute: is the cache doing its job?"""
        hits = misses = 0
        while True:
            await asyncio.sleep(CACHE_REPORT_S)
            cache = self.cache
            new_hits, new_misses = cache.hits - hits, cache.misses - misses
            hits, misses = cache.hits, cache.misses
            if new_hits + new_misses:
                log.info(
                    "heartbeat cache: %d devices; %d of %d heartbeats in the last minute answered from it (%.0f%%)",
                    len(cache),
                    new_hits,
                    new_hits + new_misses,
                    100 * new_hits / (new_hits + new_misses),
                )
