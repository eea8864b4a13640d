"""The seed's HTTP OTA path through the API: upload, register, assign, heartbeat, download, apply."""

from __future__ import annotations

import zlib

from tests.support.factories import ApiClient, firmware_bytes, heartbeat


def test_pending_delivered_applied(admin: ApiClient) -> None:
    image = firmware_bytes(200_000)
    release = admin.release("v1.0.1", bin=image)
    assert release["bin"]["size"] == len(image)
    assert release["bin"]["crc32"] == zlib.crc32(image) & 0xFFFFFFFF
    device = admin.device()
    token = device["token"]

    r = admin.assign(device["id"], release["id"])
    assert r.status_code == 201, r.text
    assignment = r.json()
    assert assignment["status"] == "pending"

    reply = heartbeat(admin.client, token, firmware_version="v1.0.0", battery=80, network="wifi").json()
    manifest = reply["ota"]
    assert reply["heartbeat_interval_s"] == 60
    assert manifest["assignment_id"] == assignment["id"]
    assert manifest["crc32"] == zlib.crc32(image) & 0xFFFFFFFF
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "delivered"

    body = admin.client.get(manifest["url"])
    assert body.status_code == 200
    assert body.content == image
    part = admin.client.get(manifest["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == image[100:200]

    heartbeat(
        admin.client,
        token,
        firmware_version="v1.0.0",
        ota={"assignment_id": assignment["id"], "state": "downloading", "progress": 50},
    )
    reply = heartbeat(admin.client, token, firmware_version="v1.0.1").json()
    assert reply["ota"] is None
    detail = admin.get(f"/api/v1/assignments/{assignment['id']}").json()
    assert detail["status"] == "applied"
    assert [e["kind"] for e in detail["events"]] == ["created", "delivered", "progress", "applied"]
    dev = admin.get(f"/api/v1/devices/{device['id']}").json()
    assert dev["firmware_version"] == "v1.0.1"
    assert dev["active_assignment"] is None
    assert dev["online"] is True
