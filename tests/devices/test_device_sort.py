"""Sorting the device list: by id, name, last seen, model and semantic version, in the database.

The version order is semver's (v1.10.0 after v1.9.2, a pre-release before its release); devices that never
reported a version, and never-seen devices for ``last_seen``, come last in either direction."""

from __future__ import annotations

from typing import Any

import pytest
import semver
from alembic import command
from sqlalchemy import text

from bota_ota.core.database import make_engine
from bota_ota.core.migrate import alembic_config, upgrade_to_head
from bota_ota.devices.version_key import version_key
from bota_ota.firmware.versions import parse_version
from tests.support.factories import ApiClient, assert_problem, heartbeat

URL = "/api/v1/devices"

# semver.org §11's example chain, then numbers that text order gets wrong.
SEMVER_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "v1.2.0",
    "1.9.2",
    "v1.10.0-a-b",
    "v1.10.0",
    "1.10.1",
    "2.0.0",
    "10.0.0",
    "10.0.0+build.7",
    "123456789012.0.0",
]


def test_the_version_key_orders_as_semver_does() -> None:
    keys = [version_key(v) for v in SEMVER_ORDER]
    assert all(k is not None for k in keys)
    # The build metadata is ignored: 10.0.0 and 10.0.0+build.7 have the same key; every other pair differs.
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys) - 1
    for a in SEMVER_ORDER:
        for b in SEMVER_ORDER:
            by_semver = parse_version(a).replace(build=None).compare(parse_version(b).replace(build=None))
            ka, kb = version_key(a), version_key(b)
            assert ka is not None and kb is not None
            assert (ka > kb) - (ka < kb) == by_semver, (a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0.0-a", "1.0.0-a.0"), ("1.0.0-a", "1.0.0-a-b"), ("1.0.0-a.b", "1.0.0-a-b"), ("1.0.0-9", "1.0.0-A")],
)
def test_pre_release_identifiers_order_as_semver_does(a: str, b: str) -> None:
    assert semver.Version.parse(a) < semver.Version.parse(b)
    ka, kb = version_key(a), version_key(b)
    assert ka is not None and kb is not None and ka < kb


def test_unknown_and_unparseable_versions() -> None:
    assert version_key(None) is None
    assert version_key("  ") is None
    garbage = version_key("nightly-42")
    assert garbage is not None and garbage < (version_key("0.0.0") or "")


def _fleet(admin: ApiClient, versions: dict[str, str | None]) -> dict[str, str]:
    """Devices that reported these versions (None: never a heartbeat); their tokens by id."""
    tokens = {}
    for device_id, version in versions.items():
        dev = admin.device(device_id=device_id)
        tokens[device_id] = dev["token"]
        if version is not None:
            assert heartbeat(admin.client, dev["token"], firmware_version=version).status_code == 200
    return tokens


def _ids(admin: ApiClient, **params: Any) -> list[str]:
    r = admin.get(URL, params=params)
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()]


def test_sort_by_version_is_semantic_and_never_reported_comes_last(admin: ApiClient) -> None:
    tokens = _fleet(
        admin,
        {
            "A-NEVER": None,
            "B-1-10-0": "v1.10.0",
            "C-1-9-2": "v1.9.2",
            "D-2-0-0-RC": "2.0.0-rc.1",
            "E-1-2-0": "1.2.0",
            "F-2-0-0": "v2.0.0",
            "G-1-10-0": "1.10.0",
        },
    )
    ascending = ["E-1-2-0", "C-1-9-2", "B-1-10-0", "G-1-10-0", "D-2-0-0-RC", "F-2-0-0", "A-NEVER"]
    assert _ids(admin, sort="version") == ascending
    descending = ["F-2-0-0", "D-2-0-0-RC", "B-1-10-0", "G-1-10-0", "C-1-9-2", "E-1-2-0", "A-NEVER"]
    assert _ids(admin, sort="-version") == descending
    # Pages in that order, without overlap.
    pages = [_ids(admin, sort="version", limit=3, offset=o) for o in (0, 3, 6)]
    assert [device_id for page in pages for device_id in page] == ascending
    # A new version reported through the heartbeat's write path moves the device.
    assert heartbeat(admin.client, tokens["E-1-2-0"], firmware_version="v3.0.0").status_code == 200
    assert _ids(admin, sort="-version")[0] == "E-1-2-0"


def test_sort_by_last_seen_puts_never_seen_devices_last_either_way(admin: ApiClient) -> None:
    _fleet(admin, {"A-NEVER": None, "B-FIRST": "v1.0.0", "C-SECOND": "v1.0.0", "D-NEVER": None})
    assert _ids(admin, sort="last_seen") == ["B-FIRST", "C-SECOND", "A-NEVER", "D-NEVER"]
    assert _ids(admin, sort="-last_seen") == ["C-SECOND", "B-FIRST", "A-NEVER", "D-NEVER"]


def test_sort_by_id_name_and_model(admin: ApiClient) -> None:
    admin.device(device_id="A", name="zebra", model="bota-note")
    admin.device(device_id="B", name="Alpha", model="bota-pin")
    admin.device(device_id="C", name=None, model="bota-pin-pro")
    assert _ids(admin) == ["A", "B", "C"]
    assert _ids(admin, sort="-id") == ["C", "B", "A"]
    assert _ids(admin, sort="name") == ["B", "A", "C"]
    assert _ids(admin, sort="-name") == ["A", "B", "C"]
    assert _ids(admin, sort="model") == ["A", "B", "C"]
    assert _ids(admin, sort="-model") == ["C", "B", "A"]


@pytest.mark.parametrize("sort", ["colour", "--id", "-", "", "id;drop", "x" * 40])
def test_an_unknown_sort_key_is_422_naming_sort(admin: ApiClient, sort: str) -> None:
    admin.device()
    assert_problem(admin.get(URL, params={"sort": sort}), 422, field="query.sort")


def test_the_migration_backfills_the_version_key(database_url: str) -> None:
    cfg = alembic_config(database_url)
    engine = make_engine(database_url)
    try:
        command.downgrade(cfg, "0011")
        with engine.begin() as conn:
            for device_id, version in (("D1", "v1.10.0"), ("D2", "1.9.2"), ("D3", None)):
                conn.execute(
                    text(
                        "INSERT INTO devices (id, model, token_hash, created_at, recording, ble_connected, "
                        "firmware_version) VALUES (:id, 'bota-pin', :id, '2026-01-01 00:00:00+00:00', false, false, :v)"
                    ),
                    {"id": device_id, "v": version},
                )
        upgrade_to_head(database_url)
        with engine.begin() as conn:
            rows = {r[0]: r[1] for r in conn.execute(text("SELECT id, version_key FROM devices"))}
            ordered = conn.execute(text("SELECT id FROM devices ORDER BY version_key, id")).scalars().all()
        assert rows == {"D1": version_key("v1.10.0"), "D2": version_key("1.9.2"), "D3": None}
        assert [i for i in ordered if rows[i] is not None] == ["D2", "D1"]
    finally:
        engine.dispose()
        upgrade_to_head(database_url)
