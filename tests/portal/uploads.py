"""Posting the Upload Firmware form as the page's script and as a plain browser form would, and checking
that a refused upload stored nothing (shared by the upload and signing page tests)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from bota_ota.core.settings import Settings
from tests.portal.pages import browser_multipart
from tests.support.factories import ApiClient, files_in


def post_json(
    client: TestClient, token: str | None, data: dict[str, str], files: dict[str, Any], **headers: str
) -> httpx.Response:
    """What upload.js sends: the CSRF token in a header (not in the body) and Accept: application/json."""
    if token is not None:
        headers["X-CSRF-Token"] = token
    return client.post("/firmware/upload", data=data, files=files, headers={"Accept": "application/json", **headers})


def post_plain(client: TestClient, parts: list[tuple[str, Any]]) -> httpx.Response:
    """What a browser without JavaScript sends: every input of the form, in page order."""
    body, content_type = browser_multipart(parts)
    return client.post("/firmware/upload", content=body, headers={"Content-Type": content_type}, follow_redirects=False)


def plain_form(
    token: str | None,
    version: str,
    *,
    model: str = "bota-pin",
    bin: tuple[str, bytes] = ("", b""),
    ufw: tuple[str, bytes] = ("", b""),
    notes: str = "",
    draft: bool = False,
) -> list[tuple[str, Any]]:
    parts: list[tuple[str, Any]] = [] if token is None else [("csrf_token", token)]
    parts += [("version", version), ("model", model), ("bin", bin), ("ufw", ufw), ("notes", notes)]
    if draft:
        parts.append(("draft", "true"))
    return parts


def nothing_stored(settings: Settings, admin: ApiClient) -> None:
    assert admin.get("/api/v1/firmware").json() == []
    assert files_in(settings.blob_dir) == []
    assert files_in(settings.upload_tmp_dir) == []
