"""Serves locally stored blobs behind HMAC-signed, expiring URLs (the local stand-in for S3 presigning)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from bota_ota.core.errors import Forbidden, NotFound
from bota_ota.storage.local import DOWNLOAD_PREFIX, LocalBlobStore, verify
from bota_ota.web.deps import StoreDep

log = logging.getLogger(__name__)


class FirmwareFileResponse(FileResponse):
    """1 MiB reads instead of Starlette's 64 KiB: each read is a hop to a worker thread, and at 64 KiB
    those hops capped downloads at about a quarter of nginx's rate (docs/performance.md, (c))."""

    chunk_size = 1024 * 1024


router = APIRouter(tags=["downloads"])

_MAX_SIG = 128  # a hex SHA-256 is 64


def _parse_expiry(text: str | None) -> int | None:
    """The ``expires`` query value as the signer wrote it (decimal Unix seconds), else None."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


@router.api_route(
    DOWNLOAD_PREFIX + "{key:path}",
    methods=["GET", "HEAD"],
    response_class=FileResponse,
    summary="Download a firmware file through a signed URL (supports Range)",
)
def download(
    request: Request,
    key: str,
    store: StoreDep,
    expires: Annotated[str | None, Query()] = None,
    sig: Annotated[str | None, Query()] = None,
) -> FileResponse:
    if not isinstance(store, LocalBlobStore):
        raise NotFound("downloads are served by the S3 store, not by this server")
    # A URL whose expiry or signature was removed or mangled is a tampered URL: 403 like any other
    # (docs/device-protocol.md), not a 422 the device would not know what to do with.
    expires_at = _parse_expiry(expires)
    if expires_at is None or sig is None or len(sig) > _MAX_SIG or not verify(store.secret, key, expires_at, sig):
        raise Forbidden("the download URL is invalid or has expired; the next heartbeat brings a fresh one")
    try:
        path = store.path_for(key)
    except ValueError:
        raise Forbidden("the download URL is invalid") from None
    if not path.is_file():
        raise NotFound("the file no longer exists")
    log.info("download %s range=%s", key, request.headers.get("range", "-"))
    # Starlette's FileResponse streams in chunks and answers Range requests with 206.
    return FirmwareFileResponse(path, media_type="application/octet-stream", filename=path.name)
