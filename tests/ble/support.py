"""A Bota device (OtaPeripheral) and an app central (BumbleOtaTransport) on one virtual link."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bota_ota.sim.ble import BumbleOtaTransport, DeviceState, OtaPeripheral, VirtualPair, virtual_pair

T = TypeVar("T")

MODEL = "bota-pin"
OLD = "v1.0.0"
NEW = "v1.1.0"
SERIAL = "BP-000123"


def run(coro_fn: Callable[[], Awaitable[T]], limit: float = 30.0) -> T:
    """Run an async test body in a fresh loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), limit)

    return asyncio.run(bounded())


async def eventually(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for an event on the virtual link (a notification handled, a chunk taken): ``condition()`` is
    checked after every turn of the event loop's work; ``limit`` only bounds a test that would hang."""
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {limit}s")
        await asyncio.sleep(0.002)


def device_state(**overrides: Any) -> DeviceState:
    """A Bota Pin ``SERIAL`` running ``OLD``, with ``overrides``."""
    return DeviceState(**{"model": MODEL, "firmware_version": OLD, "serial": SERIAL, **overrides})


def image(size: int, seed: int = 1) -> bytes:
    """A deterministic pseudo-random firmware image."""
    return random.Random(seed).randbytes(size)


@dataclass
class Rig:
    pair: VirtualPair
    peripheral: OtaPeripheral
    transport: BumbleOtaTransport
    state: DeviceState
    events: list[tuple[str, Any]] = field(default_factory=list)

    def new_transport(self, mtu: int | None = 247) -> BumbleOtaTransport:
        return BumbleOtaTransport(self.pair.central, self.pair.peripheral_address, mtu=mtu)


@asynccontextmanager
async def rig(
    *,
    state: DeviceState | None = None,
    mtu: int | None = 247,
    peripheral_max_mtu: int = 517,
    reboot_delay: float = 0.05,
    verify_delay: float = 0.0,
) -> AsyncIterator[Rig]:
    pair = await virtual_pair(peripheral_max_mtu=peripheral_max_mtu)
    state = state or device_state(battery=80)
    events: list[tuple[str, Any]] = []
    peripheral = OtaPeripheral(
        pair.peripheral,
        state,
        reboot_delay=reboot_delay,
        verify_delay=verify_delay,
        on_connected=lambda: events.append(("connected", None)),
        on_disconnected=lambda: events.append(("disconnected", None)),
        on_applied=lambda version: events.append(("applied", version)),
    )
    await peripheral.start()
    transport = BumbleOtaTransport(pair.central, pair.peripheral_address, mtu=mtu)
    try:
        yield Rig(pair=pair, peripheral=peripheral, transport=transport, state=state, events=events)
    finally:
        await peripheral.stop()
        await pair.close()
