"""Signed firmware over Bluetooth: SIGNED_START and the device's checks (docs/ble-ota.md, "Signed START"),
over Bumble's real host stack on in-process virtual controllers."""

from __future__ import annotations

import hashlib

import pytest
from bumble.device import Connection
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bota_ota.sim.ble import (
    BumbleOtaTransport,
    Opcode,
    OtaPeripheral,
    Result,
    Signature,
    State,
    Status,
    push_image,
    virtual_pair,
)
from bota_ota.sim.ble.profile import Response
from bota_ota.sim.verify import DeviceTrust, key_id, signed_message
from tests.ble.support import MODEL, NEW, OLD, device_state, image, rig, run

pytestmark = pytest.mark.ble

SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def signature(
    firmware: bytes, *, key: Ed25519PrivateKey = SIGNER, security_version: int = 2, version: str = NEW
) -> Signature:
    message = signed_message(
        model=MODEL,
        version=version,
        security_version=security_version,
        size=len(firmware),
        sha256=hashlib.sha256(firmware).hexdigest(),
    )
    return Signature(
        security_version=security_version, key_id=bytes.fromhex(key_id(key.public_key())), signature=key.sign(message)
    )


def trust(counter: int = 0) -> DeviceTrust:
    return DeviceTrust.of([SIGNER.public_key()], counter)


def test_a_signed_image_is_applied_and_raises_the_security_counter() -> None:
    firmware = image(60_000)

    async def body() -> None:
        state = device_state(battery=80, trust=trust(1))
        async with rig(state=state) as r:
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, signed=signature(firmware))
            assert report.result is Result.SUCCESS and report.signed
            assert r.peripheral.counters.responses[0] == Response(Opcode.SIGNED_START, Result.SUCCESS, 240)
            await r.peripheral.wait_ready()
            assert state.firmware_version == NEW
            assert state.trust.security_version == 2

    run(body)


def test_signed_start_goes_through_at_the_default_mtu_as_a_long_write() -> None:
    """102 bytes at MTU 23 (20 bytes a Write Request): the central's stack uses Prepare/Execute Write."""
    firmware = image(3_000)

    async def body() -> None:
        async with rig(mtu=None, state=device_state(trust=trust())) as r:
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, signed=signature(firmware))
            assert report.result is Result.SUCCESS
            assert report.max_chunk == 16
            await r.peripheral.wait_ready()
            assert r.state.firmware_version == NEW

    run(body)


@pytest.mark.parametrize(
    ("counter", "signed_by", "expected"),
    [
        (0, None, Result.SIGNATURE_INVALID),  # a plain START to a device with trusted keys
        (0, STRANGER, Result.SIGNATURE_INVALID),  # a key the device does not trust
        (3, SIGNER, Result.ROLLBACK_REFUSED),  # security version 2 on a device at 3
        (3, STRANGER, Result.SIGNATURE_INVALID),  # the signature is checked before the counter
    ],
)
def test_start_refuses_what_it_can_tell_before_a_byte_is_sent(
    counter: int, signed_by: Ed25519PrivateKey | None, expected: Result
) -> None:
    firmware = image(20_000)

    async def body() -> None:
        state = device_state(trust=trust(counter))
        async with rig(state=state) as r:
            signed = None if signed_by is None else signature(firmware, key=signed_by)
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, signed=signed)
            assert report.result is expected
            assert report.sent == 0
            c = r.peripheral.counters
            assert (c.start_requests, c.starts_accepted, c.flash_erases, c.flash_bytes_written) == (1, 0, 0, 0)
            assert await r.transport.read_status() == Status(State.IDLE, 0, 0, expected)
            assert (state.firmware_version, state.trust.security_version, c.reboots) == (OLD, counter, 0)

    run(body)


@pytest.mark.parametrize(
    "forged",
    [
        "other bytes",  # a trusted key's signature over another image (same size and CRC32 as sent)
        "other version",  # signed for another version than START names
        "raised security version",  # START claims a higher security version than was signed
    ],
)
def test_finish_refuses_a_signature_that_does_not_verify_and_nothing_is_applied(forged: str) -> None:
    firmware = image(40_000)
    if forged == "other bytes":
        signed = signature(image(40_000, seed=9))
    elif forged == "other version":
        signed = signature(firmware, version="v9.9.9")
    else:
        honest = signature(firmware, security_version=2)
        signed = Signature(security_version=7, key_id=honest.key_id, signature=honest.signature)

    async def body() -> None:
        state = device_state(trust=trust())
        async with rig(state=state) as r:
            report = await push_image(r.transport, firmware, model=MODEL, version=NEW, signed=signed)
            assert report.result is Result.SIGNATURE_INVALID
            assert report.sent == len(firmware)  # the whole image came, then the device refused it
            assert report.statuses[-1] == Status(State.FAILED, 0, 0, Result.SIGNATURE_INVALID)
            assert not report.device_disconnected and r.transport.connected
            assert (state.firmware_version, state.trust.security_version) == (OLD, 0)
            assert r.peripheral.counters.reboots == 0 and r.peripheral.counters.applied_versions == []
            assert (await r.transport.read_info()).firmware_version == OLD

    run(body)


def test_a_device_of_another_model_refuses_a_signature_made_for_this_one() -> None:
    """The device builds the signed bytes from its own model. (Its START check WRONG_MODEL comes first; a
    device whose Model Number is misreported still refuses.)"""
    firmware = image(10_000)

    async def body() -> None:
        state = device_state(trust=trust())
        async with rig(state=state) as r:
            await r.transport.connect()
            state.model = "bota-note"
            report = await push_image(r.transport, firmware, model="bota-note", version=NEW, signed=signature(firmware))
            assert report.result is Result.SIGNATURE_INVALID
            assert state.firmware_version == OLD

    run(body)


def test_without_trusted_keys_plain_start_works_but_the_counter_still_holds() -> None:
    firmware = image(10_000)

    async def body() -> None:
        async with rig(state=device_state(trust=DeviceTrust(security_version=1))) as r:
            refused = await push_image(r.transport, firmware, model=MODEL, version=NEW)
            assert refused.result is Result.ROLLBACK_REFUSED
            signed = await push_image(r.transport, firmware, model=MODEL, version=NEW, signed=signature(firmware))
            assert signed.result is Result.SUCCESS  # no keys: the signature is not checked, the counter is
            await r.peripheral.wait_ready()
            assert r.state.trust.security_version == 2

    run(body)


class DeviceWithoutSignedStart(OtaPeripheral):
    """A device built before signed firmware: it does not know opcode 0x04."""

    def _on_control_point_write(self, connection: Connection, value: bytes) -> None:
        super()._on_control_point_write(connection, value if value[:1] != b"\x04" else b"\x04")


def test_a_device_without_signed_start_gets_a_plain_start() -> None:
    firmware = image(10_000)

    async def body() -> None:
        pair = await virtual_pair()
        old = DeviceWithoutSignedStart(pair.peripheral, device_state(battery=80), reboot_delay=0.05)
        await old.start()
        try:
            transport = BumbleOtaTransport(pair.central, pair.peripheral_address)
            report = await push_image(transport, firmware, model=MODEL, version=NEW, signed=signature(firmware))
            assert report.result is Result.SUCCESS and not report.signed
            assert [(x.request_opcode, x.result) for x in old.counters.responses[:2]] == [
                (0x04, Result.INVALID_PARAMETER),
                (Opcode.START, Result.SUCCESS),
            ]
            await old.wait_ready()
            assert old.state.firmware_version == NEW
        finally:
            await old.stop()
            await pair.close()

    run(body)
