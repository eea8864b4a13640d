"""What a device checks before it installs an image: the release signature and its security counter
(docs/device-protocol.md, "Verifying an image").

Written from the docs, not from the server's code (the simulators import nothing of the server), so it
doubles as a conformance check of the server's signatures. The signed bytes are, in UTF-8::

    bota-ota firmware signature v1\\n
    model:<the device's own model>\\n
    version:<the version, without a leading v/V and without +build metadata>\\n
    security_version:<decimal>\\n
    size:<decimal bytes received>\\n
    sha256:<64 lower-case hex digits, computed over the bytes received>\\n

signed with Ed25519; a key's id is the first 8 bytes of the SHA-256 of its 32 raw bytes, in hex.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_DOMAIN = b"bota-ota firmware signature v1\n"
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 8
MAX_SECURITY_VERSION = 0xFFFFFFFF  # a u32 on the Bluetooth profile

SIGNATURE_INVALID = "signature_invalid"
ROLLBACK_REFUSED = "rollback_refused"


class KeyFormatError(ValueError):
    """Not an Ed25519 public key (PEM, or its 32 raw bytes as base64 or hex)."""


def version_for_signature(version: str) -> str:
    """The version as signed: no leading ``v``/``V``, no ``+build`` metadata."""
    text = version.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    return text.split("+", 1)[0]


def signed_message(*, model: str, version: str, security_version: int, size: int, sha256: str) -> bytes:
    """The canonical bytes a release signature covers."""
    return (
        SIGNATURE_DOMAIN
        + (
            f"model:{model}\n"
            f"version:{version_for_signature(version)}\n"
            f"security_version:{security_version}\n"
            f"size:{size}\n"
            f"sha256:{sha256}\n"
        ).encode()
    )


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits: the first 8 bytes of SHA-256 over the key's 32 raw bytes."""
    return hashlib.sha256(raw_public_key(key)).digest()[:KEY_ID_SIZE].hex()


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or its 32 raw bytes as base64 or hex."""
    text = (data.encode() if isinstance(data, str) else data).strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise KeyFormatError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError("the PEM key is not an Ed25519 key")
        return key
    try:
        ascii_text = text.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError("not PEM, base64 or hex text") from None
    for decode in (lambda s: base64.b64decode(s, validate=True), bytes.fromhex):
        try:
            raw = decode(ascii_text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
    raise KeyFormatError("not an Ed25519 public key: PEM, or 32 bytes as base64 or hex")


def decode_signature(value: str | None) -> bytes | None:
    """A manifest's ``signature`` (base64 of 64 bytes) as bytes; None when absent or malformed."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == SIGNATURE_SIZE else None


@dataclass
class DeviceTrust:
    """What a device keeps in its protected storage: the public keys built into its firmware (by key id)
    and its security counter, which only an applied image raises. No keys: the device accepts unsigned
    images (development builds only)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    security_version: int = 0

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey] = (), security_version: int = 0) -> DeviceTrust:
        return cls({key_id(k): k for k in keys}, security_version)

    @property
    def requires_signature(self) -> bool:
        return bool(self.keys)

    def knows(self, key: str | None) -> bool:
        return key is not None and key.lower() in self.keys

    def check(
        self,
        *,
        model: str,
        version: str,
        security_version: int,
        size: int,
        sha256: str,
        signature: bytes | None,
        key: str | None,
    ) -> str | None:
        """After size, CRC32 and SHA-256 matched: None to install, else the error to report
        (``signature_invalid`` or ``rollback_refused``). ``model`` is the device's own; ``size`` and
        ``sha256`` are of the bytes it received; the rest comes with the image (manifest or START)."""
        if self.keys:
            public = self.keys.get(key.lower()) if key else None
            if signature is None or public is None:
                return SIGNATURE_INVALID
            if not 0 <= security_version <= MAX_SECURITY_VERSION:
                return SIGNATURE_INVALID  # cannot have been signed: the server never signs such a value
            message = signed_message(
                model=model, version=version, security_version=security_version, size=size, sha256=sha256
            )
            try:
                public.verify(signature, message)
            except InvalidSignature:
                return SIGNATURE_INVALID
        if security_version < self.security_version:
            return ROLLBACK_REFUSED
        return None

    def applied(self, security_version: int) -> None:
        """The image booted: the counter becomes its security version (never lower: check() saw to that)."""
        self.security_version = max(self.security_version, security_version)
