"""The signing test vector of docs/device-protocol.md ("Verifying an image", "Test vector"), and its
SIGNED_START in docs/ble-ota.md, against both implementations: the server's (bota_ota.firmware.signing)
and the simulated devices' own (bota_ota.sim.verify), which is written from the docs alone."""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bota_ota.firmware import signing as server
from bota_ota.sim import verify as sim
from bota_ota.sim.ble.profile import Signature, StartParams, decode_command, encode_start

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _vector() -> dict[str, str]:
    text = (DOCS / "device-protocol.md").read_text()
    section = text[text.index("### Test vector") :]
    block = section[section.index("```\n") + 4 :]
    block = block[: block.index("```")]
    rows = {}
    for line in block.splitlines():
        label, _, value = line.partition(":")
        rows[re.sub(r"\s*\(.*\)$", "", label.strip())] = value.strip()
    return rows


VECTOR = _vector()


def _file() -> bytes:
    value: str = ast.literal_eval(VECTOR["file"])
    return value.encode()


def _message() -> bytes:
    value: str = ast.literal_eval(VECTOR["signed bytes"])
    return value.encode()


def test_the_doc_gives_every_value() -> None:
    assert set(VECTOR) == {
        "private key",
        "public key",
        "public key PEM body",
        "key_id",
        "file",
        "file sha256",
        "file crc32",
        "model",
        "version",
        "security_version",
        "signed bytes",
        "signature",
    }


def test_keys_and_key_id() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["private key"]))
    assert bytes.fromhex(VECTOR["private key"]) == bytes(range(32))
    public = private.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == VECTOR["public key"]
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert pem.splitlines()[1] == VECTOR["public key PEM body"]
    assert server.key_id(public) == sim.key_id(public) == VECTOR["key_id"]
    # Both load the key from each form the docs name.
    for form in (pem, base64.b64encode(raw).decode(), raw.hex()):
        assert sim.key_id(sim.load_public_key(form)) == VECTOR["key_id"]
        assert server.key_id(server.load_public_key(form)) == VECTOR["key_id"]


def test_file_checksums() -> None:
    data = _file()
    assert len(data) == 21
    assert hashlib.sha256(data).hexdigest() == VECTOR["file sha256"]
    assert zlib.crc32(data) == int(VECTOR["file crc32"])


def test_signed_bytes_are_the_same_in_the_doc_the_server_and_the_simulator() -> None:
    data = _file()
    message = _message()
    assert len(message) == 159
    fields = server.fields_of_file(
        data, model=VECTOR["model"], version=VECTOR["version"], security_version=int(VECTOR["security_version"])
    )
    assert fields.message() == message
    assert (
        sim.signed_message(
            model=VECTOR["model"],
            version=VECTOR["version"],
            security_version=int(VECTOR["security_version"]),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        == message
    )


def test_the_signature_is_reproduced_and_verifies_on_both_sides() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["private key"]))
    data = _file()
    fields = server.fields_of_file(data, model="bota-pin", version="v1.0.1", security_version=1)
    assert server.sign(private, fields) == VECTOR["signature"]
    assert base64.b64encode(private.sign(_message())).decode() == VECTOR["signature"]
    signature = server.parse_signature(VECTOR["signature"])
    assert server.verify(private.public_key(), signature, fields)
    assert sim.decode_signature(VECTOR["signature"]) == signature


def _device_check(**changes: object) -> str | None:
    data = _file()
    trust = sim.DeviceTrust.of([sim.load_public_key(VECTOR["public key"])], int(str(changes.pop("counter", 0))))
    values: dict[str, object] = {
        "model": "bota-pin",
        "version": "v1.0.1",
        "security_version": 1,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "signature": sim.decode_signature(VECTOR["signature"]),
        "key": VECTOR["key_id"],
        **changes,
    }
    return trust.check(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"counter": 1}, None),
        ({"key": VECTOR["key_id"].upper()}, None),
        ({"counter": 2}, "rollback_refused"),
        ({"model": "bota-pin-pro"}, "signature_invalid"),
        ({"version": "v1.0.2"}, "signature_invalid"),
        ({"version": "1.0.1+build.9"}, None),  # build metadata is not signed
        ({"security_version": 2}, "signature_invalid"),
        ({"key": "0000000000000000"}, "signature_invalid"),
        ({"signature": None}, "signature_invalid"),
    ],
)
def test_the_devices_verdicts_in_the_doc(changes: dict[str, object], expected: str | None) -> None:
    assert _device_check(**changes) == expected


def test_the_signed_start_in_the_ble_doc() -> None:
    text = (DOCS / "ble-ota.md").read_text()
    section = text[text.index("a SIGNED_START:") :]
    block = section[section.index("```\n") + 4 :]
    raw = bytes.fromhex(block[: block.index("```")])
    data = _file()
    params = StartParams(
        size=len(data),
        crc32=zlib.crc32(data),
        model="bota-pin",
        version="v1.0.1",
        signed=Signature(
            security_version=1,
            key_id=bytes.fromhex(VECTOR["key_id"]),
            signature=base64.b64decode(VECTOR["signature"]),
        ),
    )
    assert encode_start(params) == raw
    assert len(raw) == 102
    assert decode_command(raw).start == params
