"""The Upload Firmware form (POST /firmware/upload): the page script's path (CSRF header, JSON back) and the
plain form post without JavaScript (CSRF as a form field, a redirect or the form again), errors, roles."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bota_ota.core.settings import Settings
from tests.portal.pages import Element, add_user, field_error, flash, html
from tests.portal.support import csrf, sign_in
from tests.portal.uploads import nothing_stored, plain_form, post_json, post_plain
from tests.support.factories import ApiClient, assert_problem, crc32, files_in, firmware_bytes


def image_with_letters_in_its_crc(size: int, start: int) -> bytes:
    """An image whose CRC32 in hex has letters, so upper and lower case differ."""
    for seed in range(start, start + 100):
        data = firmware_bytes(size, seed=seed)
        if any(c in "abcdef" for c in f"{crc32(data):08x}"):
            return data
    raise AssertionError("no such image")


@pytest.fixture
def operator_token(client: TestClient, portal_user: tuple[str, str]) -> str:
    sign_in(client, *portal_user)
    return csrf(client, "/firmware/upload")


def test_script_upload_returns_the_release_and_the_list_shows_sizes_and_checksums(
    client: TestClient, admin: ApiClient, operator_token: str, settings: Settings
) -> None:
    image = image_with_letters_in_its_crc(3000, start=10)
    ble = image_with_letters_in_its_crc(1234, start=200)
    r = post_json(
        client,
        operator_token,
        {"version": "v2.1.0", "model": "bota-pin", "notes": "Faster boot"},
        {"bin": ("pin-2.1.0.bin", image), "ufw": ("pin-2.1.0.ufw", ble)},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["version"], body["model"], body["released"]) == ("v2.1.0", "bota-pin", True)
    assert (body["bin"]["size"], body["bin"]["crc32"]) == (3000, crc32(image))
    assert (body["ufw"]["size"], body["ufw"]["crc32"]) == (1234, crc32(ble))
    assert body["created_by"] == "user:op@example.com"
    assert len(files_in(settings.blob_dir)) == 2
    # The script goes where Location says: the firmware list, which shows the flash the upload set.
    assert r.headers["location"] == f"/firmware#release-{body['id']}"

    page = html(client.get("/firmware"))
    assert flash(page) == ("Uploaded v2.1.0 for Bota Pin (4.2 kB).", False)
    row = page.by_id(f"release-{body['id']}")
    cells = [c.text for c in row.descendants if c.tag in ("th", "td")]
    assert cells[0].startswith("v2.1.0")
    assert cells[1].startswith("3.0 kB") and cells[2].startswith("1.2 kB")  # the exact bytes on hover
    assert row.find("span", title="3,000 bytes") is not None
    assert cells[3] == "released"
    detail = row.find("tr", class_="release-detail")
    assert detail is not None
    assert (detail.find("p", class_="notes") or Element("p", {})).text == "Faster boot"
    assert f"CRC32 {crc32(image):08X}" in detail.text and f"CRC32 {crc32(ble):08X}" in detail.text
    assert f"{crc32(image):08x}" not in row.text  # upper-case hex only
    # The SHA-256 in full (no cut), each with a button that copies it.
    for kind in ("bin", "ufw"):
        assert row.by_id(f"sha-{body['id']}-{kind}").text == body[kind]["sha256"]
    copies = [b.attrs.get("data-copy") for b in row.find_all("button", class_="copy")]
    assert copies == [body["bin"]["sha256"], body["ufw"]["sha256"]]


def test_release_notes_keep_their_line_breaks(client: TestClient, operator_token: str) -> None:
    notes = "Faster boot.\nFixes:\n- the LED blinks once"
    r = post_json(
        client,
        operator_token,
        {"version": "v2.1.1", "model": "bota-pin", "notes": notes},
        {"bin": ("a.bin", b"\x01" * 99)},
    )
    assert r.status_code == 201, r.text
    text = client.get("/firmware").text
    assert f'<p class="notes">{notes}</p>' in text  # whole, in a pre-line paragraph


def test_script_upload_of_a_draft(client: TestClient, admin: ApiClient, operator_token: str) -> None:
    r = post_json(
        client,
        operator_token,
        {"version": "v2.2.0", "model": "bota-note", "draft": "true"},
        {"bin": ("note.bin", b"\x01" * 200)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["released"] is False
    assert admin.get(f"/api/v1/firmware/{r.json()['id']}").json()["released"] is False
    row = html(client.get("/firmware")).by_id(f"release-{r.json()['id']}")
    assert "draft" in [span.text for span in row.find_all("span", class_="badge draft")]


def test_plain_form_post_redirects_with_a_flash(client: TestClient, admin: ApiClient, operator_token: str) -> None:
    image = firmware_bytes(700, seed=5)
    ble = firmware_bytes(300, seed=6)
    r = post_plain(
        client,
        plain_form(operator_token, "v3.0.0", bin=("a.bin", image), ufw=("a.ufw", ble), notes="No JS", draft=True),
    )
    [release] = admin.get("/api/v1/firmware").json()
    assert (r.status_code, r.headers["location"]) == (303, f"/firmware#release-{release['id']}"), r.text
    assert (release["version"], release["released"], release["notes"]) == ("v3.0.0", False, "No JS")
    assert (release["bin"]["crc32"], release["ufw"]["size"]) == (crc32(image), 300)
    page = html(client.get("/firmware"))
    assert flash(page) == ("Uploaded v3.0.0 for Bota Pin (1.0 kB).", False)
    assert flash(html(client.get("/firmware"))) is None  # shown once


@pytest.mark.parametrize("chosen", ["bin", "ufw"])
def test_plain_form_post_with_only_one_of_the_two_files(
    client: TestClient, admin: ApiClient, operator_token: str, chosen: str
) -> None:
    """A browser sends the file input left empty too (filename="" and no content): that is "no file",
    not an empty firmware file."""
    image = (f"fw.{chosen}", firmware_bytes(400, seed=7))
    form = (
        plain_form(operator_token, "v3.1.0", bin=image)
        if chosen == "bin"
        else plain_form(operator_token, "v3.1.0", ufw=image)
    )
    r = post_plain(client, form)
    [release] = admin.get("/api/v1/firmware").json()
    assert (r.status_code, r.headers.get("location")) == (303, f"/firmware#release-{release['id']}"), r.text
    other = "ufw" if chosen == "bin" else "bin"
    assert release[chosen]["size"] == 400 and release[other] is None


def test_plain_form_post_with_no_file_at_all_asks_for_one(client: TestClient, operator_token: str) -> None:
    r = post_plain(client, plain_form(operator_token, "v3.2.0"))
    assert r.status_code == 422
    assert "at least one firmware file" in field_error(html(r), "bin")


# ---- CSRF --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["script, wrong header", "script, no token at all", "plain, no field", "plain, wrong field"],
)
def test_upload_without_the_right_csrf_token_stores_nothing(
    client: TestClient, admin: ApiClient, operator_token: str, settings: Settings, how: str
) -> None:
    image = ("fw.bin", firmware_bytes(2000, seed=1))
    if how.startswith("script"):
        token = "forged" if "wrong" in how else None
        r = post_json(client, token, {"version": "v4.0.0", "model": "bota-pin"}, {"bin": image})
    else:
        r = post_plain(client, plain_form("forged" if "wrong" in how else None, "v4.0.0", bin=image))
    assert_problem(r, 403)
    nothing_stored(settings, admin)


def test_a_valid_header_wins_over_a_forged_field(client: TestClient, admin: ApiClient, operator_token: str) -> None:
    """The script sends the header; a stray csrf_token field is not an unexpected form field."""
    r = post_json(
        client,
        operator_token,
        {"version": "v4.0.1", "model": "bota-pin", "csrf_token": operator_token},
        {"bin": ("fw.bin", b"\x02" * 64)},
    )
    assert r.status_code == 201, r.text


# ---- field errors ------------------------------------------------------------------------------------------


def test_bad_version(client: TestClient, admin: ApiClient, operator_token: str, settings: Settings) -> None:
    r = post_json(client, operator_token, {"version": "1.0", "model": "bota-pin"}, {"bin": ("fw.bin", b"\x01" * 64)})
    assert_problem(r, 422, field="version")
    r = post_plain(client, plain_form(operator_token, "1.0", bin=("fw.bin", b"\x01" * 64)))
    assert r.status_code == 422
    page = html(r)
    assert "1.0" in field_error(page, "version")
    assert page.by_id("version").attr("aria-invalid") == "true"
    assert page.by_id("bin").attr("aria-invalid") is None
    assert field_error(page, "bin") == ""
    nothing_stored(settings, admin)


def test_duplicate_version(client: TestClient, admin: ApiClient, operator_token: str, settings: Settings) -> None:
    admin.release("v1.0.1", bin=b"\x01" * 64)
    r = post_json(client, operator_token, {"version": "1.0.1", "model": "bota-pin"}, {"bin": ("fw.bin", b"\x02" * 64)})
    body = assert_problem(r, 409, field="version")
    assert "already has a release" in body["detail"]
    r = post_plain(client, plain_form(operator_token, "v1.0.1", bin=("fw.bin", b"\x02" * 64)))
    assert r.status_code == 409
    assert "already has a release" in field_error(html(r), "version")
    # The same version for another model is another release.
    r = post_json(
        client, operator_token, {"version": "v1.0.1", "model": "bota-note"}, {"bin": ("fw.bin", b"\x02" * 64)}
    )
    assert r.status_code == 201, r.text
    assert len(admin.get("/api/v1/firmware").json()) == 2
    assert len(files_in(settings.blob_dir)) == 2


def test_wrong_file_extension(client: TestClient, admin: ApiClient, operator_token: str, settings: Settings) -> None:
    r = post_json(
        client, operator_token, {"version": "v5.0.0", "model": "bota-pin"}, {"bin": ("pin.ufw", b"\x01" * 64)}
    )
    assert_problem(r, 422, field="bin")
    r = post_plain(client, plain_form(operator_token, "v5.0.0", bin=("pin.ufw", b"\x01" * 64)))
    assert r.status_code == 422
    assert ".bin" in field_error(html(r), "bin")
    nothing_stored(settings, admin)


def test_unknown_model(client: TestClient, operator_token: str) -> None:
    r = post_json(client, operator_token, {"version": "v5.0.1", "model": "toaster"}, {"bin": ("fw.bin", b"\x01")})
    assert_problem(r, 422, field="model")


# ---- roles ---------------------------------------------------------------------------------------------------


def test_a_viewer_cannot_upload(client: TestClient, admin: ApiClient, sessions: Any, settings: Settings) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    assert client.get("/firmware/upload").status_code == 403
    token = csrf(client, "/firmware")
    image = ("fw.bin", firmware_bytes(500, seed=2))
    assert_problem(post_json(client, token, {"version": "v6.0.0", "model": "bota-pin"}, {"bin": image}), 403)
    assert_problem(post_plain(client, plain_form(token, "v6.0.0", bin=image)), 403)
    nothing_stored(settings, admin)
