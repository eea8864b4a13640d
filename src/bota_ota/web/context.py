"""The app's runtime context: what every request needs that lives as long as the app (``app.state.ctx``).

It holds the settings, the database engine and session factory, the blob store, and the admission
primitives every database user waits for (the SQLite write gate and the database slots). Heartbeat state
belongs to the heartbeat runtime (``heartbeat/runtime.py``), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from bota_ota.core.settings import Settings
from bota_ota.storage import BlobStore


@dataclass
class AppContext:
    """Everything a request needs that lives as long as the app: kept on ``app.state.ctx``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    write_gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    db_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        pool = self.engine.pool
        capacity = pool.size() + getattr(pool, "_max_overflow", 0) if isinstance(pool, QueuePool) else 10
        # Stay below anyio's 40 worker threads so a request holding a connection can always get one.
        self.db_slots = asyncio.Semaphore(max(1, min(capacity, 30)))

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def db_write_gate(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The write gate on SQLite; nothing to wait for on PostgreSQL."""
        return self.write_gate if self.sqlite else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def write_admission(self) -> AsyncIterator[None]:
        """What every writer waits for, in this order: the write gate (SQLite), then a database slot."""
        async with self.db_write_gate(), self.db_slots:
            yield
