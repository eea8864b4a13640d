"""(e) The rollout engine with 100,000 devices: starting a stage, and reading a rollout's detail.

On each database (SQLite, and PostgreSQL unless ``--databases`` leaves it out), in the harness's own process
for 1 and 2:

1. **A first stage of 100 %.** A fresh copy of a seed with 100,000 devices of one model on v1.0.0, of
   which every 200th already reports v1.0.1 (skipped as up to date) and another every 200th has an active
   assignment of v1.0.1 made as an operator makes one (busy), and release v1.0.1. A rollout with stages
   ``[100]`` is created through the service layer (``rollouts.service.create_rollout``, which starts stage
   1 in the same call and commits nothing itself); the clock runs from the call to the end of the COMMIT.
2. **A later stage.** Another fresh copy; a rollout with stages ``[1, 100]`` (its first stage, ~1,000
   devices, is timed too). Its assignments are then marked applied by SQL (and their devices report
   v1.0.1), so stage 1 is done; one ``engine.tick`` finds that and starts stage 2 (~99,000 devices), timed
   from the call to the end of the COMMIT. Then two more ticks with nothing to start, the second with the
   membership check (``include_new_devices``) that a running rollout makes every 30 s: what every server
   instance spends on such a rollout every ``BOTA_OTA_ROLLOUT_INTERVAL_S``.
   1 and 2 run ``--repeat`` times each, each run on a fresh copy; the table shows medians.
3. **The detail.** ``bota-ota serve`` (1 worker, its rollout loop every 600 s so only the requests run) on
   the database of the last run of 1: ``GET /api/v1/rollouts/{id}`` over one keep-alive connection, 3
   requests to warm up and 20 timed (wall time until the whole body is read), once with all ~99,000
   assignments pending, once after SQL has moved them to a realistic mix (60 % applied, 5 % failed with
   four error codes, 15 % delivered and downloading, 20 % pending).

Every stage is checked against the tables: every device placed once, assignments made = members minus
skipped (up to date, busy), the seeded skips all counted as skipped, no device with two active
assignments, one ``created`` event per assignment; and the detail's totals equal counts taken directly
from the tables.

Statements slower than 50 ms are kept in the JSON with their time (``slow``), and CPU is read for the
harness, PostgreSQL and the server. On PostgreSQL the tables are ANALYZEd before 2's tick and before each
set of detail requests, as autovacuum does within a minute of such changes (a stage is done minutes or
hours after it starts); the first stage of 1 runs on the seed's statistics, as a first rollout does.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, case, cast, event, func, select, text, update
from sqlalchemy.engine import Engine

from benchmarks import seed
from benchmarks.common import Options, Processes, Row, log, median, start_bota
from benchmarks.pg import Postgres
from benchmarks.procfs import CpuWindow
from bota_ota.core.database import make_engine, make_sessionmaker, utcnow
from bota_ota.core.settings import Settings
from bota_ota.devices.models import Device
from bota_ota.ota.models import ACTIVE_STATUSES, Assignment, AssignmentEvent
from bota_ota.rollouts import engine as rollout_engine
from bota_ota.rollouts import service
from bota_ota.rollouts.models import Rollout, RolloutDevice
from bota_ota.rollouts.schemas import RolloutCreate

STAGE_TARGET_S = 5.0
DETAIL_TARGET_MS = 300.0
UP_TO_DATE_EVERY = 200
BUSY_EVERY = 200
WARMUP_REQUESTS = 3
# The mix, by the device's number modulo 100 (SQL below): applied, failed, delivered, pending.
MIX = {"applied": 60, "failed": 5, "delivered": 15, "pending": 20}
ERRORS = ("crc_mismatch", "download_failed", "flash_write_failed", "battery_low")
SLOW_STATEMENT_S = 0.05


def run(opts: Options, procs: Processes, pg: Postgres | None) -> tuple[dict[str, Any], list[Row]]:
    raw: dict[str, Any] = {"devices": opts.stage_devices, "configs": {}}
    rows: list[Row] = []
    for database in opts.databases:
        if database == "postgres" and pg is None:
            continue
        result = run_one(opts, procs, pg if database == "postgres" else None)
        raw["configs"][database] = result
        rows.extend(_rows("SQLite" if database == "sqlite" else "PostgreSQL", result))
    return raw, rows


def _spec(n: int) -> seed.SeedSpec:
    return seed.SeedSpec(
        "stage", n, release_bin_bytes=64 * 1024, up_to_date_every=UP_TO_DATE_EVERY, busy_every=BUSY_EVERY
    )


def run_one(opts: Options, procs: Processes, pg: Postgres | None) -> dict[str, Any]:
    n = opts.stage_devices
    name = "postgres" if pg is not None else "sqlite"
    result: dict[str, Any] = {"devices": n, "runs": opts.repeat}

    # Every run on a fresh copy of the seed (on PostgreSQL, the one run database); the copy of the last
    # [100] run stays for the server of step 3.
    later_runs: list[dict[str, Any]] = []
    for _ in range(opts.repeat):
        inst = seed.instance(_spec(n), opts.scratch / "stage-later", pg)
        result["seed"] = {k: inst.meta[k] for k in ("up_to_date", "busy")}
        log(f"(e) {name}: a rollout of {n:,} devices, stages [1, 100]")
        first = create_timed(inst, pg, [1.0, 100.0], "one then all")
        later = later_stage(inst, pg, first["rollout_id"])
        later_runs.append({"first_stage": first, "later_stage": later})
        log(f"(e) {name}: its stage 2 started by a tick in {later['total_s']:.2f} s (checks {later['checks']['ok']})")
    all_runs: list[dict[str, Any]] = []
    for _ in range(opts.repeat):
        inst = seed.instance(_spec(n), opts.scratch / "stage-all", pg)
        log(f"(e) {name}: a rollout of {n:,} devices, stages [100]")
        run = create_timed(inst, pg, [100.0], "all at once")
        run["checks"] = check_stage(inst.database_url, run["rollout_id"], 0, inst.meta)
        all_runs.append(run)
        log(f"(e) {name}: stage [100] started in {run['total_s']:.2f} s (checks {run['checks']['ok']})")
    result["stage_later_runs"] = later_runs
    result["stage_all_runs"] = all_runs
    result["summary"] = {
        "stage_all_s": median([r["total_s"] for r in all_runs]),
        "stage_later_s": median([r["later_stage"]["total_s"] for r in later_runs]),
        "stage_first_1pct_s": median([r["first_stage"]["total_s"] for r in later_runs]),
        "idle_tick_s": median([r["later_stage"]["idle_tick"]["total_s"] for r in later_runs]),
        "idle_tick_membership_s": median([r["later_stage"]["idle_tick_membership"]["total_s"] for r in later_runs]),
        "checks_ok": all(r["checks"]["ok"] for r in all_runs)
        and all(r["later_stage"]["checks"]["ok"] for r in later_runs),
    }
    result["detail"] = detail(opts, procs, pg, inst, all_runs[-1]["rollout_id"])
    return result


# ---- 1 and 2: starting stages ---------------------------------------------------------------------------


class StatementLog:
    """Statements slower than SLOW_STATEMENT_S on an engine, with their time (where a stage's time goes)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.slow: list[dict[str, Any]] = []
        self.count = 0
        self.total_s = 0.0

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        took = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        self.count += 1
        self.total_s += took
        if took >= SLOW_STATEMENT_S:
            self.slow.append({"s": round(took, 3), "rows": cursor.rowcount, "sql": " ".join(statement.split())[:300]})

    @contextmanager
    def watching(self) -> Iterator[StatementLog]:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            event.remove(self.engine, "before_cursor_execute", self._before)
            event.remove(self.engine, "after_cursor_execute", self._after)

    def as_dict(self) -> dict[str, Any]:
        return {"statements": self.count, "statement_s": round(self.total_s, 3), "slow": self.slow}


def _cpu_pids(pg: Postgres | None) -> dict[str, int]:
    return {"database": pg.proc.pid} if pg is not None and pg.proc is not None else {}


def create_timed(inst: seed.Instance, pg: Postgres | None, stages: list[float], label: str) -> dict[str, Any]:
    """``service.create_rollout`` (which starts stage 0) and the COMMIT, timed."""
    engine = make_engine(inst.database_url)
    settings = Settings(data_dir=inst.data_dir, database_url=inst.database_url)
    body = RolloutCreate.model_validate(
        {"name": f"bench {label}", "release_id": inst.meta["release_id"], "target": {"filter": {}}, "stages": stages}
    )
    try:
        with make_sessionmaker(engine)() as session, StatementLog(engine).watching() as statements:
            window = CpuWindow.start(**_cpu_pids(pg))
            t0 = time.perf_counter()
            rollout = service.create_rollout(session, body, settings, actor="bench")
            t1 = time.perf_counter()
            session.commit()
            t2 = time.perf_counter()
            cpu = window.stop()
            rollout_id = rollout.id
            current = rollout.current_stage
    finally:
        engine.dispose()
    if current != 0:
        raise RuntimeError(f"create_rollout did not start stage 0 (current_stage {current})")
    return {
        "rollout_id": rollout_id,
        "stages": stages,
        "call_s": round(t1 - t0, 3),
        "commit_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "cpu": cpu,
        **statements.as_dict(),
    }


def later_stage(inst: seed.Instance, pg: Postgres | None, rollout_id: str) -> dict[str, Any]:
    """Stage 0's assignments applied (by SQL), then the tick that starts stage 1, timed; then idle ticks."""
    engine = make_engine(inst.database_url)
    settings = Settings(data_dir=inst.data_dir, database_url=inst.database_url)
    sessions = make_sessionmaker(engine)
    out: dict[str, Any] = {}
    try:
        with engine.begin() as conn:
            now = utcnow()
            stage0 = select(Assignment.device_id).where(Assignment.rollout_id == rollout_id)
            conn.execute(update(Device).where(Device.id.in_(stage0)).values(firmware_version=seed.NEW_VERSION))
            applied = conn.execute(
                update(Assignment)
                .where(Assignment.rollout_id == rollout_id)
                .values(status="applied", ota_state=None, channel="http", delivered_at=now, finished_at=now)
            ).rowcount
        out["stage0_applied"] = applied
        _analyze(pg, inst)

        with sessions() as session, StatementLog(engine).watching() as statements:
            window = CpuWindow.start(**_cpu_pids(pg))
            t0 = time.perf_counter()
            changed = rollout_engine.tick(session, settings, utcnow())
            t1 = time.perf_counter()
            session.commit()
            t2 = time.perf_counter()
            out["cpu"] = window.stop()
        out.update(changed=changed, call_s=round(t1 - t0, 3), commit_s=round(t2 - t1, 3), total_s=round(t2 - t0, 3))
        out.update(statements.as_dict())
        with sessions() as session:
            rollout = session.get(Rollout, rollout_id)
            assert rollout is not None
            out["current_stage"] = rollout.current_stage
        if out["current_stage"] != 1:
            raise RuntimeError(f"the tick did not start stage 1: {out}")
        out["checks"] = check_stage(inst.database_url, rollout_id, 1, inst.meta)

        # What a running rollout of this size costs each instance when nothing is to be started.
        _analyze(pg, inst)
        for label, offset_s in (("idle_tick", 0.0), ("idle_tick_membership", settings.rollout_membership_interval_s)):
            with sessions() as session, StatementLog(engine).watching() as statements:
                t0 = time.perf_counter()
                rollout_engine.tick(session, settings, utcnow() + timedelta(seconds=offset_s))
                session.commit()
                out[label] = {"total_s": round(time.perf_counter() - t0, 3), **statements.as_dict()}
    finally:
        engine.dispose()
    return out


def _analyze(pg: Postgres | None, inst: seed.Instance) -> None:
    """PostgreSQL: fresh planner statistics, as autovacuum makes them within a minute of big changes."""
    if pg is None:
        return
    engine = make_engine(inst.database_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def check_stage(database_url: str, rollout_id: str, stage: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Counts from the tables after stage ``stage`` (the last) started: what it placed, assigned and skipped.

    Once the last stage has started, every seeded device is a member (the target is the whole model), and
    every seeded skip (up to date, busy) is counted as one, in whichever stage it landed."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            states = dict(
                conn.execute(
                    select(RolloutDevice.state, func.count())
                    .where(RolloutDevice.rollout_id == rollout_id, RolloutDevice.stage == stage)
                    .group_by(RolloutDevice.state)
                ).all()
            )
            members = sum(states.values())
            all_states = dict(
                conn.execute(
                    select(RolloutDevice.state, func.count())
                    .where(RolloutDevice.rollout_id == rollout_id)
                    .group_by(RolloutDevice.state)
                ).all()
            )
            stage_assignments = conn.execute(
                select(func.count())
                .select_from(Assignment)
                .join(RolloutDevice, RolloutDevice.assignment_id == Assignment.id)
                .where(RolloutDevice.rollout_id == rollout_id, RolloutDevice.stage == stage)
            ).scalar_one()
            rollout_assignments = conn.execute(
                select(func.count()).where(Assignment.rollout_id == rollout_id)
            ).scalar_one()
            assignments_of_members = conn.execute(
                select(func.count(func.distinct(Assignment.device_id))).where(Assignment.rollout_id == rollout_id)
            ).scalar_one()
            twice = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT device_id FROM assignments WHERE status IN ('pending', 'delivered') "
                    "GROUP BY device_id HAVING count(*) > 1) AS t"
                )
            ).scalar_one()
            events = conn.execute(
                select(func.count())
                .select_from(AssignmentEvent)
                .join(Assignment, Assignment.id == AssignmentEvent.assignment_id)
                .where(Assignment.rollout_id == rollout_id, AssignmentEvent.kind == "created")
            ).scalar_one()
            active = conn.execute(select(func.count()).where(Assignment.status.in_(ACTIVE_STATUSES))).scalar_one()
    finally:
        engine.dispose()
    assigned = states.get("assigned", 0)
    skipped = states.get("up_to_date", 0) + states.get("busy", 0)
    checks = {
        "members": members,
        "states": states,
        "rollout_members": sum(all_states.values()),
        "assignments_made": stage_assignments,
        "rollout_assignments": rollout_assignments,
        "devices_with_two_active": int(twice),
        "created_events": events,
        "active_assignments": active,
    }
    ok = (
        assigned == stage_assignments == members - skipped
        and states.get("waiting", 0) == 0
        and rollout_assignments == assignments_of_members == events
        and twice == 0
        and sum(all_states.values()) == meta["devices"]
        and all_states.get("up_to_date", 0) == meta["up_to_date"]
        and all_states.get("busy", 0) == meta["busy"]
    )
    checks["ok"] = ok
    return checks


# ---- 3: the detail over HTTP ----------------------------------------------------------------------------


def detail(
    opts: Options, procs: Processes, pg: Postgres | None, inst: seed.Instance, rollout_id: str
) -> dict[str, Any]:
    env = {**inst.env, "BOTA_OTA_ROLLOUT_INTERVAL_S": "600"}
    server = start_bota(procs, inst.data_dir, workers=1, env=env, name="bota-ota-stage")
    out: dict[str, Any] = {"requests": opts.detail_requests, "warmup": WARMUP_REQUESTS}
    pids = {"server": server.proc.pid, **_cpu_pids(pg)}
    try:
        _analyze(pg, inst)
        out["pending"] = measure_detail(server.port, inst, rollout_id, opts.detail_requests, pids)
        log(f"(e) detail, all pending: median {out['pending']['median_ms']} ms, p95 {out['pending']['p95_ms']} ms")
        out["mix_counts"] = make_mix(inst.database_url, rollout_id)
        _analyze(pg, inst)
        out["mix"] = measure_detail(server.port, inst, rollout_id, opts.detail_requests, pids)
        log(f"(e) detail, mix: median {out['mix']['median_ms']} ms, p95 {out['mix']['p95_ms']} ms")
    finally:
        procs.stop(server.proc)
    return out


def measure_detail(
    port: int, inst: seed.Instance, rollout_id: str, requests: int, pids: dict[str, int]
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {inst.meta['api_token']}", "Accept": "application/json"}
    path = f"/api/v1/rollouts/{rollout_id}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times: list[float] = []
    body: dict[str, Any] = {}
    size = 0
    try:
        for i in range(WARMUP_REQUESTS + requests):
            if i == WARMUP_REQUESTS:
                window = CpuWindow.start(**pids)
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            data = response.read()
            took = time.perf_counter() - t0
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {data[:500]!r}")
            if i >= WARMUP_REQUESTS:
                times.append(took)
            size = len(data)
            body = json.loads(data)
        cpu = window.stop()
    finally:
        conn.close()
    expected = expected_totals(inst.database_url, rollout_id)
    totals = body["totals"]
    got = {
        "targeted": totals["targeted"],
        "assigned": totals["assigned"],
        "applied": totals["applied"],
        "failed": totals["failed"],
        "up_to_date": totals["skipped"]["up_to_date"],
        "busy": totals["skipped"]["busy"],
        "failures_by_error": body["failures_by_error"],
    }
    ordered = sorted(times)
    return {
        "median_ms": round(median(times) * 1000, 1),
        "p95_ms": round(ordered[math.ceil(0.95 * len(ordered)) - 1] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "times_ms": [round(t * 1000, 1) for t in times],
        "bytes": size,
        "cpu": cpu,
        "totals": got,
        "expected": expected,
        "ok": got == expected,
    }


def expected_totals(database_url: str, rollout_id: str) -> dict[str, Any]:
    """What the detail's totals must say, counted straight from the tables."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            states = dict(
                conn.execute(
                    select(RolloutDevice.state, func.count())
                    .where(RolloutDevice.rollout_id == rollout_id)
                    .group_by(RolloutDevice.state)
                ).all()
            )
            statuses = dict(
                conn.execute(
                    select(Assignment.status, func.count())
                    .where(Assignment.rollout_id == rollout_id)
                    .group_by(Assignment.status)
                ).all()
            )
            errors = dict(
                conn.execute(
                    select(Assignment.error, func.count())
                    .where(Assignment.rollout_id == rollout_id, Assignment.status == "failed")
                    .group_by(Assignment.error)
                ).all()
            )
    finally:
        engine.dispose()
    return {
        "targeted": sum(states.values()),
        "assigned": sum(statuses.values()),
        "applied": statuses.get("applied", 0),
        "failed": statuses.get("failed", 0),
        "up_to_date": states.get("up_to_date", 0),
        "busy": states.get("busy", 0),
        "failures_by_error": {str(k): v for k, v in errors.items()},
    }


def make_mix(database_url: str, rollout_id: str) -> dict[str, int]:
    """Move the rollout's assignments to a realistic mix by the device's number (BENCH-000123 → 23)."""
    number = cast(func.substr(Assignment.device_id, 7), Integer) % 100
    applied_below = MIX["applied"]
    failed_below = applied_below + MIX["failed"]
    delivered_below = failed_below + MIX["delivered"]
    error = case(*((number % len(ERRORS) == i, e) for i, e in enumerate(ERRORS)))
    ours = Assignment.rollout_id == rollout_id
    engine = make_engine(database_url)
    now = utcnow()
    try:
        with engine.begin() as conn:
            conn.execute(
                update(Assignment)
                .where(ours, number < applied_below)
                .values(
                    status="applied",
                    ota_state=None,
                    channel="http",
                    delivered_at=now,
                    finished_at=now,
                    delivery_count=1,
                )
            )
            conn.execute(
                update(Assignment)
                .where(ours, number >= applied_below, number < failed_below)
                .values(
                    status="failed",
                    ota_state="failed",
                    channel="http",
                    delivered_at=now,
                    finished_at=now,
                    delivery_count=1,
                    error=error,
                )
            )
            conn.execute(
                update(Assignment)
                .where(ours, number >= failed_below, number < delivered_below)
                .values(
                    status="delivered",
                    ota_state="downloading",
                    channel="http",
                    progress=40,
                    delivered_at=now,
                    delivery_count=1,
                )
            )
            counts = dict(
                conn.execute(select(Assignment.status, func.count()).where(ours).group_by(Assignment.status)).all()
            )
    finally:
        engine.dispose()
    return {str(k): int(v) for k, v in counts.items()}


# ---- rows -----------------------------------------------------------------------------------------------


def _rows(db: str, r: dict[str, Any]) -> list[Row]:
    n, summary = r["devices"], r["summary"]
    bench = "e rollout engine"
    runs = f"median of {r['runs']}" if r["runs"] > 1 else "1 run"
    c1 = r["stage_all_runs"][-1]["checks"]
    c2 = r["stage_later_runs"][-1]["later_stage"]["checks"]
    skipped = f"{c1['states'].get('up_to_date', 0):,} up to date, {c1['states'].get('busy', 0):,} busy"
    rows = [
        Row(
            bench,
            f"{db}, {n:,} devices, stages [100]",
            f"stage 1 starts: create_rollout → COMMIT ({runs})",
            f"{summary['stage_all_s']:.2f} s",
            f"{c1['assignments_made']:,} assigned, {skipped}",
            None,
            f"< {STAGE_TARGET_S:g} s",
            summary["stage_all_s"] < STAGE_TARGET_S,
        ),
        Row(
            bench,
            f"{db}, {n:,} devices, stages [1, 100]",
            f"stage 2 starts: tick → COMMIT ({runs})",
            f"{summary['stage_later_s']:.2f} s",
            f"{c2['members']:,} placed, {c2['assignments_made']:,} assigned",
            None,
            f"< {STAGE_TARGET_S:g} s",
            summary["stage_later_s"] < STAGE_TARGET_S,
        ),
        Row(
            bench,
            f"{db}, {n:,} devices, stages [1, 100]",
            "stage 1 starts / tick, nothing to start / the same with membership check",
            f"{summary['stage_first_1pct_s']:.2f} / {summary['idle_tick_s']:.2f} / "
            f"{summary['idle_tick_membership_s']:.2f} s",
        ),
        Row(
            bench,
            f"{db}, {n:,} devices",
            "assigned = placed - skipped, no device assigned twice",
            f"{c1['rollout_assignments']:,} and {c2['rollout_assignments']:,} assignments",
            "",
            None,
            "all counts agree",
            bool(summary["checks_ok"]),
        ),
    ]
    d = r["detail"]
    for key, label in (("pending", "all pending"), ("mix", "mix")):
        m = d[key]
        rows.append(
            Row(
                bench,
                f"{db}, 1 worker, {m['totals']['assigned']:,} assignments",
                f"GET /rollouts/{{id}} ({label}): median / p95 of {d['requests']}",
                f"{m['median_ms']:.0f} / {m['p95_ms']:.0f} ms",
                f"{m['bytes']:,} bytes, totals {'right' if m['ok'] else 'WRONG'}",
                None,
                f"p95 < {DETAIL_TARGET_MS:g} ms",
                m["ok"] and m["p95_ms"] < DETAIL_TARGET_MS,
            )
        )
    return rows
