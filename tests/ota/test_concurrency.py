"""Twenty simultaneous assignment requests at one device: exactly one wins.

The HTTP variant runs a real ``bota-ota serve`` process (on PostgreSQL when BOTA_OTA_TEST_DATABASE_URL is
set, else SQLite in its data dir) and fires the requests from 20 threads released together by a barrier.
The service variant runs ``create_assignment`` in 20 threads, each with its own session and transaction.
The "losing the race" tests replay, deterministically, the moment when another transaction commits
between a service's uniqueness check and its write, so the database constraint has to refuse it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bota_ota.core.audit import AuditEntry
from bota_ota.core.errors import Conflict
from bota_ota.devices.models import Device
from bota_ota.firmware import service as firmware_service
from bota_ota.firmware.models import Release
from bota_ota.ota import service as ota_service
from bota_ota.ota.models import Assignment
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, files_in, firmware_bytes
from tests.support.server import ServerProcess, cli, server_env

pytestmark = pytest.mark.e2e

N = 20
STARTUP_DEADLINE_S = 60  # a wait for the server to come up, not an assertion about speed


@dataclass
class Server:
    base_url: str
    admin_token: str


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    """A real ``bota-ota serve`` process on the database under test (PostgreSQL when configured)."""
    data_dir = tmp_path / "server-data"
    env = server_env(database_url if PG_URL else None, BOTA_OTA_SECRET_KEY="e2e-secret")
    created = cli(env, "token", "create", "--name", "t", "--role", "admin", "--data-dir", str(data_dir))
    admin_token = created.stdout.strip().splitlines()[-1]
    assert admin_token.startswith("bota_at_"), created.stdout
    proc = ServerProcess(data_dir=data_dir, env=env)
    try:
        proc.start("--log-level", "warning", timeout=STARTUP_DEADLINE_S)
        yield Server(base_url=proc.url, admin_token=admin_token)
    finally:
        proc.stop()


def _fire(n: int, send: Any) -> list[Any]:
    """Run send() in n threads that all start at the same moment; return results (or exceptions) in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        try:
            results[i] = send(barrier)
        except BaseException as exc:  # collected and checked by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class InvariantBroken(Exception):
    """Raised (not asserted) when more than one assignment won: the invariant the index guards."""


def _check(condition: bool, message: Any) -> None:
    if not condition:
        raise InvariantBroken(message)


def test_twenty_simultaneous_http_assignments_exactly_one_wins(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as api:
        assert api.get("/api/v1/me").json()["role"] == "admin"
        release = api.post(
            "/api/v1/firmware",
            data={"version": "v1.0.1", "model": "bota-pin"},
            files={"bin": ("fw.bin", firmware_bytes(10_000, seed=1), "application/octet-stream")},
        )
        assert release.status_code == 201, release.text
        release_id = release.json()["id"]
        device = api.post("/api/v1/devices", json={"id": "BP-RACE-1", "model": "bota-pin"})
        assert device.status_code == 201, device.text

    def send(barrier: threading.Barrier) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as c:
            c.get("/healthz")  # connect before the race starts
            barrier.wait()
            return c.post("/api/v1/devices/BP-RACE-1/assignments", json={"release_id": release_id})

    results = _fire(N, send)
    errors = [r for r in results if isinstance(r, BaseException)]
    _check(not errors, errors)
    codes = Counter(r.status_code for r in results)

    # The database invariant: exactly one request created an assignment, and exactly one row exists.
    _check(codes[201] == 1 and not any(200 <= c < 300 and c != 201 for c in codes), codes)
    winner = next(r.json() for r in results if r.status_code == 201)
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as api:
        listed = api.get("/api/v1/devices/BP-RACE-1/assignments").json()
        _check([a["id"] for a in listed] == [winner["id"]], listed)
        _check(api.get("/api/v1/devices/BP-RACE-1").json()["active_assignment"]["id"] == winner["id"], winner)
        audit = api.get("/api/v1/audit", params={"action": "assignment.create"}).json()
        _check([e["target_id"] for e in audit] == [winner["id"]], audit)

    # Every loser is told why: 409 problem JSON naming the active assignment.
    assert codes == {201: 1, 409: N - 1}, (codes, [r.text for r in results if r.status_code >= 500][:1])
    for r in results:
        if r.status_code == 409:
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["status"] == 409
            assert body["errors"][0]["field"] == "release_id"
            assert body.get("active_assignment_id", winner["id"]) == winner["id"]


def test_twenty_simultaneous_service_calls_exactly_one_commits(admin: ApiClient, sessions: Any) -> None:
    release = admin.release("v1.0.1")
    device = admin.device()

    def send(barrier: threading.Barrier) -> str:
        session = sessions()
        try:
            barrier.wait()
            assignment = ota_service.create_assignment(
                session, device_id=device["id"], release_id=release["id"], actor="test:race"
            )
            session.commit()
            return assignment.id
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    results = _fire(N, send)
    winners = [r for r in results if isinstance(r, str)]
    _check(len(winners) == 1, Counter(type(r).__name__ for r in results))
    with sessions() as session:
        rows = session.scalars(select(Assignment).where(Assignment.device_id == device["id"])).all()
        _check([a.id for a in rows] == winners and rows[0].status == "pending", rows)
        audits = session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "assignment.create")
        )
        _check(audits == 1, audits)

    others = [r for r in results if not isinstance(r, (str, Conflict))]
    assert not others, (Counter(type(r).__name__ for r in results), others[:1])
    assert sum(isinstance(r, Conflict) for r in results) == N - 1


# ---- the race window, made deterministic --------------------------------------------------------
# Another transaction commits between a service's "is it free?" check and its write. The tests below
# replay that interleaving on one thread by letting the check miss the row that is already there.


def test_assignment_losing_the_race_after_its_check_is_a_conflict(
    admin: ApiClient, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = admin.release("v1.0.1")
    device = admin.device()
    first = admin.assign(device["id"], release["id"]).json()
    real = ota_service.active_assignment
    calls: list[str] = []

    def check_misses_once(session: Any, device_id: str, *, lock: bool = False) -> Any:
        calls.append(device_id)
        return None if len(calls) == 1 else real(session, device_id, lock=lock)

    monkeypatch.setattr(ota_service, "active_assignment", check_misses_once)
    with sessions() as session, pytest.raises(Conflict) as raised:
        ota_service.create_assignment(session, device_id=device["id"], release_id=release["id"], actor="test")
    assert raised.value.extra.get("active_assignment_id", first["id"]) == first["id"]


def test_release_delete_losing_the_race_after_its_check_is_a_conflict(
    admin: ApiClient, sessions: Any, app: Any
) -> None:

    release = admin.release("v1.0.1")
    device = admin.device()
    assert admin.assign(device["id"], release["id"]).status_code == 201
    session = sessions()
    try:
        # The "is it referenced?" query misses the assignment committed a moment ago.
        session.scalar = lambda *args, **kwargs: None
        with pytest.raises(Conflict):
            firmware_service.delete_release(session, app.state.ctx.store, release["id"], actor="test")
    finally:
        session.rollback()
        session.close()
    assert admin.get(f"/api/v1/firmware/{release['id']}").status_code == 200


def test_duplicate_upload_losing_the_race_after_its_check_is_a_conflict(
    admin: ApiClient, settings: Any, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = admin.release("v1.0.1")
    blobs = files_in(settings.blob_dir)
    # The version check misses the release committed a moment ago; the unique constraint must refuse it.
    monkeypatch.setattr(firmware_service, "find_release_by_version", lambda *args, **kwargs: None)
    r = admin.upload("1.0.1")
    assert r.status_code == 409, r.text
    assert r.json()["errors"][0]["field"] == "version"
    assert files_in(settings.blob_dir) == blobs
    assert files_in(settings.upload_tmp_dir) == []
    with sessions() as session:
        assert [rel.id for rel in session.scalars(select(Release)).all()] == [first["id"]]


def test_device_registration_losing_the_race_after_its_check_is_a_conflict(
    admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = admin.device(device_id="BP-TWICE")
    real_get = Session.get

    def get_misses_devices(self: Session, entity: Any, ident: Any, **kwargs: Any) -> Any:
        return None if entity is Device else real_get(self, entity, ident, **kwargs)

    monkeypatch.setattr(Session, "get", get_misses_devices)
    r = admin.post("/api/v1/devices", json={"id": "BP-TWICE", "model": "bota-note"})
    assert r.status_code == 409, r.text
    assert r.json()["errors"][0]["field"] == "id"
    monkeypatch.undo()
    assert admin.get("/api/v1/devices/BP-TWICE").json()["model"] == first["model"]


def test_more_concurrent_writes_than_request_threads_do_not_deadlock(server: Server) -> None:
    """More simultaneous heartbeats (writes) than the server has request threads (40) all complete.

    Regression: an authentication lookup in a dependency used to begin the write transaction, which on
    SQLite held the in-process write gate while the request waited for a free thread, and every thread
    was waiting for that gate.
    """
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as api:
        tokens = [
            api.post("/api/v1/devices", json={"id": f"DL-{i:03d}", "model": "bota-pin"}).json()["token"]
            for i in range(20)
        ]

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:

            async def beat(i: int) -> int:
                r = await client.post(
                    "/api/device/v1/heartbeat",
                    json={"firmware_version": "v1.0.0", "battery": i % 100},
                    headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                )
                return r.status_code

            return await asyncio.gather(*(beat(i) for i in range(200)))

    statuses = asyncio.run(burst())
    assert statuses.count(200) == 200, sorted(set(statuses))
