"""The portal's device list: search, filters and pagination over real data."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.portal.support import sign_in
from tests.support.factories import ApiClient, heartbeat

ROW_RE = re.compile(r'<tr>\s*<td><a href="/devices/([^"]+)"')


def ids(client: TestClient, query: str = "") -> list[str]:
    page = client.get("/devices" + (f"?{query}" if query else ""))
    assert page.status_code == 200, page.text
    return ROW_RE.findall(page.text)


def test_filters_and_search(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    a = admin.device(device_id="BP-A1", name="Front desk")
    b = admin.device(device_id="BP-B2", name="Back office")
    admin.device(model="bota-note", device_id="BN-C3")
    heartbeat(admin.client, a["token"], firmware_version="v1.0.1")
    heartbeat(admin.client, b["token"], firmware_version="v1.0.0")
    release = admin.release("v1.0.2", bin=b"\x01" * 100)
    admin.assign("BP-B2", release["id"])
    sign_in(client, *portal_user)
    assert ids(client) == ["BN-C3", "BP-A1", "BP-B2"]
    assert ids(client, "q=front") == ["BP-A1"]
    assert ids(client, "model=bota-note") == ["BN-C3"]
    assert ids(client, "version=v1.0.0") == ["BP-B2"]
    assert ids(client, "online=yes") == ["BP-A1", "BP-B2"]
    assert ids(client, "online=no") == ["BN-C3"]
    assert ids(client, "status=pending") == ["BP-B2"]
    assert "v1.0.2 pending" in client.get("/devices?status=pending").text


def test_pagination_keeps_the_filters(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    for i in range(55):
        admin.device(device_id=f"BP-{i:03d}")
    admin.device(model="bota-note", device_id="BN-999")
    sign_in(client, *portal_user)
    first = client.get("/devices?model=bota-pin").text
    assert "Page 1 of 2" in first and "(55)" in first
    assert 'href="/devices?model=bota-pin&amp;page=2"' in first
    assert ids(client, "model=bota-pin&page=2") == [f"BP-{i:03d}" for i in range(50, 55)]
    assert client.get("/devices?page=0").status_code == 422


def test_the_api_offers_the_same_filters(admin: ApiClient) -> None:
    a = admin.device(device_id="BP-X1")
    admin.device(device_id="BP-X2")
    heartbeat(admin.client, a["token"], firmware_version="v2.0.0")
    release = admin.release("v2.0.1", bin=b"\x02" * 64)
    admin.assign("BP-X1", release["id"])

    def api_ids(**params: str) -> list[str]:
        return [d["id"] for d in admin.get("/api/v1/devices", params=params).json()]

    assert api_ids(firmware_version="v2.0.0") == ["BP-X1"]
    assert api_ids(online="true") == ["BP-X1"]
    assert api_ids(online="false") == ["BP-X2"]
    assert api_ids(assignment_status="pending") == ["BP-X1"]
    assert admin.get("/api/v1/devices", params={"assignment_status": "bogus"}).status_code == 422
