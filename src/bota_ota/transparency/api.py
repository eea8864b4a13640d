"""The public, unauthenticated transparency log API (/api/transparency/v1) and the log's public key
(/.well-known/bota-ota-log-key.pem). docs/security.md, "Transparency log", says how to check them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse

from bota_ota.core.errors import NotFound, ValidationFailed
from bota_ota.transparency import service
from bota_ota.transparency.logkey import LogKey, log_key
from bota_ota.transparency.models import LogEntry
from bota_ota.transparency.schemas import ConsistencyProof, EntriesPage, InclusionProof, LogEntryOut, SignedTreeHead
from bota_ota.web.deps import SessionDep, SettingsDep

PREFIX = "/api/transparency/v1"
LOG_KEY_PATH = "/.well-known/bota-ota-log-key.pem"
TAG = "transparency log"


def get_log_key(settings: SettingsDep) -> LogKey:
    return log_key(settings)


LogKeyDep = Annotated[LogKey, Depends(get_log_key)]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Read the log key at start-up (generating it on the very first) and show it in the tree head's docs."""
    key = log_key(app.state.ctx.settings)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            operation = generate().get("paths", {}).get(f"{PREFIX}/tree-head", {}).get("get")
            if operation is not None:
                operation["description"] = (
                    f"{TREE_HEAD_DOC}\n\nThis server's log key, id `{key.key_id}` (also at `{LOG_KEY_PATH}`):"
                    f"\n\n```\n{key.public_pem}```"
                )
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
    app.openapi_schema = None
    yield


router = APIRouter(tags=[TAG], lifespan=_lifespan)

TREE_HEAD_DOC = f"""The log's current size and RFC 9162 root hash, signed with the log key (Ed25519).

The signature (base64) covers the UTF-8 bytes
`bota-ota release log tree head v1\\ntree_size:<tree_size>\\nroot_hash:<root_hash>\\ntimestamp:<timestamp>\\n`.
Check it with the log's public key, `GET {LOG_KEY_PATH}` (PEM); better, pin that key once and keep it: a key
fetched from the server only proves what the server says. `key_id` is the first 8 bytes (hex) of the SHA-256
of the key's 32 raw bytes."""


@router.get(
    f"{PREFIX}/tree-head", response_model=SignedTreeHead, summary="The signed tree head", description=TREE_HEAD_DOC
)
def get_tree_head(session: SessionDep, key: LogKeyDep) -> SignedTreeHead:
    return service.tree_head(session, key)


def _entry_out(row: LogEntry) -> LogEntryOut:
    return LogEntryOut(index=row.idx, leaf=row.leaf, leaf_hash=row.leaf_hash)


@router.get(
    f"{PREFIX}/entries/{{index}}",
    response_model=LogEntryOut,
    summary="One log entry: its leaf text and leaf hash",
    description="`leaf` is the exact text hashed (canonical JSON); `leaf_hash` = SHA-256(0x00 || UTF-8 leaf). "
    "An index past the end of the log is 404.",
)
def get_entry(index: Annotated[int, PathParam(ge=0, le=2**62)], session: SessionDep) -> LogEntryOut:
    row = service.entry(session, index)
    if row is None:
        raise NotFound(f"the log has no entry {index}", field="path.index")
    return _entry_out(row)


@router.get(
    f"{PREFIX}/entries",
    response_model=EntriesPage,
    summary=f"Entries start to end - 1, at most {service.MAX_PAGE} a page",
    description="`end` is exclusive and defaults to the end of the log; a page holds at most "
    f"{service.MAX_PAGE} entries and says where it ended (`end`): ask again from there. `start` equal to the "
    "log's size gives an empty page; past it is 422.",
)
def list_entries(
    session: SessionDep,
    start: Annotated[int, Query(ge=0, le=2**62, description="Index of the first entry")] = 0,
    end: Annotated[int | None, Query(ge=0, le=2**62, description="One past the last entry wanted")] = None,
) -> EntriesPage:
    size = service.tree(session).size
    if start > size:
        raise ValidationFailed(f"start {start} is past the end of the log ({size} entries)", field="query.start")
    if end is not None and end < start:
        raise ValidationFailed(f"end {end} is before start {start}", field="query.end")
    stop = min(size, start + service.MAX_PAGE, size if end is None else end)
    rows = service.entries(session, start, stop)
    return EntriesPage(start=start, end=stop, tree_size=size, entries=[_entry_out(r) for r in rows])


@router.get(
    f"{PREFIX}/proof/inclusion",
    response_model=InclusionProof,
    summary="Inclusion proof of a release's entry, or of an entry by index",
    description="Give `release_id` (its latest `release` entry) or `index`. `tree_size` defaults to the current "
    "size; then `tree_head` is the signed head the proof leads to. Verify it as RFC 9162 §2.1.3.2 says, with the "
    "leaf hash SHA-256(0x00 || leaf).",
    responses={404: {"description": "The release is not in the log, or the log has no such entry"}},
)
def inclusion_proof(
    session: SessionDep,
    key: LogKeyDep,
    release_id: Annotated[str | None, Query(min_length=1, max_length=64, description="A release's id")] = None,
    index: Annotated[int | None, Query(ge=0, le=2**62, description="An entry's index")] = None,
    tree_size: Annotated[int | None, Query(ge=1, le=2**62, description="Size of the tree to prove it in")] = None,
) -> InclusionProof:
    if release_id is not None and index is not None:
        raise ValidationFailed("give release_id or index, not both", field="query.index")
    if release_id is None and index is None:
        raise ValidationFailed("give release_id, or index (and tree_size)", field="query.release_id")
    view = service.tree(session)
    if release_id is not None:
        row = service.latest_entry(session, release_id, "release")
        if row is None or row.idx >= view.size:
            raise NotFound(f"release {release_id} is not in the transparency log", field="query.release_id")
    else:
        assert index is not None
        found = service.entry(session, index) if index < view.size else None
        if found is None:
            raise NotFound(f"the log has no entry {index} (it has {view.size})", field="query.index")
        row = found
    size = view.size if tree_size is None else tree_size
    if size > view.size:
        raise ValidationFailed(
            f"tree_size {size} is larger than the log ({view.size} entries)", field="query.tree_size"
        )
    if row.idx >= size:
        field = "query.index" if release_id is None else "query.tree_size"
        raise ValidationFailed(f"entry {row.idx} is not in a tree of {size} entries", field=field)
    return InclusionProof(
        leaf_index=row.idx,
        tree_size=size,
        leaf=row.leaf,
        leaf_hash=row.leaf_hash,
        inclusion_proof=[h.hex() for h in view.inclusion_proof(row.idx, size)],
        tree_head=view.signed_head(key) if size == view.size else None,
    )


@router.get(
    f"{PREFIX}/proof/consistency",
    response_model=ConsistencyProof,
    summary="Consistency proof between two tree sizes",
    description="Proves that the tree of `first` entries is a prefix of the tree of `second` (default: the "
    "current size, then `tree_head` is its signed head). Verify it as RFC 9162 §2.1.4.2 says. The proof is "
    "empty when `first` is 0 or equal to `second`.",
)
def consistency_proof(
    session: SessionDep,
    key: LogKeyDep,
    first: Annotated[int, Query(ge=0, le=2**62, description="The older tree size (the one you kept)")],
    second: Annotated[int | None, Query(ge=0, le=2**62, description="The newer tree size")] = None,
) -> ConsistencyProof:
    view = service.tree(session)
    size = view.size if second is None else second
    if size > view.size:
        raise ValidationFailed(f"second {size} is larger than the log ({view.size} entries)", field="query.second")
    if first > size:
        raise ValidationFailed(f"first {first} is larger than second {size}", field="query.first")
    return ConsistencyProof(
        first=first,
        second=size,
        consistency_proof=[h.hex() for h in view.consistency_proof(first, size)],
        tree_head=view.signed_head(key) if size == view.size else None,
    )


@router.get(
    LOG_KEY_PATH,
    response_class=PlainTextResponse,
    summary="The transparency log's public key (PEM)",
    description="The Ed25519 public key (SubjectPublicKeyInfo, PEM) that signs the log's tree heads.",
    responses={200: {"content": {"application/x-pem-file": {}}}},
)
def get_log_public_key(key: LogKeyDep) -> PlainTextResponse:
    return PlainTextResponse(key.public_pem, media_type="application/x-pem-file")
