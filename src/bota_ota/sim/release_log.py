"""The app's check of a firmware offer against the public release log: an RFC 9162 inclusion proof of the
release's leaf and a signed tree head (docs/ble-ota.md, "What the app checks before it installs").

Written from RFC 9162 and the docs, not from the server's code: the simulators import nothing of the
server, so this is a second, independent implementation.

- leaf hash: SHA-256(0x00 || leaf bytes); node hash: SHA-256(0x01 || left || right) (RFC 9162 §2.1.1);
- inclusion proof verification: RFC 9162 §2.1.3.2;
- the tree head signature: Ed25519 over ``bota-ota release log tree head v1\\n`` followed by
  ``tree_size:<n>\\nroot_hash:<hex>\\ntimestamp:<ts>\\n`` (UTF-8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bota_ota.sim.verify import key_id, version_for_signature

TREE_HEAD_DOMAIN = b"bota-ota release log tree head v1\n"
HASH_SIZE = 32


class ProofError(Exception):
    """The offer's transparency proof does not hold; the message says why, in words for the user."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    leaf_index: int, tree_size: int, entry_hash: bytes, inclusion_path: Sequence[bytes], root_hash: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: whether ``entry_hash`` is leaf ``leaf_index`` of the tree of ``tree_size`` leaves
    whose root is ``root_hash``."""
    if not 0 <= leaf_index < tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = entry_hash
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def tree_head_message(tree_size: int, root_hash_hex: str, timestamp: object) -> bytes:
    return TREE_HEAD_DOMAIN + f"tree_size:{tree_size}\nroot_hash:{root_hash_hex}\ntimestamp:{timestamp}\n".encode()


def check_offer(
    release: dict[str, Any], transparency: dict[str, Any] | None, *, model: str, log_key: Ed25519PublicKey
) -> None:
    """Raise ``ProofError`` unless the release log proves that this release (``model``, ``version``, the
    ``.ufw``'s ``sha256``) was published: the leaf names it, the inclusion proof leads from the leaf to
    the tree head's root, and the tree head is signed by ``log_key``."""
    if not transparency:
        raise ProofError("the offer carries no proof that the release is in the public release log")
    try:
        leaf_text = transparency["leaf"]
        if not isinstance(leaf_text, str):
            raise TypeError("leaf is not text")
        index = _int(transparency["leaf_index"])
        path = [_hash(h) for h in transparency["inclusion_proof"]]
        head = transparency["tree_head"]
        tree_size = _int(head["tree_size"])
        root_hex = str(head["root_hash"])
        root = _hash(root_hex)
        signature = base64.b64decode(str(head["signature"]), validate=True)
        timestamp = head["timestamp"]
        head_key = str(head["key_id"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProofError(f"the offer's transparency proof is malformed ({exc})") from None
    try:
        entry = json.loads(leaf_text)
    except ValueError:
        raise ProofError("the release log entry is not JSON") from None
    _check_entry(entry, release, model)
    if not verify_inclusion(index, tree_size, leaf_hash(leaf_text.encode("utf-8")), path, root):
        raise ProofError(
            f"the inclusion proof of log entry {index} does not lead to the tree head's root (tree of {tree_size})"
        )
    if head_key.lower() != key_id(log_key):
        raise ProofError(f"the tree head is signed by key {head_key}, not by the release log's key {key_id(log_key)}")
    try:
        log_key.verify(signature, tree_head_message(tree_size, root_hex, timestamp))
    except InvalidSignature:
        raise ProofError("the tree head's signature does not verify with the release log's key") from None


def _check_entry(entry: object, release: dict[str, Any], model: str) -> None:
    """The leaf is a ``release`` entry naming the offered release: model, version, the .ufw's SHA-256 and the
    security version."""
    if not isinstance(entry, dict):
        raise ProofError("the release log entry is not a JSON object")
    if entry.get("kind") != "release":
        raise ProofError(f"the release log entry is a {entry.get('kind')}, not a release")
    if entry.get("model") != model:
        raise ProofError(f"the release log entry is for model {entry.get('model')!r}, not {model!r}")
    logged_version = entry.get("version")
    if not isinstance(logged_version, str) or version_for_signature(logged_version) != version_for_signature(
        release["version"]
    ):
        raise ProofError(f"the release log entry is version {logged_version!r}, not {release['version']!r}")
    ufw = entry.get("ufw")
    logged_sha = ufw.get("sha256") if isinstance(ufw, dict) else None
    if logged_sha != release["sha256"]:
        raise ProofError(
            f"the release log entry's .ufw SHA-256 is {logged_sha or 'missing'}, "
            f"not the offered file's {release['sha256']}"
        )
    if entry.get("security_version") != release.get("security_version"):
        raise ProofError(
            f"the release log entry has security version {entry.get('security_version')}, "
            f"the offer {release.get('security_version')}"
        )


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _hash(text: object) -> bytes:
    raw = bytes.fromhex(str(text))
    if len(raw) != HASH_SIZE:
        raise ValueError(f"{text!r} is not a SHA-256 hash")
    return raw
