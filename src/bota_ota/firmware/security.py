"""What makes a release unfit to install whatever anyone asks: a signature by a revoked key, or a security
version below its model's floor (docs/security.md). ``allow_downgrade`` does not override either."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.core.errors import ValidationFailed
from bota_ota.firmware.models import Release, SigningKey


def security_floor(session: Session, model: str) -> int:
    """The model's floor: the highest ``security_version`` among its releases marked as the floor (0 if none)."""
    value = session.scalar(
        select(func.max(Release.security_version)).where(Release.model == model, Release.security_floor.is_(True))
    )
    return int(value or 0)


def revoked_keys(session: Session, key_ids: set[str]) -> set[str]:
    if not key_ids:
        return set()
    rows = session.scalars(
        select(SigningKey.key_id).where(SigningKey.key_id.in_(key_ids), SigningKey.revoked_at.is_not(None))
    )
    return set(rows)


def unfit_reason(session: Session, release: Release, *, floor: int | None = None) -> str | None:
    """Why this release may not be assigned, deployed or offered, in words for an operator; None if it may."""
    revoked = revoked_keys(session, {a.key_id for a in release.artifacts if a.key_id})
    floor = security_floor(session, release.model) if floor is None else floor
    return reason_for(release, revoked=revoked, floor=floor)


def reason_for(release: Release, *, revoked: set[str], floor: int) -> str | None:
    """``unfit_reason`` given what it reads: the revoked key ids (any superset of the release's) and the
    model's floor. For pages that judge many releases with one query for each."""
    own = sorted({a.key_id for a in release.artifacts if a.key_id} & revoked)
    if own:
        return f"release {release.version} is signed by a revoked key ({', '.join(own)})"
    if release.security_version < floor:
        return (
            f"release {release.version} has security version {release.security_version}, below the "
            f"{release.model} security floor {floor}"
        )
    return None


def security_floors(session: Session) -> dict[str, int]:
    """Every model's floor that is above 0, in one query."""
    rows = session.execute(
        select(Release.model, func.max(Release.security_version))
        .where(Release.security_floor.is_(True))
        .group_by(Release.model)
    )
    return {model: int(value or 0) for model, value in rows}


def unfit_reasons(session: Session, releases: Sequence[Release]) -> dict[str, str | None]:
    """``unfit_reason`` of each release (by id), with two queries whatever their number."""
    revoked = revoked_keys(session, {a.key_id for r in releases for a in r.artifacts if a.key_id})
    floors = security_floors(session) if releases else {}
    return {r.id: reason_for(r, revoked=revoked, floor=floors.get(r.model, 0)) for r in releases}


def check_installable(session: Session, release: Release, *, field: str = "release_id") -> None:
    """Raise 422 naming ``field`` when the release may not be installed (revoked key, below the floor)."""
    reason = unfit_reason(session, release)
    if reason is not None:
        raise ValidationFailed(reason + "; it cannot be assigned or deployed", field=field)
