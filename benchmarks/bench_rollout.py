"""(b) A rollout: 10,000 simulated devices at a 5 s interval, one release assigned to all of them.

1. The server starts on a seeded database (10,000 devices on v1.0.0, release v1.0.1 with a 256 KiB .bin)
   with BOTA_OTA_HEARTBEAT_INTERVAL_S=5.
2. Download capacity: wrk fetches the .bin through a signed /dl/ URL for a few seconds (50 connections);
   the rollout's "download time" is 10,000 x the file size at that rate.
3. The simulator (rollout_fleet.py, the project's bota_ota.sim fleet) starts; once every device has sent a
   heartbeat, the server's steady heartbeat CPU is read over one interval.
4. The release is assigned to all devices in one transaction (seed.assign_all), and the clock starts.
5. The database is polled until every assignment is final. Server and simulator CPU are read over the
   rollout. Then the simulator stops and reports; the database is checked for assignments lost or
   applied twice.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text

from benchmarks import seed
from benchmarks.common import (
    SECRET_KEY,
    Options,
    Processes,
    Row,
    log,
    run_wrk,
    start_bota,
)
from benchmarks.pg import Postgres
from benchmarks.procfs import CpuWindow
from benchmarks.tokens import device_id
from bota_ota.core.database import make_engine
from bota_ota.devices.models import Device
from bota_ota.ota.models import Assignment, AssignmentEvent
from bota_ota.storage.local import LocalBlobStore

BIN_BYTES = 256 * 1024
FLASH_AND_REBOOT_S = 3.5  # the simulator's Timing defaults: 0.5 s writing flash, 3 s reboot


def run(opts: Options, procs: Processes, pg: Postgres | None) -> tuple[dict[str, Any], list[Row]]:
    raw: dict[str, Any] = {"configs": {}}
    rows: list[Row] = []
    for database, workers in opts.rollout_configs:
        if database == "postgres" and pg is None:
            continue
        config = f"{database}, {workers} worker{'s' if workers > 1 else ''}"
        result = run_one(opts, procs, pg if database == "postgres" else None, workers, config)
        raw["configs"][config] = result
        rows.extend(_rows(config, result, opts))
    return raw, rows


def run_one(opts: Options, procs: Processes, pg: Postgres | None, workers: int, config: str) -> dict[str, Any]:
    n, interval = opts.rollout_devices, opts.rollout_interval_s
    spec = seed.SeedSpec("rollout", n, release_bin_bytes=BIN_BYTES)
    inst = seed.instance(spec, opts.scratch / "rollout-data", pg)
    env = {**inst.env, "BOTA_OTA_HEARTBEAT_INTERVAL_S": str(interval)}
    log(f"(b) {config}: {n:,} devices, {interval} s interval")
    server = start_bota(procs, inst.data_dir, workers=workers, env=env)
    result: dict[str, Any] = {"devices": n, "interval_s": interval, "bin_bytes": inst.meta["bin_size"]}

    # The servers of a benchmark run share SECRET_KEY, so the harness can sign a URL the server accepts.
    store = LocalBlobStore(inst.data_dir / "blobs", SECRET_KEY)
    url = store.signed_get_url(inst.meta["storage_key"], base_url=server.url, ttl_s=3600).url
    dl = run_wrk(url, duration_s=3 if opts.quick else 5, connections=50, timeout_s=30)
    if dl.errors["status"] or not dl.requests:
        raise RuntimeError(f"download check failed: {dl.as_dict()}")
    download_s = n * int(inst.meta["bin_size"]) / (dl.mb_per_s * 1e6)
    result["download_capacity"] = {**dl.as_dict(), "files_per_s": round(dl.rps, 1), "rollout_download_s": download_s}

    engine = make_engine(inst.database_url)
    pids = {"server": server.proc.pid}
    if pg is not None and pg.proc is not None:
        pids["database"] = pg.proc.pid
    flash_dir = opts.scratch / "rollout-flash"
    stats_path = opts.scratch / "rollout-fleet.json"
    fleet_started_at = datetime.now(UTC)
    fleet = procs.start(
        "fleet",
        [
            sys.executable,
            "-m",
            "benchmarks.rollout_fleet",
            "--server",
            server.url,
            "--devices",
            str(n),
            "--flash-dir",
            str(flash_dir),
            "--out",
            str(stats_path),
        ],
    )
    pids["simulator"] = fleet.pid
    try:
        # Read transactions (SQLite: DEFERRED, never the write lock), a fresh snapshot for each query.
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:

            def query(stmt: Any) -> Any:
                conn.rollback()
                return conn.execute(stmt)

            started = time.monotonic()
            seen = 0
            while seen < n:
                if fleet.popen.poll() is not None:
                    raise RuntimeError(f"the simulator exited:\n{fleet.output()}")
                if time.monotonic() - started > 20 * interval + 120:
                    raise RuntimeError(f"only {seen} of {n} devices sent a heartbeat")
                time.sleep(1.0)
                seen = query(
                    select(func.count()).select_from(Device).where(Device.last_seen_at >= fleet_started_at)
                ).scalar_one()
            result["all_devices_seen_s"] = round(time.monotonic() - started, 1)
            log(f"(b) {config}: all {n:,} devices heartbeating after {result['all_devices_seen_s']} s")

            window = CpuWindow.start(**pids)
            time.sleep(interval * 2)
            result["steady_cpu"] = window.stop()

            window = CpuWindow.start(**pids)
            t0 = time.monotonic()
            seed.assign_all(
                inst.database_url,
                inst.meta["release_id"],
                inst.meta["release_version"],
                [device_id(i) for i in range(1, n + 1)],
            )
            result["assign_s"] = round(time.monotonic() - t0, 2)
            log(f"(b) {config}: release assigned to {n:,} devices in {result['assign_s']} s")
            timeline: list[dict[str, Any]] = []
            all_delivered_s = None
            deadline = t0 + max(600.0, 40 * interval)
            while True:
                counts = dict(query(select(Assignment.status, func.count()).group_by(Assignment.status)).all())
                elapsed = time.monotonic() - t0
                timeline.append({"t": round(elapsed, 1), **counts})
                if all_delivered_s is None and counts.get("pending", 0) == 0:
                    all_delivered_s = elapsed
                if counts.get("pending", 0) + counts.get("delivered", 0) == 0:
                    break
                if time.monotonic() > deadline or fleet.popen.poll() is not None:
                    break
                time.sleep(0.5)
            done_s = time.monotonic() - t0
            result["rollout_cpu"] = window.stop()
            result["all_delivered_s"] = None if all_delivered_s is None else round(all_delivered_s, 1)
            result["all_final_s"] = round(done_s, 1)
            result["timeline"] = timeline
            result["final_counts"] = timeline[-1]
            result["checks"] = _checks(query)
            log(f"(b) {config}: {timeline[-1]} after {done_s:.1f} s")
    finally:
        # SIGTERM: the simulator stops its devices and writes its statistics (10,000 devices take a while).
        procs.stop(fleet, timeout=120)
        procs.stop(server.proc)
        engine.dispose()
    result["simulator"] = json.loads(stats_path.read_text()) if stats_path.exists() else None
    return result


def _checks(query: Any) -> dict[str, int]:
    """Lost or doubled work, from the database."""
    applied_twice = query(
        text(
            "SELECT count(*) FROM (SELECT assignment_id FROM assignment_events WHERE kind = 'applied' "
            "GROUP BY assignment_id HAVING count(*) > 1) AS t"
        )
    ).scalar_one()
    return {
        "applied": query(select(func.count()).where(Assignment.status == "applied")).scalar_one(),
        "failed": query(select(func.count()).where(Assignment.status == "failed")).scalar_one(),
        "still_active": query(select(func.count()).where(Assignment.status.in_(("pending", "delivered")))).scalar_one(),
        "applied_events": query(select(func.count()).where(AssignmentEvent.kind == "applied")).scalar_one(),
        "assignments_applied_twice": int(applied_twice),
        "devices_on_new_version": query(
            select(func.count()).select_from(Device).where(Device.firmware_version == seed.NEW_VERSION)
        ).scalar_one(),
    }


def _rows(config: str, r: dict[str, Any], opts: Options) -> list[Row]:
    n, interval = r["devices"], r["interval_s"]
    download_s = r["download_capacity"]["rollout_download_s"]
    budget = 3 * interval + download_s + FLASH_AND_REBOOT_S
    checks = r["checks"]
    sim = r.get("simulator") or {}
    ok_counts = (
        checks["applied"] + checks["still_active"] == n
        and checks["assignments_applied_twice"] == 0
        and checks["applied_events"] == checks["applied"]
        and checks["devices_on_new_version"] >= checks["applied"]
        and sim.get("devices_applied_more_than_once", 1) == 0
    )
    all_applied = checks["applied"] == n
    twice = checks["assignments_applied_twice"] + sim.get("devices_applied_more_than_once", 0)
    rollout_cpu = r["rollout_cpu"]
    label = f"{config}, {n:,} devices, {interval} s"
    return [
        Row(
            "b rollout",
            label,
            "time until all applied",
            f"{r['all_final_s']:.1f} s" if all_applied else f"{checks['applied']:,} of {n:,} applied",
            f"all delivered {r['all_delivered_s']} s",
            None,
            f"≤ 3 x {interval} s + {download_s:.1f} s download + {FLASH_AND_REBOOT_S} s reboot = {budget:.1f} s",
            all_applied and r["all_final_s"] <= budget,
        ),
        Row(
            "b rollout",
            label,
            "lost / applied twice",
            # Still pending or delivered at the deadline is unfinished, not lost.
            (f"{checks['failed']:,}" if checks["still_active"] else f"{n - checks['applied']:,}")
            + f" / {twice:,}"
            + (f" ({checks['still_active']:,} unfinished)" if checks["still_active"] else ""),
            f"{checks['failed']} failed",
            None,
            "0 / 0",
            ok_counts,
        ),
        Row(
            "b rollout",
            label,
            "server CPU during rollout",
            f"{rollout_cpu['server']['cores']:.2f} cores",
            f"steady {r['steady_cpu']['server']['cores']:.2f} cores",
            None,
            "",
            None,
        ),
        Row(
            "b rollout",
            label,
            "simulator CPU / heartbeat errors",
            f"{rollout_cpu['simulator']['cores']:.2f} cores",
            f"{sim.get('heartbeat_errors', '?')} errors",
            None,
            "",
            None,
        ),
    ]
