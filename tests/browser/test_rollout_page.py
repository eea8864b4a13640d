"""Deploy a release from the firmware page through the rollout form (its live preview included), watch the first
stage's bar follow the devices without a reload, then see a pause made elsewhere arrive: announced, and the buttons
following it once keyboard focus has left them."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.support import Portal, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DEVICES = ("BP-RB-1", "BP-RB-2")


def test_deploy_watch_the_stage_bar_and_pause(page: Page, portal: Portal) -> None:
    portal.upload_release("v1.0.1")
    tokens = {device_id: portal.register_device(device_id) for device_id in DEVICES}
    r = portal.api.put(f"/api/v1/devices/{DEVICES[0]}/tags", json={"tags": ["beta"]})
    assert r.status_code == 200, r.text
    sign_in(page, *portal.create_user("op@example.com", "operator"))

    page.goto("/firmware")
    page.get_by_role("link", name="Deploy Bota Pin v1.0.1").click()
    expect(page.get_by_role("heading", name="Deploy Bota Pin v1.0.1")).to_be_visible()
    matching = page.locator("#preview [data-count=matching]")
    expect(matching).to_have_text("2")

    # The preview follows the fields as they are typed (HTMX, after a short pause in typing).
    page.get_by_label("Tags").fill("beta")
    expect(matching).to_have_text("1")
    page.get_by_label("Tags").fill("")
    expect(matching).to_have_text("2")

    page.get_by_label("Name").fill("Pins to v1.0.1")
    # Nearly every device in the first stage; the second waits for an operator (manual advance).
    page.get_by_label("Stages").fill("99.99, 100")
    page.get_by_label("Waits for an operator").check()
    page.get_by_role("button", name="Start rollout").click()

    expect(page).to_have_url(re.compile(r"/rollouts/[0-9a-f]+$"))
    expect(page.locator(".flash")).to_have_text("Rollout “Pins to v1.0.1” created: Bota Pin v1.0.1.")
    status = page.locator("#rollout-status")
    expect(status).to_contain_text("running")
    rollout_id = page.url.rsplit("/", 1)[1]
    body = portal.api.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert [s["percent"] for s in body["stages"]] == [99.99, 100] and body["advance"] == "manual"

    # The devices of the first stage are those it assigned (almost surely both).
    assigned = portal.api.get("/api/v1/assignments", params={"rollout_id": rollout_id}).json()
    assert assigned, body
    device_id = assigned[0]["device_id"]
    counts = page.locator("#stage-0 .stage-counts")
    bar = page.locator("#stage-0 .seg.applied")
    expect(counts).to_have_attribute("data-applied", "0")
    expect(bar).to_have_attribute("width", "0.0%")

    # From here on the page must not load again: the stages change by HTMX polling alone.
    page.evaluate("window.__notReloaded = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    pause = page.get_by_role("button", name="Pause")
    pause.focus()

    reply = portal.heartbeat(tokens[device_id], "v1.0.0")
    assert isinstance(reply.get("ota"), dict), reply
    portal.heartbeat(tokens[device_id], "v1.0.1")
    expect(counts).to_have_attribute("data-applied", "1")
    expect(bar).not_to_have_attribute("width", "0.0%")
    expect(counts).to_contain_text("1 applied")
    expect(page.locator("#totals [data-total=applied]")).to_have_text("1")

    assert page.evaluate("window.__notReloaded === true")
    assert navigations == []
    expect(pause).to_be_focused()  # the poll left the buttons alone

    # Paused elsewhere (the API): the status line follows and is announced; the buttons wait while focus is
    # on one of them, then follow.
    assert portal.api.post(f"/api/v1/rollouts/{rollout_id}/pause").status_code == 200
    expect(status).to_contain_text("paused")
    expect(page.locator("#live-status")).to_have_text("Rollout Pins to v1.0.1: paused, stage 1 of 2")
    expect(pause).to_be_focused()
    page.evaluate("document.activeElement.blur()")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    assert navigations == []
