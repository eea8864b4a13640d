"""Publishing through the management API writes the public log: an upload as released, a draft released
later, unpublishing and deleting (withdrawals); a draft is not in the log."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.support.factories import ApiClient, firmware_bytes
from tests.transparency.support import leaf_json, proof_verifies, public_key_of


def _entries(client: TestClient) -> list[dict[str, Any]]:
    head = client.get("/api/transparency/v1/tree-head").json()
    page = client.get("/api/transparency/v1/entries", params={"start": 0, "end": head["tree_size"]}).json()
    return [leaf_json(e["leaf"]) for e in page["entries"]]


def test_the_log_follows_publishing_and_withdrawal(client: TestClient, admin: ApiClient) -> None:
    published = admin.release("v1.1.0", bin=firmware_bytes(1000), ufw=firmware_bytes(2000))
    [entry] = _entries(client)
    assert (entry["kind"], entry["release_id"], entry["version"]) == ("release", published["id"], "v1.1.0")
    assert entry["bin"]["sha256"] == published["bin"]["sha256"] and entry["ufw"]["sha256"] == published["ufw"]["sha256"]

    proof = client.get("/api/transparency/v1/proof/inclusion", params={"release_id": published["id"]}).json()
    head = client.get("/api/transparency/v1/tree-head").json()
    leaf = client.get("/api/transparency/v1/entries/0").json()["leaf"]
    assert proof_verifies(leaf, 0, proof["inclusion_proof"], head, public_key_of(client))

    r = admin.patch(f"/api/v1/firmware/{published['id']}", json={"released": False})
    assert r.status_code == 200, r.text
    assert [(e["kind"], e.get("reason")) for e in _entries(client)] == [
        ("release", None),
        ("withdrawal", "unpublished"),
    ]
    assert admin.patch(f"/api/v1/firmware/{published['id']}", json={"released": True}).status_code == 200
    assert [e["kind"] for e in _entries(client)] == ["release", "withdrawal", "release"]

    assert admin.delete(f"/api/v1/firmware/{published['id']}").status_code == 204
    entries = _entries(client)
    assert [e["kind"] for e in entries] == ["release", "withdrawal", "release", "withdrawal"]
    assert entries[-1]["reason"] == "deleted"  # the release is gone; its history stays public


def test_a_draft_is_not_in_the_log_and_a_refused_delete_logs_nothing(client: TestClient, admin: ApiClient) -> None:
    draft = admin.release("v1.2.0", bin=firmware_bytes(1000), extra={"draft": "true"})
    assert _entries(client) == []
    assert admin.delete(f"/api/v1/firmware/{draft['id']}").status_code == 204
    assert _entries(client) == []  # never published: nothing to withdraw

    kept = admin.release("v1.3.0", bin=firmware_bytes(1000))
    device = admin.device()
    assert admin.assign(device["id"], kept["id"]).status_code == 201
    assert admin.delete(f"/api/v1/firmware/{kept['id']}").status_code == 409  # referenced by an assignment
    assert [e["kind"] for e in _entries(client)] == ["release"]
