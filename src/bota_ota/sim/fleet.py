"""Many simulated devices in one asyncio process, sharing one HTTP connection pool."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bota_ota.sim.device import DeviceStats, Network, SimDevice, Timing
from bota_ota.sim.faults import FaultProxy, Faults
from bota_ota.sim.verify import DeviceTrust, key_id

log = logging.getLogger(__name__)

MODEL_CODES = {"bota-pin": "PIN", "bota-pin-pro": "PRO", "bota-note": "NOTE"}


@dataclass
class Credentials:
    device_id: str
    token: str
    firmware_version: str


@dataclass
class FleetConfig:
    server: str
    devices: int
    model: str = "bota-pin"
    prefix: str = "SIM"
    firmware_version: str = "v1.0.0"
    faults: Faults = field(default_factory=Faults)
    fault_share: float = 1.0  # the share of devices the faults apply to; the others run without faults
    seed: int | None = None
    timing: Timing = field(default_factory=Timing)
    flash_dir: Path = Path("sim-flash")
    state_file: Path | None = None
    max_connections: int = 200
    start_spread_s: float | None = None  # first heartbeats spread over this many seconds
    # The public keys built into the devices' firmware (none: unsigned images are accepted, development
    # only) and the security counter each device starts with.
    trusted_keys: list[Ed25519PublicKey] = field(default_factory=list)
    security_version: int = 0

    def device_id(self, index: int) -> str:
        return f"{self.prefix}-{MODEL_CODES[self.model]}-{index:05d}"


def _load_tokens(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.get("tokens", {}).items()}


def _save_tokens(path: Path | None, server: str, tokens: dict[str, str]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"server": server, "tokens": tokens}, indent=1))
    tmp.replace(path)
    path.chmod(0o600)


async def provision(
    config: FleetConfig, api_token: str, *, on_progress: Callable[[int], None] | None = None, concurrency: int = 16
) -> list[Credentials]:
    """Register the fleet's devices, or reuse those registered before (their tokens are kept in the
    state file; a device whose token was lost gets a new one by rotation)."""
    known = _load_tokens(config.state_file)
    headers = {"Authorization": f"Bearer {api_token}"}
    versions: dict[str, str | None] = {}
    async with httpx.AsyncClient(base_url=config.server, headers=headers, timeout=60) as http:
        offset = 0
        prefix = f"{config.prefix}-{MODEL_CODES[config.model]}-"
        while True:  # what the server already knows about our devices (their firmware versions)
            r = await http.get(
                "/api/v1/devices", params={"q": prefix, "model": config.model, "limit": 1000, "offset": offset}
            )
            r.raise_for_status()
            rows = r.json()
            versions.update({d["id"]: d["firmware_version"] for d in rows})
            if len(rows) < 1000:
                break
            offset += 1000
        sem = asyncio.Semaphore(concurrency)
        tokens: dict[str, str] = {}

        async def one(index: int) -> Credentials:
            device_id = config.device_id(index)
            async with sem:
                if device_id in versions and device_id in known:
                    token = known[device_id]
                elif device_id in versions:
                    r = await http.post(f"/api/v1/devices/{device_id}/token")
                    r.raise_for_status()
                    token = r.json()["token"]
                else:
                    r = await http.post(
                        "/api/v1/devices", json={"id": device_id, "model": config.model, "name": f"Simulated {index}"}
                    )
                    if r.status_code == 409:  # registered meanwhile by someone else
                        r = await http.post(f"/api/v1/devices/{device_id}/token")
                    r.raise_for_status()
                    token = r.json()["token"]
            tokens[device_id] = token
            if on_progress:
                on_progress(1)
            return Credentials(device_id, token, versions.get(device_id) or config.firmware_version)

        creds = await asyncio.gather(*(one(i) for i in range(1, config.devices + 1)))
    known.update(tokens)
    _save_tokens(config.state_file, config.server, known)
    return list(creds)


class Fleet:
    def __init__(self, config: FleetConfig, credentials: list[Credentials]) -> None:
        self.config = config
        self.credentials = credentials
        self.devices: list[SimDevice] = []
        self.proxies: dict[tuple[str, int], FaultProxy] = {}
        self.net: Network | None = None
        self.stop_event = asyncio.Event()

    async def __aenter__(self) -> Fleet:
        cfg = self.config
        self.net = Network.create(
            cfg.server, heartbeat_connections=cfg.max_connections, download_connections=max(4, cfg.max_connections // 4)
        )
        if cfg.faults.drop > 0:
            parts = urlsplit(cfg.server)
            port = parts.port or 80
            proxy = FaultProxy(parts.hostname or "127.0.0.1", port)
            await proxy.start()
            for host in {parts.hostname or "127.0.0.1", "127.0.0.1", "localhost"}:
                self.proxies[(host, port)] = proxy
        seed_rng = random.Random(cfg.seed)
        cfg.flash_dir.mkdir(parents=True, exist_ok=True)
        count = len(self.credentials)
        faulty = set(range(count))
        if cfg.fault_share < 1.0:  # drawn only then: a seed repeats the same run with or without the option
            faulty = set(seed_rng.sample(range(count), round(count * cfg.fault_share)))
        keys = {key_id(k): k for k in cfg.trusted_keys}  # one table for all; each device has its own counter
        for index, cred in enumerate(self.credentials):
            self.devices.append(
                SimDevice(
                    device_id=cred.device_id,
                    token=cred.token,
                    model=cfg.model,
                    firmware_version=cred.firmware_version,
                    net=self.net,
                    flash_dir=cfg.flash_dir,
                    faults=cfg.faults if index in faulty else Faults(),
                    rng=random.Random(seed_rng.getrandbits(64)),
                    timing=cfg.timing,
                    proxies=self.proxies or None,
                    trust=DeviceTrust(keys, cfg.security_version),
                )
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop_event.set()
        for proxy in set(self.proxies.values()):
            await proxy.stop()
        if self.net is not None:
            await self.net.aclose()

    def device(self, device_id: str) -> SimDevice:
        return next(d for d in self.devices if d.device_id == device_id)

    async def run(self) -> None:
        spread = self.config.start_spread_s
        if spread is None:
            # Devices do not all boot in the same second: at most ~100 first heartbeats a second, and
            # never more than one interval apart.
            spread = min(max(len(self.devices) / 100, 0.5), self.config.timing.interval_override_s or 60.0)
        rng = random.Random(self.config.seed)
        await asyncio.gather(*(d.run(self.stop_event, first_delay_s=rng.uniform(0, spread)) for d in self.devices))

    def stop(self) -> None:
        self.stop_event.set()

    def states(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for d in self.devices:
            counts["recording" if d.recording and d.state == "idle" else d.state] += 1
        return counts

    def versions(self) -> Counter[str]:
        return Counter(d.firmware_version for d in self.devices)

    def stats(self) -> DeviceStats:
        total = DeviceStats()
        for d in self.devices:
            total.add(d.stats)
        return total

    @property
    def proxy_cuts(self) -> int:
        return sum(p.cuts for p in set(self.proxies.values()))
