"""The Bota OTA GATT profile, version 1 with signed START (docs/ble-ota.md): identifiers and pure byte codecs.

Nothing here depends on a Bluetooth stack, so a central built on another stack (e.g. ``bleak``) can
share it. All integers are little-endian; strings are ``str8``: a one-byte length then UTF-8.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

# --- UUIDs -----------------------------------------------------------------------------------------

DEVICE_INFORMATION_SERVICE_UUID16: Final = 0x180A
MODEL_NUMBER_STRING_UUID16: Final = 0x2A24
SERIAL_NUMBER_STRING_UUID16: Final = 0x2A25
"""The device's serial: its id on the server (e.g. ``BP-000123``), UTF-8, the whole value."""
FIRMWARE_REVISION_STRING_UUID16: Final = 0x2A26
BATTERY_SERVICE_UUID16: Final = 0x180F
BATTERY_LEVEL_UUID16: Final = 0x2A19

OTA_SERVICE_UUID: Final = "7e1a0000-b07a-4f7a-9c3e-0ba7a0ba0000"
CONTROL_POINT_UUID: Final = "7e1a0001-b07a-4f7a-9c3e-0ba7a0ba0000"
DATA_UUID: Final = "7e1a0002-b07a-4f7a-9c3e-0ba7a0ba0000"
STATUS_UUID: Final = "7e1a0003-b07a-4f7a-9c3e-0ba7a0ba0000"
DEVICE_STATE_UUID: Final = "7e1a0004-b07a-4f7a-9c3e-0ba7a0ba0000"


def uuid16_to_uuid128(uuid16: int) -> str:
    """The 128-bit form of a SIG-assigned 16-bit UUID (what most central APIs take)."""
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


# --- constants -------------------------------------------------------------------------------------

MODELS: Final = ("bota-pin", "bota-pin-pro", "bota-note")
LOW_BATTERY_THRESHOLD: Final = 20
"""START is refused with LOW_BATTERY when the battery level is below this (percent)."""

ATT_HEADER_SIZE: Final = 3
DATA_OFFSET_SIZE: Final = 4
DEFAULT_ATT_MTU: Final = 23
RESPONSE_CODE: Final = 0x80
STATUS_SIZE: Final = 7
DEVICE_STATE_RECORDING: Final = 0x01
"""Device State flag: a recording is in progress (the app relays it; START is refused with RECORDING)."""
MAX_ATTRIBUTE_VALUE_SIZE: Final = 512
"""ATT caps an attribute value at 512 bytes (Core Vol 3, Part F, 3.2.9); stacks drop longer writes."""
MAX_PROFILE_MTU: Final = MAX_ATTRIBUTE_VALUE_SIZE + ATT_HEADER_SIZE
"""515: the largest ATT MTU a Bota device accepts, so that a full Data write (offset + max_chunk =
MTU - 3) is never longer than an attribute value may be and max_chunk = MTU - 7 always holds."""


def max_chunk_for_mtu(mtu: int) -> int:
    """The largest Data payload for an ATT MTU: MTU - 3 (ATT header) - 4 (offset)."""
    return mtu - ATT_HEADER_SIZE - DATA_OFFSET_SIZE


def image_crc32(image: bytes | bytearray | memoryview) -> int:
    """zlib/IEEE CRC-32 of a whole image, as START carries it."""
    return zlib.crc32(image) & 0xFFFFFFFF


# --- enums -----------------------------------------------------------------------------------------


class Opcode(IntEnum):
    START = 0x01
    ABORT = 0x02
    FINISH = 0x03
    SIGNED_START = 0x04
    """START followed by the release signature and security version (docs/ble-ota.md, "Signed START")."""


START_OPCODES: Final = (Opcode.START, Opcode.SIGNED_START)
SIGNATURE_FORMAT_ED25519_V1: Final = 0x01
"""SIGNED_START's format byte: Ed25519 over the signed bytes of docs/device-protocol.md, version 1."""
SIGNATURE_SIZE: Final = 64
KEY_ID_SIZE: Final = 8


class Result(IntEnum):
    SUCCESS = 0x00
    RECORDING = 0x01
    LOW_BATTERY = 0x02
    WRONG_MODEL = 0x03
    SAME_VERSION = 0x04
    CRC_MISMATCH = 0x05
    INVALID_STATE = 0x06
    SIZE_MISMATCH = 0x07
    TOO_LARGE = 0x08
    INVALID_PARAMETER = 0x09
    SIGNATURE_INVALID = 0x0A
    ROLLBACK_REFUSED = 0x0B


class State(IntEnum):
    IDLE = 0x00
    RECEIVING = 0x01
    VERIFYING = 0x02
    APPLYING = 0x03
    FAILED = 0x04


class ProfileError(ValueError):
    """Bytes that do not follow the profile (a malformed command, response, chunk or status)."""


# --- str8 ------------------------------------------------------------------------------------------


def encode_str8(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFF:
        raise ProfileError(f"str8 too long: {len(raw)} bytes")
    return bytes([len(raw)]) + raw


def decode_str8(data: bytes, pos: int) -> tuple[str, int]:
    """Decode a str8 at ``pos``; return the string and the position after it."""
    if pos >= len(data):
        raise ProfileError("str8 length missing")
    length = data[pos]
    end = pos + 1 + length
    if end > len(data):
        raise ProfileError("str8 truncated")
    try:
        return data[pos + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise ProfileError("str8 is not UTF-8") from exc


# --- commands --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """What SIGNED_START adds to START: the image's security version and its Ed25519 signature by key ``key_id``."""

    security_version: int
    key_id: bytes  # 8 bytes: the first 8 bytes of SHA-256 of the signing key's raw public key
    signature: bytes  # 64 bytes
    format: int = SIGNATURE_FORMAT_ED25519_V1


@dataclass(frozen=True, slots=True)
class StartParams:
    size: int
    crc32: int
    model: str
    version: str
    signed: Signature | None = None  # set: SIGNED_START; None: START

    @property
    def opcode(self) -> Opcode:
        return Opcode.START if self.signed is None else Opcode.SIGNED_START

    @property
    def security_version(self) -> int:
        """The image's security version; an unsigned START claims 0."""
        return 0 if self.signed is None else self.signed.security_version


@dataclass(frozen=True, slots=True)
class Command:
    opcode: Opcode
    start: StartParams | None = None  # set for START and SIGNED_START


def encode_start(params: StartParams) -> bytes:
    """The full START (or SIGNED_START, when ``params.signed`` is set) as written to Control Point."""
    if not 0 <= params.size <= 0xFFFFFFFF or not 0 <= params.crc32 <= 0xFFFFFFFF:
        raise ProfileError("size and crc32 must fit in u32")
    body = struct.pack("<II", params.size, params.crc32) + encode_str8(params.model) + encode_str8(params.version)
    signed = params.signed
    if signed is None:
        return bytes([Opcode.START]) + body
    if not 0 <= signed.security_version <= 0xFFFFFFFF:
        raise ProfileError("security_version must fit in u32")
    if len(signed.key_id) != KEY_ID_SIZE or len(signed.signature) != SIGNATURE_SIZE:
        raise ProfileError(f"key_id is {KEY_ID_SIZE} bytes and the signature {SIGNATURE_SIZE}")
    if not 0 <= signed.format <= 0xFF:
        raise ProfileError("format is a u8")
    return (
        bytes([Opcode.SIGNED_START, signed.format])
        + body
        + struct.pack("<I", signed.security_version)
        + signed.key_id
        + signed.signature
    )


def encode_start_params(params: StartParams) -> bytes:
    """START's (or SIGNED_START's) parameters alone (without the opcode byte)."""
    return encode_start(params)[1:]


def _decode_start_body(data: bytes) -> tuple[int, int, str, str, int]:
    if len(data) < 8:
        raise ProfileError("START parameters truncated")
    size, crc32 = struct.unpack_from("<II", data, 0)
    model, pos = decode_str8(data, 8)
    version, pos = decode_str8(data, pos)
    return size, crc32, model, version, pos


def decode_start_params(data: bytes) -> StartParams:
    size, crc32, model, version, pos = _decode_start_body(data)
    if pos != len(data):
        raise ProfileError("trailing bytes after START parameters")
    return StartParams(size=size, crc32=crc32, model=model, version=version)


def decode_signed_start_params(data: bytes) -> StartParams:
    """SIGNED_START's parameters: ``format`` (only 0x01 is known), START's, then ``security_version``,
    ``key_id`` and ``signature``."""
    if not data:
        raise ProfileError("SIGNED_START format missing")
    if data[0] != SIGNATURE_FORMAT_ED25519_V1:
        raise ProfileError(f"unknown SIGNED_START format 0x{data[0]:02x}")
    size, crc32, model, version, pos = _decode_start_body(data[1:])
    rest = data[1 + pos :]
    if len(rest) != 4 + KEY_ID_SIZE + SIGNATURE_SIZE:
        raise ProfileError("SIGNED_START needs security_version (4), key_id (8) and signature (64) after version")
    (security_version,) = struct.unpack_from("<I", rest, 0)
    signed = Signature(
        security_version=security_version,
        key_id=rest[4 : 4 + KEY_ID_SIZE],
        signature=rest[4 + KEY_ID_SIZE :],
        format=data[0],
    )
    return StartParams(size=size, crc32=crc32, model=model, version=version, signed=signed)


def encode_abort() -> bytes:
    return bytes([Opcode.ABORT])


def encode_finish() -> bytes:
    return bytes([Opcode.FINISH])


def decode_command(data: bytes) -> Command:
    """Decode a Control Point write. Raises ProfileError for anything malformed or unknown."""
    if not data:
        raise ProfileError("empty command")
    try:
        opcode = Opcode(data[0])
    except ValueError as exc:
        raise ProfileError(f"unknown opcode 0x{data[0]:02x}") from exc
    if opcode is Opcode.START:
        return Command(opcode, decode_start_params(data[1:]))
    if opcode is Opcode.SIGNED_START:
        return Command(opcode, decode_signed_start_params(data[1:]))
    if len(data) != 1:
        raise ProfileError(f"{opcode.name} takes no parameters")
    return Command(opcode)


# --- responses -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    request_opcode: int  # an Opcode, or the raw byte of an unknown/malformed request
    result: Result
    max_chunk: int | None = None  # START or SIGNED_START with SUCCESS only


def encode_response(response: Response) -> bytes:
    out = struct.pack("<BBB", RESPONSE_CODE, response.request_opcode & 0xFF, response.result)
    if response.request_opcode in START_OPCODES and response.result is Result.SUCCESS:
        if response.max_chunk is None or not 0 <= response.max_chunk <= 0xFFFF:
            raise ProfileError("a successful START response needs max_chunk (u16)")
        out += struct.pack("<H", response.max_chunk)
    return out


def decode_response(data: bytes) -> Response:
    if len(data) < 3 or data[0] != RESPONSE_CODE:
        raise ProfileError(f"not a Control Point response: {data.hex()}")
    try:
        result = Result(data[2])
    except ValueError as exc:
        raise ProfileError(f"unknown result 0x{data[2]:02x}") from exc
    request_opcode = data[1]
    if request_opcode in START_OPCODES and result is Result.SUCCESS:
        if len(data) != 5:
            raise ProfileError("successful START response must carry max_chunk")
        (max_chunk,) = struct.unpack_from("<H", data, 3)
        return Response(request_opcode, result, max_chunk)
    if len(data) != 3:
        raise ProfileError("unexpected bytes after result")
    return Response(request_opcode, result)


# --- data chunks -----------------------------------------------------------------------------------


def encode_chunk(offset: int, payload: bytes | bytearray | memoryview) -> bytes:
    if not 0 <= offset <= 0xFFFFFFFF:
        raise ProfileError("offset must fit in u32")
    return struct.pack("<I", offset) + bytes(payload)


def decode_chunk(data: bytes) -> tuple[int, bytes]:
    """Return (offset, payload)."""
    if len(data) < DATA_OFFSET_SIZE:
        raise ProfileError("Data write shorter than its offset")
    (offset,) = struct.unpack_from("<I", data, 0)
    return offset, data[DATA_OFFSET_SIZE:]


# --- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    progress: int  # 0-100
    received: int
    last_result: Result


def encode_status(status: Status) -> bytes:
    if not 0 <= status.progress <= 100:
        raise ProfileError("progress must be 0-100")
    return struct.pack("<BBIB", status.state, status.progress, status.received, status.last_result)


def decode_status(data: bytes) -> Status:
    if len(data) != STATUS_SIZE:
        raise ProfileError(f"Status must be {STATUS_SIZE} bytes, got {len(data)}")
    state, progress, received, last_result = struct.unpack("<BBIB", data)
    try:
        return Status(State(state), progress, received, Result(last_result))
    except ValueError as exc:
        raise ProfileError(f"bad Status {data.hex()}") from exc


# --- device state ----------------------------------------------------------------------------------


def encode_device_state(*, recording: bool) -> bytes:
    """Device State: one flags byte; bit 0 set while recording, the other bits reserved (0)."""
    return bytes([DEVICE_STATE_RECORDING if recording else 0])


def decode_device_state(data: bytes) -> bool:
    """Whether the device is recording. Reserved bits are ignored (a later version may set them)."""
    if len(data) != 1:
        raise ProfileError(f"Device State must be 1 byte, got {len(data)}")
    return bool(data[0] & DEVICE_STATE_RECORDING)
