"""Signed releases in the portal: the Upload Firmware form's signature files and security version, the
firmware page's signature, floor and unfit badges, and the device page leaving unfit releases out of
Assign (with a hint why)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from bota_ota.core.settings import Settings
from tests.firmware.signing_support import new_key, register, sign, signed_release
from tests.portal.pages import field_error, html
from tests.portal.support import csrf, sign_in
from tests.portal.uploads import nothing_stored, plain_form, post_json, post_plain
from tests.support.factories import ApiClient, assert_problem, firmware_bytes

KEY = new_key(60)
IMAGE = firmware_bytes(2000, seed=61)


@pytest.fixture
def operator_token(client: TestClient, portal_user: tuple[str, str]) -> str:
    sign_in(client, *portal_user)
    return csrf(client, "/firmware/upload")


def test_the_form_has_signature_files_and_the_security_version(client: TestClient, operator_token: str) -> None:
    page = html(client.get("/firmware/upload"))
    for name in ("bin_sig", "ufw_sig"):
        field = page.by_id(name)
        assert (field.attr("type"), field.attr("name"), field.attr("accept")) == ("file", name, ".sig")
        assert field.attr("aria-describedby") == f"{name}-error"
    sv = page.by_id("security_version")
    assert (sv.attr("type"), sv.attr("min"), sv.attr("max"), sv.attr("value")) == ("number", "0", "4294967295", "0")


def test_the_script_uploads_a_signed_release(client: TestClient, admin: ApiClient, operator_token: str) -> None:
    kid = register(admin, KEY)
    sig = sign(KEY, IMAGE, version="v2.0.0", security_version=4)
    r = post_json(
        client,
        operator_token,
        {"version": "v2.0.0", "model": "bota-pin", "security_version": "4"},
        {"bin": ("pin.bin", IMAGE), "bin_sig": ("pin.bin.sig", (sig + "\n").encode())},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["bin"]["key_id"], r.json()["security_version"]) == (kid, 4)
    row = html(client.get("/firmware")).by_id(f"release-{r.json()['id']}")
    assert f"signed by {kid}" in " ".join(row.text.split())
    assert "security version 4" in row.text
    assert "unsigned" not in row.text


def test_a_bad_signature_is_said_beside_its_field(
    client: TestClient, admin: ApiClient, operator_token: str, settings: Settings
) -> None:
    register(admin, KEY)
    wrong = sign(KEY, IMAGE, version="v9.9.9").encode()
    r = post_json(
        client,
        operator_token,
        {"version": "v2.0.0", "model": "bota-pin"},
        {"bin": ("pin.bin", IMAGE), "bin_sig": ("pin.bin.sig", wrong)},
    )
    assert_problem(r, 422, "bin_sig")
    form = plain_form(operator_token, "v2.0.0", bin=("pin.bin", IMAGE))
    r = post_plain(
        client, [*form, ("bin_sig", ("pin.bin.sig", wrong)), ("ufw_sig", ("", b"")), ("security_version", "0")]
    )
    assert r.status_code == 422
    page = html(r)
    assert "does not verify for bota-pin v2.0.0" in field_error(page, "bin_sig")
    assert page.by_id("bin_sig").attr("aria-invalid") == "true"
    assert page.by_id("version").attr("value") == "v2.0.0"  # what was typed comes back
    nothing_stored(settings, admin)


def test_a_plain_post_with_the_signature_inputs_left_empty_is_unsigned(
    client: TestClient, admin: ApiClient, operator_token: str
) -> None:
    form = plain_form(operator_token, "v2.1.0", bin=("pin.bin", IMAGE))
    r = post_plain(client, [*form, ("bin_sig", ("", b"")), ("ufw_sig", ("", b"")), ("security_version", "")])
    [release] = admin.get("/api/v1/firmware").json()
    assert (r.status_code, r.headers.get("location")) == (303, f"/firmware#release-{release['id']}"), r.text
    assert (release["bin"]["signed"], release["security_version"]) == (False, 0)
    assert "unsigned" in html(client.get("/firmware")).by_id(f"release-{release['id']}").text
    admin.patch("/api/v1/models/bota-pin", json={"require_signed": True})
    form = plain_form(operator_token, "v2.2.0", bin=("pin.bin", IMAGE))
    r = post_plain(client, [*form, ("bin_sig", ("", b"")), ("ufw_sig", ("", b""))])
    assert r.status_code == 422
    assert "requires signed releases" in field_error(html(r), "bin_sig")


def test_unfit_releases_are_marked_and_left_out_of_assign(
    client: TestClient, admin: ApiClient, operator_token: str
) -> None:
    kid = register(admin, KEY)
    revoked = signed_release(admin, KEY, "v1.0.1", security_version=1)
    other = new_key(62)
    register(admin, other, name="other")
    floor = signed_release(admin, other, "v1.0.3", security_version=3)
    below = admin.release("v1.0.2")  # unsigned, security version 0
    fine = signed_release(admin, other, "v1.0.4", security_version=3)
    admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    admin.patch(f"/api/v1/firmware/{floor['id']}", json={"security_floor": True})

    page = html(client.get("/firmware"))
    revoked_row = " ".join(page.by_id(f"release-{revoked['id']}").text.split())
    assert "signed by a revoked key" in revoked_row and "revoked key" in revoked_row
    assert "Deploy" not in revoked_row
    below_row = " ".join(page.by_id(f"release-{below['id']}").text.split())
    assert "below the security floor" in below_row and "cannot be assigned" in below_row
    floor_row = " ".join(page.by_id(f"release-{floor['id']}").text.split())
    assert "security floor" in floor_row and "below the security floor" not in floor_row
    assert "Deploy" in floor_row
    assert "cannot be assigned" not in " ".join(page.by_id(f"release-{fine['id']}").text.split())

    admin.device(device_id="BP-SIGNED-1")
    ota = client.get("/devices/BP-SIGNED-1?tab=ota").text
    options = re.findall(r'<option value="[0-9a-f]+">([^<]+)</option>', ota)
    assert options == ["v1.0.4", "v1.0.3"]
    hint = " ".join(html(ota).by_id("release-unfit").text.split())
    assert f"release v1.0.1 is signed by a revoked key ({kid})" in hint
    assert "release v1.0.2 has security version 0, below the bota-pin security floor 3" in hint
    assert "release-unfit" in (html(ota).by_id("release_id").attr("aria-describedby") or "")
    # Posting one anyway (a stale page) says why beside the dropdown.
    r = client.post(
        "/devices/BP-SIGNED-1/assign",
        data={"release_id": revoked["id"], "csrf_token": csrf(client, "/devices/BP-SIGNED-1?tab=ota")},
    )
    # Refused: back on the OTA tab (never left on the POST address), the reason beside the dropdown.
    assert r.status_code == 200 and r.url.path == "/devices/BP-SIGNED-1" and r.url.params["tab"] == "ota"
    assert "signed by a revoked key" in html(r).by_id("release-error").text
