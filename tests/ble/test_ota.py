"""The Bota OTA profile end to end: OtaPeripheral and push_image over Bumble's real host stack (HCI, L2CAP,
ATT with MTU exchange, GATT) on in-process virtual controllers. Nothing of the BLE stack is mocked."""

from __future__ import annotations

import asyncio
import time

import pytest
from bumble.core import UUID

from bota_ota.sim.ble import (
    BumbleOtaTransport,
    DeviceState,
    OtaDisconnectedError,
    OtaTimeoutError,
    Result,
    State,
    Status,
    push_image,
)
from bota_ota.sim.ble.profile import CONTROL_POINT_UUID, Response, image_crc32
from tests.ble.support import MODEL, NEW, OLD, device_state, eventually, image, rig, run

pytestmark = pytest.mark.ble


@pytest.mark.parametrize(
    ("requested", "server_max", "expected_mtu"),
    [
        (247, 517, 247),
        (100, 517, 100),
        (247, 158, 158),  # the peripheral's limit wins
        (517, 517, 515),  # a Bota device caps MTU at 515: MTU - 3 must fit in one 512-byte attribute value
        (None, 517, 23),  # no exchange: ATT default
    ],
)
def test_mtu_is_negotiated_and_max_chunk_is_mtu_minus_7(
    requested: int | None, server_max: int, expected_mtu: int
) -> None:
    async def body() -> None:
        async with rig(mtu=requested, peripheral_max_mtu=server_max) as r:
            await r.transport.connect()
            assert r.transport.mtu == expected_mtu
            assert r.peripheral.connection is not None
            assert r.peripheral.connection.att_mtu == expected_mtu
            await r.transport.subscribe()
            result, max_chunk = await r.transport.start(1000, 0, MODEL, NEW)
            assert result is Result.SUCCESS
            assert max_chunk == expected_mtu - 7
            # A chunk of exactly max_chunk fits in one Write Command and is taken.
            await r.transport.write_chunk(0, bytes(max_chunk))
            await eventually(lambda: r.peripheral.received == max_chunk)
            assert await r.transport.abort() is Result.SUCCESS

    run(body)


def test_200k_image_updates_the_device_which_reboots_into_the_new_version() -> None:
    firmware = image(200 * 1024)

    async def body() -> None:
        async with rig() as r:
            progress: list[tuple[int, int]] = []
            report = await push_image(
                r.transport, firmware, model=MODEL, version=NEW, on_progress=lambda s, t: progress.append((s, t))
            )
            assert report.result is Result.SUCCESS
            assert report.info is not None and report.info.firmware_version == OLD and report.info.model == MODEL
            assert report.info.battery == 80
            assert report.max_chunk == 240
            assert report.sent == len(firmware)
            assert progress[-1] == (len(firmware), len(firmware))
            assert [s for s, _ in progress] == sorted(s for s, _ in progress)
            # The device dropped the link itself to reboot.
            assert report.device_disconnected
            assert not r.transport.connected
            assert r.peripheral.rebooting or r.state.firmware_version == NEW

            await r.peripheral.wait_ready()
            assert r.state.firmware_version == NEW
            assert r.peripheral.counters.applied_versions == [NEW]
            assert r.peripheral.counters.flash_bytes_written == len(firmware)
            assert r.peripheral.counters.starts_accepted == 1
            assert r.peripheral.transfer_state is State.IDLE
            assert r.events == [("connected", None), ("disconnected", None), ("applied", NEW)]

            # A new connection reads the new Firmware Revision String.
            again = r.new_transport()
            await again.connect()
            info = await again.read_info()
            assert info.firmware_version == NEW
            assert info.model == MODEL
            assert r.events[-1] == ("connected", None)
            # Same version again is now refused.
            again_report = await push_image(again, firmware, model=MODEL, version=NEW)
            assert again_report.result is Result.SAME_VERSION
            await again.disconnect()

    run(body)


def test_status_notifications_track_progress_to_100_then_verifying_and_applying() -> None:
    firmware = image(50_000)

    async def body() -> None:
        async with rig() as r:
            seen: list[Status] = []
            r.transport.add_status_listener(seen.append)
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW)
            assert report.result is Result.SUCCESS
            assert seen == report.statuses
            receiving = [s for s in seen if s.state is State.RECEIVING]
            assert receiving[0].progress == 0 and receiving[0].received == 0
            # 240-byte chunks are < 1 % of 50 kB: every whole percent is notified, once, in order.
            assert [s.progress for s in receiving] == list(range(101))
            assert [s.received for s in receiving] == sorted(s.received for s in receiving)
            assert receiving[-1].received == len(firmware)
            assert [s.state for s in seen[-2:]] == [State.VERIFYING, State.APPLYING]
            assert seen[-1].last_result is Result.SUCCESS

    run(body)


def test_recording_refuses_start_and_nothing_is_written() -> None:
    recording = True

    async def body() -> None:
        state = device_state(battery=90, recording=lambda: recording)
        async with rig(state=state) as r:
            report = await push_image(r.transport, image(10_000), model=MODEL, version=NEW)
            assert report.result is Result.RECORDING
            assert report.sent == 0
            c = r.peripheral.counters
            assert (c.start_requests, c.starts_accepted, c.flash_erases, c.flash_bytes_written) == (1, 0, 0, 0)
            assert r.peripheral.transfer_state is State.IDLE
            status = await r.transport.read_status()
            assert status == Status(State.IDLE, 0, 0, Result.RECORDING)
            assert r.state.firmware_version == OLD
            assert r.transport.connected  # a refusal does not drop the link
            assert (await r.transport.read_info()).recording is True  # Device State, for the app to relay

    run(body)


@pytest.mark.parametrize(
    ("state", "model", "version", "size", "expected"),
    [
        (device_state(battery=19), MODEL, NEW, 4000, Result.LOW_BATTERY),
        (device_state(battery=20), MODEL, NEW, 4000, Result.SUCCESS),  # 20 % is enough
        (device_state(), "bota-note", NEW, 4000, Result.WRONG_MODEL),
        (device_state(), MODEL, OLD, 4000, Result.SAME_VERSION),
        (device_state(max_image_size=3999), MODEL, NEW, 4000, Result.TOO_LARGE),
        (device_state(max_image_size=4000), MODEL, NEW, 4000, Result.SUCCESS),
        (device_state(busy=True), MODEL, NEW, 4000, Result.INVALID_STATE),  # e.g. updating over HTTP
    ],
)
def test_start_checks(state: DeviceState, model: str, version: str, size: int, expected: Result) -> None:
    async def body() -> None:
        async with rig(state=state) as r:
            report = await push_image(r.transport, image(size), model=model, version=version)
            assert report.result is expected
            c = r.peripheral.counters
            if expected is Result.SUCCESS:
                assert c.flash_bytes_written == size
                await r.peripheral.wait_ready()
                assert state.firmware_version == version
            else:
                assert (c.starts_accepted, c.flash_erases, c.flash_bytes_written) == (0, 0, 0)
                assert state.firmware_version == OLD
                assert r.peripheral.counters.reboots == 0

    run(body)


def test_start_checks_run_in_the_documented_order() -> None:
    # Each case fails every later check too: the first one that applies is the answer (docs/ble-ota.md).
    cases = [
        (device_state(busy=True, recording=True), MODEL, NEW, 0, Result.INVALID_STATE),
        (device_state(recording=True, battery=5), MODEL, NEW, 0, Result.INVALID_PARAMETER),
        (device_state(recording=True, battery=5, max_image_size=10), "bota-note", OLD, 99, Result.RECORDING),
        (device_state(battery=5, max_image_size=10), "bota-note", OLD, 99, Result.LOW_BATTERY),
        (device_state(max_image_size=10), "bota-note", OLD, 99, Result.WRONG_MODEL),
        (device_state(max_image_size=10), MODEL, OLD, 99, Result.SAME_VERSION),
    ]

    async def body() -> None:
        for state, model, version, size, expected in cases:
            async with rig(state=state) as r:
                await r.transport.connect()
                assert await r.transport.start(size, 0, model, version) == (expected, 0)

    run(body)


def test_wrong_crc32_gives_crc_mismatch_and_keeps_the_old_firmware() -> None:
    firmware = image(30_000)

    async def body() -> None:
        async with rig() as r:
            report = await push_image(
                r.transport, firmware, model=MODEL, version=NEW, crc32=image_crc32(firmware) ^ 0x1
            )
            assert report.result is Result.CRC_MISMATCH
            assert report.sent == len(firmware)
            assert not report.device_disconnected
            assert report.statuses[-1] == Status(State.FAILED, 0, 0, Result.CRC_MISMATCH)
            assert r.transport.connected
            # The FAILED notification is sent once the device has decided: nothing is flashed after it.
            assert r.state.firmware_version == OLD
            assert r.peripheral.counters.reboots == 0
            assert ("applied", NEW) not in r.events
            assert (await r.transport.read_info()).firmware_version == OLD
            # The device can take a correct transfer right away, from offset 0.
            retry = await push_image(r.transport, firmware, model=MODEL, version=NEW)
            assert retry.result is Result.SUCCESS
            assert r.peripheral.counters.first_data_offsets == [0, 0]

    run(body)


def test_disconnect_midway_discards_and_the_next_push_starts_at_offset_0() -> None:
    firmware = image(100_000)

    async def body() -> None:
        async with rig() as r:
            with pytest.raises(OtaDisconnectedError) as dropped:
                await push_image(r.transport, firmware, model=MODEL, version=NEW, disconnect_at=0.5)
            assert dropped.value.intentional
            assert dropped.value.total == len(firmware)
            assert len(firmware) // 2 <= dropped.value.sent < len(firmware) // 2 + 240
            p = r.peripheral
            await eventually(lambda: not p.connected)
            # What arrived before the drop was written, then thrown away: no partial resume.
            assert p.counters.flash_bytes_written == dropped.value.sent
            assert p.transfer_state is State.IDLE
            assert p.received == 0
            assert r.state.firmware_version == OLD

            # Second attempt: a new connection and a new START, from offset 0.
            report = await push_image(r.new_transport(), firmware, model=MODEL, version=NEW)
            assert report.result is Result.SUCCESS
            assert p.counters.starts_accepted == 2
            assert p.counters.flash_erases == 2
            assert p.counters.first_data_offsets == [0, 0]
            assert p.counters.flash_bytes_written == dropped.value.sent + len(firmware)
            await p.wait_ready()
            assert r.state.firmware_version == NEW

    run(body)


def test_disconnect_during_verifying_discards_the_image() -> None:
    firmware = image(20_000)

    async def body() -> None:
        async with rig(verify_delay=0.3) as r:
            t = r.transport
            await t.connect()
            await t.subscribe()
            verifying = asyncio.Event()
            t.add_status_listener(lambda s: verifying.set() if s.state is State.VERIFYING else None)
            result, max_chunk = await t.start(len(firmware), image_crc32(firmware), MODEL, NEW)
            assert result is Result.SUCCESS
            for offset in range(0, len(firmware), max_chunk):
                await t.write_chunk(offset, firmware[offset : offset + max_chunk])
            finish = asyncio.ensure_future(t.finish())
            await asyncio.wait_for(verifying.wait(), 2)
            await t.disconnect()
            with pytest.raises(OtaDisconnectedError):
                await finish
            await eventually(lambda: r.peripheral.transfer_state is State.IDLE and r.peripheral.received == 0)
            assert r.peripheral.counters.reboots == 0
            assert r.state.firmware_version == OLD

    run(body)


def test_out_of_order_chunk_fails_the_transfer_without_resume() -> None:
    firmware = image(10_000)

    async def body() -> None:
        async with rig() as r:
            t = r.transport
            await t.connect()
            await t.subscribe()
            failed = asyncio.Event()
            t.add_status_listener(lambda s: failed.set() if s.state is State.FAILED else None)
            _, max_chunk = await t.start(len(firmware), image_crc32(firmware), MODEL, NEW)
            await t.write_chunk(0, firmware[:max_chunk])
            await t.write_chunk(2 * max_chunk, firmware[2 * max_chunk : 3 * max_chunk])  # skips one chunk
            await asyncio.wait_for(failed.wait(), 2)
            assert t.last_status == Status(State.FAILED, 0, 0, Result.INVALID_PARAMETER)
            assert r.peripheral.counters.last_result is Result.INVALID_PARAMETER
            # Later chunks are ignored, the transfer cannot be finished...
            await t.write_chunk(max_chunk, firmware[max_chunk : 2 * max_chunk])
            assert await t.finish() is Result.INVALID_STATE
            assert r.peripheral.received == 0
            # ...and a new START begins at 0 again: continuing where it stopped fails too.
            result, _ = await t.start(len(firmware), image_crc32(firmware), MODEL, NEW)
            assert result is Result.SUCCESS
            failed.clear()
            await t.write_chunk(max_chunk, firmware[max_chunk : 2 * max_chunk])
            await asyncio.wait_for(failed.wait(), 2)
            assert r.peripheral.counters.first_data_offsets == [0, max_chunk]

    run(body)


def test_abort_discards_what_was_received() -> None:
    firmware = image(20_000)

    async def body() -> None:
        async with rig() as r:
            t = r.transport
            await t.connect()
            await t.subscribe()
            _, max_chunk = await t.start(len(firmware), image_crc32(firmware), MODEL, NEW)
            for offset in range(0, 10 * max_chunk, max_chunk):
                await t.write_chunk(offset, firmware[offset : offset + max_chunk])
            await eventually(lambda: r.peripheral.received == 10 * max_chunk)
            assert await t.abort() is Result.SUCCESS
            assert r.peripheral.transfer_state is State.IDLE
            assert r.peripheral.received == 0
            assert (await t.read_status()).state is State.IDLE
            assert await t.finish() is Result.INVALID_STATE
            assert await t.abort() is Result.SUCCESS  # idempotent
            # A full push afterwards works from offset 0.
            report = await push_image(t, firmware, model=MODEL, version=NEW)
            assert report.result is Result.SUCCESS
            assert r.peripheral.counters.first_data_offsets == [0, 0]

    run(body)


def test_command_state_rules() -> None:
    firmware = image(5000)

    async def body() -> None:
        async with rig() as r:
            t = r.transport
            await t.connect()
            await t.subscribe()
            assert await t.finish() is Result.INVALID_STATE  # FINISH with no transfer
            result, max_chunk = await t.start(len(firmware), image_crc32(firmware), MODEL, NEW)
            assert result is Result.SUCCESS
            assert (await t.start(len(firmware), 0, MODEL, NEW))[0] is Result.INVALID_STATE  # already receiving
            await t.write_chunk(0, firmware[:max_chunk])
            assert await t.finish() is Result.SIZE_MISMATCH  # FINISH before size bytes arrived
            assert t.last_status is not None and t.last_status.state is State.FAILED
            # A chunk past `size` fails the transfer with SIZE_MISMATCH.
            small = firmware[:500]
            assert (await t.start(len(small), image_crc32(small), MODEL, NEW))[0] is Result.SUCCESS
            await t.write_chunk(0, small[:240])
            await t.write_chunk(240, small[240:480])
            await t.write_chunk(480, bytes(240))  # 500 bytes announced, this ends at 720
            await eventually(lambda: t.last_status == Status(State.FAILED, 0, 0, Result.SIZE_MISMATCH))
            # Malformed commands, written raw, are answered INVALID_PARAMETER.
            (control_point,) = t.link.peer.get_characteristics_by_uuid(UUID(CONTROL_POINT_UUID))
            responses = r.peripheral.counters.responses
            for raw, opcode in ((b"\x07", 0x07), (b"\x01\x00", 0x01), (b"\x03\x00", 0x03)):
                answered = len(responses)
                await t.link.peer.write_value(control_point, raw, with_response=True)
                await eventually(lambda n=answered: len(responses) > n)  # type: ignore[misc]
                assert responses[-1] == Response(opcode, Result.INVALID_PARAMETER)
            assert r.peripheral.counters.starts_accepted == 2

    run(body)


def test_rate_limit_paces_the_payload() -> None:
    firmware = image(100 * 1024)

    async def body() -> None:
        async with rig() as r:
            began = time.monotonic()
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, rate_kbps=400)
            elapsed = time.monotonic() - began
            assert report.result is Result.SUCCESS
            # 100 KiB at 400 kbit/s is 2.05 s: only a lower bound is asserted.
            assert elapsed >= 1.5
            assert report.elapsed >= 1.5

    run(body)


def test_connect_fails_while_the_device_reboots() -> None:
    async def body() -> None:
        async with rig(reboot_delay=1.0) as r:
            report = await push_image(r.transport, image(3000), model=MODEL, version=NEW)
            assert report.result is Result.SUCCESS and report.device_disconnected
            assert r.peripheral.rebooting
            late = r.new_transport()
            late.connect_timeout = 0.2
            with pytest.raises(OtaTimeoutError):
                await late.connect()
            await r.peripheral.wait_ready()
            await late.connect()
            assert (await late.read_info()).firmware_version == NEW

    run(body)


class _DroppingTransport(BumbleOtaTransport):
    """A central that loses one Data write (as if the app had a bug): the device must notice the gap."""

    async def write_chunk(self, offset: int, data: bytes) -> None:
        if offset == 3 * self.max_chunk:
            return
        await super().write_chunk(offset, data)


def test_push_image_reports_a_gap_in_the_data_as_invalid_parameter() -> None:
    firmware = image(30_000)

    async def body() -> None:
        async with rig() as r:
            lossy = _DroppingTransport(r.pair.central, r.pair.peripheral_address)
            report = await push_image(lossy, firmware, model=MODEL, version=NEW)
            assert report.result is Result.INVALID_PARAMETER
            assert any(s == Status(State.FAILED, 0, 0, Result.INVALID_PARAMETER) for s in report.statuses)
            assert r.peripheral.received == 0
            assert r.peripheral.counters.reboots == 0
            assert r.state.firmware_version == OLD

    run(body)
