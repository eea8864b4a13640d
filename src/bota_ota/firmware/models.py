from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, ForeignKey, String, Text, UniqueConstraint
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

    release: Mapped[Release] = relationship(back_populates="artifacts")
