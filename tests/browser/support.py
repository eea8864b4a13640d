"""Helpers for the browser tests and the screenshot script: Debian's Chromium driven by Playwright, and a real
``bota-ota serve`` process with an admin, its API token and a few helpers to set up data through the API."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, expect

from tests.support.server import PASSWORD_RE, ServerProcess

# Debian's chromium, never a browser downloaded by `playwright install`. The flags keep a headless Chromium
# quiet on a machine without network access: no background fetches, component updates, sync or QUIC probes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
TABLET: ViewportSize = {"width": 820, "height": 1180}
ADMIN_EMAIL = "admin@localhost"
# A generous bound for a server's first start (migrate, create the admin, import the app): on a loaded 2-core
# machine running the rest of the suite beside it, 30 s was seen to be too short.
START_TIMEOUT_S = 90.0


def chromium_executable() -> str | None:
    """``BOTA_OTA_CHROMIUM`` if set, else the ``chromium`` on PATH (Debian's package)."""
    return os.environ.get("BOTA_OTA_CHROMIUM") or shutil.which("chromium")


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


@dataclass
class Portal:
    """A running server, signed into the management API as its first admin."""

    server: ServerProcess
    admin_password: str
    admin_token: str
    api: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.api = httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )

    @classmethod
    def start(cls, server: ServerProcess, *extra_args: str, timeout: float = START_TIMEOUT_S) -> Portal:
        try:
            server.start(*extra_args, timeout=timeout)
        except BaseException:
            server.stop()  # a server that did not become healthy in time must not outlive the test
            raise
        output = server.output()
        password = PASSWORD_RE.search(output)
        token = server.admin_token_from_output()
        if not password or not token:
            server.stop()
            raise RuntimeError(f"the server did not print the first admin's credentials:\n{output}")
        return cls(server=server, admin_password=password.group(1), admin_token=token)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.api.close()

    def create_user(self, email: str, role: str, password: str = "browser-test-pw") -> tuple[str, str]:
        r = self.api.post("/api/v1/users", json={"email": email, "password": password, "role": role})
        assert r.status_code == 201, r.text
        return email, password

    def upload_release(self, version: str, model: str = "bota-pin", size: int = 4096, draft: bool = False) -> str:
        image = os.urandom(size)
        data = {"version": version, "model": model, "notes": f"Release {version}"}
        if draft:
            data["draft"] = "true"
        r = self.api.post(
            "/api/v1/firmware",
            data=data,
            files={"bin": (f"{model}-{version}.bin", image), "ufw": (f"{model}-{version}.ufw", image[: size // 2])},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def register_device(self, device_id: str, model: str = "bota-pin", name: str | None = None) -> str:
        """Registers a device and returns its token."""
        r = self.api.post("/api/v1/devices", json={"id": device_id, "model": model, "name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def heartbeat(self, device_token: str, firmware_version: str, **fields: object) -> dict[str, object]:
        r = httpx.post(
            f"{self.url}/api/device/v1/heartbeat",
            headers={"Authorization": f"Bearer {device_token}"},
            json={"firmware_version": firmware_version, **fields},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        reply: dict[str, object] = r.json()
        return reply

    def assignments(self, device_id: str) -> list[dict[str, object]]:
        r = self.api.get(f"/api/v1/devices/{device_id}/assignments")
        assert r.status_code == 200, r.text
        rows: list[dict[str, object]] = r.json()
        return rows


def sign_in(page: Page, email: str, password: str) -> None:
    """Signs in through the real form and waits until the portal shows the signed-in user."""
    page.goto("/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page).not_to_have_url(re.compile(r"/login"))


def server_data_dir(base: Path) -> Path:
    return base / "srv"


def wait_until(page: Page, expression: str, *, timeout_s: float = 20.0, what: str = "") -> None:
    """Until the JavaScript ``expression`` is truthy in the page, polled from the test to a deadline.
    ``page.wait_for_function`` cannot be used: its predicate is evaluated with eval, which the portal's
    Content-Security-Policy forbids, whereas ``page.evaluate`` is not subject to it."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{what or expression} did not happen within {timeout_s} s"
        page.wait_for_timeout(100)
