"""The public transparency API, checked as an outsider would: no credentials, the log key from the
well-known URL, the RFC 9162 verification algorithms."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.core.database import session_scope
from bota_ota.firmware import signing
from bota_ota.transparency import merkle, service
from tests.support.factories import ApiClient, assert_problem, firmware_bytes
from tests.transparency.support import (
    fake_release,
    head_is_signed,
    leaf_json,
    log_release,
    log_withdrawal,
    proof_verifies,
    public_key_of,
)

API = "/api/transparency/v1"


def _append(sessions: sessionmaker[Session], start: int, n: int) -> None:
    with session_scope(sessions) as session:
        for i in range(start, start + n):
            service.record_release(session, fake_release(i))


def _hashes(proof: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in proof]


def test_an_empty_log(client: TestClient) -> None:
    key = public_key_of(client)
    head = client.get(f"{API}/tree-head").json()
    assert head["tree_size"] == 0
    assert head["root_hash"] == merkle.EMPTY_ROOT.hex()
    assert head["key_id"] == signing.key_id(key)
    assert head_is_signed(head, key)
    page = client.get(f"{API}/entries").json()
    assert page == {"start": 0, "end": 0, "tree_size": 0, "entries": []}


def test_a_releases_inclusion_proof_verifies_against_the_signed_head(
    client: TestClient, admin: ApiClient, sessions: sessionmaker[Session]
) -> None:
    _append(sessions, 0, 4)
    release = admin.release("v2.0.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    index = log_release(sessions, release["id"])
    _append(sessions, 10, 3)  # later entries: the proof still leads from the release to the newest root

    anonymous = TestClient(client.app)  # no credentials anywhere below
    key = public_key_of(anonymous)
    r = anonymous.get(f"{API}/proof/inclusion", params={"release_id": release["id"]})
    assert r.status_code == 200, r.text
    proof = r.json()
    assert (proof["leaf_index"], proof["tree_size"]) == (index, 8)
    assert proof["tree_head"]["tree_size"] == 8
    assert proof_verifies(proof["leaf"], index, proof["inclusion_proof"], proof["tree_head"], key)
    assert proof["leaf_hash"] == merkle.leaf_hash(proof["leaf"].encode()).hex()
    entry = leaf_json(proof["leaf"])
    assert (entry["kind"], entry["release_id"], entry["version"]) == ("release", release["id"], "v2.0.0")
    assert anonymous.get(f"{API}/entries/{index}").json() == {
        "index": index,
        "leaf": proof["leaf"],
        "leaf_hash": proof["leaf_hash"],
    }
    # Another leaf, index or key does not pass.
    other = anonymous.get(f"{API}/entries/0").json()["leaf"]
    assert not proof_verifies(other, index, proof["inclusion_proof"], proof["tree_head"], key)
    assert not proof_verifies(proof["leaf"], index + 1, proof["inclusion_proof"], proof["tree_head"], key)
    # A withdrawn release keeps its proof: the log never forgets that it was published.
    log_withdrawal(sessions, release["id"], "recalled")
    again = anonymous.get(f"{API}/proof/inclusion", params={"release_id": release["id"]}).json()
    assert again["leaf_index"] == index and again["tree_size"] == 9
    assert proof_verifies(again["leaf"], index, again["inclusion_proof"], again["tree_head"], key)


def test_proofs_by_index_in_an_older_tree_and_consistency(client: TestClient, sessions: sessionmaker[Session]) -> None:
    key = public_key_of(client)
    _append(sessions, 0, 5)
    old = client.get(f"{API}/tree-head").json()
    _append(sessions, 5, 12)
    new = client.get(f"{API}/tree-head").json()
    assert head_is_signed(old, key) and head_is_signed(new, key)

    # Entry 3 in the tree of 5 that the client kept: no current head comes with it.
    r = client.get(f"{API}/proof/inclusion", params={"index": 3, "tree_size": 5}).json()
    assert r["tree_head"] is None and r["tree_size"] == 5
    leaf = merkle.leaf_hash(r["leaf"].encode())
    assert merkle.verify_inclusion(leaf, 3, 5, _hashes(r["inclusion_proof"]), bytes.fromhex(old["root_hash"]))

    c = client.get(f"{API}/proof/consistency", params={"first": 5}).json()
    assert (c["first"], c["second"], c["tree_head"]["tree_size"]) == (5, 17, 17)
    assert merkle.verify_consistency(
        5,
        17,
        bytes.fromhex(old["root_hash"]),
        bytes.fromhex(c["tree_head"]["root_hash"]),
        _hashes(c["consistency_proof"]),
    )
    assert c["tree_head"]["root_hash"] == new["root_hash"]
    between = client.get(f"{API}/proof/consistency", params={"first": 2, "second": 5}).json()
    assert between["tree_head"] is None
    with sessions() as session:
        root2 = service.tree(session).root(2)
    assert merkle.verify_consistency(
        2, 5, root2, bytes.fromhex(old["root_hash"]), _hashes(between["consistency_proof"])
    )
    assert client.get(f"{API}/proof/consistency", params={"first": 17}).json()["consistency_proof"] == []


def test_entries_are_paged(
    client: TestClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_PAGE", 3)
    _append(sessions, 0, 7)
    seen: list[dict[str, Any]] = []
    start = 0
    while True:
        page = client.get(f"{API}/entries", params={"start": start}).json()
        assert page["tree_size"] == 7 and len(page["entries"]) <= 3
        seen += page["entries"]
        if page["end"] == page["tree_size"]:
            break
        start = page["end"]
    assert [e["index"] for e in seen] == list(range(7))
    assert (
        merkle.root([merkle.leaf_hash(e["leaf"].encode()) for e in seen]).hex()
        == (client.get(f"{API}/tree-head").json()["root_hash"])
    )
    assert [e["index"] for e in client.get(f"{API}/entries", params={"start": 2, "end": 4}).json()["entries"]] == [2, 3]
    assert client.get(f"{API}/entries", params={"start": 7}).json()["entries"] == []


def test_bad_parameters_are_problems_naming_the_field(client: TestClient, sessions: sessionmaker[Session]) -> None:
    _append(sessions, 0, 3)
    assert_problem(client.get(f"{API}/entries/3"), 404, "path.index")
    assert_problem(client.get(f"{API}/entries/-1"), 422, "path.index")
    assert_problem(client.get(f"{API}/entries", params={"start": 4}), 422, "query.start")
    assert_problem(client.get(f"{API}/entries", params={"start": 2, "end": 1}), 422, "query.end")
    inclusion = f"{API}/proof/inclusion"
    assert_problem(client.get(inclusion), 422, "query.release_id")
    assert_problem(client.get(inclusion, params={"release_id": "x", "index": 0}), 422, "query.index")
    assert_problem(client.get(inclusion, params={"release_id": "no-such-release"}), 404, "query.release_id")
    assert_problem(client.get(inclusion, params={"index": 3}), 404, "query.index")
    assert_problem(client.get(inclusion, params={"index": 0, "tree_size": 4}), 422, "query.tree_size")
    assert_problem(client.get(inclusion, params={"index": 2, "tree_size": 2}), 422, "query.index")
    assert_problem(client.get(inclusion, params={"index": 0, "tree_size": 0}), 422, "query.tree_size")
    release_id = fake_release(1).id
    assert_problem(client.get(inclusion, params={"release_id": release_id, "tree_size": 1}), 422, "query.tree_size")
    consistency = f"{API}/proof/consistency"
    assert_problem(client.get(consistency), 422, "query.first")
    assert_problem(client.get(consistency, params={"first": 3, "second": 2}), 422, "query.first")
    assert_problem(client.get(consistency, params={"first": 1, "second": 4}), 422, "query.second")
    assert_problem(client.get(consistency, params={"first": -1}), 422, "query.first")


def test_the_public_key_and_the_openapi_documentation(client: TestClient, settings: Any) -> None:
    r = client.get("/.well-known/bota-ota-log-key.pem")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-pem-file")
    assert r.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert settings.resolved_log_key_file.stat().st_mode & 0o777 == 0o600
    spec = client.get("/openapi.json").json()
    paths = {
        f"{API}/tree-head",
        f"{API}/entries/{{index}}",
        f"{API}/entries",
        f"{API}/proof/inclusion",
        f"{API}/proof/consistency",
        "/.well-known/bota-ota-log-key.pem",
    }
    assert paths <= set(spec["paths"])
    for path in paths:
        operation = spec["paths"][path]["get"]
        assert operation["tags"] == ["transparency log"] and operation["description"], path
        assert "security" not in operation, path  # public: no credentials
    head_doc = spec["paths"][f"{API}/tree-head"]["get"]["description"]
    assert r.text.strip() in head_doc  # this server's key, in the docs of the tree head
    assert client.get(f"{API}/tree-head").json()["key_id"] in head_doc
