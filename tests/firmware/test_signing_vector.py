"""The signed byte string, byte for byte: a known-answer test, and the same vector in docs/security.md."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bota_ota.firmware import signing
from tests.firmware.signing_support import VECTOR_KEY

DOC = Path(__file__).parents[2] / "docs" / "security.md"
DEVICE_PROTOCOL = Path(__file__).parents[2] / "docs" / "device-protocol.md"
FILE = b"bota-ota test vector\n"
MESSAGE = (
    b"bota-ota firmware signature v1\n"
    b"model:bota-pin\n"
    b"version:1.0.1\n"
    b"security_version:1\n"
    b"size:21\n"
    b"sha256:1ce514fb8b2997a5ee139daed24814d8e9b9b30ece0a7f6f67a54e8e1ecd867f\n"
)
SIGNATURE = "Z1ZzrPN4eXP/HwzkEGtYQgC3lCNVqBWsVXCMQ56lKvV5S/Jsnev8/lQ1Tmy9US9hC31YkQAXglXjTrLaVrycBQ=="
PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
PUBLIC_PEM_BODY = "MCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
KEY_ID = "56475aa75463474c"
SHA256 = "1ce514fb8b2997a5ee139daed24814d8e9b9b30ece0a7f6f67a54e8e1ecd867f"


def test_known_answer() -> None:
    fields = signing.fields_of_file(FILE, model="bota-pin", version="v1.0.1", security_version=1)
    assert fields.sha256 == SHA256
    assert fields.message() == MESSAGE
    assert len(MESSAGE) == 159
    assert signing.sign(VECTOR_KEY, fields) == SIGNATURE
    public = VECTOR_KEY.public_key()
    assert signing.public_raw(public).hex() == PUBLIC_HEX
    assert signing.public_pem(public) == f"-----BEGIN PUBLIC KEY-----\n{PUBLIC_PEM_BODY}\n-----END PUBLIC KEY-----\n"
    assert signing.key_id(public) == KEY_ID
    assert signing.verify(public, base64.b64decode(SIGNATURE), fields)


@pytest.mark.parametrize(
    "version", ["v1.0.1", "1.0.1", "V1.0.1", "v1.0.1+build.7"], ids=["v", "bare", "upper-v", "build-metadata"]
)
def test_the_version_is_signed_normalised(version: str) -> None:
    fields = signing.fields_of_file(FILE, model="bota-pin", version=version, security_version=1)
    assert fields.message() == MESSAGE


def test_every_field_changes_the_bytes() -> None:
    base = signing.fields_of_file(FILE, model="bota-pin", version="v1.0.1", security_version=1)
    others = [
        signing.fields_of_file(FILE, model="bota-pin-pro", version="v1.0.1", security_version=1),
        signing.fields_of_file(FILE, model="bota-pin", version="v1.0.2", security_version=1),
        signing.fields_of_file(FILE, model="bota-pin", version="v1.0.1", security_version=2),
        signing.fields_of_file(FILE + b"\x00", model="bota-pin", version="v1.0.1", security_version=1),
    ]
    signature = base64.b64decode(SIGNATURE)
    for other in others:
        assert other.message() != base.message()
        assert not signing.verify(VECTOR_KEY.public_key(), signature, other)


@pytest.mark.parametrize(
    "form",
    [SIGNATURE, SIGNATURE + "\n", f"  {SIGNATURE}\r\n", base64.b64decode(SIGNATURE).hex(), "raw"],
    ids=["base64", "base64-newline", "whitespace", "hex", "raw"],
)
def test_signature_files_in_every_accepted_form(form: str) -> None:
    raw = base64.b64decode(SIGNATURE)
    assert signing.parse_signature(raw if form == "raw" else form) == raw


def test_the_same_vector_is_in_docs_security_md() -> None:
    text = DOC.read_text()
    for value in (SIGNATURE, PUBLIC_HEX, PUBLIC_PEM_BODY, KEY_ID, SHA256, "159 of them"):
        assert value in text, value
    block = "\n".join(line.removesuffix("\\n") for line in MESSAGE.decode().splitlines())
    shown = text.split("The signed bytes, 159 of them:", 1)[1].split("```")[1].strip("\n")
    assert [line.removesuffix("\\n") for line in shown.splitlines()] == block.splitlines()


def test_it_is_the_vector_of_the_device_protocol() -> None:
    text = DEVICE_PROTOCOL.read_text()
    for value in (SIGNATURE, PUBLIC_HEX, KEY_ID, SHA256):
        assert value in text, value
