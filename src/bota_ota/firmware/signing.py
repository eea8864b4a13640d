"""Release signatures: Ed25519 over a canonical byte string (docs/security.md, "What a signature covers").

The private key stays with whoever signs releases (``bota-ota keys generate`` / ``bota-ota sign``); the
server holds public keys only, verifies uploads against the model's trusted keys, and passes the signature
on to devices, which verify it again with the keys built into their firmware.

The signed bytes are::

    bota-ota firmware signature v1\\n
    model:<model>\\n
    version:<version: no leading "v", no build metadata>\\n
    security_version:<decimal>\\n
    size:<decimal bytes>\\n
    sha256:<64 lower-case hex digits>\\n

in UTF-8, so a signature cannot be moved onto another model, version, security version or file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bota_ota.firmware.versions import normalize_version

DOMAIN = b"bota-ota firmware signature v1\n"
SIGNATURE_BYTES = 64
KEY_ID_HEX = 16
MAX_SECURITY_VERSION = 2**32 - 1  # a u32 in the Bluetooth profile
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SignatureFormatError(ValueError):
    """The bytes given are not a signature, a key or a field of the signed message."""


@dataclass(frozen=True)
class SignedFields:
    model: str
    version: str
    security_version: int
    size: int
    sha256: str

    def message(self) -> bytes:
        """The canonical bytes a release signature covers."""
        if not 0 <= self.security_version <= MAX_SECURITY_VERSION:
            raise SignatureFormatError(f"security_version must be between 0 and {MAX_SECURITY_VERSION}")
        if self.size < 0:
            raise SignatureFormatError("size must not be negative")
        if not _HEX64.match(self.sha256):
            raise SignatureFormatError("sha256 must be 64 lower-case hex digits")
        text = (
            f"model:{self.model}\n"
            f"version:{normalize_version(self.version)}\n"
            f"security_version:{self.security_version}\n"
            f"size:{self.size}\n"
            f"sha256:{self.sha256}\n"
        )
        return DOMAIN + text.encode()


def fields_of_file(data: bytes, *, model: str, version: str, security_version: int = 0) -> SignedFields:
    return SignedFields(model, version, security_version, len(data), hashlib.sha256(data).hexdigest())


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: the first 8 bytes of the SHA-256 of its 32 raw bytes, in hex (16 characters)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def public_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo), or 32 raw bytes given as base64 or hex."""
    raw = data.encode() if isinstance(data, str) else data
    text = raw.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise SignatureFormatError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureFormatError("the key is not an Ed25519 key")
        return key
    decoded = _decode_fixed(text, 32, "an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(decoded)


def load_private_key(pem: bytes, passphrase: str | None = None) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode() if passphrase else None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SignatureFormatError(str(exc)) from None
    except ValueError:
        raise SignatureFormatError("not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureFormatError("the key is not an Ed25519 key")
    return key


def private_pem(key: Ed25519PrivateKey, passphrase: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def sign(key: Ed25519PrivateKey, fields: SignedFields) -> str:
    """The signature as base64 (88 characters), the form of a ``.sig`` file and of the manifest."""
    return base64.b64encode(key.sign(fields.message())).decode()


def parse_signature(data: bytes | str) -> bytes:
    """A signature file's 64 bytes: base64 text (what ``bota-ota sign`` writes; surrounding whitespace
    allowed), hex text, or the 64 raw bytes."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) == SIGNATURE_BYTES and not _is_text(raw):
        return raw
    return _decode_fixed(raw.strip(), SIGNATURE_BYTES, "an Ed25519 signature")


def verify(public_key: Ed25519PublicKey, signature: bytes, fields: SignedFields) -> bool:
    try:
        public_key.verify(signature, fields.message())
    except InvalidSignature:
        return False
    return True


def _is_text(raw: bytes) -> bool:
    return all(32 <= b < 127 or b in b"\r\n\t" for b in raw)


def _decode_fixed(text: bytes, size: int, what: str) -> bytes:
    for decode in (_b64, bytes.fromhex):
        try:
            value = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError, binascii.Error):
            continue
        if len(value) == size:
            return value
    raise SignatureFormatError(f"not {what} ({size} bytes as base64 or hex)")


def _b64(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)
