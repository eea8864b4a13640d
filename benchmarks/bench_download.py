"""(c) Downloads: MB/s through the local signed-URL path (/dl/) against Debian's nginx serving the same file.

The URL is the one a device gets: from the manifest in a heartbeat reply. nginx runs from a temporary
config (its own prefix, pid and logs, not a daemon), no access log, the same number of worker processes
as the bota-ota server, and is measured twice: with ``sendfile on`` (Debian's default configuration) and
with ``sendfile off``. On loopback in a VM the copy through user space was the faster of the two (about
2.3 GB/s against 0.9 GB/s measured here), so the baseline is whichever is faster in this run: the ratio
is against the best nginx does on this machine. Both servers are read by the same client: wrk, one
thread, a few connections, each request the whole file.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import seed
from benchmarks.common import (
    Options,
    Processes,
    Row,
    Server,
    free_port,
    log,
    nginx_bin,
    run_wrk,
    start_bota,
    wait_http,
)
from benchmarks.pg import Postgres
from benchmarks.procfs import CpuWindow
from benchmarks.tokens import device_token

CONNECTIONS = 4
TARGET_RATIO = 0.5

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile {sendfile};
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /dl/ {{ alias {blobs}/; }}
    }}
}}
"""


def manifest_url(server: Server) -> str:
    req = urllib.request.Request(
        server.url + "/api/device/v1/heartbeat",
        data=json.dumps({"firmware_version": seed.OLD_VERSION}).encode(),
        headers={"Authorization": f"Bearer {device_token(1)}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply = json.loads(resp.read())
    if not reply.get("ota"):
        raise RuntimeError(f"the heartbeat reply has no manifest: {reply}")
    return str(reply["ota"]["url"])


def start_nginx(procs: Processes, blobs: Path, workers: int, scratch: Path, *, sendfile: bool = True) -> Server:
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=scratch))
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # worker processes must read the blob under /tmp
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers,
            prefix=prefix,
            user=user,
            port=port,
            blobs=blobs.resolve(),
            sendfile="on" if sendfile else "off",
        )
    )
    proc = procs.start("nginx", [nginx_bin(), "-p", prefix, "-c", conf, "-e", prefix / "error.log"])
    server = Server(proc, port, workers)
    wait_http(server.url + "/dl/", proc)
    return server


def measure(url: str, pid: int, opts: Options, size: int) -> dict[str, Any]:
    run_wrk(url, duration_s=2, connections=CONNECTIONS)  # warm-up (page cache, connections)
    window = CpuWindow.start(server=pid)
    wrk = run_wrk(url, duration_s=opts.download_s, connections=CONNECTIONS, timeout_s=60)
    cpu = window.stop()
    if wrk.errors["status"] or wrk.requests == 0:
        raise RuntimeError(f"downloads failed: {wrk.as_dict()}")
    return {**wrk.as_dict(), "files_per_s": round(wrk.requests / wrk.duration_s, 2), "file_bytes": size, "cpu": cpu}


def run(opts: Options, procs: Processes, pg: Postgres | None) -> tuple[dict[str, Any], list[Row]]:
    spec = seed.SeedSpec("downloads", 10, release_bin_bytes=opts.download_bytes, assign_first=True)
    inst = seed.instance(spec, opts.scratch / "download-data")
    size = int(inst.meta["bin_size"])
    raw: dict[str, Any] = {"file_bytes": size, "connections": CONNECTIONS, "configs": {}}
    rows: list[Row] = []
    for workers in opts.workers:
        config = f"{workers} worker{'s' if workers > 1 else ''}, {size / 2**20:.0f} MiB file"
        log(f"(c) {config}: bota-ota /dl/")
        server = start_bota(procs, inst.data_dir, workers=workers, env=inst.env)
        url = manifest_url(server)
        bota = measure(url, server.proc.pid, opts, size)
        procs.stop(server.proc)
        nginx_runs: dict[str, dict[str, Any]] = {}
        for sendfile in (True, False):
            variant = f"sendfile {'on' if sendfile else 'off'}"
            log(f"(c) {config}: nginx, {variant}")
            nginx = start_nginx(procs, inst.data_dir / "blobs", workers, opts.scratch, sendfile=sendfile)
            parts = urlsplit(url)
            nginx_runs[variant] = measure(f"{nginx.url}{parts.path}?{parts.query}", nginx.proc.pid, opts, size)
            procs.stop(nginx.proc)
        best = max(nginx_runs, key=lambda v: nginx_runs[v]["mb_per_s"])
        nginx_result = nginx_runs[best]
        ratio = bota["mb_per_s"] / nginx_result["mb_per_s"] if nginx_result["mb_per_s"] else 0.0
        raw["configs"][config] = {"bota_ota": bota, "nginx": nginx_runs, "baseline": best, "ratio": round(ratio, 3)}
        log(f"(c) {config}: {bota['mb_per_s']:.0f} MB/s vs nginx {nginx_result['mb_per_s']:.0f} MB/s ({best})")
        rows.append(
            Row(
                "c downloads",
                config,
                f"MB/s through /dl/ (wrk, {CONNECTIONS} conns)",
                f"{bota['mb_per_s']:,.0f} MB/s",
                f"nginx {nginx_result['mb_per_s']:,.0f} MB/s ({best})",
                ratio,
                f"≥ {TARGET_RATIO} x nginx",
                ratio >= TARGET_RATIO,
            )
        )
    return raw, rows
