"""Storage housekeeping: stale temporary uploads, and blobs and artifact rows that disagree.

Two crashes leave files that nothing else reconciles:

- an upload streams into a temporary file under ``<data dir>/tmp`` (``firmware/upload.py``); a process that
  dies mid-request leaves it there. ``remove_stale_upload_files`` runs at start-up and as a periodic sweep.
- a release's blobs are stored before its row is committed, and removed after its deletion is committed
  (``firmware/service.py``); a crash in between leaves a blob no row points at. ``check_storage`` (run by
  ``bota-ota storage check``) finds those, rows whose blob is missing and blobs of the wrong size.

Neither touches a row: the database is the record of what exists; a blob without a row is garbage once
it is old enough that no upload can still be on its way to committing it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bota_ota.core.settings import Settings
from bota_ota.firmware.models import Artifact, Release
from bota_ota.storage import BlobStore
from bota_ota.storage.base import BlobInfo

log = logging.getLogger(__name__)

BLOB_PREFIX = "firmware/"  # every artifact's storage key starts with it (service.create_release)
DEFAULT_GRACE_S = 3600


# --- temporary uploads ----------------------------------------------------------------------------


def remove_stale_upload_files(tmp_dir: Path, *, older_than_s: float, now: float | None = None) -> int:
    """Remove what in ``tmp_dir`` has not been written for ``older_than_s`` seconds; returns how many.

    Age by modification time is the rule, never "everything": an upload in progress writes its file
    continuously (its mtime stays fresh), and other instances or workers sharing the data dir may be
    streaming uploads into the same folder while this one sweeps.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cutoff = (time.time() if now is None else now) - older_than_s
    removed = 0
    for path in tmp_dir.iterdir():
        with contextlib.suppress(OSError):  # gone already (another instance swept it, or the upload ended)
            if path.lstat().st_mtime >= cutoff:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    return removed


def sweep_stale_upload_files(session: Session, settings: Settings, now: datetime) -> int:
    """The scheduler's job (``web/scheduler.py`` signature); the session is unused: files only."""
    removed = remove_stale_upload_files(
        settings.upload_tmp_dir, older_than_s=settings.stale_upload_s, now=now.timestamp()
    )
    if removed:
        log.info("removed %d stale temporary upload file(s) from %s", removed, settings.upload_tmp_dir)
    return removed


# --- blobs against rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactRef:
    """Which release an artifact row belongs to, for a finding an operator acts on."""

    release_id: str
    model: str
    version: str
    kind: str


@dataclass
class OrphanBlob:
    """A blob no artifact row points at. ``removed`` with ``--fix``; ``kept`` says why not."""

    key: str
    size: int
    modified: datetime
    removed: bool = False
    kept: str | None = None


@dataclass(frozen=True)
class MissingBlob:
    key: str
    artifact: ArtifactRef
    size: int  # what the row says

    @property
    def advice(self) -> str:
        return (
            f"restore the file at this key from a backup, or delete release {self.artifact.release_id} "
            f"({self.artifact.model} {self.artifact.version}) and upload it again"
        )


@dataclass(frozen=True)
class SizeMismatch:
    key: str
    artifact: ArtifactRef
    expected: int  # the row's size (the upload's; its CRC32 and SHA-256 are of those bytes)
    actual: int

    @property
    def advice(self) -> str:
        return (
            f"devices would reject this file (its checksums cannot match): restore it from a backup, or delete "
            f"release {self.artifact.release_id} ({self.artifact.model} {self.artifact.version}) and upload it again"
        )


@dataclass
class StorageReport:
    blobs: int = 0  # listed under BLOB_PREFIX
    artifacts: int = 0  # rows
    grace_s: float = DEFAULT_GRACE_S
    fix: bool = False
    orphans: list[OrphanBlob] = field(default_factory=list)
    missing: list[MissingBlob] = field(default_factory=list)
    size_mismatches: list[SizeMismatch] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        """Findings still wrong after this run (a removed orphan is not)."""
        return sum(not o.removed for o in self.orphans) + len(self.missing) + len(self.size_mismatches)

    @property
    def ok(self) -> bool:
        return self.remaining == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "remaining": self.remaining,
            "blobs": self.blobs,
            "artifacts": self.artifacts,
            "fix": self.fix,
            "grace_s": self.grace_s,
            "orphans": [{**asdict(o), "modified": o.modified.isoformat()} for o in self.orphans],
            "missing": [{**asdict(m), "advice": m.advice} for m in self.missing],
            "size_mismatches": [{**asdict(s), "advice": s.advice} for s in self.size_mismatches],
        }


def check_storage(
    session: Session,
    store: BlobStore,
    *,
    fix: bool,
    grace_s: float = DEFAULT_GRACE_S,
    now: datetime,
    on_listed: Callable[[int], None] | None = None,
) -> StorageReport:
    """Compare the blobs under ``firmware/`` with the artifact rows; with ``fix``, delete orphan blobs last
    written more than ``grace_s`` before ``now``. Never changes a row. ``on_listed(n)`` is called as blobs
    are listed (a progress display for a big store).

    Order matters for a server that keeps running meanwhile: the store is listed first and the rows read
    after, so an upload committed in between is not an orphan; a row whose blob was not listed is looked
    up once more (its blob may have been stored after the listing passed it). An upload between storing
    its blob and committing its row does show as an orphan, a fresh one: the grace period keeps ``fix``
    away from it.
    """
    report = StorageReport(grace_s=grace_s, fix=fix)
    blobs: dict[str, BlobInfo] = {}
    for blob in store.list_blobs(BLOB_PREFIX):
        blobs[blob.key] = blob
        if on_listed is not None:
            on_listed(len(blobs))
    report.blobs = len(blobs)

    if not session.in_transaction():  # read only: no need for SQLite's write lock
        session.connection(execution_options={"sqlite_begin": "DEFERRED"})
    rows = session.execute(
        select(Artifact.storage_key, Artifact.size, Artifact.kind, Release.id, Release.model, Release.version)
        .join(Release, Artifact.release_id == Release.id)
        .order_by(Release.model, Release.created_at, Artifact.kind)
    ).all()
    report.artifacts = len(rows)
    known: set[str] = set()
    for key, size, kind, release_id, model, version in rows:
        known.add(key)
        ref = ArtifactRef(release_id=release_id, model=model, version=version, kind=kind)
        listed = blobs.get(key)
        if listed is None:
            if not store.exists(key):
                report.missing.append(MissingBlob(key=key, artifact=ref, size=size))
        elif listed.size != size:
            report.size_mismatches.append(SizeMismatch(key=key, artifact=ref, expected=size, actual=listed.size))

    cutoff = now - timedelta(seconds=grace_s)
    for key in sorted(blobs.keys() - known):
        unclaimed = blobs[key]
        orphan = OrphanBlob(key=key, size=unclaimed.size, modified=unclaimed.modified)
        report.orphans.append(orphan)
        if not fix:
            continue
        if unclaimed.modified > cutoff:
            orphan.kept = f"written less than {grace_s:g} s ago: an upload may still commit it"
            continue
        try:
            store.delete(key)
        except Exception as exc:  # keep going; the finding stays and the exit code says so
            log.exception("could not delete orphan blob %s", key)
            orphan.kept = f"delete failed: {exc}"
        else:
            orphan.removed = True
            log.info("deleted orphan blob %s (%d bytes, written %s)", key, orphan.size, orphan.modified.isoformat())
    return report
