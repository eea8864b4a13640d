"""(a) Heartbeat throughput and latency against a bare ASGI hello endpoint on the same server settings.

For each database (SQLite, PostgreSQL) and worker count (1, 2), with 100,000 registered devices:

* throughput: wrk, closed loop, 64 connections, one thread; every request is another device's heartbeat
  (lua/heartbeat.lua). The hello app gets the very same requests. Ratio = heartbeat rps / hello rps.
* latency at a fixed 2,000 requests/s: loadgen.py, open loop, latency from the scheduled send time.

Hello and heartbeat runs alternate, ``--repeat`` times, and the medians are reported, so a burst of
other work on a shared machine hits both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks import seed
from benchmarks.common import (
    BENCH_DIR,
    Options,
    Processes,
    Row,
    Server,
    log,
    median,
    run_wrk,
    start_bota,
    start_hello,
)
from benchmarks.pg import Postgres
from benchmarks.procfs import CpuWindow
from benchmarks.tokens import device_token

HEARTBEAT_PATH = "/api/device/v1/heartbeat"
CONNECTIONS = 64
TARGET_RATIO = {"sqlite": 0.5, "postgres": 0.4}
TARGET_P99_MS = 50.0


def check_heartbeat(server: Server) -> None:
    """One real heartbeat first: a wrong token or a broken seed must not be benchmarked as 401s."""
    req = urllib.request.Request(
        server.url + HEARTBEAT_PATH,
        data=json.dumps({"firmware_version": "v1.0.0", "battery": 80, "network": "wifi"}).encode(),
        headers={"Authorization": f"Bearer {device_token(1)}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    if "heartbeat_interval_s" not in body:
        raise RuntimeError(f"unexpected heartbeat reply: {body}")


def measure(server: Server, opts: Options, devices: int, db_pid: int | None = None) -> dict[str, Any]:
    """wrk, then the open-loop generator; ``db_pid``: PostgreSQL's postmaster, whose CPU is the server's too."""
    pids = {"server": server.proc.pid, **({"database": db_pid} if db_pid else {})}
    env = {"BENCH_LUA_DIR": str(BENCH_DIR / "lua"), "BENCH_DEVICES": str(devices), "BENCH_PATH": HEARTBEAT_PATH}
    url = server.url + HEARTBEAT_PATH
    script = BENCH_DIR / "lua" / "heartbeat.lua"
    # Warm-up until every device has sent one heartbeat (one wrk thread walks all of them in ``devices``
    # requests): the steady state of a server that has been up for one interval, its device cache filled.
    warmup: list[dict[str, Any]] = []
    warm_until = time.monotonic() + (20 if opts.quick else 300)
    # With N workers each has its own cache and sees a share of the requests: walk N times.
    while (done := sum(w["requests"] for w in warmup)) < devices * server.workers and time.monotonic() < warm_until:
        # Each run continues the previous one's walk (BENCH_START), so `devices` requests visit every device.
        start = {**env, "BENCH_START": str(done * 7919)}  # lua/heartbeat.lua's stride
        warm = run_wrk(url, duration_s=2 if opts.quick else 5, connections=CONNECTIONS, script=script, env=start)
        warmup.append(warm.as_dict())
    window = CpuWindow.start(**pids)
    wrk = run_wrk(url, duration_s=opts.heartbeat_s, connections=CONNECTIONS, script=script, env=env)
    cpu = window.stop()
    window = CpuWindow.start(**pids)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--url",
            url,
            "--rate",
            str(opts.rate),
            "--duration",
            str(opts.rate_s),
            "--warmup",
            "2" if opts.quick else "3",
            "--devices",
            str(devices),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=BENCH_DIR.parent,
    )
    fixed = json.loads(done.stdout.strip().splitlines()[-1])
    fixed["cpu"] = window.stop()
    return {
        "warmup": warmup,
        "wrk": wrk.as_dict(),
        "cpu": cpu,
        "server_cpu_ms_per_request": round(cpu["server"]["cpu_s"] * 1000 / max(1, wrk.requests), 3),
        "database_cpu_ms_per_request": round(cpu.get("database", {}).get("cpu_s", 0) * 1000 / max(1, wrk.requests), 3),
        "fixed_rate": fixed,
    }


def run(opts: Options, procs: Processes, pg: Postgres | None) -> tuple[dict[str, Any], list[Row]]:
    spec = seed.SeedSpec("fleet", opts.heartbeat_devices)
    raw: dict[str, Any] = {"devices": opts.heartbeat_devices, "connections": CONNECTIONS, "configs": {}}
    rows: list[Row] = []
    for database in opts.databases:
        if database == "postgres" and pg is None:
            continue
        for workers in opts.workers:
            config = f"{database}, {workers} worker{'s' if workers > 1 else ''}"
            runs: list[dict[str, Any]] = []
            inst = seed.instance(spec, opts.scratch / "heartbeat-data", pg if database == "postgres" else None)
            for attempt in range(opts.repeat):
                log(f"(a) {config}: bare hello, run {attempt + 1}/{opts.repeat}")
                hello = start_hello(procs, workers=workers, scratch=opts.scratch)
                hello_result = measure(hello, opts, opts.heartbeat_devices)
                procs.stop(hello.proc)
                log(f"(a) {config}: heartbeat, run {attempt + 1}/{opts.repeat}")
                server = start_bota(procs, inst.data_dir, workers=workers, env=inst.env)
                check_heartbeat(server)
                db_pid = pg.proc.pid if database == "postgres" and pg is not None and pg.proc else None
                hb_result = measure(server, opts, opts.heartbeat_devices, db_pid)
                procs.stop(server.proc)
                runs.append({"hello": hello_result, "heartbeat": hb_result})
                log(
                    f"(a) {config}: heartbeat {hb_result['wrk']['rps']:.0f}/s, "
                    f"hello {hello_result['wrk']['rps']:.0f}/s; "
                    f"p99 at {opts.rate:.0f}/s {hb_result['fixed_rate']['latency_ms']['p99']} ms"
                )
            raw["configs"][config] = runs
            rows.extend(_rows(config, database, runs, opts))
    return raw, rows


def _rows(config: str, database: str, runs: list[dict[str, Any]], opts: Options) -> list[Row]:
    def med(side: str, *path: str) -> float:
        values = []
        for r in runs:
            value: Any = r[side]
            for key in path:
                value = value[key]
            values.append(float(value) if value is not None else float("inf"))
        return median(values)

    hb_rps, hello_rps = med("heartbeat", "wrk", "rps"), med("hello", "wrk", "rps")
    ratio = hb_rps / hello_rps if hello_rps else 0.0
    target = TARGET_RATIO[database]
    errors = sum(sum(r["heartbeat"]["wrk"]["errors"].values()) for r in runs)
    p99 = med("heartbeat", "fixed_rate", "latency_ms", "p99")
    hello_p99 = med("hello", "fixed_rate", "latency_ms", "p99")
    achieved = med("heartbeat", "fixed_rate", "achieved_rps")
    wrk_p50 = med("heartbeat", "wrk", "latency_ms", "p50")
    wrk_p99 = med("heartbeat", "wrk", "latency_ms", "p99")
    hello_wrk_p50 = med("hello", "wrk", "latency_ms", "p50")
    hello_wrk_p99 = med("hello", "wrk", "latency_ms", "p99")
    return [
        Row(
            "a heartbeat",
            config,
            "throughput (wrk, 64 conns)",
            f"{hb_rps:,.0f}/s" + (f" ({errors} errors)" if errors else ""),
            f"hello {hello_rps:,.0f}/s",
            ratio,
            f"≥ {target} x hello",
            ratio >= target and errors == 0,
        ),
        Row(
            "a heartbeat",
            config,
            "p50 / p99 at saturation",
            f"{wrk_p50:.1f} / {wrk_p99:.1f} ms",
            f"hello {hello_wrk_p50:.1f} / {hello_wrk_p99:.1f} ms",
        ),
        Row(
            "a heartbeat",
            config,
            f"p99 at {opts.rate:,.0f}/s (open loop)",
            (f"{p99:,.1f} ms" if p99 != float("inf") else "> 1 % unanswered") + f", {achieved:,.0f}/s done",
            f"hello {hello_p99:,.1f} ms",
            None,
            f"< {TARGET_P99_MS:.0f} ms",
            p99 < TARGET_P99_MS and achieved >= 0.99 * opts.rate,
        ),
    ]
