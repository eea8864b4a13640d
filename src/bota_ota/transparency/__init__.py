"""The public release transparency log: an append-only Merkle tree (RFC 9162 hashing) of every release
published and withdrawn, with signed tree heads and inclusion and consistency proofs (docs/security.md)."""
