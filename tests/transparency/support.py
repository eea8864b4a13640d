"""Helpers for the transparency log tests: putting releases into the log, and checking what the server says
the way an outside verifier (the phone app, a monitor) would: with the RFC 9162 algorithms and the log key.

``log_release`` calls ``record_release`` directly. Once the firmware service records releases itself (on
publishing), the call changes nothing: ``record_release`` does not log the same release twice."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import session_scope
from bota_ota.firmware.models import Release
from bota_ota.transparency import merkle
from bota_ota.transparency.logkey import load_public_key, tree_head_message
from bota_ota.transparency.service import record_release, record_withdrawal


def log_release(sessions: sessionmaker[Session], release_id: str) -> int:
    """Put the release into the log (as publishing it will); returns its entry's index."""
    with session_scope(sessions) as session:
        release = session.get(Release, release_id)
        assert release is not None
        return record_release(session, release).idx


def log_withdrawal(sessions: sessionmaker[Session], release_id: str, reason: str = "withdrawn") -> int | None:
    with session_scope(sessions) as session:
        release = session.get(Release, release_id)
        assert release is not None
        entry = record_withdrawal(session, release, reason)
        return entry.idx if entry is not None else None


@dataclass
class FakeArtifact:
    size: int
    sha256: str
    signature: str | None = None
    key_id: str | None = None


@dataclass
class FakeRelease:
    """A release as the log sees one, without the firmware tables (``ReleaseLike``)."""

    id: str
    model: str = "bota-pin"
    version: str = "v1.0.0"
    security_version: int = 0
    files: dict[str, FakeArtifact] = field(default_factory=dict)

    def artifact(self, kind: str) -> FakeArtifact | None:
        return self.files.get(kind)


def fake_release(n: int, **kw: Any) -> FakeRelease:
    files = {"bin": FakeArtifact(size=1000 + n, sha256=f"{n:064x}")}
    return FakeRelease(id=f"{n:032x}", version=f"v1.0.{n}", files=files, **kw)


def public_key_of(client: Any) -> Ed25519PublicKey:
    r = client.get("/.well-known/bota-ota-log-key.pem")
    assert r.status_code == 200, r.text
    return load_public_key(r.content)


def head_is_signed(head: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """The tree head's signature, checked from its documented bytes (not through the server's code)."""
    message = (
        b"bota-ota release log tree head v1\n"
        + f"tree_size:{head['tree_size']}\nroot_hash:{head['root_hash']}\ntimestamp:{head['timestamp']}\n".encode()
    )
    assert message == tree_head_message(head["tree_size"], head["root_hash"], head["timestamp"])
    try:
        key.verify(base64.b64decode(head["signature"]), message)
    except Exception:
        return False
    return True


def proof_verifies(leaf: str, index: int, proof: list[str], head: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """What the phone app does with an offer's ``transparency`` block."""
    return head_is_signed(head, key) and merkle.verify_inclusion(
        merkle.leaf_hash(leaf.encode("utf-8")),
        index,
        head["tree_size"],
        [bytes.fromhex(h) for h in proof],
        bytes.fromhex(head["root_hash"]),
    )


def leaf_json(leaf: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(leaf)
    assert json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == leaf  # canonical
    return data
