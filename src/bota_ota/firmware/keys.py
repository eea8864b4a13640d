"""Trusted signing keys, per-model settings, and checking an upload's signatures (docs/security.md).

The server holds public keys only. A key is trusted for the models it names until an admin revokes it;
a revoked key is kept (never deleted) so that the releases it signed can still be told apart. Revoking
makes those releases unfit to install (``security.py``): what is already on its way to devices is
withdrawn by a ``ReleaseWithdrawal`` the caller passes in, because cancelling assignments and pausing
rollouts belongs to domains above this one (the app wires ``rollouts.service.withdraw_releases``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from bota_ota.core import audit
from bota_ota.core.database import insert_or_raise, utcnow
from bota_ota.core.device_models import DEVICE_MODELS, check_model
from bota_ota.core.errors import Conflict, NotFound, ValidationFailed
from bota_ota.firmware import security, signing
from bota_ota.firmware.models import Artifact, ModelSettings, SigningKey
from bota_ota.firmware.schemas import ModelOut
from bota_ota.firmware.versions import normalize_version

NAME_LIMIT = 200


@dataclass(frozen=True)
class Withdrawn:
    """What withdrawing releases did."""

    assignments_cancelled: int = 0
    rollouts_paused: int = 0

    def as_detail(self) -> dict[str, int]:
        return {"assignments_cancelled": self.assignments_cancelled, "rollouts_paused": self.rollouts_paused}


class ReleaseWithdrawal(Protocol):
    """Stop releases that became unfit from reaching devices: cancel their active assignments (event detail
    ``reason`` plus ``detail``) and pause their scheduled and running rollouts, in the caller's transaction."""

    def __call__(
        self, session: Session, release_ids: Sequence[str], *, reason: str, actor: str, detail: dict[str, Any]
    ) -> Withdrawn: ...


def no_withdrawal(
    session: Session, release_ids: Sequence[str], *, reason: str, actor: str, detail: dict[str, Any]
) -> Withdrawn:
    """For callers with nothing to withdraw (tests of this layer alone)."""
    return Withdrawn()


# ---- signing keys ---------------------------------------------------------------------------------------


def _check_models(models: Sequence[str]) -> list[str]:
    if not models:
        raise ValidationFailed(f"name at least one model: {', '.join(DEVICE_MODELS)}", field="models")
    checked: list[str] = []
    for i, model in enumerate(models):
        slug = check_model(model, field=f"models.{i}")
        if slug not in checked:
            checked.append(slug)
    return checked


def add_signing_key(session: Session, *, name: str, public_key: str, models: Sequence[str], actor: str) -> SigningKey:
    """Trust a public key for these models. 409 if a key with its id is registered (revoked or not)."""
    name = name.strip()
    if not name or len(name) > NAME_LIMIT:
        raise ValidationFailed(f"name must be 1 to {NAME_LIMIT} characters", field="name")
    try:
        key = signing.load_public_key(public_key)
    except signing.SignatureFormatError as exc:
        raise ValidationFailed(f"public_key: {exc}", field="public_key") from None
    slugs = _check_models(models)
    kid = signing.key_id(key)

    def exists() -> Conflict:
        return Conflict(f"a signing key with id {kid} is already registered", field="public_key", key_id=kid)

    if session.get(SigningKey, kid) is not None:
        raise exists()
    row = SigningKey(
        key_id=kid, name=name, public_key=signing.public_pem(key), models=slugs, created_by=actor, created_at=utcnow()
    )
    insert_or_raise(session, row, exists)
    audit.record(
        session,
        actor=actor,
        action="signing_key.create",
        target_type="signing_key",
        target_id=kid,
        detail={"name": name, "models": slugs},
    )
    return row


def list_signing_keys(session: Session) -> list[SigningKey]:
    return list(session.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.key_id)))


def get_signing_key(session: Session, key_id: str, *, lock: bool = False) -> SigningKey:
    query = select(SigningKey).where(SigningKey.key_id == key_id)
    if lock:
        query = query.with_for_update()
    key = session.scalar(query)
    if key is None:
        raise NotFound(f"signing key {key_id} not found")
    return key


def releases_signed_by(session: Session, key_id: str) -> list[str]:
    """Ids of the releases with a file whose signature this key verified."""
    return list(session.scalars(select(Artifact.release_id).where(Artifact.key_id == key_id).distinct()))


def revoke_signing_key(
    session: Session, key_id: str, *, actor: str, withdraw: ReleaseWithdrawal
) -> tuple[SigningKey, Withdrawn]:
    """Revoke a key: it verifies no more uploads, and the releases it signed can no longer be assigned,
    deployed or offered; ``withdraw`` stops them where they are under way. 409 if already revoked."""
    key = get_signing_key(session, key_id, lock=True)
    if key.revoked_at is not None:
        raise Conflict(f"signing key {key_id} was already revoked", field="key_id")
    key.revoked_at = utcnow()
    key.revoked_by = actor
    session.flush()
    releases = releases_signed_by(session, key.key_id)
    withdrawn = (
        withdraw(session, releases, reason="signing key revoked", actor=actor, detail={"key_id": key.key_id})
        if releases
        else Withdrawn()
    )
    audit.record(
        session,
        actor=actor,
        action="signing_key.revoke",
        target_type="signing_key",
        target_id=key.key_id,
        detail={"name": key.name, "releases": len(releases), **withdrawn.as_detail()},
    )
    return key, withdrawn


def trusted_keys(session: Session, model: str, *, revoked: bool = False) -> list[tuple[str, Ed25519PublicKey]]:
    """The model's keys (id, public key): the trusted ones, or with ``revoked`` the revoked ones."""
    condition = SigningKey.revoked_at.is_not(None) if revoked else SigningKey.revoked_at.is_(None)
    rows = session.scalars(select(SigningKey).where(condition).order_by(SigningKey.key_id))
    return [(row.key_id, signing.load_public_key(row.public_key)) for row in rows if model in (row.models or [])]


# ---- upload signatures ----------------------------------------------------------------------------------


def check_signature(
    session: Session, raw: bytes, fields: signing.SignedFields, *, field: str, what: str
) -> tuple[str, str]:
    """The signature (base64) and the id of the trusted key it verifies under; 422 naming ``field`` if it
    is not a signature or verifies under none. ``what`` names the file in messages (".bin")."""
    try:
        signature = signing.parse_signature(raw)
    except signing.SignatureFormatError as exc:
        raise ValidationFailed(f"{field}: {exc}", field=field) from None
    keys = trusted_keys(session, fields.model)
    for kid, key in keys:
        if signing.verify(key, signature, fields):
            return base64.b64encode(signature).decode(), kid
    where = f"{fields.model} v{normalize_version(fields.version)} security version {fields.security_version}"
    for kid, key in trusted_keys(session, fields.model, revoked=True):
        if signing.verify(key, signature, fields):
            raise ValidationFailed(
                f"the {what} signature ({field}) verifies only under signing key {kid}, which is revoked", field=field
            )
    if not keys:
        raise ValidationFailed(
            f"the {what} signature ({field}) cannot be checked: {fields.model} has no trusted signing key "
            "(register one: POST /api/v1/signing-keys or bota-ota keys add)",
            field=field,
        )
    raise ValidationFailed(
        f"the {what} signature ({field}) does not verify for {where} under any trusted key of {fields.model}: "
        "signed for another model, version or file, or by an unregistered key",
        field=field,
    )


# ---- per-model settings ---------------------------------------------------------------------------------


def requires_signed(session: Session, model: str) -> bool:
    row = session.get(ModelSettings, model)
    return bool(row and row.require_signed)


def models_out(session: Session) -> list[ModelOut]:
    settings = {row.model: row for row in session.scalars(select(ModelSettings))}
    floors = security.security_floors(session)
    keys = [k for k in list_signing_keys(session) if k.revoked_at is None]
    return [
        ModelOut(
            model=slug,
            name=name,
            require_signed=bool(settings[slug].require_signed) if slug in settings else False,
            security_floor=floors.get(slug, 0),
            trusted_keys=[k.key_id for k in keys if slug in (k.models or [])],
        )
        for slug, name in DEVICE_MODELS.items()
    ]


def model_out(session: Session, model: str) -> ModelOut:
    return next(m for m in models_out(session) if m.model == model)


def set_require_signed(session: Session, model: str, require_signed: bool, *, actor: str) -> ModelOut:
    """Upserts the model's settings row; audited when it changes."""
    if model not in DEVICE_MODELS:
        raise NotFound(f"model {model!r} not found: one of {', '.join(DEVICE_MODELS)}")
    row = session.get(ModelSettings, model)
    if row is None:
        row = ModelSettings(model=model, require_signed=False, updated_at=utcnow(), updated_by=actor)
        insert_or_raise(session, row, lambda: Conflict(f"the settings of {model} changed meanwhile; try again"))
    if row.require_signed != require_signed:
        row.require_signed = require_signed
        row.updated_at = utcnow()
        row.updated_by = actor
        audit.record(
            session,
            actor=actor,
            action="model.update",
            target_type="model",
            target_id=model,
            detail={"require_signed": require_signed},
        )
    session.flush()
    return model_out(session, model)
