"""The audit trail every domain writes to: append-only rows of management actions.

``record`` adds an entry in the caller's transaction, so it lands if and only if the action does. Reading
the trail (filters, the API and the portal page) is the ``audit`` domain's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, Session, mapped_column

from bota_ota.core.database import Base, UTCDateTime, utcnow


class AuditEntry(Base):
    """Append-only record of management actions. Nothing updates or deletes these rows."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an audit entry in the caller's transaction: it lands if and only if the action does."""
    entry = AuditEntry(actor=actor, action=action, target_type=target_type, target_id=target_id, detail=detail or {})
    session.add(entry)
    return entry
