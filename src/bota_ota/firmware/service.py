"""Firmware releases: create from a received upload (signatures checked), list, look up, mark as the
security floor, delete."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise
from bota_ota.core.device_models import DEVICE_MODELS, check_model
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.firmware import keys, security
from bota_ota.firmware.models import ARTIFACT_KINDS, Artifact, Release
from bota_ota.firmware.schemas import ArtifactOut, NewRelease, ReleaseOut
from bota_ota.firmware.signing import MAX_SECURITY_VERSION, SignedFields
from bota_ota.firmware.versions import InvalidVersion, normalize_version, version_sort_key
from bota_ota.storage import BlobStore
from bota_ota.transparency import service as transparency

log = logging.getLogger(__name__)

NOTES_LIMIT = 10_000


class Unset:
    """The type of ``UNSET``: an argument not given (None is a value)."""


UNSET = Unset()


def check_new_release(new: NewRelease) -> tuple[str, str, str]:
    """Check a new release's version, model, notes and files; return (version, model, notes) cleaned."""
    version = new.version.strip()
    if not version:
        raise ValidationFailed("version is required, e.g. v1.0.1", field="version")
    try:
        normalize_version(version)
    except InvalidVersion as exc:
        raise ValidationFailed(str(exc), field="version") from None
    model = check_model(new.model)
    notes = new.notes.strip()
    if len(notes) > NOTES_LIMIT:
        raise ValidationFailed(f"notes must be at most {NOTES_LIMIT} characters", field="notes")
    if not new.files:
        raise ValidationFailed(
            "send at least one firmware file: bin (HTTP OTA) and/or ufw (Bluetooth OTA)", field="bin"
        )
    for received in new.files:
        kind = received.kind
        if kind not in ARTIFACT_KINDS:
            raise ValidationFailed(
                f"unexpected file {kind!r}; firmware files are {' and '.join(ARTIFACT_KINDS)}", field=kind
            )
        if received.size == 0:
            raise ValidationFailed(f"the {kind} file is empty", field=kind)
        if received.filename and not received.filename.lower().endswith("." + kind):
            raise ValidationFailed(f"the {kind} file must be a .{kind} file; got {received.filename!r}", field=kind)
    if not 0 <= new.security_version <= MAX_SECURITY_VERSION:
        raise ValidationFailed(
            f"security_version must be a whole number from 0 to {MAX_SECURITY_VERSION}", field="security_version"
        )
    for kind, raw in new.signatures.items():
        if kind not in ARTIFACT_KINDS:
            raise ValidationFailed(f"unexpected signature {kind}_sig", field=f"{kind}_sig")
        if new.file(kind) is None:
            raise ValidationFailed(
                f"{kind}_sig is the signature of the .{kind} file, but no {kind} file was sent", field=f"{kind}_sig"
            )
        if not raw.strip():
            raise ValidationFailed(f"the {kind}_sig signature file is empty", field=f"{kind}_sig")
    return version, model, notes


def check_signatures(session: Session, new: NewRelease, *, model: str, version: str) -> dict[str, tuple[str, str]]:
    """Each file's signature (base64) and the trusted key that verified it, by kind. 422 naming
    ``bin_sig``/``ufw_sig`` for a signature that verifies under no trusted key of the model, or for a file
    without one when the model requires signed releases. Reads only: nothing is stored before this."""
    required = keys.requires_signed(session, model)
    verified: dict[str, tuple[str, str]] = {}
    for received in sorted(new.files, key=lambda f: ARTIFACT_KINDS.index(f.kind)):
        kind = received.kind
        raw = new.signatures.get(kind)
        if raw is None:
            if required:
                raise ValidationFailed(
                    f"{DEVICE_MODELS[model]} requires signed releases: send {kind}_sig, the signature of the "
                    f".{kind} file (bota-ota sign)",
                    field=f"{kind}_sig",
                )
            continue
        fields = SignedFields(model, version, new.security_version, received.size, received.sha256)
        verified[kind] = keys.check_signature(session, raw, fields, field=f"{kind}_sig", what=f".{kind}")
    return verified


def find_release_by_version(session: Session, model: str, version: str) -> Release | None:
    return session.scalar(
        select(Release).where(Release.model == model, Release.version_key == normalize_version(version))
    )


def create_release(session: Session, store: BlobStore, new: NewRelease, *, actor: str) -> tuple[Release, list[str]]:
    """Insert the release and store its files. Returns the release and the storage keys written.

    The caller commits; if the commit fails it must delete the returned keys. Rows are flushed before
    any file is stored, so a duplicate version is refused before anything touches storage.
    """
    version, model, notes = check_new_release(new)
    released = not new.draft
    key = normalize_version(version)

    def duplicate() -> Conflict:
        return Conflict(f"{DEVICE_MODELS[model]} already has a release {version}", field="version")

    if find_release_by_version(session, model, version) is not None:
        raise duplicate()
    signatures = check_signatures(session, new, model=model, version=version)
    release = Release(
        model=model,
        version=version,
        version_key=key,
        notes=notes,
        released=released,
        created_by=actor,
        security_version=new.security_version,
        security_floor=False,
    )
    insert_or_raise(session, release, duplicate)
    sources: list[tuple[Artifact, Path]] = []
    for kind in ARTIFACT_KINDS:
        received = new.file(kind)
        if received is None:
            continue
        artifact = Artifact(
            kind=kind,
            filename=received.filename or f"{model}-{key}.{kind}",
            storage_key=f"firmware/{model}/{release.id}/{model}-{key}.{kind}",
            size=received.size,
            crc32=received.crc32,
            sha256=received.sha256,
        )
        if kind in signatures:
            artifact.signature, artifact.key_id = signatures[kind]
        release.artifacts.append(artifact)
        sources.append((artifact, received.path))
    session.flush()
    stored: list[str] = []
    try:
        for artifact, path in sources:
            store.put_file(artifact.storage_key, path)
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
        detail={
            "model": model,
            "version": version,
            "files": sorted(f.kind for f in new.files),
            "released": released,
            "security_version": new.security_version,
            "signed": {kind: kid for kind, (_sig, kid) in sorted(signatures.items())},
        },
    )
    if released:  # published: in the public release log, in this transaction (a draft is not, until released)
        transparency.record_release(session, release)
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
    """Delete a release that no assignment references; returns storage keys to remove after commit.

    The database is the judge: ``assignments.release_id`` references the release with ON DELETE RESTRICT
    (SQLite runs with foreign keys on), so a release any assignment points at, even one created a moment
    ago by another request, is refused. The delete runs in a savepoint so that refusal leaves the
    caller's transaction usable.
    """
    release = get_release(session, release_id)
    model, version = release.model, release.version
    keys = [a.storage_key for a in release.artifacts]
    try:
        with session.begin_nested():
            session.delete(release)
            session.flush()
            # A published release stays in the public log; its deletion is an entry of its own (a refused
            # delete rolls the entry back with the savepoint).
            transparency.record_withdrawal(session, release, "deleted")
    except IntegrityError:
        raise Conflict(
            f"release {version} is referenced by assignments; it cannot be deleted", field="release_id"
        ) from None
    audit.record(
        session,
        actor=actor,
        action="firmware.delete",
        target_type="release",
        target_id=release_id,
        detail={"model": model, "version": version},
    )
    return keys


def update_release(
    session: Session,
    release_id: str,
    *,
    released: bool | None,
    notes: str | None,
    actor: str,
    delivery_policy: dict[str, Any] | None = None,
    security_floor: bool | None = None,
    withdraw: keys.ReleaseWithdrawal = keys.no_withdrawal,
) -> Release:
    """``delivery_policy``: overrides of the server's policy (``{}`` clears them), for assignments made after.
    ``security_floor`` marks or unmarks the release as its model's floor (the caller checked that an admin
    asks); raising the floor withdraws the model's releases below it (``withdraw``)."""
    release = get_release(session, release_id)
    changes: dict[str, object] = {}
    if security_floor is not None and security_floor != release.security_floor:
        changes.update(_mark_floor(session, release, security_floor, actor=actor, withdraw=withdraw))
    if released is not None and released != release.released:
        release.released = released
        changes["released"] = released
        if released:
            transparency.record_release(session, release)
        else:
            transparency.record_withdrawal(session, release, "unpublished")
    if notes is not None:
        if len(notes) > NOTES_LIMIT:
            raise ValidationFailed(f"notes must be at most {NOTES_LIMIT} characters", field="notes")
        release.notes = notes.strip()
        changes["notes"] = True
    if delivery_policy is not None:
        release.delivery_policy = delivery_policy or None
        changes["delivery_policy"] = delivery_policy
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


def _mark_floor(
    session: Session, release: Release, mark: bool, *, actor: str, withdraw: keys.ReleaseWithdrawal
) -> dict[str, object]:
    """Mark or unmark the floor; what changed, for the audit entry. Marking withdraws the model's releases
    below the new floor (their active assignments cancelled, their rollouts paused)."""
    before = security.security_floor(session, release.model)
    release.security_floor = mark
    session.flush()
    floor = security.security_floor(session, release.model)
    change: dict[str, object] = {"security_floor": mark, "floor": {"from": before, "to": floor}}
    if floor > before:
        below = list(
            session.scalars(select(Release.id).where(Release.model == release.model, Release.security_version < floor))
        )
        if below:
            withdrawn = withdraw(
                session,
                below,
                reason="below the security floor",
                actor=actor,
                detail={"model": release.model, "security_floor": floor},
            )
            change.update(withdrawn.as_detail())
    return change


def release_out(session: Session, release: Release, *, unfit: str | Unset | None = UNSET) -> ReleaseOut:
    """The release as the API shows it. ``unfit``: its ``security.unfit_reason`` when the caller knows it
    (``release_outs`` judges many releases at once)."""
    reason = security.unfit_reason(session, release) if isinstance(unfit, Unset) else unfit

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
        delivery_policy=release.delivery_policy,
        security_version=release.security_version,
        security_floor=release.security_floor,
        installable=reason is None,
        unfit_reason=reason,
    )


def release_outs(session: Session, releases: Sequence[Release]) -> list[ReleaseOut]:
    reasons = security.unfit_reasons(session, releases)
    return [release_out(session, r, unfit=reasons[r.id]) for r in releases]
