"""Serves locally stored blobs behind HMAC-signed, expiring URLs (the local stand-in for S3 presigning)."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from bota_ota.core.errors import Forbidden, NotFound
from bota_ota.storage.local import DOWNLOAD_PREFIX, LocalBlobStore, verify
from bota_ota.web.deps import StoreDep
from bota_ota.web.problems import problem_response

log = logging.getLogger(__name__)


class FirmwareFileResponse(FileResponse):
    """1 MiB reads instead of Starlette's 64 KiB: each read is a hop to a worker thread, and at 64 KiB
    those hops capped downloads at about a quarter of nginx's rate (docs/performance.md, (c)).

    A Range the file cannot satisfy (416) or that is malformed (400) is answered with problem JSON like every
    other error (Starlette answers them with text/plain). The header is checked with Starlette's own parser, so
    what is refused here is exactly what it would refuse."""

    chunk_size = 1024 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        http_range = headers.get("range")
        if http_range is not None and headers.get("if-range") is None and scope["method"] in ("GET", "HEAD"):
            size = (await anyio.to_thread.run_sync(os.stat, self.path)).st_size
            problem = None
            try:
                self._parse_range_header(http_range, size)
            except MalformedRangeHeader as exc:
                detail = f"the Range header is malformed ({exc.content}); ask for bytes=<from>- or bytes=<from>-<to>"
                problem = problem_response(
                    Request(scope), 400, slug="bad-range", title="Bad Range", detail=detail,
                    errors=[{"field": "header.range", "message": str(exc.content)}],
                )  # fmt: skip
            except RangeNotSatisfiable:
                detail = f"the file has {size} bytes: a Range must start below that (a finished download needs none)"
                problem = problem_response(
                    Request(scope), 416, slug="range-not-satisfiable", title="Range not satisfiable", detail=detail,
                    headers={"Content-Range": f"bytes */{size}"},
                    errors=[{"field": "header.range", "message": "starts at or past the end of the file"}],
                )  # fmt: skip
            if problem is not None:
                await problem(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


router = APIRouter(tags=["downloads"])

_MAX_SIG = 128  # a hex SHA-256 is 64


def _parse_expiry(text: str | None) -> int | None:
    """The ``expires`` query value as the signer wrote it (decimal Unix seconds), else None."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


_FILE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file", "content": _FILE},
    206: {"description": "The part of the file the Range header asked for", "content": _FILE},
    400: {"description": "A malformed Range header (field header.range)"},
    403: {"description": "The URL is invalid, tampered with or expired"},
    404: {"description": "The file no longer exists (or the S3 store serves downloads)"},
    416: {"description": "A Range starting at or past the end of the file"},
}


@router.get(
    DOWNLOAD_PREFIX + "{key:path}",
    response_class=FileResponse,
    operation_id="download_file",
    summary="Download a firmware file through a signed URL (supports Range)",
    responses=_DOWNLOAD_RESPONSES,
)
@router.head(
    DOWNLOAD_PREFIX + "{key:path}",
    response_class=FileResponse,
    operation_id="download_file_head",
    summary="The headers of a download through a signed URL (size, Range support)",
    responses=_DOWNLOAD_RESPONSES,
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
