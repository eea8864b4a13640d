"""The portal's device list: search, filters, sorting, paging, the live region, the Update column, the
"Decommissioned" filter and the CSV export, over real data."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient

from bota_ota.ota.words import ERRORS
from tests.portal.pages import Element, html
from tests.portal.support import csrf, sign_in
from tests.support.factories import ApiClient, heartbeat


def page_of(client: TestClient, query: str = "") -> Element:
    r = client.get("/devices" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    return html(r)


def ids(client: TestClient, query: str = "") -> list[str]:
    return [tr.attr("data-device") or "" for tr in page_of(client, query).find_all("tr") if tr.attr("data-device")]


def row(page: Element, device_id: str) -> Element:
    return page.find_all("tr", **{"data_device": device_id})[0]


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
    assert ids(client, "online=bogus&model=toaster") == ["BN-C3", "BP-A1", "BP-B2"]  # junk is no filter
    assert "v1.0.2 pending" in row(page_of(client, "status=pending"), "BP-B2").text
    bad = client.get("/devices?tag=NOT+A+TAG!")
    assert bad.status_code == 422 and html(bad).by_id("tag-error").text.endswith(".")


def test_sorting_by_each_column(client: TestClient, admin: ApiClient, portal_user: tuple[str, str]) -> None:
    for device_id, model, version in [
        ("BP-1", "bota-pin", "v1.10.0"),
        ("BP-2", "bota-pin-pro", "v1.9.0"),
        ("BN-3", "bota-note", "v2.0.0"),
    ]:
        heartbeat(admin.client, admin.device(device_id=device_id, model=model)["token"], firmware_version=version)
    admin.device(device_id="BP-0")  # never seen: last in either direction
    sign_in(client, *portal_user)
    assert ids(client, "sort=version") == ["BP-2", "BP-1", "BN-3", "BP-0"]  # semantic, not text order
    assert ids(client, "sort=-version") == ["BN-3", "BP-1", "BP-2", "BP-0"]
    assert ids(client, "sort=-last_seen") == ["BN-3", "BP-2", "BP-1", "BP-0"]
    assert ids(client, "sort=model") == ["BN-3", "BP-0", "BP-1", "BP-2"]
    assert ids(client, "sort=-id") == ["BP-2", "BP-1", "BP-0", "BN-3"]
    assert ids(client, "sort=bogus") == ["BN-3", "BP-0", "BP-1", "BP-2"]  # unknown: by id
    page = page_of(client, "sort=-version&model=bota-pin")
    th = {t.text.split(" (")[0].rstrip(" ▲▼"): t for t in page.find_all("th") if t.find("a")}
    assert set(th) == {"Device id", "Model", "Firmware version", "Last seen"}
    assert th["Firmware version"].attr("aria-sort") == "descending"
    assert th["Device id"].attr("aria-sort") is None
    # The column link keeps the filter and turns the order round; another column starts ascending.
    assert th["Firmware version"].find("a").attr("href") == "/devices?model=bota-pin&sort=version"  # type: ignore[union-attr]
    assert th["Last seen"].find("a").attr("href") == "/devices?model=bota-pin&sort=last_seen"  # type: ignore[union-attr]


def test_paging_keeps_the_filters_and_a_page_past_the_end_shows_the_last(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    for i in range(55):
        admin.device(device_id=f"BP-{i:03d}")
    admin.device(model="bota-note", device_id="BN-999")
    sign_in(client, *portal_user)
    first = page_of(client, "model=bota-pin")
    assert "Page 1 of 2" in first.text and "(55)" in first.text
    assert "/devices?model=bota-pin&sort=id&page=2" in first.links()
    assert ids(client, "model=bota-pin&page=2") == [f"BP-{i:03d}" for i in range(50, 55)]
    assert ids(client, "model=bota-pin&page=99") == [f"BP-{i:03d}" for i in range(50, 55)]
    assert ids(client, "model=bota-pin&page=0")[0] == "BP-000"
    assert len(ids(client, "per_page=25")) == 25
    assert len(ids(client, "per_page=7")) == 50  # not an offered size: the default


def test_the_list_is_a_live_region_with_a_cue(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-LIVE-1")
    sign_in(client, *portal_user)
    page = page_of(client, "q=live")
    region = page.by_id("devices-live")
    assert (region.attr("hx-get"), region.attr("hx-select")) == ("/devices?q=live", "#devices-live")
    assert region.attr("hx-trigger") == "every 5s"
    scroll = region.find("div", role="region")
    assert scroll is not None and scroll.attr("tabindex") == "0" and scroll.find("table") is not None
    assert "never reported" in row(page, "BP-LIVE-1").text
    assert row(page, "BP-LIVE-1").find("td") is not None
    assert "never" in row(page, "BP-LIVE-1").text  # last seen


def test_the_update_column_shows_the_latest_assignment_when_none_is_active(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    device = admin.device(device_id="BP-UPD-1")
    release = admin.release("v1.2.0", bin=b"\x02" * 100)
    assignment = admin.assign("BP-UPD-1", release["id"]).json()
    heartbeat(admin.client, device["token"])
    failed = {"assignment_id": assignment["id"], "state": "failed", "error": "crc_mismatch"}
    heartbeat(admin.client, device["token"], ota=failed)
    sign_in(client, *portal_user)
    update = row(page_of(client), "BP-UPD-1").find("td", class_="update")
    assert update is not None
    assert update.find(class_="badge status-failed").text == "v1.2.0 failed"  # type: ignore[union-attr]
    code = update.find("code")
    assert code is not None and code.text == "crc_mismatch" and code.attr("title") == ERRORS["crc_mismatch"]
    assert update.find(class_="muted explain").text == " ".join(ERRORS["crc_mismatch"].split())  # type: ignore[union-attr]


def test_decommissioned_devices_are_hidden_unless_asked_for(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    admin.device(device_id="BP-IN-1")
    admin.device(device_id="BP-OUT-1")
    sign_in(client, *portal_user)
    token = csrf(client, "/devices/BP-OUT-1")
    assert client.post("/devices/BP-OUT-1/decommission", data={"csrf_token": token}).status_code == 200
    assert ids(client) == ["BP-IN-1"]
    assert ids(client, "decommissioned=only") == ["BP-OUT-1"]
    assert ids(client, "decommissioned=all") == ["BP-IN-1", "BP-OUT-1"]
    page = page_of(client, "decommissioned=all")
    assert "decommissioned" in row(page, "BP-OUT-1").text
    assert page.by_id("decommissioned").find("option", value="all", selected=None) is not None


def test_export_csv_has_every_matching_device_in_the_list_order(
    client: TestClient, admin: ApiClient, portal_user: tuple[str, str]
) -> None:
    for i in range(3):
        device = admin.device(device_id=f"BP-EX-{i}", name=f"Unit {i}")
        heartbeat(admin.client, device["token"], firmware_version=f"v1.{i}.0")
    admin.device(model="bota-note", device_id="BN-EX-9")
    sign_in(client, *portal_user)
    page = page_of(client, "model=bota-pin&sort=-version&per_page=25&page=2")
    [link] = [a for a in page.find_all("a") if a.text == "Export CSV"]
    assert link.attr("href") == "/devices/export.csv?model=bota-pin&sort=-version"
    r = client.get(link.attr("href") or "")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="devices.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(d["id"], d["model"], d["name"], d["firmware_version"]) for d in rows] == [
        ("BP-EX-2", "bota-pin", "Unit 2", "v1.2.0"),
        ("BP-EX-1", "bota-pin", "Unit 1", "v1.1.0"),
        ("BP-EX-0", "bota-pin", "Unit 0", "v1.0.0"),
    ]
    client.cookies.clear()
    assert client.get("/devices/export.csv", follow_redirects=False).status_code == 303  # signed-in users only


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
