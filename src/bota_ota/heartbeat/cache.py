"""The per-instance cache behind the lean heartbeat: what a routine heartbeat needs to know of a device.

A routine heartbeat (nothing to deliver, nothing material changed) needs the device's token, its reported
version, recording and BLE flags, and its active assignment (with the .bin's size and checksums, for a
fresh manifest). With this cache it needs no database at all: the reply is built from the entry and the
telemetry goes to the write-behind buffer. Anything the heartbeat *writes* still goes through the locked
write transaction (``write.py``), which plans again from the database rows; the cache only
decides that a heartbeat is routine.

Staleness is bounded by invalidation (``invalidation.py``): every committed change of what an entry
holds drops that device here, at once for this instance's own commits and within moments for anyone
else's (PostgreSQL ``NOTIFY`` from triggers; on SQLite a trigger-kept change counter, checked ten times a
second, which does not say which device: another process's change empties the cache). The cache is only
used while the invalidation listener is up (``trust``); when it is lost or reconnects, the cache is emptied
(``distrust``, then ``trust`` again): a change that happened meanwhile cannot be missed.

Entries have no time limit. The triggers report every committed change of what an entry holds, whoever
makes it (SQL typed into psql or the sqlite3 shell and TRUNCATE included), so an expiry would only catch
triggers switched off by hand (``ALTER TABLE … DISABLE TRIGGER``, ``session_replication_role = replica``),
and that only after its own length, while it costs a database read for a share of all heartbeats (one in
ten for ten minutes at a 60 s interval).

A read that started before a change and finishes after the change was applied here must not put its
stale result back: ``begin_read`` returns the current generation, and ``put`` refuses an entry whose
device was dropped after that generation (or when that is no longer known).
"""

from __future__ import annotations

import threading
from collections import deque

from bota_ota.heartbeat.rules import DeviceSnapshot

# How many recent drops ``put`` can check against; a read older than that is simply not cached.
_RECENT_DROPS = 256


class DeviceCache:
    """Token hash → ``DeviceSnapshot``, bounded (oldest entries leave first). Thread-safe for writers;
    ``get`` takes no lock (one dict lookup) because it runs on the event loop for every heartbeat."""

    def __init__(self, *, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._by_token: dict[str, DeviceSnapshot] = {}
        self._token_of: dict[str, str] = {}  # device id → token hash
        self._generation = 0
        self._floor = 0
        self._recent: deque[tuple[int, frozenset[str]]] = deque(maxlen=_RECENT_DROPS)
        self._trusted = False  # entries are used only while invalidation is listening
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._by_token)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def usable(self) -> bool:
        """True while invalidation is listening, so that entries can be trusted."""
        return self._trusted and self.enabled

    def get(self, token_hash: str) -> DeviceSnapshot | None:
        if not self._trusted:
            self.misses += 1
            return None
        snapshot = self._by_token.get(token_hash)
        if snapshot is None:
            self.misses += 1
            return None
        self.hits += 1
        return snapshot

    def holds(self, device_id: str) -> bool:
        """Whether an entry for this device is kept (used or not): for tests and diagnostics."""
        return device_id in self._token_of

    def begin_read(self) -> int:
        return self._generation

    def put(self, token_hash: str, snapshot: DeviceSnapshot, generation: int) -> bool:
        """Keep ``snapshot`` unless its device was dropped since ``generation`` (then the read may be stale)."""
        if not self.enabled:
            return False
        with self._lock:
            if generation < self._floor:
                return False  # the cache was cleared after this read began
            if generation != self._generation:
                if not self._recent or generation < self._recent[0][0] - 1:
                    return False  # the drops since then are no longer known
                if any(gen > generation and snapshot.id in ids for gen, ids in self._recent):
                    return False
            old_token = self._token_of.get(snapshot.id)
            if old_token is not None and old_token != token_hash:
                self._by_token.pop(old_token, None)
            self._by_token.pop(token_hash, None)  # re-inserted at the end: the oldest entries leave first
            self._by_token[token_hash] = snapshot
            self._token_of[snapshot.id] = token_hash
            while len(self._by_token) > self.max_entries:
                oldest = next(iter(self._by_token))
                evicted = self._by_token.pop(oldest)
                if self._token_of.get(evicted.id) == oldest:
                    del self._token_of[evicted.id]
            return True

    def drop(self, device_ids: set[str] | frozenset[str]) -> None:
        """Forget these devices (they changed). Called by invalidation and after this instance's commits."""
        if not device_ids:
            return
        with self._lock:
            self._generation += 1
            self._recent.append((self._generation, frozenset(device_ids)))
            for device_id in device_ids:
                token = self._token_of.pop(device_id, None)
                if token is not None:
                    self._by_token.pop(token, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._floor = self._generation  # every read that began before now is refused by put()
            self._recent.clear()
            self._by_token.clear()
            self._token_of.clear()

    def trust(self) -> None:
        """Invalidation is listening (again): start afresh, then use entries. Whatever changed while nobody
        listened is gone with the old entries."""
        self.clear()
        self._trusted = True

    def distrust(self) -> None:
        """Invalidation stopped listening (lost connection, shutdown): every heartbeat reads again."""
        self._trusted = False
        self.clear()
