"""Firmware releases: create from an uploaded form, list, look up, delete."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise
from bota_ota.core.device_models import DEVICE_MODELS, check_model
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.firmware.models import ARTIFACT_KINDS, Artifact, Release
from bota_ota.firmware.schemas import ArtifactOut, ReleaseOut
from bota_ota.firmware.upload import ParsedForm
from bota_ota.firmware.versions import InvalidVersion, normalize_version, version_sort_key
from bota_ota.ota.models import Assignment
from bota_ota.storage import BlobStore

log = logging.getLogger(__name__)

NOTES_LIMIT = 10_000


def _parse_bool(text: str, field: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValidationFailed(f"{field} must be true or false", field=field)


def validate_form(form: ParsedForm) -> tuple[str, str, str, bool]:
    """Check the text fields and files of an upload; return (version, model, notes, released)."""
    allowed = {"version", "model", "notes", "draft"}
    for name in form.fields:
        if name not in allowed:
            raise ValidationFailed(f"unexpected field {name!r}", field=name)
    if "version" not in form.fields or not form.fields["version"].strip():
        raise ValidationFailed("version is required, e.g. v1.0.1", field="version")
    version = form.fields["version"].strip()
    try:
        normalize_version(version)
    except InvalidVersion as exc:
        raise ValidationFailed(str(exc), field="version") from None
    if "model" not in form.fields:
        raise ValidationFailed(f"model is required: one of {', '.join(DEVICE_MODELS)}", field="model")
    model = check_model(form.fields["model"])
    notes = form.fields.get("notes", "").strip()
    if len(notes) > NOTES_LIMIT:
        raise ValidationFailed(f"notes must be at most {NOTES_LIMIT} characters", field="notes")
    released = not _parse_bool(form.fields.get("draft", ""), "draft")
    if not form.files:
        raise ValidationFailed(
            "send at least one firmware file: bin (HTTP OTA) and/or ufw (Bluetooth OTA)", field="bin"
        )
    for kind, received in form.files.items():
        if received.size == 0:
            raise ValidationFailed(f"the {kind} file is empty", field=kind)
        if received.filename and not received.filename.lower().endswith("." + kind):
            raise ValidationFailed(f"the {kind} file must be a .{kind} file; got {received.filename!r}", field=kind)
    return version, model, notes, released


def find_release_by_version(session: Session, model: str, version: str) -> Release | None:
    return session.scalar(
        select(Release).where(Release.model == model, Release.version_key == normalize_version(version))
    )


def create_release(session: Session, store: BlobStore, form: ParsedForm, *, actor: str) -> tuple[Release, list[str]]:
    """Insert the release and store its files. Returns the release and the storage keys written.

    The caller commits; if the commit fails it must delete the returned keys. Rows are flushed before
    any file is stored, so a duplicate version is refused before anything touches storage.
    """
    version, model, notes, released = validate_form(form)
    key = normalize_version(version)

    def duplicate() -> Conflict:
        return Conflict(f"{DEVICE_MODELS[model]} already has a release {version}", field="version")

    if find_release_by_version(session, model, version) is not None:
        raise duplicate()
    release = Release(model=model, version=version, version_key=key, notes=notes, released=released, created_by=actor)
    insert_or_raise(session, release, duplicate)
    for kind in ARTIFACT_KINDS:
        received = form.files.get(kind)
        if received is None:
            continue
        release.artifacts.append(
            Artifact(
                kind=kind,
                filename=received.filename or f"{model}-{key}.{kind}",
                storage_key=f"firmware/{model}/{release.id}/{model}-{key}.{kind}",
                size=received.size,
                crc32=received.crc32,
                sha256=received.sha256,
            )
        )
    session.flush()
    stored: list[str] = []
    try:
        for artifact in release.artifacts:
            store.put_file(artifact.storage_key, form.files[artifact.kind].path)
            stored.append(artifact.storage_key)
    except BaseException:
        delete_blobs(store, stored)
        raise
    audit.record(
        session,
        actor=actor,
        action="firmware.upload",
        target_type="release",
        target_id=release.id,
        detail={"model": model, "version": version, "files": sorted(form.files), "released": released},
    )
    return release, stored


def delete_blobs(store: BlobStore, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # keep deleting the rest; a leftover blob is logged, not fatal
            log.exception("could not delete blob %s", key)


def get_release(session: Session, release_id: str) -> Release:
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound(f"release {release_id} not found")
    return release


def list_releases(session: Session, *, model: str | None = None, released: bool | None = None) -> list[Release]:
    query = select(Release)
    if model:
        query = query.where(Release.model == check_model(model))
    if released is not None:
        query = query.where(Release.released == released)
    rows = list(session.scalars(query).all())
    # Newest version first; the second, stable sort groups them by model.
    rows.sort(key=lambda r: version_sort_key(r.version), reverse=True)
    rows.sort(key=lambda r: r.model)
    return rows


def delete_release(session: Session, store: BlobStore, release_id: str, *, actor: str) -> list[str]:
    """Delete a release that no assignment references; returns storage keys to remove after commit."""
    release = get_release(session, release_id)
    referenced = session.scalar(select(Assignment.id).where(Assignment.release_id == release_id).limit(1))
    if referenced is not None:
        raise Conflict(
            f"release {release.version} is referenced by assignments; it cannot be deleted",
            field="release_id",
        )
    keys = [a.storage_key for a in release.artifacts]
    audit.record(
        session,
        actor=actor,
        action="firmware.delete",
        target_type="release",
        target_id=release.id,
        detail={"model": release.model, "version": release.version},
    )
    try:
        with session.begin_nested():
            session.delete(release)
            session.flush()
    except IntegrityError:  # an assignment was created concurrently
        raise Conflict(f"release {release.version} is referenced by assignments", field="release_id") from None
    return keys


def update_release(
    session: Session, release_id: str, *, released: bool | None, notes: str | None, actor: str
) -> Release:
    release = get_release(session, release_id)
    changes: dict[str, object] = {}
    if released is not None and released != release.released:
        release.released = released
        changes["released"] = released
    if notes is not None:
        if len(notes) > NOTES_LIMIT:
            raise ValidationFailed(f"notes must be at most {NOTES_LIMIT} characters", field="notes")
        release.notes = notes.strip()
        changes["notes"] = True
    if changes:
        audit.record(
            session,
            actor=actor,
            action="firmware.update",
            target_type="release",
            target_id=release.id,
            detail=changes,
        )
    session.flush()
    return release


def release_out(release: Release) -> ReleaseOut:
    def art(kind: str) -> ArtifactOut | None:
        a = release.artifact(kind)
        return ArtifactOut.model_validate(a) if a else None

    return ReleaseOut(
        id=release.id,
        version=release.version,
        model=release.model,
        notes=release.notes,
        released=release.released,
        created_at=release.created_at,
        created_by=release.created_by,
        bin=art("bin"),
        ufw=art("ufw"),
    )


def referenced_release_ids(session: Session, release_ids: Sequence[str]) -> set[str]:
    """Which of these releases some assignment references (and so cannot be deleted)."""
    if not release_ids:
        return set()
    return set(session.scalars(select(Assignment.release_id).where(Assignment.release_id.in_(release_ids)).distinct()))
