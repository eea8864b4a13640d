"""Fault injection for simulated devices.

Faults are probabilities, parsed from ``drop=0.2,corrupt=0.05,expire=0.1,power_loss=0.05,bootloop=0.1,record=0.01``:

- ``drop``: a download's TCP connection is cut at a random point (once per download; the device
  resumes with a Range request). The cut happens in :class:`FaultProxy`, a small TCP proxy between
  the device and the server, so the server sees a genuinely broken connection.
- ``corrupt``: a byte of the downloaded image is flipped on the way in (CRC32 check must catch it).
- ``expire``: the device waits until the download URL has expired before using it (it must get a
  fresh URL through the next heartbeat).
- ``power_loss``: power fails while writing flash; the device comes back on its old version and
  reports ``failed`` with ``power_loss``.
- ``bootloop``: the new image does not boot (per attempt, drawn after flashing): the device reports
  ``writing`` and ``rebooting`` as usual, then comes back on its OLD version with no ``ota`` block, as
  when the bootloader reverts. The server counts a rolled-back attempt and, after a backoff, delivers
  the assignment again: the device then starts a fresh attempt (which may boot-loop again).
- ``low_battery``: chance per device that its battery is at 15 % and not charging, so the delivery
  policy (30 % unless charging, by default) holds its updates back (``ota_deferred: "battery_low"``)
  until the condition is cleared (``SimDevice.set_battery`` / ``clear_conditions``).
- ``cellular``: chance per device that it is on cellular rather than Wi-Fi (held back with
  ``ota_deferred: "network"`` by a policy that allows Wi-Fi only).
- ``record``: chance per heartbeat that a recording session starts (lasting ``record_s`` seconds).

Faults apply to every simulated device, or to a share of them (``--fault-devices 20%``): then a canary
stage can be seen failing while the rest of the fleet is healthy. Which devices is drawn from the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

CUT_HEADER = b"x-sim-cut-after"


@dataclass
class Faults:
    drop: float = 0.0
    corrupt: float = 0.0
    expire: float = 0.0
    power_loss: float = 0.0
    bootloop: float = 0.0
    low_battery: float = 0.0
    cellular: float = 0.0
    record: float = 0.0
    record_s: float = 20.0

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        faults = cls()
        if not text:
            return faults
        names = {f.name for f in fields(cls)}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise ValueError(f"unknown fault {item!r}; known: {', '.join(sorted(names))} (as name=probability)")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"fault {name} needs a number, got {value!r}") from None
            if name != "record_s" and not 0.0 <= number <= 1.0:
                raise ValueError(f"fault {name} is a probability between 0 and 1, got {number}")
            if name == "record_s" and number <= 0:
                raise ValueError("record_s must be positive")
            setattr(faults, name, number)
        return faults

    def __str__(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))


def parse_share(text: str) -> float:
    """``20%`` or ``0.2``: the share of the fleet that faults apply to."""
    raw = text.strip()
    try:
        share = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"give a percentage like 20% or a fraction like 0.2, got {text!r}") from None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of devices is between 0% and 100%, got {text!r}")
    return share


class FaultProxy:
    """A TCP proxy that forwards one HTTP request per connection and can cut the response short.

    The device asks for a cut with the request header ``X-Sim-Cut-After: N``: the proxy strips that
    header, forwards the request, relays the response headers and N bytes of the body, then aborts
    both connections (a TCP reset towards the device, a broken pipe for the server).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.cuts = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            cut_after: int | None = None
            kept = []
            for line in lines:
                name, _, value = line.partition(b":")
                if name.strip().lower() == CUT_HEADER:
                    cut_after = int(value.strip())
                    continue
                kept.append(line)
            upstream_r, upstream_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            upstream_w.write(b"\r\n".join(kept))
            await upstream_w.drain()
            pump_up = asyncio.create_task(self._pump(client_r, upstream_w))
            try:
                if await self._relay_response(upstream_r, client_w, cut_after):
                    upstream_w.transport.abort()
            finally:
                pump_up.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _relay_response(
        self, upstream_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, cut_after: int | None
    ) -> bool:
        """Relay the response; return True if it was cut short."""
        head = await upstream_r.readuntil(b"\r\n\r\n")
        client_w.write(head)
        sent = 0
        while data := await upstream_r.read(65536):
            if cut_after is not None and sent + len(data) >= cut_after:
                client_w.write(data[: max(0, cut_after - sent)])
                with contextlib.suppress(Exception):
                    await client_w.drain()
                await asyncio.sleep(0.05)  # let the kernel send what was written before the reset
                self.cuts += 1
                client_w.transport.abort()
                return True
            client_w.write(data)
            await client_w.drain()
            sent += len(data)
        return False
