"""The simulators' verifiers without a server: a device's checks of a signed image (bota_ota.sim.verify,
through SimDevice._verify as a downloaded image meets them) and the app's check of a release log proof
(bota_ota.sim.release_log) against RFC 9162 trees built here from the RFC's definitions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bota_ota.sim.device import Job, Network, SimDevice
from bota_ota.sim.release_log import (
    ProofError,
    check_offer,
    leaf_hash,
    node_hash,
    tree_head_message,
    verify_inclusion,
)
from bota_ota.sim.verify import (
    DeviceTrust,
    KeyFormatError,
    key_id,
    load_public_key,
    signed_message,
    version_for_signature,
)

SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
IMAGE = bytes(range(256)) * 300


def sign(
    image: bytes, *, key: Ed25519PrivateKey = SIGNER, model: str = "bota-pin", version: str = "v1.2.0", sv: int = 1
) -> str:
    message = signed_message(
        model=model, version=version, security_version=sv, size=len(image), sha256=hashlib.sha256(image).hexdigest()
    )
    return base64.b64encode(key.sign(message)).decode()


def job(image: bytes = IMAGE, **changes: Any) -> Job:
    values: dict[str, Any] = {
        "assignment_id": "a",
        "version": "v1.2.0",
        "url": "/dl/x",
        "expires_at": 0,
        "size": len(image),
        "crc32": zlib.crc32(image),
        "sha256": hashlib.sha256(image).hexdigest(),
        "signature": sign(image),
        "key_id": key_id(SIGNER.public_key()),
        "security_version": 1,
    }
    values.update(changes)
    return Job(**values)


def device_verdict(
    tmp_path: Path, the_job: Job, *, image: bytes = IMAGE, trust: DeviceTrust, model: str = "bota-pin"
) -> str | None:
    async def verify() -> str | None:
        net = Network.create("http://127.0.0.1:9")  # never used: nothing here goes over the network
        try:
            device = SimDevice(
                device_id="V-1",
                token="t",
                model=model,
                firmware_version="v1.0.0",
                net=net,
                flash_dir=tmp_path,
                trust=trust,
            )
            device.flash_path.write_bytes(image)
            return device._verify(the_job)
        finally:
            await net.aclose()

    return asyncio.run(verify())


def trusted(counter: int = 0) -> DeviceTrust:
    return DeviceTrust.of([SIGNER.public_key()], counter)


@pytest.mark.parametrize(
    ("changes", "counter", "expected"),
    [
        ({}, 0, None),
        ({}, 1, None),  # the same security version may be installed again
        ({"security_version": 1}, 2, "rollback_refused"),
        ({"signature": None}, 0, "signature_invalid"),
        ({"signature": "not base64!"}, 0, "signature_invalid"),
        ({"signature": base64.b64encode(b"x" * 63).decode()}, 0, "signature_invalid"),
        ({"key_id": None}, 0, "signature_invalid"),
        ({"key_id": key_id(OTHER.public_key())}, 0, "signature_invalid"),
        ({"signature": sign(IMAGE, key=OTHER), "key_id": key_id(OTHER.public_key())}, 0, "signature_invalid"),
        ({"version": "v1.2.1"}, 0, "signature_invalid"),  # the manifest names another version than was signed
        ({"version": "V1.2.0+build.5"}, 0, None),  # the same version, as signed
        ({"security_version": 2}, 0, "signature_invalid"),  # a raised security version is not what was signed
        ({"signature": sign(IMAGE, model="bota-note")}, 0, "signature_invalid"),  # signed for another model
        ({"signature": sign(IMAGE[:-1] + b"\x00")}, 0, "signature_invalid"),  # signed over other bytes
    ],
)
def test_a_signed_image_is_checked_after_its_checksums(
    tmp_path: Path, changes: dict[str, Any], counter: int, expected: str | None
) -> None:
    assert device_verdict(tmp_path, job(**changes), trust=trusted(counter)) == expected


def test_the_checksums_come_first(tmp_path: Path) -> None:
    """A wrong CRC is crc_mismatch even when the signature (and the security version) would fail too."""
    assert device_verdict(tmp_path, job(crc32=1, signature=None), trust=trusted(5)) == "crc_mismatch"


def test_the_device_signs_its_own_model_not_the_servers_word(tmp_path: Path) -> None:
    assert device_verdict(tmp_path, job(), trust=trusted(), model="bota-pin-pro") == "signature_invalid"


def test_the_signature_covers_what_was_received_not_the_manifests_checksums(tmp_path: Path) -> None:
    """A tampered image whose manifest was changed to match it (a compromised server or store) passes the
    checksums but not the signature."""
    tampered = IMAGE[:100] + b"\xff" + IMAGE[101:]
    the_job = job(
        tampered, signature=sign(IMAGE), size=len(tampered), crc32=zlib.crc32(tampered)
    )  # sha256 of the tampered bytes: job() computes it
    assert device_verdict(tmp_path, the_job, image=tampered, trust=trusted()) == "signature_invalid"


def test_without_trusted_keys_unsigned_images_pass_but_the_counter_still_holds(tmp_path: Path) -> None:
    unsigned = job(signature=None, key_id=None, security_version=0)
    assert device_verdict(tmp_path, unsigned, trust=DeviceTrust()) is None
    assert device_verdict(tmp_path, unsigned, trust=DeviceTrust(security_version=1)) == "rollback_refused"


def test_the_counter_only_rises() -> None:
    trust = trusted(3)
    trust.applied(5)
    assert trust.security_version == 5
    trust.applied(4)
    assert trust.security_version == 5


def test_versions_are_signed_without_v_and_build_metadata() -> None:
    assert version_for_signature("v1.0.1") == "1.0.1"
    assert version_for_signature(" V2.0.0-rc.1+build.7 ") == "2.0.0-rc.1"
    assert version_for_signature("3.1.4") == "3.1.4"


def test_keys_load_from_pem_base64_and_hex_and_nothing_else() -> None:
    public = SIGNER.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for form in (pem, pem.decode(), base64.b64encode(raw) + b"\n", raw.hex()):
        assert key_id(load_public_key(form)) == key_id(public)
    private_pem = SIGNER.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for bad in (b"", b"hello", base64.b64encode(raw[:31]), private_pem, b"\xff\xfe"):
        with pytest.raises(KeyFormatError):
            load_public_key(bad)


# ---- RFC 9162 ------------------------------------------------------------------------------------


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1: the Merkle Tree Hash of a list of leaves."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1: the inclusion proof of leaf m."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def test_hashes_are_rfc_9162s() -> None:
    assert leaf_hash(b"a") == hashlib.sha256(b"\x00a").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31])
def test_every_inclusion_proof_verifies_and_no_altered_one_does(size: int) -> None:
    leaves = [f"leaf {i}".encode() for i in range(size)]
    root = mth(leaves)
    for m in range(size):
        proof = path(m, leaves)
        assert verify_inclusion(m, size, leaf_hash(leaves[m]), proof, root)
        assert not verify_inclusion(m, size, leaf_hash(b"another leaf"), proof, root)
        assert not verify_inclusion(m, size, leaf_hash(leaves[m]), proof, hashlib.sha256(b"other root").digest())
        assert not verify_inclusion(m, size, leaf_hash(leaves[m]), [*proof, root], root)
        if proof:
            assert not verify_inclusion(m, size, leaf_hash(leaves[m]), proof[:-1], root)
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            assert not verify_inclusion(m, size, leaf_hash(leaves[m]), flipped, root)
        if size > 1:
            other = (m + 1) % size
            assert not verify_inclusion(other, size, leaf_hash(leaves[m]), proof, root)
    assert not verify_inclusion(size, size, leaf_hash(leaves[0]), path(0, leaves), root)
    assert not verify_inclusion(-1, size, leaf_hash(leaves[0]), path(0, leaves), root)


# ---- the app's check of an offer ----------------------------------------------------------------

LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
UFW_SHA = hashlib.sha256(b"the ufw").hexdigest()
UFW = {"size": 7, "sha256": UFW_SHA, "signature": None, "key_id": None}
RELEASE = {"id": "r1", "version": "v1.4.0", "sha256": UFW_SHA, "security_version": 2}
ENTRY = {"kind": "release", "model": "bota-pin", "version": "v1.4.0", "security_version": 2, "ufw": UFW}


def canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def offer_proof(
    entry: dict[str, Any] | None = None, *, index: int = 5, size: int = 11, key: Ed25519PrivateKey = LOG_KEY
) -> dict[str, Any]:
    """A log of ``size`` entries whose entry ``index`` is ``entry``, and the proof of it an offer carries."""
    leaf = canonical(
        entry
        if entry is not None
        else {"kind": "release", "model": "bota-pin", "version": "v1.4.0", "security_version": 2, "ufw": UFW}
    )
    leaves = [canonical({"kind": "release", "n": i}).encode() for i in range(size)]
    leaves[index] = leaf.encode()
    root = mth(leaves).hex()
    timestamp = 1_796_000_000_000
    head = {
        "tree_size": size,
        "root_hash": root,
        "timestamp": timestamp,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(tree_head_message(size, root, timestamp))).decode(),
    }
    return {
        "leaf_index": index,
        "leaf": leaf,
        "inclusion_proof": [h.hex() for h in path(index, leaves)],
        "tree_head": head,
    }


def check(transparency: dict[str, Any] | None, *, model: str = "bota-pin", release: dict[str, Any] = RELEASE) -> None:
    check_offer(release, transparency, model=model, log_key=LOG_KEY.public_key())


@pytest.mark.parametrize(
    "entry",
    [
        None,
        {"kind": "release", "model": "bota-pin", "version": "1.4.0", "security_version": 2, "ufw": UFW, "bin": None},
        {"kind": "release", "model": "bota-pin", "version": "V1.4.0+b.1", "security_version": 2, "ufw": UFW},
    ],
)
def test_a_proof_of_the_offered_release_is_accepted(entry: dict[str, Any] | None) -> None:
    check(offer_proof(entry))


def test_a_one_entry_log_needs_no_proof_hashes() -> None:
    check(offer_proof(index=0, size=1))


@pytest.mark.parametrize(
    ("transparency", "release", "model", "why"),
    [
        (None, RELEASE, "bota-pin", "no proof"),
        (offer_proof(), RELEASE, "bota-note", "for model 'bota-pin', not 'bota-note'"),
        (offer_proof(), {**RELEASE, "version": "v1.4.1"}, "bota-pin", "version 'v1.4.0', not 'v1.4.1'"),
        (offer_proof(), {**RELEASE, "sha256": "ab" * 32}, "bota-pin", ".ufw SHA-256"),
        (offer_proof(), {**RELEASE, "security_version": 3}, "bota-pin", "security version 2, the offer 3"),
        (
            offer_proof({"kind": "withdrawal", "model": "bota-pin", "version": "1.4.0"}),
            RELEASE,
            "bota-pin",
            "withdrawal",
        ),
        (offer_proof(key=Ed25519PrivateKey.generate()), RELEASE, "bota-pin", "not by the release log's key"),
    ],
)
def test_a_proof_that_does_not_hold_is_refused_with_a_reason(
    transparency: dict[str, Any] | None, release: dict[str, Any], model: str, why: str
) -> None:
    with pytest.raises(ProofError, match=why.replace(".", r"\.").replace("(", r"\(")):
        check(transparency, model=model, release=release)


def test_tampering_with_the_leaf_the_path_the_root_or_the_head_is_refused() -> None:
    good = offer_proof()
    # The leaf says what it should, but is not the one the log holds (its bytes differ: spaces).
    respaced = json.dumps(json.loads(good["leaf"]))
    assert respaced != good["leaf"]
    with pytest.raises(ProofError, match="inclusion proof of log entry 5 does not lead"):
        check({**good, "leaf": respaced})
    with pytest.raises(ProofError, match="does not lead"):
        check({**good, "leaf_index": 4})
    with pytest.raises(ProofError, match="does not lead"):
        check({**good, "inclusion_proof": list(reversed(good["inclusion_proof"]))})
    # Another root, re-signed by someone else without the log's key: the proof fails first.
    head = {**good["tree_head"], "root_hash": "00" * 32}
    with pytest.raises(ProofError, match="does not lead"):
        check({**good, "tree_head": head})
    # The same head with another timestamp: the signature no longer covers it.
    head = {**good["tree_head"], "timestamp": good["tree_head"]["timestamp"] + 1}
    with pytest.raises(ProofError, match="signature does not verify"):
        check({**good, "tree_head": head})
    head = {k: v for k, v in good["tree_head"].items() if k != "key_id"}
    with pytest.raises(ProofError, match="malformed"):
        check({**good, "tree_head": head})
    with pytest.raises(ProofError, match="malformed"):
        check({**good, "inclusion_proof": ["xyz"]})
    with pytest.raises(ProofError, match="malformed"):
        check({**good, "tree_head": {**good["tree_head"], "signature": "***"}})
    with pytest.raises(ProofError, match="not JSON"):
        check({**good, "leaf": "{"})


def test_a_proof_built_by_the_servers_log_passes_the_apps_check() -> None:
    """The server's release log (its leaf text, RFC 9162 tree and signed tree head) against the app's
    independent check: the two implementations agree."""
    from dataclasses import dataclass

    from bota_ota.transparency import service as log
    from bota_ota.transparency.logkey import LogKey

    @dataclass
    class Artifact:
        size: int
        sha256: str
        signature: str | None = None
        key_id: str | None = None

    @dataclass
    class Release:
        id: str
        model: str
        version: str
        security_version: int
        ufw: Artifact

        def artifact(self, kind: str) -> Artifact | None:
            return self.ufw if kind == "ufw" else None

    release = Release("r1", "bota-pin", "v1.4.0", 2, Artifact(7, UFW_SHA))
    leaves = [log.canonical_json({"kind": "release", "n": i}) for i in range(6)]
    leaves[4] = log.canonical_json(log.release_entry(release))
    tree = log.Tree(tuple(leaf_hash(leaf.encode()) for leaf in leaves))
    head = tree.signed_head(LogKey.of(LOG_KEY)).model_dump()
    proof = {"leaf_index": 4, "leaf": leaves[4], "inclusion_proof": [h.hex() for h in tree.inclusion_proof(4)]}
    check({**proof, "tree_head": head})
    with pytest.raises(ProofError, match="not by the release log's key"):
        check({**proof, "tree_head": tree.signed_head(LogKey.of(OTHER)).model_dump()})
    with pytest.raises(ProofError, match="does not lead"):
        check({**proof, "leaf_index": 3, "tree_head": head})
