"""A simulated device that also speaks Bluetooth: the HTTP ``SimDevice`` plus an ``OtaPeripheral``.

While a phone is connected the device pauses its own heartbeat (the app relays its status) and resumes
it when the phone goes away; an image installed over BLE changes the version the device reports. Both
radios share the device's trusted keys and security counter (``SimDevice.trust``): an image refused over
one is refused over the other, and one applied over either raises the counter for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from bota_ota.sim.ble.link import VirtualLink
from bota_ota.sim.ble.peripheral import DeviceState, OtaPeripheral
from bota_ota.sim.ble.profile import State
from bota_ota.sim.device import SimDevice


@dataclass
class BleSimDevice:
    sim: SimDevice
    peripheral: OtaPeripheral

    @property
    def address(self) -> str:
        return self.peripheral.address

    async def stop(self) -> None:
        await self.peripheral.stop()


def ble_address(index: int) -> str:
    """A static random address per simulated device (top two bits set, as the spec asks)."""
    return f"C0:{(index >> 24) & 0xFF:02X}:{(index >> 16) & 0xFF:02X}:{(index >> 8) & 0xFF:02X}:{index & 0xFF:02X}:B0"


async def attach_ble(sim: SimDevice, link: VirtualLink, *, index: int, reboot_s: float | None = None) -> BleSimDevice:
    """Give ``sim`` a Bluetooth radio on ``link`` and start advertising the Bota OTA service. Its Serial Number
    String is the device's id."""
    device = await link.add_device(ble_address(index), name=f"Bota {sim.device_id}")
    state = DeviceState(
        model=sim.model,
        firmware_version=sim.firmware_version,
        serial=sim.device_id,
        battery=lambda: sim.battery,
        recording=lambda: sim.recording,
        busy=lambda: sim.state != "idle",
        trust=sim.trust,
    )

    def connected() -> None:
        state.firmware_version = sim.firmware_version
        sim.pause_heartbeat()

    def disconnected() -> None:
        # A disconnect that starts the reboot does not resume the heartbeat: the reboot's end does.
        if not peripheral.rebooting and peripheral.transfer_state is not State.APPLYING:
            sim.resume_heartbeat()

    def applied(version: str) -> None:
        sim.applied_over_ble(version)
        sim.resume_heartbeat()  # back from the reboot: report the new version ourselves

    peripheral = OtaPeripheral(
        device,
        state,
        reboot_delay=sim.timing.reboot_s if reboot_s is None else reboot_s,
        on_connected=connected,
        on_disconnected=disconnected,
        on_applied=applied,
    )
    await peripheral.start()
    return BleSimDevice(sim=sim, peripheral=peripheral)
