"""Storage housekeeping (firmware/housekeeping.py): the periodic sweep of stale temporary uploads, and the
check of blobs against artifact rows — orphans a crash leaves, rows whose blob is gone, sizes that differ —
on local files and on the real S3-protocol server."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bota_ota.app import create_app
from bota_ota.core.database import session_scope, utcnow
from bota_ota.core.settings import Settings
from bota_ota.firmware.housekeeping import StorageReport, check_storage
from bota_ota.firmware.models import Artifact
from bota_ota.storage import BlobStore
from tests.support.factories import ApiClient, firmware_bytes, make_token
from tests.support.s3rver import S3rverInfo

# --- the temporary-upload sweep ----------------------------------------------------------------------


def _aged(path: Path, data: bytes, age_s: float) -> Path:
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_scheduler_sweeps_a_crashed_upload_and_keeps_one_in_progress(
    client: TestClient, app: Any, settings: Settings
) -> None:
    tmp = settings.upload_tmp_dir
    assert settings.stale_upload_s == 1800  # the default
    # A partial upload whose process died (nothing has written to it for longer than the setting) and one
    # another instance is streaming right now (written a moment ago), both after start-up's own sweep.
    crashed = _aged(tmp / "upload-bin-crashed", b"\x7fELF" + b"\0" * 4000, settings.stale_upload_s + 60)
    in_progress = _aged(tmp / "upload-bin-streaming", b"\x7fELF" + b"\0" * 100, 5)

    done = client.portal.call(app.state.scheduler.run_once)  # type: ignore[union-attr]
    assert done["stale_uploads_removed"] == 1
    assert not crashed.exists()
    assert in_progress.read_bytes().startswith(b"\x7fELF")

    # Nothing left to do: the next run removes nothing.
    assert client.portal.call(app.state.scheduler.run_once)["stale_uploads_removed"] == 0  # type: ignore[union-attr]


def test_the_age_is_the_setting_at_start_up_and_in_the_sweep(settings: Settings) -> None:
    custom = settings.model_copy(update={"stale_upload_s": 600})
    tmp = custom.upload_tmp_dir
    tmp.mkdir(parents=True, exist_ok=True)
    at_start = _aged(tmp / "upload-ufw-before-restart", b"x" * 10, 700)
    young = _aged(tmp / "upload-ufw-young", b"y" * 10, 500)
    app = create_app(custom)
    with TestClient(app) as client:
        assert not at_start.exists()  # start-up sweep
        assert young.exists()
        _aged(young, b"y" * 10, 650)  # now untouched for longer than 600 s
        assert client.portal.call(app.state.scheduler.run_once)["stale_uploads_removed"] == 1  # type: ignore[union-attr]
    assert not young.exists()


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOTA_OTA_STALE_UPLOAD_S", "900")
    assert Settings(data_dir=tmp_path, _env_file=None).stale_upload_s == 900  # type: ignore[call-arg]
    monkeypatch.setenv("BOTA_OTA_STALE_UPLOAD_S", "5")  # shorter than any honest pause in an upload
    with pytest.raises(ValueError, match="stale_upload_s"):
        Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]


# --- blobs against rows --------------------------------------------------------------------------------


def _key(release: dict[str, Any], kind: str = "bin") -> str:
    return f"firmware/{release['model']}/{release['id']}/{release['model']}-{release['version'].lstrip('v')}.{kind}"


def _put(store: BlobStore, tmp_path: Path, key: str, data: bytes) -> None:
    source = tmp_path / f"src-{uuid.uuid4().hex}"
    source.write_bytes(data)
    store.put_file(key, source)


def _check(sessions: Any, store: BlobStore, **kw: Any) -> StorageReport:
    kw.setdefault("fix", False)
    kw.setdefault("now", utcnow())
    with session_scope(sessions) as session:
        return check_storage(session, store, **kw)


def _artifact_rows(sessions: Any) -> int:
    with session_scope(sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Artifact)) or 0)


def _make_trouble(api: ApiClient, store: BlobStore, tmp_path: Path) -> dict[str, Any]:
    """Three releases, then what crashes and accidents leave: an orphan blob, a missing blob, a wrong size."""
    good = api.release("v1.0.0", bin=firmware_bytes(3000, seed=1), ufw=firmware_bytes(2000, seed=2))
    lost = api.release("v1.1.0", bin=firmware_bytes(3000, seed=3))
    cut = api.release("v1.2.0", bin=firmware_bytes(3000, seed=4))
    # A crash between storing a new release's blob and committing its row: a blob under a release id no
    # row has.
    orphan = f"firmware/bota-pin/{uuid.uuid4().hex}/bota-pin-9.9.9.bin"
    _put(store, tmp_path, orphan, firmware_bytes(1234, seed=5))
    store.delete(_key(lost))  # the blob of a release that still has its row
    _put(store, tmp_path, _key(cut), firmware_bytes(1000, seed=6))  # replaced by a shorter file
    return {"good": good, "lost": lost, "cut": cut, "orphan": orphan}


def _assert_findings(report: StorageReport, t: dict[str, Any]) -> None:
    assert [o.key for o in report.orphans] == [t["orphan"]]
    assert report.orphans[0].size == 1234
    [missing] = report.missing
    assert missing.key == _key(t["lost"])
    assert (missing.artifact.release_id, missing.artifact.version, missing.artifact.kind) == (
        t["lost"]["id"],
        "v1.1.0",
        "bin",
    )
    assert f"delete release {t['lost']['id']}" in missing.advice and "upload it again" in missing.advice
    [mismatch] = report.size_mismatches
    assert (mismatch.key, mismatch.expected, mismatch.actual) == (_key(t["cut"]), 3000, 1000)
    assert mismatch.artifact.release_id == t["cut"]["id"]
    assert report.artifacts == 4
    assert report.blobs == 4  # good .bin and .ufw, cut, orphan


def test_a_clean_store_has_nothing_to_report(admin: ApiClient, app: Any, sessions: Any) -> None:
    admin.release("v1.0.0", ufw=firmware_bytes(500, seed=9))
    report = _check(sessions, app.state.ctx.store, fix=True)
    assert report.ok and report.remaining == 0
    assert (report.blobs, report.artifacts) == (2, 2)
    assert report.orphans == [] and report.missing == [] and report.size_mismatches == []


def test_the_check_finds_an_orphan_a_missing_blob_and_a_size_mismatch(
    admin: ApiClient, app: Any, sessions: Any, tmp_path: Path
) -> None:
    store = app.state.ctx.store
    trouble = _make_trouble(admin, store, tmp_path)
    report = _check(sessions, store)
    _assert_findings(report, trouble)
    assert not report.ok and report.remaining == 3
    assert store.exists(trouble["orphan"])  # without --fix nothing is deleted
    as_json = report.to_json()
    assert as_json["ok"] is False and as_json["remaining"] == 3
    assert as_json["missing"][0]["artifact"]["release_id"] == trouble["lost"]["id"]
    assert as_json["size_mismatches"][0]["actual"] == 1000


def test_fix_deletes_an_orphan_only_past_the_grace_and_never_a_row(
    admin: ApiClient, app: Any, sessions: Any, tmp_path: Path
) -> None:
    store = app.state.ctx.store
    trouble = _make_trouble(admin, store, tmp_path)
    # A second orphan that is an upload between its blob write and its commit, as far as anyone can tell.
    in_flight = f"firmware/bota-pin/{uuid.uuid4().hex}/bota-pin-9.9.10.bin"
    _put(store, tmp_path, in_flight, b"fresh")
    # The crash's orphan and a copy cut short (.part) were written two hours ago.
    part = f"{_key(trouble['good'])}.part"
    _put(store, tmp_path, part, b"half")
    two_hours_ago = time.time() - 7200
    for key in (trouble["orphan"], part):
        os.utime(store.path_for(key), (two_hours_ago, two_hours_ago))
    rows = _artifact_rows(sessions)

    report = _check(sessions, store, fix=True, grace_s=3600)
    by_key = {o.key: o for o in report.orphans}
    assert set(by_key) == {trouble["orphan"], part, in_flight}
    assert by_key[trouble["orphan"]].removed and by_key[part].removed
    assert not by_key[in_flight].removed and "an upload may still commit it" in (by_key[in_flight].kept or "")
    assert not store.exists(trouble["orphan"]) and not store.exists(part)
    assert store.exists(in_flight)
    # Rows are never touched: the missing blob and the wrong size are reported again, not "fixed".
    assert _artifact_rows(sessions) == rows
    assert len(report.missing) == 1 and len(report.size_mismatches) == 1
    assert report.remaining == 3  # in_flight, missing, mismatch
    assert store.exists(_key(trouble["good"])) and store.exists(_key(trouble["good"], "ufw"))

    # With no grace the fresh orphan goes too.
    again = _check(sessions, store, fix=True, grace_s=0)
    assert [o.key for o in again.orphans] == [in_flight] and again.orphans[0].removed
    assert not store.exists(in_flight)


# --- the same against S3 -----------------------------------------------------------------------------------


@pytest.mark.s3
def test_the_check_and_fix_on_s3(s3rver: S3rverInfo, settings: Settings, tmp_path: Path) -> None:
    s3_settings = settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_endpoint_url": s3rver.endpoint_url,
            "s3_bucket": f"housekeeping-{uuid.uuid4().hex[:12]}",
            "s3_region": s3rver.region,
            "s3_access_key_id": s3rver.access_key_id,
            "s3_secret_access_key": s3rver.secret_access_key,
            "s3_create_bucket": True,
        }
    )
    app = create_app(s3_settings)
    with TestClient(app) as client:
        sessions = app.state.ctx.sessions
        store = app.state.ctx.store
        api = ApiClient(client, make_token(sessions, "admin"))
        trouble = _make_trouble(api, store, tmp_path)
        assert type(store).__name__ == "S3BlobStore"

        report = _check(sessions, store)
        _assert_findings(report, trouble)

        # S3 sets an object's time itself: the orphan was written just now, so the grace keeps it...
        kept = _check(sessions, store, fix=True, grace_s=3600)
        assert not kept.orphans[0].removed and store.exists(trouble["orphan"])
        # ...and two hours on it is past the grace and goes; the rows stay.
        later = _check(sessions, store, fix=True, grace_s=3600, now=utcnow() + timedelta(hours=2))
        assert later.orphans[0].removed and not store.exists(trouble["orphan"])
        assert len(later.missing) == 1 and len(later.size_mismatches) == 1
        assert _artifact_rows(sessions) == 4
        assert store.exists(_key(trouble["good"], "ufw"))
