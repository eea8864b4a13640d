"""RFC 9162 (RFC 6962) Merkle tree hashing, inclusion and consistency proofs: pure functions, no database.

* leaf hash: ``SHA-256(0x00 || leaf bytes)``; interior node: ``SHA-256(0x01 || left || right)``;
* the Merkle Tree Hash (MTH) of ``n`` leaves splits at ``k``, the largest power of two smaller than ``n``:
  ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))``; the empty tree's MTH is ``SHA-256("")``;
* ``inclusion_proof`` is the audit path ``PATH(m, D[n])`` of §2.1.3.1, ``consistency_proof`` is
  ``PROOF(m, D[n])`` of §2.1.4.1, and the two verifiers follow §2.1.3.2 and §2.1.4.2 step by step, so a
  verifier written anywhere else from the RFC (the phone app, ``bota-ota transparency verify``, a third
  party's monitor) accepts exactly what these accept.

Every function takes the log's *leaf hashes* (32 bytes each), in log order.

Written here rather than taken from a package: of the Python packages on PyPI, the maintained general one
(``pymerkle``) has an API and proof objects of its own (hash paths with direction flags and its own
serialisation, storage backends), not the RFC's bare audit and consistency paths that the log publishes
and every verifier checks; the rest are small single-purpose projects. The RFC algorithms are a few dozen
lines, and tests/transparency/test_merkle.py checks them against the Certificate Transparency reference
vectors and on every tree size up to 40.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """The RFC 9162 hash of one leaf's bytes."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def _check_size(hashes: Sequence[bytes], size: int | None) -> int:
    size = len(hashes) if size is None else size
    if not 0 <= size <= len(hashes):
        raise ValueError(f"tree size {size} is outside 0..{len(hashes)}")
    return size


def root(hashes: Sequence[bytes], size: int | None = None) -> bytes:
    """MTH of the first ``size`` leaves (all of them by default)."""
    size = _check_size(hashes, size)
    return EMPTY_ROOT if size == 0 else _mth(hashes, 0, size)


def inclusion_proof(hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves (RFC 9162 §2.1.3.1)."""
    size = _check_size(hashes, size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
    lo, hi, m = 0, size, index
    # PATH(m, D[lo:hi]) ends with the MTH of the subtree beside the one holding m: walking down from the
    # root meets those siblings top first, and the path lists them bottom first.
    siblings: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            siblings.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            siblings.append(_mth(hashes, lo, lo + k))
            lo, m = lo + k, m - k
    siblings.reverse()
    return siblings


def consistency_proof(hashes: Sequence[bytes], old: int, new: int | None = None) -> list[bytes]:
    """``PROOF(old, D[new])`` of RFC 9162 §2.1.4.1: empty when ``old`` is 0 or equal to ``new``."""
    new = _check_size(hashes, new)
    if not 0 <= old <= new:
        raise ValueError(f"old tree size {old} is outside 0..{new}")
    if old == 0 or old == new:
        return []
    # SUBPROOF(m, D[lo:hi], b), unrolled: each level appends after the deeper levels, so collect and reverse.
    out: list[bytes] = []
    lo, hi, m, complete = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append(_mth(hashes, lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            out.append(_mth(hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    out.reverse()
    return out


def _well_formed(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``proof`` leads to from leaf hash ``leaf`` at ``index`` (RFC 9162 §2.1.3.2), or None
    when the proof cannot belong to a tree of ``size`` leaves."""
    if not _well_formed(leaf, *proof) or not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size`` leaves with
    ``root_hash`` (RFC 9162 §2.1.3.2)."""
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    return computed is not None and _well_formed(root_hash) and computed == root_hash


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree of ``old_size`` leaves (``old_root``) to be a prefix of the tree of
    ``new_size`` leaves (``new_root``), RFC 9162 §2.1.4.2.

    The cases the RFC's algorithm leaves to the caller: equal sizes need an empty proof and equal roots; a
    tree grown from the empty tree (``old_size`` 0, whose root is ``SHA-256("")``) needs an empty proof."""
    if not _well_formed(old_root, new_root, *proof) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:  # step 1
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: an exact power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # step 7
