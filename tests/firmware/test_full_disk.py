"""A full disk: uploads answer 507 problem JSON and store nothing, and work again once space is freed.

The data directory sits on a real, small tmpfs mounted for the test (root is needed to mount one; the test is
skipped with the reason where that is not allowed)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bota_ota.core.settings import Settings
from tests.firmware.signing_support import assert_nothing_stored
from tests.support.factories import ApiClient, assert_problem, files_in, firmware_bytes

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def settings(small_disk: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=small_disk / "data",
        database_url=database_url,
        secret_key="test-secret-key",
        max_upload_bytes=8 * MiB,
        rollout_interval_s=600,
        _env_file=None,  # type: ignore[call-arg]
    )


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, list[bytes]]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="fw.{name}"\r\n'
        parts.append((head + "Content-Type: application/octet-stream\r\n\r\n").encode())
        parts.extend(data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024))
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", parts


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on the small disk."""
    import shutil

    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    ballast.write_bytes(b"\0" * max(0, free - leave))
    return ballast


def test_an_upload_larger_than_the_free_space_is_507_at_once(
    admin: ApiClient, settings: Settings, sessions: Any, small_disk: Path
) -> None:
    _fill(small_disk, leave=512 * 1024)
    r = admin.upload(bin=firmware_bytes(1 * MiB))
    assert_problem(r, 507)
    assert "free" in r.json()["detail"]
    assert_nothing_stored(admin, settings, sessions)


def test_a_disk_that_fills_during_an_upload_is_507_and_keeps_nothing(
    admin: ApiClient, settings: Settings, sessions: Any, small_disk: Path
) -> None:
    ballast = _fill(small_disk, leave=768 * 1024)
    image = firmware_bytes(1 * MiB)
    content_type, chunks = _multipart({"version": "v1.0.1", "model": "bota-pin"}, {"bin": image})
    # A chunked body (no Content-Length): the server only finds out when the disk refuses a write.
    r = admin.client.post(
        "/api/v1/firmware", content=iter(chunks), headers={**admin.headers, "Content-Type": content_type}
    )
    assert_problem(r, 507)
    assert "disk is full" in r.json()["detail"]
    assert_nothing_stored(admin, settings, sessions)
    # A second try with the disk still full: 507 again, not a 500.
    content_type, chunks = _multipart({"version": "v1.0.1", "model": "bota-pin"}, {"bin": image})
    again = admin.client.post(
        "/api/v1/firmware", content=iter(chunks), headers={**admin.headers, "Content-Type": content_type}
    )
    assert_problem(again, 507)
    # Space freed: the same upload is stored.
    ballast.unlink()
    ok = admin.upload(bin=image)
    assert ok.status_code == 201, ok.text
    assert len(files_in(settings.blob_dir)) == 1
