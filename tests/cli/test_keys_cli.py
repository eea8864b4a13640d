"""``bota-ota keys`` and ``bota-ota sign`` as a release manager uses them: generate a key pair (with a
passphrase or not), register the public key, sign files, upload them, list and revoke keys; mistakes end
with a clear message and exit code 2."""

from __future__ import annotations

import base64
import stat
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bota_ota.cli import rollout as rollout_cli
from bota_ota.cli.main import app as cli_app
from bota_ota.firmware import signing
from tests.support.factories import ApiClient, firmware_bytes
from tests.support.server import ServerProcess, cli, server_env


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli_app, list(args), input=input)


def words(result: Any) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def _generate(tmp_path: Path, name: str = "release", *extra: str, input: str | None = None) -> tuple[str, Path, Path]:
    r = run("keys", "generate", "--out", str(tmp_path / name), *extra, input=input)
    assert r.exit_code == 0, r.output
    return r.stdout.strip().splitlines()[-1], tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"


def test_generate_writes_a_private_key_0600_and_a_public_key(tmp_path: Path) -> None:
    kid, pem, pub = _generate(tmp_path)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    private = signing.load_private_key(pem.read_bytes())
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not encrypted
    assert signing.load_public_key(pub.read_text()).public_bytes_raw() == private.public_key().public_bytes_raw()
    assert kid == signing.key_id(private.public_key())
    assert len(kid) == 16


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    _kid, pem, pub = _generate(tmp_path)
    before = (pem.read_bytes(), pub.read_bytes())
    for out in ("release", "release.pem"):
        r = run("keys", "generate", "--out", str(tmp_path / out))
        assert r.exit_code == 2, r.output
        assert "exists; not overwriting it" in words(r)
    (tmp_path / "other.pub").write_text("keep me")
    r = run("keys", "generate", "--out", str(tmp_path / "other"))
    assert r.exit_code == 2 and not (tmp_path / "other.pem").exists()
    assert (tmp_path / "other.pub").read_text() == "keep me"
    assert (pem.read_bytes(), pub.read_bytes()) == before


def test_passphrase_from_a_file_and_from_the_prompt(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    kid, pem, _pub = _generate(tmp_path, "enc", "--passphrase-file", str(secret))
    assert pem.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(signing.SignatureFormatError):
        signing.load_private_key(pem.read_bytes())
    key = signing.load_private_key(pem.read_bytes(), "correct horse battery staple")
    assert signing.key_id(key.public_key()) == kid

    kid2, pem2, _ = _generate(tmp_path, "prompted", "--passphrase-prompt", input="s3cret-phrase\ns3cret-phrase\n")
    assert signing.key_id(signing.load_private_key(pem2.read_bytes(), "s3cret-phrase").public_key()) == kid2
    r = run("keys", "generate", "--out", str(tmp_path / "x"), "--passphrase-prompt", input="one\ntwo\n" * 3)
    assert r.exit_code != 0 and not (tmp_path / "x.pem").exists()  # the two entries differ

    image = tmp_path / "fw.bin"
    image.write_bytes(firmware_bytes(3000, seed=1))
    signed = run(
        "sign", "--key", str(pem2), "--model", "bota-pin", "--version", "v1.0.1", str(image), input="s3cret-phrase\n"
    )
    assert signed.exit_code == 0, signed.output
    assert signed.stdout.strip().splitlines()[-1] == kid2
    wrong = run("sign", "--key", str(pem), "--model", "bota-pin", "--version", "v1.0.1", str(image), input="nope\n")
    assert wrong.exit_code == 2 and "passphrase is wrong" in words(wrong)
    by_file = run(
        "sign", "--key", str(pem), "--model", "bota-pin", "--version", "v1.0.1", "--passphrase-file", str(secret),
        str(image),
    )  # fmt: skip
    assert by_file.exit_code == 0, by_file.output


def test_sign_writes_base64_that_verifies_for_the_model_version_and_security_version(tmp_path: Path) -> None:
    kid, pem, pub = _generate(tmp_path)
    data = firmware_bytes(70_000, seed=2)
    image = tmp_path / "pin-1.0.1.bin"
    image.write_bytes(data)
    r = run(
        "sign", "--key", str(pem), "--model", "bota-pin", "--version", "v1.0.1", "--security-version", "3", str(image)
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == kid
    sig = (tmp_path / "pin-1.0.1.bin.sig").read_text()
    assert sig.endswith("\n") and len(sig) == 89
    fields = signing.fields_of_file(data, model="bota-pin", version="v1.0.1", security_version=3)
    assert signing.verify(signing.load_public_key(pub.read_text()), base64.b64decode(sig), fields)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "bota-pen", "--version", "v1.0.1"), "--model must be one of bota-pin, bota-pin-pro, bota-note"),
        (("--model", "bota-pin", "--version", "latest"), "--version: 'latest' is not a semantic version"),
        (
            ("--model", "bota-pin", "--version", "v1.0.1", "--security-version", "-1"),
            "--security-version must be from 0",
        ),
        (("--model", "bota-pin", "--version", "v1.0.1", "--security-version", "4294967296"), "--security-version"),
    ],
)
def test_sign_refuses_bad_input_with_exit_code_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    _kid, pem, _pub = _generate(tmp_path)
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x01" * 100)
    r = run("sign", "--key", str(pem), *args, str(image))
    assert r.exit_code == 2, r.output
    assert message in words(r)
    assert not (tmp_path / "fw.bin.sig").exists()


def test_sign_refuses_a_missing_file_an_empty_one_and_a_key_that_is_not_one(tmp_path: Path) -> None:
    _kid, pem, pub = _generate(tmp_path)
    (tmp_path / "empty.bin").write_bytes(b"")
    base = ("--model", "bota-pin", "--version", "v1.0.1")
    missing = run("sign", "--key", str(pem), *base, str(tmp_path / "nope.bin"))
    assert missing.exit_code == 2 and "is not a file" in words(missing)
    empty = run("sign", "--key", str(pem), *base, str(tmp_path / "empty.bin"))
    assert empty.exit_code == 2 and "is empty" in words(empty)
    public_as_private = run("sign", "--key", str(pub), *base, str(tmp_path / "empty.bin"))
    assert public_as_private.exit_code == 2 and "not a PEM private key" in words(public_as_private)
    no_key = run("sign", "--key", str(tmp_path / "none.pem"), *base, str(tmp_path / "empty.bin"))
    assert no_key.exit_code == 2 and "cannot read" in words(no_key)


# ---- against the server's management API -----------------------------------------------------------------


@pytest.fixture
def in_process_server(app: Any, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's HTTP client talks to the test app in this process (``--server http://testserver``)."""

    def client_for(base_url: str, headers: dict[str, str], timeout: float) -> TestClient:
        return TestClient(app, base_url=base_url, headers=headers)

    monkeypatch.setattr(rollout_cli, "httpx", types.SimpleNamespace(Client=client_for, HTTPError=httpx.HTTPError))
    return "http://testserver"


def test_generate_add_sign_upload_list_revoke(
    tmp_path: Path, in_process_server: str, admin: ApiClient, operator: ApiClient
) -> None:
    server = ("--server", in_process_server)
    kid, pem, pub = _generate(tmp_path)
    added = run("keys", "add", "--public", str(pub), "--models", "bota-pin, bota-pin-pro", "--name", "ci", *server,
                "--api-token", admin.token)  # fmt: skip
    assert added.exit_code == 0, added.output
    assert f"Registered signing key {kid} (ci) for bota-pin, bota-pin-pro" in words(added)

    data = firmware_bytes(5000, seed=3)
    image = tmp_path / "pin.bin"
    image.write_bytes(data)
    assert run("sign", "--key", str(pem), "--model", "bota-pin", "--version", "v2.0.0", str(image)).exit_code == 0
    r = operator.post(
        "/api/v1/firmware",
        data={"version": "v2.0.0", "model": "bota-pin"},
        files={"bin": ("pin.bin", data), "bin_sig": ("pin.bin.sig", (tmp_path / "pin.bin.sig").read_bytes())},
    )
    assert r.status_code == 201, r.text
    assert r.json()["bin"]["key_id"] == kid

    listed = run("keys", "list", *server, "--api-token", operator.token)
    assert listed.exit_code == 0, listed.output
    assert kid in listed.output and "bota-pin-pro" in listed.output and "ci" in listed.output

    # Mistakes: a clear message, exit code 2.
    again = run("keys", "add", "--public", str(pub), "--models", "bota-pin", "--name", "x", *server,
                "--api-token", admin.token)  # fmt: skip
    assert again.exit_code == 2 and "already registered" in words(again)
    bad_model = run("keys", "add", "--public", str(pub), "--models", "bota-pen", "--name", "x", *server,
                    "--api-token", admin.token)  # fmt: skip
    assert bad_model.exit_code == 2 and "model must be one of" in words(bad_model)
    as_operator = run("keys", "revoke", kid, *server, "--api-token", operator.token)
    assert as_operator.exit_code == 2 and "admin role" in words(as_operator)
    no_token = run("keys", "list", *server, "--api-token", "")
    assert no_token.exit_code == 2 and "--api-token" in words(no_token)

    revoked = run("keys", "revoke", kid, *server, "--api-token", admin.token)
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked signing key {kid} (ci): 0 active assignments cancelled, 0 rollouts paused" in words(revoked)
    assert admin.get(f"/api/v1/firmware/{r.json()['id']}").json()["installable"] is False
    twice = run("keys", "revoke", kid, *server, "--api-token", admin.token)
    assert twice.exit_code == 2 and "already revoked" in words(twice)


@pytest.mark.e2e
def test_the_round_trip_against_a_running_server(tmp_path: Path, database_url: str) -> None:
    from tests.support.database import PG_URL

    env = server_env(database_url if PG_URL else None)
    proc = ServerProcess(data_dir=tmp_path / "srv", env=env)
    proc.start()
    try:
        token = cli(env, "token", "create", "--name", "release", "--role", "admin", "--data-dir", str(proc.data_dir))
        admin_env = {**env, "BOTA_OTA_API_TOKEN": token.stdout.strip().splitlines()[-1]}
        secret = tmp_path / "pass"
        secret.write_text("a passphrase\n")
        out = str(tmp_path / "rel")
        kid = cli(env, "keys", "generate", "--out", out, "--passphrase-file", str(secret)).stdout.strip()
        added = cli(admin_env, "keys", "add", "--public", out + ".pub", "--models", "bota-note", "--name", "rel",
                    "--server", proc.url)  # fmt: skip
        assert kid in added.stdout
        image = tmp_path / "note.bin"
        image.write_bytes(firmware_bytes(20_000, seed=4))
        signed = cli(env, "sign", "--key", out + ".pem", "--passphrase-file", str(secret), "--model", "bota-note",
                     "--version", "v3.1.0", "--security-version", "5", str(image))  # fmt: skip
        assert signed.stdout.strip() == kid
        with httpx.Client(
            base_url=proc.url, headers={"Authorization": f"Bearer {admin_env['BOTA_OTA_API_TOKEN']}"}
        ) as api:
            r = api.post(
                "/api/v1/firmware",
                data={"version": "v3.1.0", "model": "bota-note", "security_version": "5"},
                files={
                    "bin": ("note.bin", image.read_bytes()),
                    "bin_sig": ("note.bin.sig", (tmp_path / "note.bin.sig").read_bytes()),
                },
            )
            assert r.status_code == 201, r.text
            assert (r.json()["bin"]["key_id"], r.json()["security_version"]) == (kid, 5)
        listed = cli(admin_env, "keys", "list", "--server", proc.url)
        assert kid in listed.stdout
        revoked = cli(admin_env, "keys", "revoke", kid, "--server", proc.url)
        assert "Revoked signing key" in revoked.stdout
    finally:
        proc.stop()
