"""Group commit of heartbeat writes on SQLite (ota/write_batch.py): heartbeats waiting for the write slot
are committed in one transaction, each in its own savepoint."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bota_ota.core.database import utcnow
from bota_ota.core.errors import Unauthorized
from bota_ota.core.security import hash_token
from bota_ota.heartbeat.reply import HeartbeatCall, ManifestSigner
from bota_ota.heartbeat.schemas import Heartbeat, HeartbeatReply
from bota_ota.heartbeat.write import write_batch
from tests.support.factories import ApiClient, heartbeat


def _batcher(app: Any) -> Any:
    batcher = app.state.heartbeat.batcher
    if batcher is None:
        pytest.skip("PostgreSQL runs heartbeat writes side by side: no batching")
    deadline = time.monotonic() + 10
    while not batcher.running:
        assert time.monotonic() < deadline, "the batcher never started"
        time.sleep(0.01)
    return batcher


def test_heartbeats_waiting_to_write_are_committed_together(admin: ApiClient, app: Any, client: TestClient) -> None:
    batcher = _batcher(app)
    gate = app.state.ctx.write_gate
    devices = [admin.device() for _ in range(10)]
    batches, written = batcher.batches, batcher.written

    async def hold() -> None:
        await gate.acquire()

    async def release() -> None:
        gate.release()

    client.portal.call(hold)  # another writer holds SQLite's write slot
    released = False
    try:
        with ThreadPoolExecutor(10) as pool:
            # First heartbeats are written at once (the device turns "seen"): ten writes.
            replies = [pool.submit(heartbeat, client, d["token"], battery=50 + n) for n, d in enumerate(devices)]
            deadline = time.monotonic() + 30
            # The first batch was taken (one or a few, as they arrived) and waits for the slot; the rest queue.
            while batcher.waiting + batcher.in_flight < 10:
                assert time.monotonic() < deadline, f"only {batcher.waiting + batcher.in_flight} heartbeats queued"
                time.sleep(0.01)
            client.portal.call(release)
            released = True
            assert [r.result(timeout=30).status_code for r in replies] == [200] * 10
    finally:
        if not released:  # a failed assertion must not leave the heartbeats (and the teardown) waiting
            client.portal.call(release)
    # Ten writes, at most two transactions: the one that was waiting, and everything queued behind it.
    assert batcher.written - written == 10
    assert 1 <= batcher.batches - batches <= 2
    for n, dev in enumerate(devices):
        got = admin.get(f"/api/v1/devices/{dev['id']}").json()
        assert got["last_seen_at"] is not None and got["battery"] == 50 + n


def test_one_failing_heartbeat_does_not_fail_its_batch(
    admin: ApiClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = app.state.ctx
    runtime = app.state.heartbeat
    good = admin.device()

    def call(token: str) -> HeartbeatCall:
        return HeartbeatCall(
            token_hash=hash_token(token),
            hb=Heartbeat(firmware_version="v1.0.3", battery=33),
            signer=ManifestSigner(store=ctx.store, base_url=lambda: "http://testserver/", ttl_s=60),
            buffer=runtime.buffer,
            interval_s=60,
            received_at=utcnow(),
        )

    other = admin.device()
    dropped: list[set[str]] = []
    monkeypatch.setattr(runtime.cache, "drop", lambda ids: dropped.append(set(ids)))
    with ctx.sessions() as session, session.begin():
        results = write_batch(session, [call(other["token"]), call("bota_dt_unknown"), call(good["token"])])
    # The failed savepoint rolled back alone: after the one COMMIT, both devices leave this instance's cache.
    # Only the after-COMMIT drop names both at once (on PostgreSQL the LISTEN connection also drops each one).
    assert {good["id"], other["id"]} in dropped
    results = results[1:]
    assert isinstance(results[0], Unauthorized)
    assert isinstance(results[1], HeartbeatReply)
    got = admin.get(f"/api/v1/devices/{good['id']}").json()
    assert (got["firmware_version"], got["battery"]) == ("v1.0.3", 33)
