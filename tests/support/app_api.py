"""Mobile-app API test helpers: an app user's client, creating app users, and devices they own."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.support.factories import ApiClient, heartbeat


class App:
    """The app API (/api/app/v1) as one signed-in app user."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.get("/api/app/v1" + url, headers=self.headers, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.post("/api/app/v1" + url, headers=self.headers, **kw)


def make_app_user(admin: ApiClient, email: str = "ana@example.com", password: str = "correct horse") -> App:
    r = admin.post("/api/v1/app-users", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    login = admin.client.post("/api/app/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    assert login.json()["token"].startswith("bota_ap_")
    return App(admin.client, login.json()["token"])


def owned_device(
    admin: ApiClient, app: App, *, version: str = "v1.0.0", email: str = "ana@example.com", model: str = "bota-pin"
) -> dict[str, Any]:
    device = admin.device(model=model)
    r = admin.client.put(f"/api/v1/devices/{device['id']}/owner", json={"email": email}, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == email
    heartbeat(admin.client, device["token"], firmware_version=version)
    return device
