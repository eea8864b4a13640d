"""The log key: generated once with mode 0600, shared by processes that start together, its id computed as
a release signing key's, its setting; tree head signatures."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bota_ota.core.settings import Settings
from bota_ota.firmware import signing
from bota_ota.transparency.logkey import LogKey, LogKeyError, load_or_create, log_key, verify_tree_head


def test_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.pem"
    key = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_or_create(path).key_id == key.key_id
    assert [p.name for p in path.parent.iterdir()] == ["log.pem"]  # no temporary file left behind
    public = key.private.public_key()
    assert key.key_id == signing.key_id(public)  # the same id scheme as release signing keys
    assert key.public_pem == signing.public_pem(public)


def test_processes_starting_at_once_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "log.pem"
    barrier = threading.Barrier(8)
    keys: list[LogKey] = []

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({k.key_id for k in keys}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.pem"]


def test_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings(data_dir=tmp_path / "d", _env_file=None)  # type: ignore[call-arg]
    assert default.resolved_log_key_file == tmp_path / "d" / "transparency-log-key.pem"
    monkeypatch.setenv("BOTA_OTA_LOG_KEY_FILE", str(tmp_path / "shared" / "key.pem"))
    configured = Settings(data_dir=tmp_path / "d", _env_file=None)  # type: ignore[call-arg]
    assert configured.resolved_log_key_file == tmp_path / "shared" / "key.pem"
    key = log_key(configured)
    assert (tmp_path / "shared" / "key.pem").exists() and not (tmp_path / "d").exists()
    assert log_key(configured) is key  # read once per process


def test_a_file_that_is_not_an_ed25519_key_stops_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(LogKeyError):
        load_or_create(bad)


def test_tree_head_signatures(tmp_path: Path) -> None:
    key = load_or_create(tmp_path / "k.pem")
    public = key.private.public_key()
    root = "ab" * 32
    head = {
        "tree_size": 3,
        "root_hash": root,
        "timestamp": "2026-12-03T14:00:00Z",
        "key_id": key.key_id,
        "signature": key.sign_tree_head(3, root, "2026-12-03T14:00:00Z"),
    }
    assert verify_tree_head(public, head)
    for change in ({"tree_size": 4}, {"root_hash": "cd" * 32}, {"timestamp": "2026-12-03T14:00:01Z"}):
        assert not verify_tree_head(public, {**head, **change})
    assert not verify_tree_head(public, {**head, "key_id": "0" * 16})
    assert not verify_tree_head(public, {**head, "signature": "not base64!"})
    other = load_or_create(tmp_path / "other.pem")
    assert not verify_tree_head(other.private.public_key(), head)
