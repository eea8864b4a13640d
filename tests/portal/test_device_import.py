"""Importing devices from a CSV file in the portal: a dry run listing what would be created and every error by
line, then the real run, its tokens and claim codes shown once and downloadable as CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, field_error, html, table_rows
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat

GOOD = "id,model,name,tags\r\nBP-IMP-1,bota-pin,Front desk,beta;eu\r\n\r\nBN-IMP-2,bota-note,,\r\n"


def upload(client: TestClient, content: bytes | None, filename: str = "devices.csv") -> httpx.Response:
    token = csrf(client, "/devices/import")
    files = {"file": (filename, content or b"", "text/csv")} if content is not None else None
    return client.post("/devices/import", data={"csrf_token": token}, files=files)


def run(client: TestClient, page: Element) -> httpx.Response:
    form = page.find("form", action="/devices/import/run")
    assert form is not None
    fields = {i.attr("name") or "": i.attr("value") or "" for i in form.find_all("input")}
    return client.post("/devices/import/run", data=fields)


def test_check_then_register_and_download_the_tokens(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    assert "/devices/import" in html(client.get("/devices")).links()
    checked = upload(client, GOOD.encode())
    assert checked.status_code == 200, checked.text
    page = html(checked)
    assert page.by_id("import-summary").text == "2 devices will be registered."
    assert table_rows(page, page.by_id("import-devices")) == [
        ["2", "BP-IMP-1", "Bota Pin", "Front desk"],
        ["4", "BN-IMP-2", "Bota Note", ""],
    ]
    assert "Register 2 devices" in page.buttons()
    assert admin.get("/api/v1/devices").json() == []  # a dry run writes nothing

    done = run(client, page)
    assert done.status_code == 201 and done.headers["cache-control"] == "no-store"
    page = html(done)
    rows = table_rows(page, page.by_id("import-created"))
    assert [r[:2] for r in rows] == [["BP-IMP-1", "Bota Pin"], ["BN-IMP-2", "Bota Note"]]
    tokens = {r[0]: r[2].removesuffix(" Copy") for r in rows}
    assert heartbeat(client, tokens["BP-IMP-1"]).status_code == 200
    device = admin.get("/api/v1/devices/BP-IMP-1").json()
    assert (device["name"], device["tags"]) == ("Front desk", ["beta", "eu"])

    form = page.find("form", action="/devices/import/tokens.csv")
    assert form is not None
    fields = {i.attr("name") or "": i.attr("value") or "" for i in form.find_all("input")}
    download = client.post("/devices/import/tokens.csv", data=fields)
    assert download.status_code == 200 and download.headers["cache-control"] == "no-store"
    assert download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"] == 'attachment; filename="device-tokens.csv"'
    lines = list(csv.DictReader(io.StringIO(download.text)))
    assert [(d["id"], d["token"]) for d in lines] == [(k, v) for k, v in tokens.items()]
    assert all(len(d["claim_code"]) == 9 for d in lines)
    # Shown once: nothing else shows them again.
    assert tokens["BN-IMP-2"] not in client.get("/devices").text + client.get("/devices/BN-IMP-2").text


def test_every_error_is_listed_with_its_line_and_nothing_is_registered(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-TAKEN")
    sign_in(client, *portal_user)
    text = "id,model,name\nBP-OK-1,bota-pin,Fine\nbad id!,toaster,\nBP-TAKEN,bota-pin,\nBP-OK-1,bota-pin,Again\n"
    r = upload(client, text.encode())
    assert r.status_code == 422
    page = html(r)
    assert page.by_id("import-summary").text.startswith("4 problems in the file: nothing is registered.")
    errors = table_rows(page, page.by_id("import-errors"))
    assert [(line, field) for line, field, _ in errors] == [
        ("3", "Device id"),
        ("3", "Model"),
        ("4", "Device id"),
        ("5", "Device id"),
    ]
    assert all(e[2][0].isupper() and e[2].endswith(".") for e in errors)
    assert "already registered" in errors[2][2] and "already on line 2" in errors[3][2]
    assert table_rows(page, page.by_id("import-devices")) == [["2", "BP-OK-1", "Bota Pin", "Fine"]]
    assert page.find("form", action="/devices/import/run") is None
    assert [d["id"] for d in admin.get("/api/v1/devices").json()] == ["BP-TAKEN"]


def test_a_file_the_import_cannot_read_is_said_beside_the_field(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    for content, filename, message in [
        (None, "", "Choose a CSV file to import."),
        (b"\xff\xfe\x00bad", "x.csv", "The file is not UTF-8 text; save it as CSV (UTF-8) and try again."),
        (b"serial,kind\nBP-1,pin\n", "x.csv", "The header row must name the columns id and model"),
        (b"", "x.csv", "The file is empty"),
        (
            b"id,model\n" + b"BP-1,bota-pin\n" * 80_000,
            "big.csv",
            "The file is larger than 1 MB; split it into several files.",
        ),
    ]:
        r = upload(client, content, filename)
        assert r.status_code in (413, 422), (filename, r.status_code)
        page = html(r)
        assert field_error(page, "file").startswith(message), (message, field_error(page, "file"))
        assert page.by_id("file").attr("aria-invalid") == "true"
    assert admin.get("/api/v1/devices").json() == []


def test_a_device_registered_between_the_check_and_the_run_is_reported(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    sign_in(client, *portal_user)
    page = html(upload(client, GOOD.encode()))
    admin.device(device_id="BN-IMP-2")  # someone else, meanwhile
    r = run(client, page)
    assert r.status_code == 422
    page = html(r)
    assert any("already registered" in e[2] for e in table_rows(page, page.by_id("import-errors")))
    assert admin.get("/api/v1/devices/BP-IMP-1").status_code == 404  # all or nothing


def test_viewers_cannot_import(client: TestClient, admin: ApiClient, sessions: Any) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    assert "/devices/import" not in html(client.get("/devices")).links()
    assert client.get("/devices/import").status_code == 403
    token = csrf(client, "/devices")
    r = client.post("/devices/import", data={"csrf_token": token}, files={"file": ("d.csv", GOOD.encode())})
    assert r.status_code == 403
    assert client.post("/devices/import/run", data={"csrf_token": token, "csv": GOOD}).status_code == 403
    assert client.post("/devices/import/tokens.csv", data={"csrf_token": token, "tokens": ""}).status_code == 403
    assert admin.get("/api/v1/devices").json() == []
