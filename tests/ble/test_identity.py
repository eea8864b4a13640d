"""The device's identity over GATT: the Serial Number String (Device Information, 0x2A25) carries the
device's id, and a central told which device to update refuses any other one before writing anything."""

from __future__ import annotations

import pytest
from bumble import gatt
from bumble.att import ATT_Error, ErrorCode
from bumble.core import UUID

from bota_ota.sim.ble import OtaWrongDeviceError, Result, push_image
from bota_ota.sim.ble.peripheral import PeripheralCounters
from bota_ota.sim.ble.profile import OTA_SERVICE_UUID, SERIAL_NUMBER_STRING_UUID16
from tests.ble.support import MODEL, NEW, OLD, SERIAL, device_state, image, rig, run

pytestmark = pytest.mark.ble

LONGEST_ID = "BP-" + "9" * 61  # device ids are at most 64 characters: longer than one read at MTU 23


@pytest.mark.parametrize(("serial", "mtu"), [(SERIAL, 247), (LONGEST_ID, None)])
def test_the_serial_number_string_is_the_device_id_and_read_only(serial: str, mtu: int | None) -> None:
    async def body() -> None:
        state = device_state(serial=serial)
        async with rig(state=state, mtu=mtu) as r:
            await r.transport.connect()
            found = r.transport.link.peer.get_characteristics_by_uuid(
                gatt.GATT_SERIAL_NUMBER_STRING_CHARACTERISTIC, gatt.GATT_DEVICE_INFORMATION_SERVICE
            )
            assert len(found) == 1
            characteristic = found[0]
            assert characteristic.uuid == UUID.from_16_bits(SERIAL_NUMBER_STRING_UUID16)
            assert characteristic.properties == gatt.Characteristic.Properties.READ
            # The whole value is the id in UTF-8: no length prefix, no terminator (Read Blob past MTU - 1).
            assert bytes(await r.transport.link.peer.read_value(characteristic)) == serial.encode()
            info = await r.transport.read_info()
            assert info.serial == serial
            with pytest.raises(ATT_Error) as refused:
                await r.transport.link.peer.write_value(characteristic, b"BP-999999", with_response=True)
            assert refused.value.error_code == ErrorCode.WRITE_NOT_PERMITTED
            assert (await r.transport.read_info()).serial == serial

    run(body)


def test_push_image_to_another_device_than_named_writes_nothing() -> None:
    firmware = image(20_000)

    async def body() -> None:
        async with rig() as r:  # the device in front of the central is SERIAL (same model, older version)
            with pytest.raises(OtaWrongDeviceError) as wrong:
                await push_image(r.transport, firmware, model=MODEL, version=NEW, serial="BP-000124")
            assert (wrong.value.expected, wrong.value.actual) == ("BP-000124", SERIAL)
            assert "BP-000124" in str(wrong.value) and SERIAL in str(wrong.value)
            # No command, no Data write, no erase: the device saw reads only.
            assert r.peripheral.counters == PeripheralCounters(connections=1)
            assert r.state.firmware_version == OLD
            # Named right, the same push goes through.
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, serial=SERIAL)
            assert report.result is Result.SUCCESS
            assert r.peripheral.counters.flash_bytes_written == len(firmware)

    run(body)


def test_every_read_only_characteristic_refuses_writes() -> None:
    """Bumble's server checks no permissions: the peripheral itself answers Write Not Permitted."""

    async def body() -> None:
        async with rig() as r:
            await r.transport.connect()
            peer = r.transport.link.peer
            profile_services = {gatt.GATT_DEVICE_INFORMATION_SERVICE, gatt.GATT_BATTERY_SERVICE, UUID(OTA_SERVICE_UUID)}
            writes = gatt.Characteristic.Properties.WRITE | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE
            read_only = [
                c
                for service in peer.services
                if service.uuid in profile_services
                for c in service.characteristics
                if c.properties & gatt.Characteristic.Properties.READ and not c.properties & writes
            ]
            assert len(read_only) == 6  # Model Number, Serial Number, Firmware Revision, Battery, Status, Device State
            for characteristic in read_only:
                before = bytes(await peer.read_value(characteristic))
                with pytest.raises(ATT_Error) as refused:
                    await peer.write_value(characteristic, b"\x00", with_response=True)
                assert refused.value.error_code == ErrorCode.WRITE_NOT_PERMITTED, characteristic
                assert bytes(await peer.read_value(characteristic)) == before

    run(body)
