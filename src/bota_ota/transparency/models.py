from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bota_ota.core.database import Base, UTCDateTime, utcnow


class LogEntry(Base):
    """One leaf of the release log. Rows are only ever inserted: ``idx`` runs 0, 1, 2, ... without gaps,
    and ``leaf`` holds the exact bytes (canonical JSON) whose RFC 9162 leaf hash is ``leaf_hash``."""

    __tablename__ = "transparency_log"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # release | withdrawal
    release_id: Mapped[str | None] = mapped_column(String(32), index=True)  # no foreign key: entries outlive rows
    leaf: Mapped[str] = mapped_column(Text)
    leaf_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
