"""``bota-ota keys`` and ``bota-ota sign``: release signing keys (docs/security.md, "Signing releases").

``generate`` and ``sign`` work on files only (the private key never goes near the server); ``add``,
``list`` and ``revoke`` talk to a running server through its management API, like ``bota-ota rollout``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.table import Table

from bota_ota.cli.common import console, err_console
from bota_ota.cli.rollout import DEFAULT_SERVER, Api, ServerOption, TokenOption

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bota_ota.firmware.signing import SignedFields

app = typer.Typer(
    help="Release signing keys: generate a key pair, register its public key, list and revoke keys.",
    no_args_is_help=True,
)

PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="Read the private key's passphrase from this file (its first line).",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _read_passphrase(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    passphrase = lines[0] if lines else ""
    if not passphrase:
        _fail(f"{path} holds no passphrase (its first line is empty)")
    return passphrase


def _key_paths(out: str) -> tuple[Path, Path]:
    base = out.removesuffix(".pem").removesuffix(".pub")
    if not Path(base).name:
        _fail("--out needs a file name, e.g. --out release-key")
    return Path(base + ".pem"), Path(base + ".pub")


@app.command("generate")
def generate(
    out: Annotated[str, typer.Option("--out", help="NAME: writes NAME.pem (private key) and NAME.pub (public key).")],
    passphrase_file: PassphraseFileOption = None,
    passphrase_prompt: Annotated[
        bool, typer.Option("--passphrase-prompt", help="Ask for a passphrase to encrypt the private key with.")
    ] = False,
) -> None:
    """Generate an Ed25519 key pair for signing releases; prints its key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bota_ota.firmware import signing

    if passphrase_file is not None and passphrase_prompt:
        _fail("give --passphrase-file or --passphrase-prompt, not both")
    private_path, public_path = _key_paths(out)
    for path in (private_path, public_path):
        if path.exists():
            _fail(f"{path} exists; not overwriting it (choose another --out)")
    if not private_path.parent.is_dir():
        _fail(f"folder {private_path.parent} does not exist")
    passphrase = None
    if passphrase_file is not None:
        passphrase = _read_passphrase(passphrase_file)
    elif passphrase_prompt:
        passphrase = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
        if not passphrase:
            _fail("the passphrase is empty")
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    # O_EXCL: never replace a key file, even one created since the check above; 0600 from the start.
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"{private_path} exists; not overwriting it (choose another --out)")
    with os.fdopen(fd, "wb") as f:
        f.write(signing.private_pem(key, passphrase))
    try:
        with public_path.open("x", encoding="ascii") as f:
            f.write(signing.public_pem(public))
    except FileExistsError:
        private_path.unlink()
        _fail(f"{public_path} exists; not overwriting it (choose another --out)")
    kid = signing.key_id(public)
    state = "encrypted with your passphrase" if passphrase else "not encrypted: keep it offline"
    err_console.print(f"Private key: [bold]{private_path}[/bold] (mode 0600, {state})")
    err_console.print(
        f"Public key:  [bold]{public_path}[/bold] (register it: bota-ota keys add --public {public_path})"
    )
    err_console.print("Key id:")
    print(kid)


def _load_private_key(path: Path, passphrase_file: Path | None) -> Ed25519PrivateKey:
    from bota_ota.firmware import signing

    try:
        pem = path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    passphrase = _read_passphrase(passphrase_file) if passphrase_file is not None else None
    if passphrase is None and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem:
        passphrase = typer.prompt(f"Passphrase for {path}", hide_input=True)
    try:
        return signing.load_private_key(pem, passphrase)
    except signing.SignatureFormatError as exc:
        _fail(f"{path}: {exc}")


def sign(
    file: Annotated[Path, typer.Argument(help="The firmware file (.bin or .ufw) to sign.", dir_okay=False)],
    key: Annotated[Path, typer.Option("--key", help="The private key (NAME.pem from `bota-ota keys generate`).")],
    model: Annotated[str, typer.Option("--model", help="bota-pin, bota-pin-pro or bota-note.")],
    version: Annotated[str, typer.Option("--version", help="The release's version, e.g. v1.0.1.")],
    security_version: Annotated[
        int, typer.Option("--security-version", help="The release's security version (anti-rollback).")
    ] = 0,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Sign a firmware file for a model, version and security version: writes FILE.sig (base64) to upload
    with it as bin_sig or ufw_sig; prints the key id."""
    from bota_ota.core.device_models import DEVICE_MODELS
    from bota_ota.firmware import signing
    from bota_ota.firmware.versions import InvalidVersion, normalize_version

    if model.strip() not in DEVICE_MODELS:
        _fail(f"--model must be one of {', '.join(DEVICE_MODELS)}; got {model!r}")
    try:
        normalize_version(version)
    except InvalidVersion as exc:
        _fail(f"--version: {exc}")
    if not 0 <= security_version <= signing.MAX_SECURITY_VERSION:
        _fail(f"--security-version must be from 0 to {signing.MAX_SECURITY_VERSION}")
    if not file.is_file():
        _fail(f"{file} is not a file")
    private = _load_private_key(key, passphrase_file)
    fields = _fields_of(file, model=model.strip(), version=version.strip(), security_version=security_version)
    if fields.size == 0:
        _fail(f"{file} is empty")
    signature = signing.sign(private, fields)
    out = file.with_name(file.name + ".sig")
    out.write_text(signature + "\n", encoding="ascii")
    kid = signing.key_id(private.public_key())
    err_console.print(
        f"Signed [bold]{file}[/bold] for {fields.model} {version.strip()} security version {security_version} "
        f"({fields.size} bytes, SHA-256 {fields.sha256[:12]}…) → [bold]{out}[/bold]"
    )
    err_console.print("Key id:")
    print(kid)


def _fields_of(file: Path, *, model: str, version: str, security_version: int) -> SignedFields:
    """The signed fields of a file, hashed in chunks (firmware files can be large)."""
    import hashlib

    from bota_ota.firmware.signing import SignedFields

    digest = hashlib.sha256()
    size = 0
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return SignedFields(model, version, security_version, size, digest.hexdigest())


@app.command("add")
def add(
    public: Annotated[
        Path, typer.Option("--public", help="The public key file (NAME.pub).", exists=True, dir_okay=False)
    ],
    models: Annotated[str, typer.Option("--models", help="Comma-separated models it signs for, e.g. bota-pin.")],
    name: Annotated[str, typer.Option("--name", help="A name for the key (who or what signs with it).")],
    server: ServerOption = DEFAULT_SERVER,
    api_token: TokenOption = "",
) -> None:
    """Register a public key with the server as trusted for some models (admin token)."""
    slugs = [m.strip() for m in models.split(",") if m.strip()]
    if not slugs:
        _fail("--models needs at least one model, e.g. --models bota-pin")
    try:
        text = public.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {public}: {exc}")
    api = Api(server, api_token)
    key = api.call("POST", "/api/v1/signing-keys", json={"name": name, "public_key": text, "models": slugs})
    console.print(f"Registered signing key [bold]{key['key_id']}[/bold] ({key['name']}) for {', '.join(key['models'])}")


@app.command("list")
def list_(server: ServerOption = DEFAULT_SERVER, api_token: TokenOption = "") -> None:
    """Signing keys the server knows, revoked ones included."""
    api = Api(server, api_token)
    table = Table("key id", "name", "models", "added", "revoked")
    for k in api.call("GET", "/api/v1/signing-keys"):
        table.add_row(
            k["key_id"],
            k["name"],
            ", ".join(k["models"]),
            f"{k['created_at'][:19]} by {k['created_by'] or '-'}",
            f"[red]{k['revoked_at'][:19]}[/red] by {k['revoked_by'] or '-'}" if k["revoked_at"] else "-",
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (16 hex digits).")],
    server: ServerOption = DEFAULT_SERVER,
    api_token: TokenOption = "",
) -> None:
    """Revoke a signing key (admin token): releases it signed can no longer be assigned or deployed, and
    their active assignments are cancelled."""
    api = Api(server, api_token)
    key = api.call("POST", f"/api/v1/signing-keys/{key_id}/revoke")
    console.print(
        f"Revoked signing key [bold]{key['key_id']}[/bold] ({key['name']}): "
        f"{key['assignments_cancelled']} active assignments cancelled, {key['rollouts_paused']} rollouts paused"
    )
