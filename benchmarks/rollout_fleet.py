"""The simulated fleet for the rollout benchmark, in a process of its own (the harness measures its CPU).

It runs the project's simulator (bota_ota.sim.fleet, as ``bota-ota simulate`` does) on the seeded devices,
whose tokens it computes instead of registering them, until SIGTERM; then it writes its statistics as
JSON. Like the simulator it speaks only HTTP to the server.

One part is swapped by default (``--heartbeats raw``): the HTTP client the devices send heartbeats with.
10,000 devices at a 5 s interval are 2,000 heartbeats a second, and httpx needs about 1.5-3 ms of CPU for
each on this machine (its connection pool scans every connection per request, and httpcore tries to
import sniffio, which is not installed, on every request), so the simulator alone would need several
cores. ``RawHeartbeats`` sends the same requests over keep-alive HTTP/1.1 connections with a few lines of
asyncio; the devices' state machine, downloads (httpx, with Range), verification and reboots are the
simulator's own. ``--heartbeats httpx`` keeps the simulator exactly as shipped.

    python -m benchmarks.rollout_fleet --server http://127.0.0.1:8000 --devices 10000 --flash-dir D --out F
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.loadgen import Conn
from benchmarks.tokens import device_id, device_token
from bota_ota.sim.device import Timing
from bota_ota.sim.fleet import Credentials, Fleet, FleetConfig

_dumps = json.dumps  # ``post`` has a parameter named json, as httpx's has


class RawResponse:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class RawHeartbeats:
    """Stands in for the fleet's heartbeat ``httpx.AsyncClient``: only ``post(path, json=, headers=)``.

    The simulator already bounds requests in flight with its heartbeat slots, so the pool needs no limit
    of its own: a request takes an idle connection or opens one.
    """

    def __init__(self, server: str) -> None:
        parts = urlsplit(server)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: list[Conn] = []

    async def post(self, path: str, *, json: Any, headers: dict[str, str]) -> RawResponse:
        body = _dumps(json, separators=(",", ":")).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        while True:
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else None
            try:
                if conn is None:
                    conn = Conn(*await asyncio.open_connection(self.host, self.port))
                status, reply = await conn.exchange(data)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn.writer.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection (uvicorn: after 5 s): retry
                raise httpx.TransportError(str(exc)) from None  # the simulator counts a failed heartbeat
            self.idle.append(conn)
            return RawResponse(status, reply)

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.writer.close()
        self.idle.clear()


async def run(args: argparse.Namespace) -> dict[str, object]:
    config = FleetConfig(
        server=args.server,
        devices=args.devices,
        seed=1,
        timing=Timing(),  # the simulator's defaults: 0.5 s flash write, 3 s reboot
        flash_dir=Path(args.flash_dir),
        max_connections=args.connections,
    )
    creds = [Credentials(device_id(i), device_token(i), args.firmware) for i in range(1, args.devices + 1)]
    started = time.monotonic()
    out = Path(args.out)
    async with Fleet(config, creds) as fleet:
        if args.heartbeats == "raw" and fleet.net is not None:
            await fleet.net.heartbeats.aclose()
            fleet.net.heartbeats = RawHeartbeats(args.server)  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        runner = asyncio.create_task(fleet.run())
        snapshot = _snapshot(fleet, args, started)
        while not runner.done():  # a snapshot every 10 s: progress in the log, statistics even if killed
            await asyncio.wait([runner], timeout=10)
            snapshot = _snapshot(fleet, args, started)
            await asyncio.to_thread(out.write_text, json.dumps(snapshot, indent=1))
            print(json.dumps({k: snapshot[k] for k in ("wall_s", "heartbeats", "heartbeat_errors", "states")}))
        return snapshot


def _snapshot(fleet: Fleet, args: argparse.Namespace, started: float) -> dict[str, object]:
    stats = fleet.stats()
    per_device_applied = Counter(d.stats.applied for d in fleet.devices)
    return {
        "devices": len(fleet.devices),
        "heartbeat_client": args.heartbeats,
        "wall_s": round(time.monotonic() - started, 1),
        "heartbeats": stats.heartbeats,
        "heartbeat_errors": stats.heartbeat_errors,
        "applied": stats.applied,
        "devices_applied_more_than_once": sum(n for k, n in per_device_applied.items() if k > 1),
        "devices_never_applied": per_device_applied.get(0, 0),
        "failed": dict(stats.failed),
        "retries": stats.retries,
        "resumed": stats.resumed,
        "bytes": stats.bytes,
        "states": dict(fleet.states()),
        "versions": dict(fleet.versions()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--flash-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--firmware", default="v1.0.0")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--heartbeats", choices=("raw", "httpx"), default="raw", help="heartbeat HTTP client")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
