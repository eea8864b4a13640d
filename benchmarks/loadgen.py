"""An open-loop load generator: heartbeats at a fixed rate, latency measured from the scheduled send time.

wrk is closed-loop (each connection sends its next request when the last reply arrives), so it finds the
top throughput but cannot hold a rate, and its latencies hide queueing ("coordinated omission"). wrk2,
which fixes both, is not packaged by Debian. This process sends request k at ``start + k / rate`` whatever
happened to earlier requests: on an idle keep-alive connection if one is free, on a new one otherwise (up
to ``--connections``), and queued (the clock already running) if none is. A server that falls behind
therefore shows its true queueing delay in p99, and an achieved rate below the target.

It speaks HTTP/1.1 over asyncio streams on uvloop (no HTTP client library: at 2,000 requests a second a
client like httpx would need most of a core on its own) and prints one JSON line.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000/api/device/v1/heartbeat --rate 2000 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from urllib.parse import urlsplit

from benchmarks.tokens import device_token

BODY = b'{"firmware_version": "v1.0.0", "recording": false, "battery": 80, "network": "wifi"}'


class Conn:
    """One keep-alive HTTP/1.1 connection: write a request, read the reply's head and its body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, data: bytes) -> int:
        return (await self.exchange(data))[0]

    async def exchange(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            raise ConnectionResetError("server closed the connection")
        return status, body


class Generator:
    def __init__(self, url: str, *, rate: float, devices: int, max_connections: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.rate = rate
        self.devices = devices
        self.max_connections = max_connections
        self.idle: list[Conn] = []
        self.open = 0
        self.freed = asyncio.Condition()
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.late_sends = 0
        self.peak_open = 0

    def _request_bytes(self, k: int) -> bytes:
        token = device_token((k * 7919) % self.devices + 1)
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    async def _take(self) -> Conn | None:
        async with self.freed:
            while True:
                if self.idle:
                    return self.idle.pop()
                if self.open < self.max_connections:
                    self.open += 1
                    self.peak_open = max(self.peak_open, self.open)
                    return None  # the caller opens a new connection
                await self.freed.wait()

    async def _give(self, conn: Conn | None) -> None:
        async with self.freed:
            if conn is not None:
                self.idle.append(conn)
            else:
                self.open -= 1
            self.freed.notify()

    async def one(self, k: int, scheduled: float, measure: bool) -> None:
        loop = asyncio.get_running_loop()
        conn = await self._take()
        try:
            if conn is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                conn = Conn(reader, writer)
            status = await conn.request(self._request_bytes(k))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            if measure:
                self.statuses[type(exc).__name__] += 1
            if conn is not None:
                conn.writer.close()
            await self._give(None)
            return
        if measure:
            self.latencies.append(loop.time() - scheduled)
            self.statuses[str(status)] += 1
        await self._give(conn)

    async def run(self, warmup_s: float, duration_s: float, drain_s: float) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.05
        total = int(self.rate * (warmup_s + duration_s))
        measured_from = int(self.rate * warmup_s)
        k = 0
        while k < total:
            now = loop.time()
            due = min(total, int((now - start) * self.rate) + 1)
            while k < due:
                scheduled = start + k / self.rate
                if now - scheduled > 0.010:
                    self.late_sends += 1
                task = asyncio.create_task(self.one(k, scheduled, k >= measured_from))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
            await asyncio.sleep(max(0.0, start + k / self.rate - loop.time()))
        sent_end = loop.time()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_s)
            for task in pending:
                task.cancel()
            unfinished = len(pending)
        else:
            unfinished = 0
        for conn in self.idle:
            conn.writer.close()
        measured = total - measured_from
        # A request that failed or never came back counts as slower than any that did: percentiles are
        # over everything scheduled, not only over the survivors.
        lat = sorted(self.latencies) + [float("inf")] * (measured - len(self.latencies))

        def pct(p: float) -> float | None:
            if not lat:
                return None
            value = lat[min(len(lat) - 1, int(p / 100 * len(lat)))]
            return round(value * 1000, 2) if value != float("inf") else None  # None: no reply (JSON has no inf)

        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return {
            "target_rps": self.rate,
            "duration_s": duration_s,
            "scheduled": measured,
            "completed_2xx": ok,
            "achieved_rps": round(ok / duration_s, 1),
            "statuses": dict(self.statuses),
            "unfinished_after_drain": unfinished,
            "late_sends": self.late_sends,
            "send_window_s": round(sent_end - start, 2),
            "peak_connections": self.peak_open,
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--drain", type=float, default=10, help="seconds to wait for the last replies")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args()
    started = time.monotonic()

    async def go() -> dict[str, object]:
        gen = Generator(args.url, rate=args.rate, devices=args.devices, max_connections=args.connections)
        return await gen.run(args.warmup, args.duration, args.drain)

    try:
        import uvloop

        result = uvloop.run(go())
    except ImportError:
        result = asyncio.run(go())
    result["wall_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
