"""RFC 9162 tree hashing and proofs: the Certificate Transparency reference vectors, every tree size up to
40, and proofs that must fail (another leaf, index, size, root, or a proof with a hash changed, added or
taken away)."""

from __future__ import annotations

import hashlib

import pytest

from bota_ota.transparency.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The reference leaves of the Certificate Transparency test suites (transparency-dev/merkle, formerly
# google/certificate-transparency-go), and the root of each prefix of them, sizes 1 to 8.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, audit path)
INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
# (old size, new size, consistency proof)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
HASHES = [leaf_hash(leaf) for leaf in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hashing_is_rfc_9162() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    assert HASHES[0].hex() == ROOTS[0]  # a tree of one leaf: its root is the leaf hash


@pytest.mark.parametrize("size", range(1, 9))
def test_known_roots(size: int) -> None:
    assert root(HASHES, size).hex() == ROOTS[size - 1]
    assert root(HASHES[:size]).hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    assert [h.hex() for h in inclusion_proof(HASHES, index, size)] == path
    assert verify_inclusion(
        HASHES[index], index, size, [bytes.fromhex(h) for h in path], bytes.fromhex(ROOTS[size - 1])
    )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    assert [h.hex() for h in consistency_proof(HASHES, old, new)] == proof
    old_root, new_root = bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    assert verify_consistency(old, new, old_root, new_root, [bytes.fromhex(h) for h in proof])


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f'{{"entry":{i}}}'.encode()) for i in range(n)]


def _inclusion_fakes(index: int, size: int, proof: list[bytes], root_hash: bytes, leaf: bytes) -> list[tuple]:
    """(leaf, index, size, proof, root) variations that must not verify. (Not every other size: a path
    proves a position in a tree *shape*, and trees of neighbouring sizes can share the shape along it.)"""
    fakes: list[tuple] = [
        (leaf, index + 1, size, proof, root_hash),
        (leaf, index ^ 2, size, proof, root_hash),
        (leaf, index, size * 2, proof, root_hash),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, proof, EMPTY_ROOT),
        (SOME_HASH, index, size, proof, root_hash),
        (leaf, index, size, [*proof, b""], root_hash),
        (leaf, index, size, [*proof, root_hash], root_hash),
        (leaf, index, size, [root_hash, *proof], root_hash),
    ]
    if index > 0:
        fakes.append((leaf, index - 1, size, proof, root_hash))
    if index < size // 2:
        fakes.append((leaf, index, size // 2, proof, root_hash))
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        fakes.append((leaf, index, size, flipped, root_hash))
    if proof:
        fakes.append((leaf, index, size, proof[:-1], root_hash))
    if len(proof) > 1:
        fakes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root_hash))
    return fakes


@pytest.mark.parametrize("size", range(1, 41))
def test_inclusion_proofs_of_every_leaf_verify_and_fakes_fail(size: int) -> None:
    hashes = _leaves(size)
    root_hash = root(hashes)
    for index in range(size):
        proof = inclusion_proof(hashes, index, size)
        assert verify_inclusion(hashes[index], index, size, proof, root_hash), (index, size)
        for fake in _inclusion_fakes(index, size, proof, root_hash, hashes[index]):
            if fake[1] == index and fake[2] == size and fake[0] == hashes[index] and fake[3] == proof:
                continue  # (size // 2 of a one-leaf tree and the like can be the same probe)
            assert not verify_inclusion(*fake), (index, size, fake[1:3])


@pytest.mark.parametrize("size", range(1, 41))
def test_consistency_proofs_between_every_two_sizes_verify_and_fakes_fail(size: int) -> None:
    hashes = _leaves(size)
    new_root = root(hashes)
    for old in range(0, size + 1):
        old_root = root(hashes, old)
        proof = consistency_proof(hashes, old, size)
        assert verify_consistency(old, size, old_root, new_root, proof), (old, size)
        if not proof:
            continue
        fakes: list[tuple] = [
            (old - 1, size, old_root, new_root, proof),
            (old + 1, size, old_root, new_root, proof),
            (old ^ 2, size, old_root, new_root, proof),
            (old, size * 2, old_root, new_root, proof),
            (old, size // 2, old_root, new_root, proof),
            (old, size, SOME_HASH, new_root, proof),
            (old, size, old_root, SOME_HASH, proof),
            (old, size, new_root, old_root, proof),
            (old, size, old_root, new_root, []),
            (old, size, old_root, new_root, [*proof, old_root]),
            (old, size, old_root, new_root, [*proof, new_root]),
            (old, size, old_root, new_root, [old_root, *proof]),
            (old, size, old_root, new_root, [proof[0], *proof]),
            (old, size, old_root, new_root, proof[:-1]),
        ]
        for i in range(len(proof)):
            flipped = list(proof)
            flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
            fakes.append((old, size, old_root, new_root, flipped))
        for fake in fakes:
            if fake[0] == old and fake[1] == size and fake[2:4] == (old_root, new_root) and fake[4] == proof:
                continue
            assert not verify_consistency(*fake), (old, size, fake[:2])


@pytest.mark.parametrize("size", range(1, 41))
def test_a_changed_leaf_changes_the_root_and_breaks_its_proofs(size: int) -> None:
    hashes = _leaves(size)
    for index in range(size):
        changed = list(hashes)
        changed[index] = leaf_hash(b"something else")
        assert root(changed) != root(hashes)
        # The changed log's proof does not verify against the original head, nor the original proof for it.
        assert not verify_inclusion(changed[index], index, size, inclusion_proof(changed, index), root(hashes))
        assert not verify_inclusion(changed[index], index, size, inclusion_proof(hashes, index), root(hashes))
        # A head kept before the change is not consistent with the changed log grown by one entry.
        grown = [*changed, leaf_hash(b"next")]
        for old in range(index + 1, size + 1):
            assert not verify_consistency(old, size + 1, root(hashes, old), root(grown), consistency_proof(grown, old))


def test_edge_cases() -> None:
    hashes = _leaves(4)
    # Sizes that are always consistent, and those that never are.
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 4, EMPTY_ROOT, root(hashes), [])
    assert not verify_consistency(0, 4, SOME_HASH, root(hashes), [])  # the empty tree has one root
    assert not verify_consistency(0, 4, EMPTY_ROOT, root(hashes), [EMPTY_ROOT])
    assert not verify_consistency(2, 2, root(hashes, 2), root(hashes), [])
    assert not verify_consistency(2, 2, root(hashes, 2), root(hashes, 2), [EMPTY_ROOT])
    assert not verify_consistency(3, 2, root(hashes, 3), root(hashes, 2), consistency_proof(hashes, 2, 3))
    assert not verify_inclusion(hashes[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(hashes[0], 4, 4, inclusion_proof(hashes, 3), root(hashes))
    assert not verify_inclusion(b"short", 0, 1, [], b"short")  # hashes are 32 bytes
    with pytest.raises(ValueError):
        inclusion_proof(hashes, 4, 4)
    with pytest.raises(ValueError):
        inclusion_proof(hashes, 0, 5)
    with pytest.raises(ValueError):
        consistency_proof(hashes, 3, 2)
    assert consistency_proof(hashes, 0, 4) == [] and consistency_proof(hashes, 4, 4) == []
