"""Periodic work every instance runs beside answering requests: the timeout sweeps.

Jobs are declared beside their domain (``ota/sweeps.py``, ``mobile/sweeps.py``) and registered in one
place, ``create_app``. Each run gets its own session and transaction, admitted like a request (on SQLite
the write gate, then everywhere a database slot, in the same order as ``DatabaseAdmissionMiddleware``).
Nothing here needs another instance: every sweep locks what it changes with ``SKIP LOCKED``, so any
number of instances may run them at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from anyio import to_thread
from sqlalchemy.orm import Session

from bota_ota.core.database import session_scope, utcnow
from bota_ota.core.settings import Settings
from bota_ota.web.context import AppContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """``run(session, settings, now)`` changes what is due and returns how many rows it changed."""

    name: str
    run: Callable[[Session, Settings, datetime], int]


class Scheduler:
    """Runs every registered job once per interval (±20 % jitter): ``BOTA_OTA_SWEEP_INTERVAL_S`` unless
    given. ``name`` names the loop in logs and task lists."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None, name: str = "sweeps") -> None:
        self.ctx = ctx
        self.interval_s = interval_s if interval_s is not None else ctx.settings.sweep_interval_s
        self.name = name
        self.jobs: list[Job] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, run: Callable[[Session, Settings, datetime], int]) -> None:
        self.jobs.append(Job(name, run))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"bota-ota {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> dict[str, int]:
        """Run each job once, each in its own transaction; returns how many rows each changed."""
        now = utcnow()
        done: dict[str, int] = {}
        for job in self.jobs:
            done[job.name] = await self._in_session(job, now)
        return done

    async def _loop(self) -> None:
        interval = self.interval_s
        while True:
            # Jitter: instances started together do not sweep in lockstep (they would only skip each
            # other's locked rows, but there is no need to contend).
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                done = await self.run_once()
            except Exception:
                log.exception("%s failed; trying again at the next interval", self.name)
                continue
            if any(done.values()):
                log.info("%s: %s", self.name, " ".join(f"{k}={v}" for k, v in done.items()))

    async def _in_session(self, job: Job, now: datetime) -> int:
        def run() -> int:
            with session_scope(self.ctx.sessions) as session:
                return job.run(session, self.ctx.settings, now)

        async with self.ctx.write_admission():
            return await to_thread.run_sync(run)
