"""Uploads with signatures: verified against the model's trusted keys before anything is stored; every
refusal names the signature's field and leaves no row, no blob and no temporary file."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bota_ota.core.settings import Settings
from tests.firmware.signing_support import assert_nothing_stored, key_id, new_key, register, sign, upload
from tests.support.factories import ApiClient, assert_problem, files_in, firmware_bytes

IMAGE = firmware_bytes(5000, seed=11)
BLE = firmware_bytes(3000, seed=12)
KEY = new_key(20)


@pytest.fixture
def kid(admin: ApiClient) -> str:
    return register(admin, KEY, ("bota-pin", "bota-pin-pro"))


def test_a_good_signature_is_stored_with_its_key_id(admin: ApiClient, kid: str, settings: Settings) -> None:
    bin_sig = sign(KEY, IMAGE, version="v1.0.1", security_version=3)
    ufw_sig = sign(KEY, BLE, version="v1.0.1", security_version=3)
    r = upload(admin, "v1.0.1", bin=IMAGE, bin_sig=bin_sig, ufw=BLE, ufw_sig=ufw_sig, security_version=3)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["security_version"] == 3
    assert (body["installable"], body["unfit_reason"], body["security_floor"]) == (True, None, False)
    assert (body["bin"]["signature"], body["bin"]["key_id"], body["bin"]["signed"]) == (bin_sig, kid, True)
    assert (body["ufw"]["signature"], body["ufw"]["key_id"], body["ufw"]["signed"]) == (ufw_sig, kid, True)
    assert admin.get(f"/api/v1/firmware/{body['id']}").json() == body
    assert admin.get("/api/v1/firmware").json() == [body]
    [entry] = admin.get("/api/v1/audit", params={"action": "firmware.upload"}).json()
    assert entry["detail"]["signed"] == {"bin": kid, "ufw": kid}
    assert entry["detail"]["security_version"] == 3
    assert len(files_in(settings.blob_dir)) == 2


@pytest.mark.parametrize("form", ["hex", "raw", "text-field"])
def test_hex_raw_and_text_signatures_are_stored_as_base64(admin: ApiClient, kid: str, form: str) -> None:
    signature = sign(KEY, IMAGE)
    raw = base64.b64decode(signature)
    if form == "text-field":  # curl -F bin_sig="$(cat fw.bin.sig)": a plain form field, not a file
        r = admin.post(
            "/api/v1/firmware",
            data={"version": "v1.0.1", "model": "bota-pin", "bin_sig": signature},
            files={"bin": ("fw.bin", IMAGE)},
        )
    else:
        r = upload(admin, bin=IMAGE, bin_sig=raw.hex() if form == "hex" else raw)
    assert r.status_code == 201, r.text
    assert (r.json()["bin"]["signature"], r.json()["bin"]["key_id"]) == (signature, kid)


def test_only_one_file_signed(admin: ApiClient, kid: str) -> None:
    r = upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE), ufw=BLE)
    assert r.status_code == 201, r.text
    assert (r.json()["bin"]["signed"], r.json()["ufw"]["signed"]) == (True, False)
    assert r.json()["ufw"]["key_id"] is None


def test_unsigned_uploads_are_accepted_until_the_model_requires_signatures(
    admin: ApiClient, settings: Settings, sessions: Any
) -> None:
    r = upload(admin, "v1.0.0", bin=IMAGE)
    assert r.status_code == 201, r.text
    assert (r.json()["bin"]["signed"], r.json()["bin"]["signature"]) == (False, None)
    admin.delete(f"/api/v1/firmware/{r.json()['id']}")
    assert admin.patch("/api/v1/models/bota-pin", json={"require_signed": True}).status_code == 200
    body = assert_problem(upload(admin, "v1.0.1", bin=IMAGE), 422, "bin_sig")
    assert "Bota Pin requires signed releases" in body["detail"]
    assert_problem(upload(admin, "v1.0.1", ufw=BLE), 422, "ufw_sig")
    assert_nothing_stored(admin, settings, sessions)
    # Another model is not affected.
    assert upload(admin, "v1.0.1", "bota-note", bin=IMAGE).status_code == 201


def test_require_signed_with_one_of_two_signatures_is_422(
    admin: ApiClient, kid: str, settings: Settings, sessions: Any
) -> None:
    admin.patch("/api/v1/models/bota-pin", json={"require_signed": True})
    assert_problem(upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE), ufw=BLE), 422, "ufw_sig")
    assert_nothing_stored(admin, settings, sessions)
    r = upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE), ufw=BLE, ufw_sig=sign(KEY, BLE))
    assert r.status_code == 201, r.text


def test_a_tampered_file_is_422_and_nothing_is_stored(
    admin: ApiClient, kid: str, settings: Settings, sessions: Any
) -> None:
    other = firmware_bytes(5000, seed=99)  # the signature of another file of the same size
    body = assert_problem(upload(admin, bin=IMAGE, bin_sig=sign(KEY, other)), 422, "bin_sig")
    assert body["detail"] == (
        "the .bin signature (bin_sig) does not verify for bota-pin v1.0.1 security version 0 under any trusted key "
        "of bota-pin: signed for another model, version or file, or by an unregistered key"
    )
    tampered = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
    assert_problem(upload(admin, bin=tampered, bin_sig=sign(KEY, IMAGE)), 422, "bin_sig")
    # A good .bin does not carry a bad .ufw through: the whole upload is refused.
    assert_problem(
        upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE), ufw=BLE, ufw_sig=sign(KEY, IMAGE)), 422, "ufw_sig"
    )
    assert_nothing_stored(admin, settings, sessions)
    assert admin.get("/api/v1/audit", params={"action": "firmware.upload"}).json() == []


@pytest.mark.parametrize(
    ("signed_for", "uploaded_as"),
    [
        ({"model": "bota-pin-pro"}, {}),
        ({"version": "v1.0.2"}, {}),
        ({"security_version": 1}, {}),
        ({}, {"security_version": 1}),
    ],
    ids=["other-model", "other-version", "other-security-version", "uploaded-with-another-security-version"],
)
def test_a_signature_for_another_model_version_or_security_version_is_422(
    admin: ApiClient,
    kid: str,
    settings: Settings,
    sessions: Any,
    signed_for: dict[str, Any],
    uploaded_as: dict[str, Any],
) -> None:
    r = upload(admin, "v1.0.1", "bota-pin", bin=IMAGE, bin_sig=sign(KEY, IMAGE, **signed_for), **uploaded_as)
    assert_problem(r, 422, "bin_sig")
    assert_nothing_stored(admin, settings, sessions)


def test_the_version_is_compared_normalised(admin: ApiClient, kid: str) -> None:
    r = upload(admin, "1.0.1+build.5", bin=IMAGE, bin_sig=sign(KEY, IMAGE, version="v1.0.1"))
    assert r.status_code == 201, r.text


def test_an_unregistered_key_is_422(admin: ApiClient, kid: str, settings: Settings, sessions: Any) -> None:
    stranger = new_key(21)
    body = assert_problem(upload(admin, bin=IMAGE, bin_sig=sign(stranger, IMAGE)), 422, "bin_sig")
    assert "under any trusted key of bota-pin" in body["detail"]
    assert_nothing_stored(admin, settings, sessions)


def test_a_key_registered_for_another_model_does_not_verify(
    admin: ApiClient, settings: Settings, sessions: Any
) -> None:
    register(admin, KEY, ("bota-note",))
    note_only = sign(KEY, IMAGE, model="bota-pin")
    body = assert_problem(upload(admin, bin=IMAGE, bin_sig=note_only), 422, "bin_sig")
    assert "bota-pin has no trusted signing key" in body["detail"]
    register(admin, new_key(22), ("bota-pin",))
    assert_problem(upload(admin, bin=IMAGE, bin_sig=note_only), 422, "bin_sig")
    assert_nothing_stored(admin, settings, sessions)


def test_a_revoked_key_no_longer_verifies_uploads(
    admin: ApiClient, kid: str, settings: Settings, sessions: Any
) -> None:
    admin.post(f"/api/v1/signing-keys/{kid}/revoke")
    body = assert_problem(upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE)), 422, "bin_sig")
    assert f"signing key {kid}, which is revoked" in body["detail"]
    assert_nothing_stored(admin, settings, sessions)


@pytest.mark.parametrize(
    ("sig", "files", "field"),
    [
        ("not a signature", {"bin": IMAGE}, "bin_sig"),
        ("AAAA", {"bin": IMAGE}, "bin_sig"),
        (b"", {"bin": IMAGE}, "bin_sig"),
        (b"\x00" * 4097, {"bin": IMAGE}, "bin_sig"),
        (sign(KEY, IMAGE), {}, "bin_sig"),
        (sign(KEY, BLE), {"bin": IMAGE}, "bin_sig"),
    ],
    ids=["text", "short", "empty", "too-large", "without-its-file", "of-the-other-file"],
)
def test_malformed_or_orphan_signatures_are_422(
    admin: ApiClient, kid: str, settings: Settings, sessions: Any, sig: str | bytes, files: dict[str, bytes], field: str
) -> None:
    extra = {} if files else {"ufw": BLE}  # a signature without its file: the other file is there
    r = upload(admin, bin=files.get("bin"), bin_sig=sig, **extra)
    assert_problem(r, 422, field)
    assert_nothing_stored(admin, settings, sessions)


def test_ufw_sig_without_the_ufw_is_422(admin: ApiClient, kid: str, settings: Settings, sessions: Any) -> None:
    body = assert_problem(upload(admin, bin=IMAGE, ufw_sig=sign(KEY, BLE)), 422, "ufw_sig")
    assert "no ufw file was sent" in body["detail"]
    assert_nothing_stored(admin, settings, sessions)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "4294967296", "99999999999999999999999", " ", "٣"])
def test_bad_security_versions_are_422(admin: ApiClient, settings: Settings, sessions: Any, value: str) -> None:
    if not value.strip():
        assert upload(admin, bin=IMAGE, security_version=value).json()["security_version"] == 0
        return
    assert_problem(upload(admin, bin=IMAGE, security_version=value), 422, "security_version")
    assert_nothing_stored(admin, settings, sessions)


def test_the_largest_security_version(admin: ApiClient, kid: str) -> None:
    top = 2**32 - 1
    r = upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE, security_version=top), security_version=top)
    assert r.status_code == 201, r.text
    assert r.json()["security_version"] == top
    assert r.json()["bin"]["key_id"] == key_id(KEY)


def test_the_largest_signed_32_bit_security_version(admin: ApiClient, kid: str) -> None:
    value = 2**31 - 1
    r = upload(admin, bin=IMAGE, bin_sig=sign(KEY, IMAGE, security_version=value), security_version=value)
    assert r.status_code == 201, r.text
    assert r.json()["security_version"] == value
