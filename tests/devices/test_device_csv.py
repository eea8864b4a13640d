"""Devices as CSV: the export (streamed, the list's filters and sort, no page limit) and the import (every
line checked, every error reported by line, all or nothing, a dry run first)."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text

from bota_ota.app import create_app
from bota_ota.core.migrate import upgrade_to_head
from bota_ota.core.settings import Settings
from bota_ota.devices.csvio import EXPORT_COLUMNS, MAX_IMPORT_BYTES, MAX_IMPORT_LINES
from tests.support.app_api import make_app_user
from tests.support.database import PG_URL
from tests.support.factories import ApiClient, assert_problem, heartbeat, make_token

URL = "/api/v1/devices"
HEADER = "id,model,name,owner,tags,firmware_version,last_seen_at,online,update_status,update_version,decommissioned_at"


def _export(api: ApiClient, **params: Any) -> list[dict[str, str]]:
    r = api.get(f"{URL}/export.csv", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="devices.csv"'
    assert r.text.splitlines()[0] == HEADER
    return list(csv.DictReader(io.StringIO(r.text)))


def _import(api: ApiClient, body: str | bytes, *, dry_run: bool) -> Any:
    return api.client.post(
        f"{URL}/import",
        params={"dry_run": str(dry_run).lower()},
        content=body.encode() if isinstance(body, str) else body,
        headers={**api.headers, "Content-Type": "text/csv"},
    )


def _ids(api: ApiClient, **params: Any) -> list[str]:
    return [d["id"] for d in api.get(URL, params={"limit": 1000, **params}).json()]


@pytest.fixture
def fresh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApiClient]:
    """A second server on a database of its own, migrated and empty."""
    if PG_URL:
        server = make_url(PG_URL)
        name = f"bota_ota_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_fresh"
        admin_engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        upgrade_to_head(url)
    else:
        target = tmp_path / "fresh" / "bota-ota.db"
        target.parent.mkdir(parents=True)
        shutil.copyfile(request.getfixturevalue("_template_sqlite"), target)
        url = f"sqlite:///{target}"
    settings = Settings(
        data_dir=tmp_path / "fresh",
        database_url=url,
        secret_key="another-secret",
        rollout_interval_s=600,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as client:
        yield ApiClient(client, make_token(app.state.ctx.sessions, "admin"))
    if PG_URL:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


def _tagged(api: ApiClient, device_id: str, tags: list[str]) -> None:
    r = api.client.put(f"{URL}/{device_id}/tags", json={"tags": tags}, headers=api.headers)
    assert r.status_code == 200, r.text


# ---- export -----------------------------------------------------------------------------------------------


def test_the_export_has_every_column_and_every_matching_device(admin: ApiClient) -> None:
    make_app_user(admin, email="ana@example.com")
    a = admin.device(device_id="BP-A", name='Kitchen, "left"')
    admin.device(device_id="BP-B", model="bota-note")
    _tagged(admin, "BP-A", ["beta", "eu"])
    admin.client.put(f"{URL}/BP-A/owner", json={"email": "ana@example.com"}, headers=admin.headers)
    assert heartbeat(admin.client, a["token"], firmware_version="v1.2.0").status_code == 200
    assignment = admin.assign("BP-A", admin.release(version="v1.3.0")["id"]).json()

    rows = _export(admin)
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [r["id"] for r in rows] == ["BP-A", "BP-B"]
    first = rows[0]
    assert first["name"] == 'Kitchen, "left"'
    assert (first["owner"], first["tags"], first["firmware_version"]) == ("ana@example.com", "beta;eu", "v1.2.0")
    assert first["last_seen_at"].endswith("Z") and "T" in first["last_seen_at"]
    assert (first["online"], first["update_status"], first["update_version"]) == ("true", "pending", "v1.3.0")
    assert first["decommissioned_at"] == ""
    assert assignment["status"] == "pending"
    second = rows[1]
    assert (second["model"], second["name"], second["tags"], second["last_seen_at"], second["online"]) == (
        "bota-note",
        "",
        "",
        "",
        "false",
    )


def test_the_export_takes_the_lists_filters_and_sort_and_has_no_page_limit(admin: ApiClient, viewer: ApiClient) -> None:
    for n in range(120):
        admin.device(device_id=f"BP-{n:03d}", model="bota-note" if n % 2 else "bota-pin")
    admin.post(f"{URL}/BP-000/decommission")
    assert len(_export(viewer)) == 119
    notes = _export(viewer, model="bota-note", sort="-id")
    assert [r["id"] for r in notes] == [f"BP-{n:03d}" for n in range(119, 0, -2)]
    gone = _export(viewer, decommissioned="true")
    assert [r["id"] for r in gone] == ["BP-000"] and gone[0]["decommissioned_at"].endswith("Z")
    assert len(_export(viewer, decommissioned="any")) == 120
    assert_problem(viewer.get(f"{URL}/export.csv", params={"sort": "colour"}), 422, field="query.sort")
    assert_problem(viewer.get(f"{URL}/export.csv", params={"model": "toaster"}), 422, field="query.model")


# ---- import -----------------------------------------------------------------------------------------------


def test_export_then_import_into_a_fresh_database_round_trips_the_device_list(
    admin: ApiClient, fresh: ApiClient
) -> None:
    make_app_user(admin, email="ana@example.com")
    make_app_user(fresh, email="ana@example.com")
    for device_id, model, name in (
        ("BP-1", "bota-pin", "One"),
        ("BN-2", "bota-note", None),
        ("BPP-3", "bota-pin-pro", "x"),
    ):
        admin.device(device_id=device_id, model=model, name=name)
    _tagged(admin, "BP-1", ["beta", "eu-west"])
    admin.client.put(f"{URL}/BN-2/owner", json={"email": "ana@example.com"}, headers=admin.headers)
    exported = admin.get(f"{URL}/export.csv").text

    dry = _import(fresh, exported, dry_run=True)
    assert dry.status_code == 200, dry.text
    assert dry.json() == {"dry_run": True, "valid": 3, "errors": [], "created": []}
    assert _ids(fresh) == []

    r = _import(fresh, exported, dry_run=False)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    report = r.json()
    assert (report["dry_run"], report["valid"], report["errors"]) == (False, 3, [])
    assert [(c["line"], c["id"]) for c in report["created"]] == [(2, "BN-2"), (3, "BP-1"), (4, "BPP-3")]

    def listing(api: ApiClient) -> list[tuple[Any, ...]]:
        return [(d["id"], d["model"], d["name"], d["tags"], d["owner"]) for d in api.get(URL).json()]

    assert listing(fresh) == listing(admin)
    for created in report["created"]:
        assert heartbeat(fresh.client, created["token"]).status_code == 200
    audit = fresh.get("/api/v1/audit", params={"action": "device.import"}).json()
    assert [e["detail"] for e in audit] == [{"count": 3}]
    # The same file again: every id is registered now, and nothing changes.
    again = _import(fresh, exported, dry_run=False)
    body = assert_problem(again, 422)
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(2, "id"), (3, "id"), (4, "id")]


def test_errors_on_lines_3_and_5_are_both_reported_and_nothing_is_created(admin: ApiClient) -> None:
    admin.device(device_id="BP-TAKEN")
    body = "\n".join(
        [
            "id,model,name,tags",
            "BP-1,bota-pin,ok,beta",
            "BP-2,toaster,bad model,",
            "BP-3,bota-note,,",
            "bad id!,bota-pin,,Not A Tag",
            "BP-6,bota-pin-pro,,",
        ]
    )
    dry = _import(admin, body, dry_run=True)
    assert dry.status_code == 200, dry.text
    report = dry.json()
    assert (report["valid"], report["created"]) == (3, [])
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(3, "model"), (5, "id"), (5, "tags")]

    real = _import(admin, body, dry_run=False)
    problem = assert_problem(real, 422)
    assert [(e["line"], e["field"]) for e in problem["errors"]] == [(3, "model"), (5, "id"), (5, "tags")]
    assert all(e["detail"] for e in problem["errors"])
    assert "no device was created" in problem["detail"]
    assert _ids(admin) == ["BP-TAKEN"]


def test_every_kind_of_line_error_is_found(admin: ApiClient) -> None:
    make_app_user(admin, email="ana@example.com")
    admin.device(device_id="BP-TAKEN")
    body = "\r\n".join(
        [
            "ID , Model,owner,tags,unused",
            "BP-1,bota-pin,ANA@example.com,beta;EU,x",  # fine: e-mail and tags case-folded
            ",bota-pin,,,",  # no id
            "BP-3,,,,",  # no model
            "BP-TAKEN,bota-pin,,,",  # registered
            "BP-1,bota-pin,,,",  # twice in the file
            "BP-6,bota-pin,nobody@example.com,,",  # unknown owner
            "BP-7,bota-pin,," + ";".join(f"t{n}" for n in range(21)) + ",",  # too many tags
            '"BP-8","bota-pin",,"",',  # fine, quoted
        ]
    )
    report = _import(admin, body, dry_run=True).json()
    assert [(e["line"], e["field"]) for e in report["errors"]] == [
        (3, "id"),
        (4, "model"),
        (5, "id"),
        (6, "id"),
        (7, "owner"),
        (8, "tags"),
    ]
    assert "line 2" in report["errors"][3]["detail"]
    assert report["valid"] == 2


def test_a_real_import_creates_all_with_tags_and_owner_audited_once(operator: ApiClient, admin: ApiClient) -> None:
    make_app_user(admin, email="ana@example.com")
    body = "id,model,name,tags,owner\nBP-1,bota-pin, Kitchen ,beta;eu,ana@example.com\nBP-2,bota-note,,,\n"
    r = _import(operator, body, dry_run=False)
    assert r.status_code == 201, r.text
    created = r.json()["created"]
    assert [(c["id"], c["model"], c["name"]) for c in created] == [
        ("BP-1", "bota-pin", "Kitchen"),
        ("BP-2", "bota-note", None),
    ]
    assert all(c["token"].startswith("bota_dt_") and c["claim_code"] for c in created)
    one = admin.get(f"{URL}/BP-1").json()
    assert (one["tags"], one["owner"]) == (["beta", "eu"], "ana@example.com")
    audit = admin.get("/api/v1/audit", params={"action": "device.import"}).json()
    assert [(e["actor"], e["detail"]) for e in audit] == [("token:test-operator", {"count": 2})]


def test_multipart_field_file_is_accepted(admin: ApiClient) -> None:
    files = {"file": ("devices.csv", b"id,model\nBP-1,bota-pin\n", "text/csv")}
    r = admin.post(f"{URL}/import", params={"dry_run": "false"}, files=files)
    assert r.status_code == 201, r.text
    assert _ids(admin) == ["BP-1"]
    assert_problem(
        admin.post(f"{URL}/import", files={"other": ("x.csv", b"id,model\n", "text/csv")}), 422, field="file"
    )


def test_roles(viewer: ApiClient) -> None:
    assert_problem(_import(viewer, "id,model\nBP-1,bota-pin\n", dry_run=True), 403)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n\n",
        b"name,tags\nx,y\n",  # no id and model columns
        b"\xff\xfe\x00i\x00d",  # UTF-16: not UTF-8
        b"id,model\nBP-1,bota-pin\x00\n",  # NUL: not a text file
        b'id,model\n"BP-1,bota-pin\n',  # an unterminated quote
        b"\x89PNG\r\n\x1a\n\x00\x00",
    ],
)
def test_a_file_that_is_not_a_csv_of_devices_is_422_naming_file(admin: ApiClient, body: bytes) -> None:
    assert_problem(_import(admin, body, dry_run=True), 422, field="file")
    assert_problem(_import(admin, body, dry_run=False), 422, field="file")


def test_too_large_is_413(admin: ApiClient) -> None:
    lines = "id,model\n" + "".join(f"BP-{n},bota-pin\n" for n in range(MAX_IMPORT_LINES + 1))
    assert len(lines) < MAX_IMPORT_BYTES
    assert_problem(_import(admin, lines, dry_run=True), 413, field="file")
    assert_problem(_import(admin, b"id,model\n" + b"x" * MAX_IMPORT_BYTES, dry_run=True), 413, field="file")
    assert _ids(admin) == []


def test_the_largest_import_is_checked_in_full(admin: ApiClient) -> None:
    lines = "id,model,tags\n" + "".join(f"BP-{n:05d},bota-pin,beta\n" for n in range(MAX_IMPORT_LINES))
    r = _import(admin, lines, dry_run=True)
    assert r.status_code == 200, r.text
    assert r.json()["valid"] == MAX_IMPORT_LINES


@pytest.mark.parametrize(
    ("params", "content_type", "body"),
    [
        ({"dry_run": "maybe"}, "text/csv", b"id,model\n"),
        ({"dry_run": "true"}, "application/json", b'{"id": "BP-1"}'),
        ({"dry_run": "true"}, "multipart/form-data", b"not a form"),
        ({"dry_run": "true"}, "multipart/form-data; boundary=x", b"--x\r\nbroken"),
        ({}, "text/csv", b"id,model\r\n" + "BP-é,bota-pin\r\n".encode()),
        ({}, "text/csv", b"id,model,name\nBP-1,bota-pin," + b"n" * 300 + b"\n"),
        ({}, "text/csv", b'id,model\n"BP-1\nBP-2",bota-pin\n'),
        ({}, "text/csv", b"\xef\xbb\xbfid,model\nBP-1,bota-pin\n"),
    ],
)
def test_nothing_a_client_sends_gets_a_500(
    admin: ApiClient, params: dict[str, str], content_type: str, body: bytes
) -> None:
    r = admin.client.post(
        f"{URL}/import", params=params, content=body, headers={**admin.headers, "Content-Type": content_type}
    )
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 201, 413, 422), r.text
