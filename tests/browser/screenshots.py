"""Screenshots of the portal's main pages for the README: ``make screenshots`` (or
``python -m tests.browser.screenshots [OUT_DIR]``).

Starts a throwaway ``bota-ota serve`` on SQLite, fills it through the management and device APIs with a
small fleet (releases for every model, 24 devices on varied versions, assignments in every state, users,
tokens — and so an audit log), then saves PNGs of the main pages from Debian's headless Chromium at laptop
width (1280 px), the dashboard and a device's OTA tab at tablet width (820 px), and the dashboard, the device
list and a device's OTA tab at phone width (390 px). Not a test: pytest only collects ``test_*.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import FloatRect, Page, ViewportSize, expect, sync_playwright

from tests.browser.support import ADMIN_EMAIL, LAPTOP, TABLET, Portal, chromium_executable, launch_chromium, sign_in
from tests.support.server import ServerProcess, server_env

MAX_HEIGHT = 1600
PHONE: ViewportSize = {"width": 390, "height": 844}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

RELEASES = {
    "bota-pin": ["v1.0.0", "v1.0.1", "v1.1.0"],
    "bota-pin-pro": ["v2.0.0", "v2.1.0"],
    "bota-note": ["v0.9.0", "v1.0.0"],
}
DRAFTS = {"bota-pin": "v1.2.0-rc.1"}
NOTES = {
    "v1.0.1": "Fixes a rare crash when the battery drops below 5 % during a recording.",
    "v1.1.0": "Faster Wi-Fi reconnects; longer standby.",
    "v1.2.0-rc.1": "Release candidate: new audio codec. Internal testing only.",
    "v2.1.0": "4G modem firmware update; better signal handling.",
}
PLACES = [
    "Front desk", "Studio A", "Studio B", "Meeting room 1", "Meeting room 2", "Reception", "Lab bench",
    "Warehouse", "Field kit 1", "Field kit 2", "Newsroom", "Board room", "Podcast booth", "Lobby",
]  # fmt: skip
OPERATOR_PASSWORD = "screenshots-operator-pw"
PREFIX = {"bota-pin": "BP", "bota-pin-pro": "BPP", "bota-note": "BN"}


@dataclass
class Fleet:
    """What the seeding made, for the pages to show."""

    tokens: dict[str, str]  # device id → device token
    ota_device: str  # the device whose OTA tab is shown: updates assigned in the portal


def api_client(portal: Portal, name: str, role: str) -> httpx.Client:
    """A management API client with a token of its own, so the audit log names who did what."""
    r = portal.api.post("/api/v1/tokens", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30)


def seed(portal: Portal) -> Fleet:
    """Releases from a CI pipeline, 24 devices, and a rollout of the newest Bota Pin release caught mid-way."""
    rng = random.Random(5)
    portal.create_user("ana@example.com", "operator", password=OPERATOR_PASSWORD)
    portal.create_user("ben@example.com", "viewer")
    api_client(portal, "grafana", "viewer").close()
    ci = api_client(portal, "ci-pipeline", "operator")
    rollout = api_client(portal, "rollout", "operator")

    release_ids: dict[tuple[str, str], str] = {}
    for model, versions in RELEASES.items():
        for version in versions:
            release_ids[(model, version)] = upload(ci, model, version, rng)
    for model, version in DRAFTS.items():
        release_ids[(model, version)] = upload(ci, model, version, rng, draft=True)

    models = ["bota-pin"] * 14 + ["bota-pin-pro"] * 6 + ["bota-note"] * 4
    tokens: dict[str, str] = {}
    unseen: set[str] = set()
    counters = dict.fromkeys(PREFIX, 0)
    for i, model in enumerate(models):
        counters[model] += 1
        device_id = f"{PREFIX[model]}-{100 + counters[model]:06d}"
        tokens[device_id] = portal.register_device(device_id, model=model, name=PLACES[i % len(PLACES)])
        versions = RELEASES[model]
        if i % 8 == 7:
            unseen.add(device_id)  # registered, never seen
            continue
        version = versions[-1] if i % 3 == 0 else versions[rng.randrange(len(versions) - 1)]
        portal.heartbeat(
            tokens[device_id],
            version,
            battery=rng.randint(12, 100),
            network=rng.choice(["wifi", "wifi", "cellular"]),
            rssi=-rng.randint(45, 90),
            recording=i % 5 == 1,
        )

    def assign(device_id: str, model: str, version: str) -> str:
        r = rollout.post(f"/api/v1/devices/{device_id}/assignments", json={"release_id": release_ids[(model, version)]})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def device_on(device_id: str, version: str) -> None:
        portal.heartbeat(tokens[device_id], version, battery=rng.randint(40, 100), network="wifi")

    ota_device = "BP-000101"
    for n, device_id in enumerate(d for d in tokens if d.startswith("BP-") and d != ota_device):
        if device_id in unseen:
            assign(device_id, "bota-pin", "v1.1.0")  # stays pending until the device shows up
            continue
        device_on(device_id, "v1.0.1")
        assignment = assign(device_id, "bota-pin", "v1.1.0")
        step = n % 5
        if step >= 1:
            portal.heartbeat(tokens[device_id], "v1.0.1")  # delivered
        if step == 2:
            progress = {"assignment_id": assignment, "state": "writing", "progress": 30}
            portal.heartbeat(tokens[device_id], "v1.0.1", ota=progress)
        if step == 3:
            portal.heartbeat(tokens[device_id], "v1.1.0")  # applied
        if step == 4 and n % 2:
            failure = {"assignment_id": assignment, "state": "failed", "error": "crc_mismatch"}
            portal.heartbeat(tokens[device_id], "v1.0.1", ota=failure)
    for device_id in [d for d in tokens if d.startswith("BPP-")][:3]:
        device_on(device_id, "v2.0.0")
        assignment = assign(device_id, "bota-pin-pro", "v2.1.0")
        if device_id.endswith("2"):
            assert rollout.post(f"/api/v1/assignments/{assignment}/cancel").status_code == 200
        else:
            portal.heartbeat(tokens[device_id], "v2.0.0")
            portal.heartbeat(tokens[device_id], "v2.1.0")
    ci.close()
    rollout.close()
    return Fleet(tokens=tokens, ota_device=ota_device)


def ota_story_in_the_portal(page: Page, portal: Portal, fleet: Fleet) -> None:
    """An operator updates one device from its OTA tab: one update applied, one failed, one downloading."""
    device_id, token = fleet.ota_device, fleet.tokens[fleet.ota_device]
    badge = page.locator("#ota-status .badge")

    def assign(version: str) -> str:
        page.goto(f"/devices/{device_id}?tab=ota")
        page.get_by_label("Release").select_option(label=version)
        page.get_by_role("button", name="Assign").click()
        expect(badge).to_have_text("pending")
        return str(portal.assignments(device_id)[0]["id"])

    sign_in(page, "ana@example.com", OPERATOR_PASSWORD)
    portal.heartbeat(token, "v1.0.0", battery=87, network="wifi", rssi=-58)
    assign("v1.0.1")
    portal.heartbeat(token, "v1.0.0")
    expect(badge).to_have_text("delivered")
    portal.heartbeat(token, "v1.0.1")
    expect(badge).to_have_text("applied")
    failed = assign("v1.1.0")
    portal.heartbeat(token, "v1.0.1")
    portal.heartbeat(token, "v1.0.1", ota={"assignment_id": failed, "state": "failed", "error": "crc_mismatch"})
    expect(badge).to_have_text("failed")
    current = assign("v1.1.0")
    portal.heartbeat(token, "v1.0.1")
    portal.heartbeat(token, "v1.0.1", ota={"assignment_id": current, "state": "downloading", "progress": 64})
    expect(page.locator("#ota-status")).to_contain_text("downloading 64")
    page.get_by_role("button", name="Sign out").click()


def upload(client: httpx.Client, model: str, version: str, rng: random.Random, draft: bool = False) -> str:
    size = rng.randint(900, 1600) * 1024
    image = rng.randbytes(size)
    data = {"version": version, "model": model, "notes": NOTES.get(version, "")}
    if draft:
        data["draft"] = "true"
    r = client.post(
        "/api/v1/firmware",
        data=data,
        files={"bin": (f"{model}-{version}.bin", image), "ufw": (f"{model}-{version}.ufw", image[: size * 2 // 3])},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def shoot(
    page: Page, path: str, out: Path, name: str, viewport: ViewportSize = LAPTOP, heading: str | None = None
) -> Path:
    page.set_viewport_size(viewport)
    page.goto(path)
    if heading:
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
    page.wait_for_load_state("networkidle")
    target = out / f"{name}.png"
    # The whole page, cut at MAX_HEIGHT so a long list (the audit log) stays a readable image.
    height = min(int(page.evaluate("document.documentElement.scrollHeight")), MAX_HEIGHT)
    clip: FloatRect = {"x": 0, "y": 0, "width": viewport["width"], "height": height}
    page.screenshot(path=target, full_page=True, clip=clip, animations="disabled", caret="hide")
    print(f"saved {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    executable = chromium_executable()
    if executable is None:
        print("Chromium not found: install Debian's chromium package (or set BOTA_OTA_CHROMIUM)", file=sys.stderr)
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bota-ota-screenshots-") as tmp:
        env = server_env(None, BOTA_OTA_TELEMETRY_FLUSH_INTERVAL_S="0.5")
        portal = Portal.start(ServerProcess(data_dir=Path(tmp) / "data", env=env))
        try:
            fleet = seed(portal)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright, executable)
                context = browser.new_context(base_url=portal.url, viewport=LAPTOP, device_scale_factor=1)
                page = context.new_page()
                ota_story_in_the_portal(page, portal, fleet)
                sign_in(page, ADMIN_EMAIL, portal.admin_password)
                ota_tab = f"/devices/{fleet.ota_device}?tab=ota"
                shoot(page, "/", out, "dashboard", heading="Dashboard")
                shoot(page, "/firmware", out, "firmware", heading="Firmware")
                shoot(page, "/firmware/upload", out, "upload", heading="Upload firmware")
                shoot(page, "/devices", out, "devices", heading="Devices")
                shoot(page, ota_tab, out, "device-ota", heading=fleet.ota_device)
                shoot(page, "/assignments", out, "assignments", heading="Assignments")
                shoot(page, "/audit", out, "audit", heading="Audit")
                shoot(page, "/", out, "dashboard-tablet", viewport=TABLET, heading="Dashboard")
                shoot(page, ota_tab, out, "device-ota-tablet", viewport=TABLET, heading=fleet.ota_device)
                shoot(page, "/", out, "dashboard-phone", viewport=PHONE, heading="Dashboard")
                shoot(page, "/devices", out, "devices-phone", viewport=PHONE, heading="Devices")
                shoot(page, ota_tab, out, "device-ota-phone", viewport=PHONE, heading=fleet.ota_device)
                browser.close()
        finally:
            portal.close()
            portal.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
