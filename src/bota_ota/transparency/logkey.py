"""The log key: the Ed25519 key that signs the release log's tree heads, and the signed bytes.

The private key lives in one PEM file (``BOTA_OTA_LOG_KEY_FILE``, default
``<data_dir>/transparency-log-key.pem``), generated with mode 0600 on first start when missing. Every
instance must use the same file (or a copy of it): a tree head is only worth something if everyone checks
it against one public key. The public key is published at ``/.well-known/bota-ota-log-key.pem``; its id is
computed as a release signing key's id is (``firmware/signing.py`` ``key_id``: the first 8 bytes of the
SHA-256 of its 32 raw bytes, in hex) — repeated here because ``transparency`` sits below ``firmware``.

A tree head's signature covers, in UTF-8::

    bota-ota release log tree head v1\\n
    tree_size:<decimal>\\n
    root_hash:<64 lower-case hex digits>\\n
    timestamp:<ISO 8601 UTC, e.g. 2026-12-03T14:00:00Z>\\n
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from bota_ota.core.settings import Settings

log = logging.getLogger(__name__)

TREE_HEAD_DOMAIN = b"bota-ota release log tree head v1\n"
KEY_ID_HEX = 16


class LogKeyError(RuntimeError):
    """The log key file cannot be read, or holds something other than an Ed25519 private key."""


def tree_head_message(tree_size: int, root_hash: str, timestamp: str) -> bytes:
    """The exact bytes a tree head's signature covers."""
    return TREE_HEAD_DOMAIN + f"tree_size:{tree_size}\nroot_hash:{root_hash}\ntimestamp:{timestamp}\n".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    """A log public key from PEM (SubjectPublicKeyInfo)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data.strip())
    except ValueError as exc:
        raise LogKeyError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LogKeyError("the log key is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class LogKey:
    private: Ed25519PrivateKey
    key_id: str
    public_pem: str

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> LogKey:
        public = private.public_key()
        return cls(private=private, key_id=key_id(public), public_pem=public_pem(public))

    def sign_tree_head(self, tree_size: int, root_hash: str, timestamp: str) -> str:
        """The base64 signature of the tree head."""
        return base64.b64encode(self.private.sign(tree_head_message(tree_size, root_hash, timestamp))).decode()


def verify_tree_head(public_key: Ed25519PublicKey, head: dict[str, Any]) -> bool:
    """Whether ``head`` (the tree-head JSON) is signed by ``public_key`` and names that key."""
    try:
        signature = base64.b64decode(str(head["signature"]), validate=True)
        message = tree_head_message(int(head["tree_size"]), str(head["root_hash"]), str(head["timestamp"]))
        if head.get("key_id") != key_id(public_key):
            return False
        public_key.verify(signature, message)
    except (KeyError, TypeError, ValueError, binascii.Error, InvalidSignature):
        return False
    return True


def _read(path: Path) -> LogKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise LogKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LogKeyError(f"{path} holds a key that is not Ed25519")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("the transparency log key %s is readable by others (mode %o); chmod 600 it", path, mode)
    return LogKey.of(key)


def load_or_create(path: Path) -> LogKey:
    """The log key in ``path``; a new one is generated there (mode 0600) if the file does not exist.

    Several processes may start at once on one data dir: each writes its new key to a file of its own and
    hard-links it into place, which fails if another got there first; all then read the one that won."""
    if path.exists():
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            log.info("generated the transparency log key %s", path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return _read(path)


_loaded: dict[Path, LogKey] = {}
_loaded_lock = threading.Lock()


def log_key_at(path: Path) -> LogKey:
    """The log key of this file, read (or generated) once per process."""
    path = path.expanduser().resolve()
    with _loaded_lock:
        key = _loaded.get(path)
        if key is None:
            key = _loaded[path] = load_or_create(path)
        return key


def log_key(settings: Settings) -> LogKey:
    """The server's log key (``BOTA_OTA_LOG_KEY_FILE``, default ``<data_dir>/transparency-log-key.pem``)."""
    return log_key_at(settings.resolved_log_key_file)
