from __future__ import annotations

from pydantic import BaseModel, Field


class SignedTreeHead(BaseModel):
    """The log's state, signed with the log key (docs/security.md, "Transparency log")."""

    tree_size: int = Field(description="Number of entries in the log")
    root_hash: str = Field(description="RFC 9162 Merkle Tree Hash of those entries, lower-case hex")
    timestamp: str = Field(description="When the server signed this head, ISO 8601 UTC (e.g. 2026-12-03T14:00:00Z)")
    key_id: str = Field(description="Id of the log key: the first 8 bytes of SHA-256 of its 32 raw bytes, hex")
    signature: str = Field(
        description="Base64 Ed25519 signature over b'bota-ota release log tree head v1\\n' followed by "
        "'tree_size:<n>\\nroot_hash:<hex>\\ntimestamp:<timestamp>\\n' (UTF-8)"
    )


class LogEntryOut(BaseModel):
    index: int = Field(description="The entry's position in the log, from 0")
    leaf: str = Field(description="The entry exactly as hashed: canonical JSON (UTF-8, sorted keys, no spaces)")
    leaf_hash: str = Field(description="SHA-256(0x00 || leaf bytes), lower-case hex")


class EntriesPage(BaseModel):
    start: int = Field(description="Index of the first entry returned")
    end: int = Field(description="One past the last entry returned: ask again from here for the next page")
    tree_size: int = Field(description="The log's size when this page was read")
    entries: list[LogEntryOut]


class InclusionProof(BaseModel):
    leaf_index: int
    tree_size: int = Field(description="The size of the tree the proof leads to the root of")
    leaf: str = Field(description="The entry's leaf text (canonical JSON)")
    leaf_hash: str
    inclusion_proof: list[str] = Field(description="The RFC 9162 audit path, hex, from the leaf up")
    tree_head: SignedTreeHead | None = Field(
        description="The signed head of the current tree, when `tree_size` is the current size; else null (check "
        "the proof against a head of that size you kept)"
    )


class ConsistencyProof(BaseModel):
    first: int
    second: int
    consistency_proof: list[str] = Field(
        description="The RFC 9162 consistency proof, hex (empty if first is 0 or equal to second)"
    )
    tree_head: SignedTreeHead | None = Field(
        description="The signed head of the current tree, when `second` is the current size; else null"
    )


class ReleaseInLog(BaseModel):
    """A release's place in the transparency log, for a client to check on its own (the phone app)."""

    leaf_index: int = Field(description="Index of the release's latest `release` entry")
    leaf: str = Field(
        description="That entry's exact leaf text (canonical JSON); its leaf hash is SHA-256(0x00 || leaf)"
    )
    inclusion_proof: list[str] = Field(description="RFC 9162 audit path (hex) to `tree_head.root_hash`")
    tree_head: SignedTreeHead
