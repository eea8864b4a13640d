"""Byte-exact codecs of the Bota OTA profile (docs/ble-ota.md)."""

from __future__ import annotations

import zlib

import pytest

from bota_ota.sim.ble.profile import (
    CONTROL_POINT_UUID,
    DATA_UUID,
    DEVICE_STATE_UUID,
    OTA_SERVICE_UUID,
    STATUS_UUID,
    Command,
    Opcode,
    ProfileError,
    Response,
    Result,
    Signature,
    StartParams,
    State,
    Status,
    decode_chunk,
    decode_command,
    decode_device_state,
    decode_response,
    decode_start_params,
    decode_status,
    encode_abort,
    encode_chunk,
    encode_device_state,
    encode_finish,
    encode_response,
    encode_start,
    encode_start_params,
    encode_status,
    image_crc32,
    max_chunk_for_mtu,
    uuid16_to_uuid128,
)

pytestmark = pytest.mark.ble


def test_uuids_and_codes_match_the_doc() -> None:
    assert OTA_SERVICE_UUID == "7e1a0000-b07a-4f7a-9c3e-0ba7a0ba0000"
    assert CONTROL_POINT_UUID == "7e1a0001-b07a-4f7a-9c3e-0ba7a0ba0000"
    assert DATA_UUID == "7e1a0002-b07a-4f7a-9c3e-0ba7a0ba0000"
    assert STATUS_UUID == "7e1a0003-b07a-4f7a-9c3e-0ba7a0ba0000"
    assert DEVICE_STATE_UUID == "7e1a0004-b07a-4f7a-9c3e-0ba7a0ba0000"
    assert uuid16_to_uuid128(0x2A26) == "00002a26-0000-1000-8000-00805f9b34fb"
    assert [(o.name, o.value) for o in Opcode] == [("START", 1), ("ABORT", 2), ("FINISH", 3), ("SIGNED_START", 4)]
    assert [(r.name, r.value) for r in Result] == [
        ("SUCCESS", 0),
        ("RECORDING", 1),
        ("LOW_BATTERY", 2),
        ("WRONG_MODEL", 3),
        ("SAME_VERSION", 4),
        ("CRC_MISMATCH", 5),
        ("INVALID_STATE", 6),
        ("SIZE_MISMATCH", 7),
        ("TOO_LARGE", 8),
        ("INVALID_PARAMETER", 9),
        ("SIGNATURE_INVALID", 10),
        ("ROLLBACK_REFUSED", 11),
    ]
    assert [(s.name, s.value) for s in State] == [
        ("IDLE", 0),
        ("RECEIVING", 1),
        ("VERIFYING", 2),
        ("APPLYING", 3),
        ("FAILED", 4),
    ]
    assert max_chunk_for_mtu(247) == 240
    assert max_chunk_for_mtu(23) == 16


def test_start_is_little_endian_with_str8() -> None:
    params = StartParams(size=0x00171234, crc32=0xDEADBEEF, model="bota-pin", version="v1.2.0")
    raw = encode_start(params)
    assert raw == (b"\x01" + b"\x34\x12\x17\x00" + b"\xef\xbe\xad\xde" + b"\x08bota-pin" + b"\x06v1.2.0")
    assert encode_start_params(params) == raw[1:]
    assert decode_start_params(raw[1:]) == params
    assert decode_command(raw) == Command(Opcode.START, params)
    assert decode_command(encode_abort()) == Command(Opcode.ABORT)
    assert decode_command(encode_finish()) == Command(Opcode.FINISH)
    utf8 = StartParams(size=1, crc32=2, model="bota-note", version="v2-ß")
    assert decode_command(encode_start(utf8)).start == utf8


def test_signed_start_is_format_then_start_then_security_version_key_id_and_signature() -> None:
    signed = Signature(security_version=0x01020304, key_id=bytes(range(8)), signature=bytes(range(64)))
    params = StartParams(size=0x00171234, crc32=0xDEADBEEF, model="bota-pin", version="v1.2.0", signed=signed)
    raw = encode_start(params)
    assert raw == (
        b"\x04\x01"
        + b"\x34\x12\x17\x00"
        + b"\xef\xbe\xad\xde"
        + b"\x08bota-pin"
        + b"\x06v1.2.0"
        + b"\x04\x03\x02\x01"
        + bytes(range(8))
        + bytes(range(64))
    )
    assert len(raw) == 88 + 8 + 6
    assert params.opcode is Opcode.SIGNED_START and params.security_version == 0x01020304
    assert decode_command(raw) == Command(Opcode.SIGNED_START, params)
    assert encode_start_params(params) == raw[1:]
    unsigned = StartParams(size=1, crc32=2, model="bota-pin", version="v1")
    assert (unsigned.opcode, unsigned.security_version) == (Opcode.START, 0)
    for bad in (
        raw[:-1],  # signature short
        raw + b"\x00",  # trailing byte
        b"\x04\x02" + raw[2:],  # unknown format
        b"\x04",  # no format
    ):
        with pytest.raises(ProfileError):
            decode_command(bad)
    for wrong in (
        Signature(security_version=2**32, key_id=bytes(8), signature=bytes(64)),
        Signature(security_version=1, key_id=bytes(7), signature=bytes(64)),
        Signature(security_version=1, key_id=bytes(8), signature=bytes(65)),
    ):
        with pytest.raises(ProfileError):
            encode_start(StartParams(size=1, crc32=2, model="m", version="v", signed=wrong))
    # Its response is START's: max_chunk after SUCCESS.
    assert encode_response(Response(Opcode.SIGNED_START, Result.SUCCESS, 240)) == b"\x80\x04\x00\xf0\x00"
    assert decode_response(b"\x80\x04\x00\xf0\x00") == Response(Opcode.SIGNED_START, Result.SUCCESS, 240)
    assert decode_response(b"\x80\x04\x0b") == Response(Opcode.SIGNED_START, Result.ROLLBACK_REFUSED)
    assert decode_response(b"\x80\x03\x0a") == Response(Opcode.FINISH, Result.SIGNATURE_INVALID)


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # empty
        b"\x07",  # unknown opcode
        b"\x02\x00",  # ABORT with parameters
        b"\x03\x01",  # FINISH with parameters
        b"\x01\x00\x00\x00",  # START truncated
        b"\x01" + bytes(8) + b"\x05abc",  # str8 overruns
        b"\x01" + bytes(8) + b"\x01a\x01b\xff",  # trailing byte
        b"\x01" + bytes(8) + b"\x01\xff\x01b",  # not UTF-8
    ],
)
def test_malformed_commands_are_rejected(raw: bytes) -> None:
    with pytest.raises(ProfileError):
        decode_command(raw)


def test_responses() -> None:
    ok = Response(Opcode.START, Result.SUCCESS, 240)
    assert encode_response(ok) == b"\x80\x01\x00\xf0\x00"
    assert decode_response(b"\x80\x01\x00\xf0\x00") == ok
    refused = Response(Opcode.START, Result.RECORDING)
    assert encode_response(refused) == b"\x80\x01\x01"
    assert decode_response(b"\x80\x01\x01") == refused
    assert encode_response(Response(Opcode.FINISH, Result.CRC_MISMATCH)) == b"\x80\x03\x05"
    for bad in (b"\x81\x01\x00", b"\x80\x01", b"\x80\x01\x00", b"\x80\x03\x00\x00", b"\x80\x03\x63"):
        with pytest.raises(ProfileError):
            decode_response(bad)
    with pytest.raises(ProfileError):
        encode_response(Response(Opcode.START, Result.SUCCESS))  # max_chunk missing


def test_chunks_and_status() -> None:
    assert encode_chunk(0x01020304, b"abc") == b"\x04\x03\x02\x01abc"
    assert decode_chunk(b"\x04\x03\x02\x01abc") == (0x01020304, b"abc")
    assert decode_chunk(b"\x00\x00\x00\x00") == (0, b"")
    with pytest.raises(ProfileError):
        decode_chunk(b"\x00\x00\x00")
    status = Status(State.RECEIVING, 42, 123456, Result.SUCCESS)
    raw = encode_status(status)
    assert raw == b"\x01\x2a\x40\xe2\x01\x00\x00"
    assert len(raw) == 7
    assert decode_status(raw) == status
    with pytest.raises(ProfileError):
        decode_status(raw[:6])
    with pytest.raises(ProfileError):
        decode_status(b"\x09" + raw[1:])


def test_crc32_is_zlib() -> None:
    data = b"bota firmware" * 1000
    assert image_crc32(data) == zlib.crc32(data) & 0xFFFFFFFF


def test_device_state_is_one_flags_byte() -> None:
    assert encode_device_state(recording=True) == b"\x01"
    assert encode_device_state(recording=False) == b"\x00"
    assert decode_device_state(b"\x01") is True
    assert decode_device_state(b"\xfe") is False  # reserved bits are ignored
    for bad in (b"", b"\x01\x00"):
        with pytest.raises(ProfileError):
            decode_device_state(bad)
