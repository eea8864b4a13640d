"""The heartbeat's write step: the whole heartbeat written at once, with the device and its active
assignment locked and the plan made again from the locked rows (another request may have moved them since
the read step), and, on SQLite, group commit.

Group commit (SQLite only): SQLite has one writer at a time, so during a rollout — thousands of devices
each being delivered, reporting progress, being applied — heartbeat writes queue for the write slot one
transaction each: BEGIN, the device and assignment reads, the updates, the event, COMMIT, each statement a
hop between the worker thread and the busy event loop. Instead, this instance collects the heartbeats
waiting to write and runs them in one transaction, each inside its own SAVEPOINT (a heartbeat that fails
rolls back alone and gets its own error), and commits once. A heartbeat's reply is sent only after the
COMMIT that stored it, exactly as before; under light load a batch is one heartbeat.

PostgreSQL runs writes side by side, so there each heartbeat keeps its own short transaction (a batch
would hold its row locks longer and order them by arrival, not by id, across instances).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from bota_ota.core.errors import Unauthorized
from bota_ota.devices.models import Device
from bota_ota.devices.service import record_device_event
from bota_ota.firmware.models import Release
from bota_ota.heartbeat.presence import apply_telemetry
from bota_ota.heartbeat.reply import HeartbeatCall, build_reply
from bota_ota.heartbeat.rules import MANIFEST_OUTCOMES, BinRef, Plan, plan_heartbeat
from bota_ota.heartbeat.schemas import Heartbeat, HeartbeatReply, OtaManifest
from bota_ota.ota import service
from bota_ota.ota.models import Assignment
from bota_ota.ota.service import AttemptRules

log = logging.getLogger(__name__)


def heartbeat_with_writes(session: Session, call: HeartbeatCall, now: datetime) -> HeartbeatReply:
    """The whole heartbeat, written at once, with the device and its active assignment locked."""
    device = session.scalar(
        select(Device).where(Device.token_hash == call.token_hash).options(lazyload(Device.owner)).with_for_update()
    )
    if device is None:
        raise Unauthorized("the device token is unknown (rotated or never issued)")
    hb = call.hb
    assignment = service.active_assignment(session, device.id, lock=True)
    # The .bin: for the storage check of a pending assignment (the delivery policy) and for a manifest.
    bin_ref = _bin(session, call, assignment) if assignment is not None and assignment.status == "pending" else None
    plan = plan_heartbeat(device, assignment, hb, now, call.policy, bin_ref.size if bin_ref is not None else None)
    if device.ble_connected:  # the device speaks for itself again: BLE mode is over
        record_device_event(session, device.id, "ble.disconnected", reason="device heartbeat")
    apply_telemetry(device, hb, via_ble=False, now=now, pending=call.buffer.peek(device.id))
    if plan.outcome in MANIFEST_OUTCOMES and bin_ref is None and assignment is not None:
        bin_ref = _bin(session, call, assignment)
    reply = build_reply(assignment, bin_ref, plan, call.signer, call.interval_s)
    if assignment is not None:
        _record(assignment, hb, plan, reply.ota, now, call.attempts)
    return reply


def _bin(session: Session, call: HeartbeatCall, assignment: Assignment) -> BinRef | None:
    """The .bin of the assignment's release: the one the read step found, or loaded (None: it has none)."""
    if call.known_bin is not None and call.known_bin[0] == assignment.release_id:
        return call.known_bin[1]
    release = session.get(Release, assignment.release_id)
    artifact = release.artifact("bin") if release else None
    if artifact is None:
        return None
    assert release is not None
    return BinRef(
        artifact.storage_key,
        artifact.size,
        artifact.crc32,
        artifact.sha256,
        artifact.signature,
        artifact.key_id,
        release.security_version,
    )


def _record(
    assignment: Assignment, hb: Heartbeat, plan: Plan, manifest: OtaManifest | None, now: datetime, rules: AttemptRules
) -> None:
    """Write what the plan says happened to the assignment (its row is locked)."""
    if plan.deferral_changed:
        assignment.deferred = plan.deferral
        if plan.deferral is not None:
            service.add_event(assignment, "deferred", reason=plan.deferral)
    if plan.outcome == "apply":
        service.mark_applied(assignment, reported_version=hb.firmware_version, channel="http")
        return
    if plan.outcome == "supersede":
        service.mark_superseded(assignment, reported_version=hb.firmware_version, channel="http")
        return
    if plan.outcome == "fail":
        assert hb.ota is not None
        error = (hb.ota.error or "unknown").strip() or "unknown"
        service.report_failure(assignment, error=error, rules=rules, channel="http")
        return
    if plan.outcome == "rollback":
        service.end_attempt(
            assignment,
            error="rolled_back",
            kind="rolled_back",
            rules=rules,
            channel="http",
            reported_version=hb.firmware_version,
            last_state=assignment.ota_state,
        )
        return
    if plan.progress is not None:
        if plan.progress.state != assignment.ota_state:
            service.add_event(assignment, "progress", state=plan.progress.state, progress=plan.progress.progress)
        assignment.ota_state = plan.progress.state
        assignment.progress = plan.progress.progress
        assignment.progress_at = now
    if plan.outcome in ("deliver", "redeliver"):
        assert manifest is not None
        assignment.delivery_count += 1
        assignment.delivery_expires_at = manifest.expires_at
        if plan.outcome == "deliver":
            assignment.status = "delivered"
            assignment.channel = "http"
            assignment.delivered_at = now
            assignment.retry_at = None
            attempt: dict[str, Any] = {"attempt": assignment.attempts + 1} if assignment.attempts else {}
            expires_at = manifest.expires_at.isoformat()
            service.add_event(assignment, "delivered", channel="http", expires_at=expires_at, **attempt)
        else:
            expires_at = manifest.expires_at.isoformat()
            service.add_event(assignment, "redelivered", delivery=assignment.delivery_count, expires_at=expires_at)


# ---- group commit (SQLite) ----------------------------------------------------------------------

MAX_BATCH = 200  # heartbeats per transaction: bounds the time the write slot is held


Job = tuple[HeartbeatCall, "asyncio.Future[HeartbeatReply]"]


def write_batch(session: Session, calls: list[HeartbeatCall]) -> list[HeartbeatReply | Exception]:
    """Each call in its own savepoint of one transaction (the caller commits). Exceptions are returned,
    not raised: one bad heartbeat must not fail the others."""
    results: list[HeartbeatReply | Exception] = []
    for call in calls:
        try:
            with session.begin_nested():
                results.append(heartbeat_with_writes(session, call, call.received_at))
        except Exception as exc:
            results.append(exc)
    return results


class WriteBatcher:
    """One per app instance; ``run`` is started by ``HeartbeatRuntime.start`` (``runtime.py``)."""

    def __init__(self, sessions: Callable[[], Session], admit: Callable[[], AbstractAsyncContextManager[None]]) -> None:
        self._sessions = sessions
        self._admit = admit  # the write gate and a database slot, as for every other writer
        self._queue: list[Job] = []
        self._wake = asyncio.Event()
        self.running = False
        self.batches = 0
        self.written = 0
        self.in_flight = 0  # heartbeats of the batch being written

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def submit(self, call: HeartbeatCall) -> HeartbeatReply:
        future: asyncio.Future[HeartbeatReply] = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._write(batch)
        finally:
            self.running = False
            for _call, future in self._queue:  # stopped (shutdown): nothing is left waiting for ever
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
            self._queue = []

    async def _write(self, batch: list[Job]) -> None:
        calls = [call for call, _future in batch]
        self.in_flight = len(batch)

        def work() -> list[HeartbeatReply | Exception]:
            with self._sessions() as session, session.begin():
                return write_batch(session, calls)

        try:
            async with self._admit():
                results: list[HeartbeatReply | Exception] = await to_thread.run_sync(work)
        except Exception as exc:  # BEGIN or COMMIT failed: none of them was stored
            log.warning("a batch of %d heartbeat writes failed: %s", len(batch), exc)
            results = [exc] * len(batch)
        self.batches += 1
        self.written += len(batch)
        self.in_flight = 0
        for (_call, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled meanwhile (the client went away)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
