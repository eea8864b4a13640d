from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bota_ota.core.database import Base, UTCDateTime, new_id, utcnow

ARTIFACT_KINDS = ("bin", "ufw")


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("model", "version_key", name="uq_releases_model_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[str] = mapped_column(String(64))  # as uploaded, e.g. "v1.0.1"
    version_key: Mapped[str] = mapped_column(String(64))  # normalised: no leading "v", e.g. "1.0.1"
    notes: Mapped[str] = mapped_column(Text, default="")
    released: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    # Overrides of the server's delivery policy for this release's assignments (firmware/policy.py).
    delivery_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Anti-rollback: part of the signed bytes; a device never installs an image below its own counter.
    security_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Marked by an admin: the model's floor is the highest security_version of its floor releases.
    security_floor: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="release", cascade="all, delete-orphan", lazy="selectin", order_by="Artifact.kind"
    )

    def artifact(self, kind: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind), None)


class Artifact(Base):
    """One stored firmware file of a release: the .bin (HTTP OTA) or the .ufw (BLE OTA)."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("release_id", "kind", name="uq_artifacts_release_kind"),
        CheckConstraint("kind in ('bin','ufw')", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(512), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    crc32: Mapped[int] = mapped_column(BigInteger)  # zlib.crc32, unsigned
    sha256: Mapped[str] = mapped_column(String(64))
    # Ed25519 over firmware/signing.py's canonical bytes (base64), and the trusted key that verified it.
    signature: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(16), index=True)

    release: Mapped[Release] = relationship(back_populates="artifacts")


class SigningKey(Base):
    """A trusted public key for release signatures, for some models. Never deleted: revoked."""

    __tablename__ = "signing_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)  # firmware/signing.py key_id
    name: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[str] = mapped_column(Text)  # PEM, SubjectPublicKeyInfo
    models: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class ModelSettings(Base):
    """Per-model settings an admin changes at run time (a model without a row has the defaults)."""

    __tablename__ = "model_settings"

    model: Mapped[str] = mapped_column(String(32), primary_key=True)
    require_signed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))
