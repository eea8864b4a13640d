"""The simulated fleet for the rollout benchmark, in a process of its own (the harness measures its CPU).

It runs the project's simulator (bota_ota.sim.fleet, as ``bota-ota simulate`` does) on the seeded devices,
whose tokens it computes instead of registering them, until SIGTERM; then it writes its statistics as
JSON. Like the simulator it speaks only HTTP to the server.

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

from benchmarks.tokens import device_id, device_token
from bota_ota.sim.device import Timing
from bota_ota.sim.fleet import Credentials, Fleet, FleetConfig


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
    async with Fleet(config, creds) as fleet:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        await fleet.run()
        stats = fleet.stats()
        per_device_applied = Counter(d.stats.applied for d in fleet.devices)
        return {
            "devices": len(fleet.devices),
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
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
