"""The stalled-delivery timeout: a delivered assignment that makes no progress for too long fails.

A device that got the manifest and then never reports progress (it lost power for good, it was
unplugged, its firmware gave up without saying so) would otherwise keep its assignment active forever,
and no new assignment could be made without a manual cancel. After ``BOTA_OTA_DELIVERY_TIMEOUT_S``
(24 h by default) without a change of reported progress, the assignment becomes ``failed`` with error
``delivery_timeout``; the operator may assign again.

Run by every instance (``bota_ota.web.scheduler``). Rows are taken with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two instances sweeping at once never fail the same assignment twice (and never wait for
each other, or for a heartbeat holding the row); the status condition is checked again on the locked
row. SQLite has one writer at a time anyway.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.ota import service
from bota_ota.ota.models import Assignment

DELIVERY_TIMEOUT_ERROR = "delivery_timeout"
SWEEP_ACTOR = "system:delivery-timeout"


def fail_stalled_deliveries(session: Session, *, timeout_s: int, now: datetime, limit: int = 500) -> int:
    """Fail up to ``limit`` delivered assignments idle for ``timeout_s``; returns how many. Flushes only."""
    if timeout_s <= 0:
        return 0
    cutoff = now - timedelta(seconds=timeout_s)
    last_activity = func.coalesce(Assignment.progress_at, Assignment.delivered_at)
    stalled = session.scalars(
        select(Assignment)
        .where(Assignment.status == "delivered", last_activity < cutoff)
        .order_by(Assignment.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for assignment in stalled:
        service.mark_failed(
            assignment, error=DELIVERY_TIMEOUT_ERROR, channel=assignment.channel or "http", actor=SWEEP_ACTOR
        )
    session.flush()
    return len(stalled)
