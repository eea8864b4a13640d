"""Cancel from a page that went stale: the device finished the update meanwhile."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.portal.pages import flash, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat


def test_cancelling_a_finished_assignment_explains_why_on_the_ota_tab(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-STALE-1")
    release = admin.release("v1.0.1", bin=b"\x01" * 100)
    assignment = admin.assign("BP-STALE-1", release["id"]).json()
    sign_in(client, *portal_user)
    token = csrf(client, "/devices/BP-STALE-1?tab=ota")  # the page still shows Cancel
    heartbeat(client, device["token"], firmware_version="v1.0.1")  # meanwhile: applied

    r = client.post(f"/assignments/{assignment['id']}/cancel", data={"csrf_token": token}, follow_redirects=False)
    assert (r.status_code, r.headers.get("location")) == (303, "/devices/BP-STALE-1?tab=ota"), r.text
    page = html(client.get(r.headers["location"]))
    message, is_error = flash(page) or ("", False)
    assert is_error and message.startswith("Not cancelled:") and "already applied" in message
    assert admin.get(f"/api/v1/assignments/{assignment['id']}").json()["status"] == "applied"
