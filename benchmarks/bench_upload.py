"""(d) A 200 MiB firmware upload: the server's peak memory growth.

One worker (uvicorn then serves in its own process, so one RSS tells it all). A 1 MiB upload first, so
the code paths and buffers an upload needs at all are in the baseline; then the peak RSS is reset
(/proc/<pid>/clear_refs) and the big file goes up with curl, which streams it from disk (``-F bin=@``),
while a thread samples the RSS every 5 ms. Growth = max(kernel's VmHWM, sampled peak) - RSS before.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import seed
from benchmarks.common import (
    CACHE_DIR,
    Options,
    Processes,
    Row,
    Server,
    log,
    start_bota,
)
from benchmarks.pg import Postgres
from benchmarks.procfs import CpuWindow, PeakSampler, process_tree, reset_peak_rss, rss_bytes, status_kib

TARGET_MB = 64
MIB = 1024 * 1024


def upload(server: Server, api_token: str, path: Path, version: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {api_token}",
            "-H",
            "Expect:",  # send the body at once, no 100-continue round trip
            "-F",
            f"version={version}",
            "-F",
            f"model={seed.MODEL}",
            "-F",
            f"bin=@{path};type=application/octet-stream",
            server.url + "/api/v1/firmware",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    try:
        reply = json.loads(body)
    except ValueError:
        reply = {"raw": body[:500]}
    return int(status), reply


def file_of(size: int) -> Path:
    path = CACHE_DIR / f"upload-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = size
            while left:
                n = min(left, MIB)
                f.write(bytes(range(256)) * (n // 256) + b"\0" * (n % 256))
                left -= n
    return path


def run(opts: Options, procs: Processes, pg: Postgres | None) -> tuple[dict[str, Any], list[Row]]:
    inst = seed.instance(seed.SeedSpec("small", 10), opts.scratch / "upload-data")
    big = file_of(opts.upload_bytes)
    small = file_of(MIB)
    limit = max(64 * MIB, opts.upload_bytes + MIB)
    server = start_bota(procs, inst.data_dir, workers=1, env={**inst.env, "BOTA_OTA_MAX_UPLOAD_BYTES": str(limit)})
    pid = server.proc.pid
    if len(process_tree(pid)) != 1:
        raise RuntimeError(f"expected one server process, found {process_tree(pid)}")
    log("(d) warm-up upload (1 MiB)")
    status, reply = upload(server, inst.meta["api_token"], small, "v0.0.1")
    if status != 201:
        raise RuntimeError(f"warm-up upload failed: {status} {reply}")
    time.sleep(1.0)
    baseline = rss_bytes(pid)
    reset_peak_rss(pid)
    sampler = PeakSampler(pid)
    sampler.start()
    log(f"(d) uploading {opts.upload_bytes / MIB:.0f} MiB")
    window = CpuWindow.start(server=pid)
    started = time.monotonic()
    status, reply = upload(server, inst.meta["api_token"], big, "v0.0.2")
    elapsed = time.monotonic() - started
    cpu = window.stop()
    sampled_peak = sampler.stop()
    hwm = status_kib(pid, "VmHWM") * 1024
    after = rss_bytes(pid)
    procs.stop(server.proc)
    if status != 201:
        raise RuntimeError(f"upload failed: {status} {reply}")
    stored = reply.get("bin", {}).get("size")
    if stored != opts.upload_bytes:
        raise RuntimeError(f"the server stored {stored} bytes, sent {opts.upload_bytes}")
    growth = max(hwm, sampled_peak) - baseline
    raw = {
        "file_bytes": opts.upload_bytes,
        "rss_before_bytes": baseline,
        "peak_rss_bytes_vmhwm": hwm,
        "peak_rss_bytes_sampled": sampled_peak,
        "samples": sampler.samples,
        "rss_after_bytes": after,
        "growth_bytes": growth,
        "seconds": round(elapsed, 2),
        "mb_per_s": round(opts.upload_bytes / elapsed / 1e6, 1),
        "cpu": cpu,
    }
    log(f"(d) peak growth {growth / MIB:.1f} MiB, {raw['mb_per_s']} MB/s")
    config = f"1 worker, {opts.upload_bytes / MIB:.0f} MiB .bin"
    rows = [
        Row(
            "d upload",
            config,
            "server peak memory growth",
            f"{growth / MIB:,.1f} MiB",
            f"RSS before {baseline / MIB:,.0f} MiB",
            None,
            f"< {TARGET_MB} MB",
            growth < TARGET_MB * 1e6,
        ),
        Row("d upload", config, "upload speed (curl, loopback)", f"{raw['mb_per_s']:,.0f} MB/s", "", None, "", None),
    ]
    return raw, rows
