"""GET/PATCH/DELETE /api/v1/firmware: listing, semantic ordering, lookups, deletion and the released flag."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from bota_ota.core.settings import Settings
from bota_ota.firmware.models import Artifact, Release
from tests.support.factories import ApiClient, assert_problem, files_in, firmware_bytes


def _versions(api: ApiClient, **params: str) -> list[str]:
    r = api.get("/api/v1/firmware", params=params)
    assert r.status_code == 200, r.text
    return [rel["version"] for rel in r.json()]


def test_list_is_semantically_ordered_newest_first(admin: ApiClient) -> None:
    for version in ["v1.0.9", "v1.0.10", "v1.0.9-rc.1"]:
        admin.release(version)
    assert _versions(admin, model="bota-pin") == ["v1.0.10", "v1.0.9", "v1.0.9-rc.1"]


def test_ordering_is_semantic_not_lexical_or_by_upload_time(admin: ApiClient) -> None:
    for version in ["v2.0.0-rc.2", "v10.0.0", "v2.0.0", "1.10.0", "v2.0.0-rc.10", "v2.0.0-alpha", "v1.9.0", "v0.0.1"]:
        admin.release(version)
    assert _versions(admin, model="bota-pin") == [
        "v10.0.0",
        "v2.0.0",
        "v2.0.0-rc.10",
        "v2.0.0-rc.2",
        "v2.0.0-alpha",
        "1.10.0",
        "v1.9.0",
        "v0.0.1",
    ]


def test_list_filters_by_model(admin: ApiClient) -> None:
    pin = admin.release("v1.0.0", "bota-pin")
    pro = admin.release("v1.0.0", "bota-pin-pro")
    note = admin.release("v3.0.0", "bota-note")
    admin.release("v1.1.0", "bota-pin")

    def ids(**params: str) -> list[str]:
        return [rel["id"] for rel in admin.get("/api/v1/firmware", params=params).json()]

    assert ids(model="bota-pin-pro") == [pro["id"]]
    assert ids(model="bota-note") == [note["id"]]
    assert pin["id"] in ids(model="bota-pin")
    assert len(ids(model="bota-pin")) == 2
    assert sorted(ids()) == sorted([*ids(model="bota-pin"), pro["id"], note["id"]])
    assert all(rel["model"] == "bota-pin" for rel in admin.get("/api/v1/firmware?model=bota-pin").json())


def test_list_with_unknown_model_is_422(admin: ApiClient) -> None:
    assert_problem(admin.get("/api/v1/firmware", params={"model": "bota-watch"}), 422, "query.model")


def test_list_is_empty_at_first(admin: ApiClient) -> None:
    assert admin.get("/api/v1/firmware").json() == []


def test_get_one_and_unknown(admin: ApiClient) -> None:
    rel = admin.release("v1.0.0", notes="first")
    got = admin.get(f"/api/v1/firmware/{rel['id']}")
    assert got.status_code == 200
    assert got.json() == rel
    assert got.json()["notes"] == "first"
    assert_problem(admin.get("/api/v1/firmware/0123456789abcdef0123456789abcdef"), 404)
    assert_problem(admin.get("/api/v1/firmware/nope"), 404)


def test_delete_unreferenced_release_removes_row_and_files(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    keep = admin.release("v1.0.0", bin=firmware_bytes(100, seed=1))
    gone = admin.release("v1.0.1", bin=firmware_bytes(200, seed=2), ufw=firmware_bytes(300, seed=3))
    assert len(files_in(settings.blob_dir)) == 3
    r = admin.delete(f"/api/v1/firmware/{gone['id']}")
    assert r.status_code == 204
    assert r.content == b""
    remaining = files_in(settings.blob_dir)
    assert len(remaining) == 1
    assert remaining[0].read_bytes() == firmware_bytes(100, seed=1)  # type: ignore[attr-defined]
    assert_problem(admin.get(f"/api/v1/firmware/{gone['id']}"), 404)
    assert [rel["id"] for rel in admin.get("/api/v1/firmware").json()] == [keep["id"]]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Artifact).where(Artifact.release_id == gone["id"])) == 0
    # Deleting again: 404. The version can be uploaded again.
    assert_problem(admin.delete(f"/api/v1/firmware/{gone['id']}"), 404)
    assert admin.upload("v1.0.1").status_code == 201


def test_delete_referenced_release_is_409_and_keeps_files(admin: ApiClient, settings: Settings, sessions: Any) -> None:
    rel = admin.release("v1.0.1")
    device = admin.device()
    assignment = admin.assign(device["id"], rel["id"]).json()
    before = files_in(settings.blob_dir)
    assert_problem(admin.delete(f"/api/v1/firmware/{rel['id']}"), 409)
    assert files_in(settings.blob_dir) == before
    assert admin.get(f"/api/v1/firmware/{rel['id']}").status_code == 200
    # A cancelled assignment still references the release (its history points at it).
    assert admin.post(f"/api/v1/assignments/{assignment['id']}/cancel").status_code == 200
    assert_problem(admin.delete(f"/api/v1/firmware/{rel['id']}"), 409)
    with sessions() as session:
        assert session.get(Release, rel["id"]) is not None
    assert files_in(settings.blob_dir) == before


def test_patch_released_flag_and_filter(admin: ApiClient) -> None:
    rel = admin.release("v1.0.0")
    draft = admin.release("v1.0.1", extra={"draft": "true"})
    assert draft["released"] is False

    def ids(released: str) -> list[str]:
        return [r["id"] for r in admin.get("/api/v1/firmware", params={"released": released}).json()]

    assert ids("true") == [rel["id"]]
    assert ids("false") == [draft["id"]]

    r = admin.patch(f"/api/v1/firmware/{rel['id']}", json={"released": False})
    assert r.status_code == 200, r.text
    assert r.json()["released"] is False
    assert admin.get(f"/api/v1/firmware/{rel['id']}").json()["released"] is False
    r = admin.patch(f"/api/v1/firmware/{draft['id']}", json={"released": True})
    assert r.json()["released"] is True
    assert ids("true") == [draft["id"]]
    assert ids("false") == [rel["id"]]


def test_patch_notes_leaves_released_alone(admin: ApiClient) -> None:
    rel = admin.release("v1.0.0", notes="old")
    r = admin.patch(f"/api/v1/firmware/{rel['id']}", json={"notes": " new notes "})
    assert r.status_code == 200
    assert r.json()["notes"] == "new notes"
    assert r.json()["released"] is True
    assert r.json()["bin"] == rel["bin"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"released": "perhaps"}, "released"),
        ({"notes": "n" * 10_001}, "notes"),
        ({"version": "v9.9.9"}, "version"),
        ({"notes": 5}, "notes"),
    ],
)
def test_patch_validation(admin: ApiClient, body: dict[str, Any], field: str) -> None:
    rel = admin.release("v1.0.0", notes="kept")
    assert_problem(admin.patch(f"/api/v1/firmware/{rel['id']}", json=body), 422, field)
    assert admin.get(f"/api/v1/firmware/{rel['id']}").json() == rel


def test_patch_unknown_release_is_404(admin: ApiClient) -> None:
    assert_problem(admin.patch("/api/v1/firmware/nope", json={"released": False}), 404)
