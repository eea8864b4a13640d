"""Seeded databases for the benchmarks, made once with the project's own models and helpers, then copied.

Registering 100,000 devices through the API takes many minutes; inserting them takes seconds. Devices get
deterministic tokens (``device_token(i)``), stored as the server stores them (SHA-256, security.py), so
wrk's Lua script and the simulator can compute every token without a file of secrets.

A seed is built into a template (a data dir under benchmarks/.cache, with the SQLite file, or a
PostgreSQL template database) keyed by the schema's head revision, and each run gets a fresh copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import insert
from sqlalchemy.orm import Session

import bota_ota.models  # noqa: F401  (every model registered before mappers configure)
from benchmarks.common import CACHE_DIR, SECRET_KEY, log
from benchmarks.pg import Postgres, safe_name
from benchmarks.tokens import device_id, device_token
from bota_ota.accounts import service as accounts
from bota_ota.core.database import make_engine, make_sessionmaker, new_id, session_scope, utcnow
from bota_ota.core.migrate import alembic_config, upgrade_to_head
from bota_ota.core.security import hash_token
from bota_ota.devices.models import Device
from bota_ota.firmware import service as firmware
from bota_ota.firmware.receive import new_release_from_form
from bota_ota.firmware.upload import ParsedForm, ReceivedFile
from bota_ota.ota import service as ota
from bota_ota.ota.models import Assignment, AssignmentEvent
from bota_ota.storage.local import LocalBlobStore

MODEL = "bota-pin"
OLD_VERSION = "v1.0.0"
NEW_VERSION = "v1.0.1"


@dataclass(frozen=True)
class SeedSpec:
    name: str
    devices: int
    release_bin_bytes: int | None = None  # a release NEW_VERSION with a .bin of this size
    assign_first: bool = False  # device 1 gets an active assignment of that release
    # Every k-th device (i % k == 0) already reports NEW_VERSION; 0: none.
    up_to_date_every: int = 0
    # Every k-th device (i % k == k // 2) has an active assignment of the release, made as an operator makes
    # one (ota.create_assignment), so a rollout of it finds the device busy; 0: none.
    busy_every: int = 0

    def key(self, backend: str) -> str:
        extra = f"_u{self.up_to_date_every}_b{self.busy_every}" if self.up_to_date_every or self.busy_every else ""
        return safe_name(
            f"{self.name}_{self.devices}_{self.release_bin_bytes or 0}{extra}_{backend}_{schema_head()}_v2"
        )

    def is_up_to_date(self, i: int) -> bool:
        return bool(self.up_to_date_every) and i % self.up_to_date_every == 0

    def is_busy(self, i: int) -> bool:
        return bool(self.busy_every) and i % self.busy_every == self.busy_every // 2


@dataclass
class Instance:
    """One run's copy of a seed: a data dir (blobs, secret, SQLite file) and its database URL."""

    data_dir: Path
    database_url: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"BOTA_OTA_DATABASE_URL": self.database_url}


def schema_head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    return head or "none"


def _sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'bota-ota.db').resolve()}"


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def _received(path: Path, name: str) -> ReceivedFile:
    crc, sha, size = 0, hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            sha.update(chunk)
            size += len(chunk)
    return ReceivedFile(
        field="bin", filename=name, path=path, size=size, crc32=crc & 0xFFFFFFFF, sha256=sha.hexdigest()
    )


def _seed(spec: SeedSpec, data_dir: Path, url: str) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(url)
    engine = make_engine(url)
    meta: dict[str, Any] = {"devices": spec.devices}
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            _, meta["api_token"] = accounts.create_api_token(session, name="bench", role="admin", actor="bench")
            now = utcnow()
            batch: list[dict[str, Any]] = []
            for i in range(1, spec.devices + 1):
                batch.append(
                    {
                        "id": device_id(i),
                        "model": MODEL,
                        "name": f"Bench device {i}",
                        "token_hash": hash_token(device_token(i)),
                        "created_at": now,
                        # A fleet that is already running: seen before, reporting what heartbeat.lua sends.
                        # (A device's first heartbeat ever is a write; the benchmark is about routine ones.)
                        "firmware_version": NEW_VERSION if spec.is_up_to_date(i) else OLD_VERSION,
                        "last_seen_at": now,
                        "battery": 80,
                        "network": "wifi",
                        "recording": False,
                        "ble_connected": False,
                    }
                )
                if len(batch) == 10_000 or i == spec.devices:
                    session.execute(insert(Device), batch)
                    batch = []
            if spec.release_bin_bytes:
                meta.update(_seed_release(session, spec, data_dir))
    finally:
        engine.dispose()
    (data_dir / "tmp").mkdir(exist_ok=True)
    return meta


def _seed_release(session: Session, spec: SeedSpec, data_dir: Path) -> dict[str, Any]:
    """The release goes in through firmware.create_release, as an upload would put it."""
    assert spec.release_bin_bytes
    store = LocalBlobStore(data_dir / "blobs", SECRET_KEY)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        path = Path(tmp) / "bench.bin"
        _random_file(path, spec.release_bin_bytes)
        form = ParsedForm(fields={"version": NEW_VERSION, "model": MODEL}, files={"bin": _received(path, "bench.bin")})
        release, _ = firmware.create_release(session, store, new_release_from_form(form), actor="bench")
    artifact = release.artifact("bin")
    assert artifact is not None
    meta = {
        "release_id": release.id,
        "release_version": release.version,
        "bin_size": artifact.size,
        "storage_key": artifact.storage_key,
    }
    if spec.assign_first:
        assignment = ota.create_assignment(session, device_id=device_id(1), release_id=release.id, actor="bench")
        meta["assignment_id"] = assignment.id
    busy = [i for i in range(1, spec.devices + 1) if spec.is_busy(i)]
    for i in busy:
        ota.create_assignment(session, device_id=device_id(i), release_id=release.id, actor="bench")
    if spec.up_to_date_every or spec.busy_every:
        meta["up_to_date"] = sum(1 for i in range(1, spec.devices + 1) if spec.is_up_to_date(i))
        meta["busy"] = len(busy)
    return meta


def instance(spec: SeedSpec, run_dir: Path, pg: Postgres | None = None) -> Instance:
    """A fresh copy of the seed for one server run (the template is built on first use)."""
    backend = "postgres" if pg is not None else "sqlite"
    key = spec.key(backend)
    template = CACHE_DIR / key
    meta_path = template / "meta.json"
    if pg is not None and meta_path.exists() and not pg.exists(key):
        shutil.rmtree(template)  # the cluster was recreated
    if not meta_path.exists():
        shutil.rmtree(template, ignore_errors=True)
        log(f"seeding {spec.devices:,} devices into a {backend} template ({key})")
        data_dir = template / "data"
        if pg is not None:
            pg.create(key)
            meta = _seed(spec, data_dir, pg.url(key))
            pg.vacuum_analyze(key)
        else:
            meta = _seed(spec, data_dir, _sqlite_url(data_dir))
        meta_path.write_text(json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(template / "data", run_dir)
    if pg is not None:
        database = "bench_run"
        pg.create(database, template=key)
        return Instance(run_dir, pg.url(database), meta)
    return Instance(run_dir, _sqlite_url(run_dir), meta)


def assign_all(database_url: str, release_id: str, version: str, device_ids: list[str]) -> None:
    """Assign one release to many devices in one transaction: the rows ``create_assignment`` makes
    (a pending assignment and its ``created`` event), inserted in bulk. The management API has no bulk
    assignment yet; ``bota-ota assign`` makes one request per device."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            now = utcnow()
            rows = [
                {
                    "id": new_id(),
                    "device_id": d,
                    "release_id": release_id,
                    "version": version,
                    "status": "pending",
                    "created_by": "bench",
                    "created_at": now,
                    "delivery_count": 0,
                }
                for d in device_ids
            ]
            # The servers' heartbeat caches hear of it through the database's triggers (migration 0006).
            session.execute(insert(Assignment), rows)
            session.execute(
                insert(AssignmentEvent),
                [
                    {
                        "assignment_id": r["id"],
                        "at": now,
                        "kind": "created",
                        "status": "pending",
                        "detail": {"release_id": release_id, "version": version},
                        "actor": "bench",
                    }
                    for r in rows
                ],
            )
    finally:
        engine.dispose()
