"""``bota-ota transparency verify``: check a server's public release log from the outside, as anyone can.

It downloads the signed tree head and every entry, recomputes every leaf hash and the root (RFC 9162),
checks the head's signature with the log key, and — given the head saved by an earlier run — checks that
the log only grew since (the consistency proof, and the old root recomputed from the entries). Exit status:
0 all checked, 1 the log failed a check, 2 it could not be checked (server unreachable, bad arguments).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bota_ota.cli.common import console, err_console

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

app = typer.Typer(help="The public release transparency log (docs/security.md).", no_args_is_help=True)

API = "/api/transparency/v1"
LOG_KEY_URL = "/.well-known/bota-ota-log-key.pem"
PAGE = 1000


class _Failed(Exception):
    """The log failed a check."""


def _cannot(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _get(http: httpx.Client, url: str, **params: Any) -> httpx.Response:
    try:
        r = http.get(url, params=params or None)
    except httpx.HTTPError as exc:
        _cannot(f"cannot reach the server: {exc}")
    if r.status_code != 200:
        try:
            detail = r.json().get("detail") or r.text
        except ValueError:
            detail = r.text
        _cannot(f"GET {url} answered {r.status_code}: {detail}")
    return r


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        int(state["tree_size"])
        bytes.fromhex(str(state["root_hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        _cannot(f"{path} is not a saved tree head: {exc}")
    return state


def _save_state(path: Path, head: dict[str, Any], server: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**head, "server": server}, indent=2) + "\n")
    os.replace(tmp, path)


def _public_key(http: httpx.Client, pinned: Path | None) -> tuple[Ed25519PublicKey, str]:
    from bota_ota.transparency.logkey import LogKeyError, load_public_key

    if pinned is not None:
        source, pem = str(pinned), pinned.read_bytes()
    else:
        source, pem = LOG_KEY_URL, _get(http, LOG_KEY_URL).content
        err_console.print(
            f"[yellow]warning:[/yellow] the log key comes from the server itself ({LOG_KEY_URL}): this trusts the "
            "server for it. Pin it: save it once and pass --log-key FILE."
        )
    try:
        return load_public_key(pem), source
    except LogKeyError as exc:
        _cannot(f"{source}: {exc}")


def _entries(
    http: httpx.Client, size: int, wanted: _Wanted | None
) -> tuple[list[bytes], Counter[str], list[str], list[tuple[int, dict[str, Any]]]]:
    """Every entry's leaf hash, recomputed from its leaf text; the count of each kind; problems found; the
    entries of the version asked for."""
    from bota_ota.transparency import merkle

    hashes: list[bytes] = []
    kinds: Counter[str] = Counter()
    problems: list[str] = []
    found: list[tuple[int, dict[str, Any]]] = []
    columns = (TextColumn("entries"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("entries", total=size)
        while len(hashes) < size:
            start = len(hashes)
            page = _get(http, f"{API}/entries", start=start, end=min(size, start + PAGE)).json()
            got = page.get("entries") or []
            if not got:
                raise _Failed(f"the server returned no entries from {start} on, in a log of {size}")
            for item in got:
                index, leaf = int(item["index"]), str(item["leaf"])
                if index != len(hashes):
                    raise _Failed(f"expected entry {len(hashes)}, the server sent entry {index}")
                computed = merkle.leaf_hash(leaf.encode("utf-8"))
                if computed.hex() != item.get("leaf_hash"):
                    problems.append(f"entry {index}: leaf_hash {item.get('leaf_hash')} is not the hash of its leaf")
                hashes.append(computed)
                try:
                    data = json.loads(leaf)
                    kinds[str(data.get("kind"))] += 1
                    if wanted is not None and wanted.matches(data):
                        found.append((index, data))
                    if json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) != leaf:
                        problems.append(f"entry {index} is not canonical JSON")
                except (ValueError, AttributeError):
                    problems.append(f"entry {index} is not a JSON object")
            progress.update(task, completed=len(hashes))
    return hashes[:size], kinds, problems, found


class _Wanted:
    """A version (and model) to look for: ``v1.0.1`` and ``1.0.1`` are the same, build metadata aside."""

    def __init__(self, version: str, model: str | None) -> None:
        self.version, self.model = self._key(version), model

    @staticmethod
    def _key(version: str) -> str:
        return version.strip().removeprefix("v").split("+", 1)[0]

    def matches(self, entry: dict[str, Any]) -> bool:
        if self._key(str(entry.get("version", ""))) != self.version:
            return False
        return self.model is None or entry.get("model") == self.model


def _describe(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "withdrawal":
        return f"withdrawn {entry.get('time')}: {entry.get('reason')}"
    files = []
    for kind in ("bin", "ufw"):
        info = entry.get(kind)
        if isinstance(info, dict):
            signed = f", signed by key {info['key_id']}" if info.get("key_id") else ", unsigned"
            files.append(f".{kind} sha256 {info.get('sha256')} ({info.get('size')} bytes{signed})")
    return f"published {entry.get('time')}, security version {entry.get('security_version')}: " + "; ".join(files)


@app.command("verify")
def verify(
    server: Annotated[str, typer.Option(help="Base URL of the bota-ota server, e.g. https://ota.example.com.")],
    state: Annotated[
        Path | None,
        typer.Option(
            help="A file with the tree head of an earlier run: the log must have only grown since. The new "
            "head is saved there when everything checks out.",
        ),
    ] = None,
    log_key: Annotated[
        Path | None,
        typer.Option(
            "--log-key",
            help="The log's public key (PEM) you trust. Default: fetched from the server, with a warning.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            help="Also show this firmware version's entries (e.g. the one your device runs); exit 1 if the log "
            "has none."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="With --version: only this model (e.g. bota-pin).")] = None,
) -> None:
    """Verify a server's release transparency log: signature, every entry, root, consistency with --state."""
    from bota_ota.transparency import merkle
    from bota_ota.transparency.logkey import key_id, verify_tree_head

    base = server.rstrip("/")
    saved = _load_state(state) if state is not None else None
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("server", base)
    failures: list[str] = []
    with httpx.Client(base_url=base, timeout=30) as http:
        key, source = _public_key(http, log_key)
        table.add_row("log key", f"{key_id(key)} (from {source})")
        head: dict[str, Any] = _get(http, f"{API}/tree-head").json()
        size, root_hex = int(head["tree_size"]), str(head["root_hash"])
        table.add_row("tree head", f"size {size}, signed at {head.get('timestamp')}")
        table.add_row("root hash", root_hex)
        if verify_tree_head(key, head):
            table.add_row("signature", "[green]valid[/green]")
        else:
            failures.append("the tree head's signature is not valid for the log key")
            table.add_row("signature", "[red]INVALID[/red]")
        wanted = _Wanted(version, model) if version else None
        try:
            hashes, kinds, problems, found = _entries(http, size, wanted)
        except _Failed as exc:
            hashes, kinds, problems, found = [], Counter(), [str(exc)], []
        failures += problems
        by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
        table.add_row("entries", f"{len(hashes)} downloaded, each leaf hash recomputed ({by_kind})")
        if len(hashes) == size:
            if merkle.root(hashes).hex() == root_hex:
                table.add_row("root", "[green]recomputed from the entries: matches[/green]")
            else:
                failures.append("the root recomputed from the entries does not match the signed tree head")
                table.add_row("root", "[red]recomputed from the entries: DOES NOT MATCH[/red]")
        if saved is not None:
            failures += _check_consistency(http, table, key, saved, head, hashes)
        if wanted is not None:
            label = f"{model} {version}" if model else str(version)
            for index, entry in found:
                table.add_row(f"entry {index}", f"{entry.get('model')} {entry.get('version')} {_describe(entry)}")
            if not found:
                failures.append(f"{label} is not in the log: it was never published")
                table.add_row(label, "[red]NOT IN THE LOG[/red]")
    console.print(table)
    if failures:
        for failure in failures:
            err_console.print(f"[red]FAILED:[/red] {failure}")
        raise typer.Exit(1)
    if state is not None:
        _save_state(state, head, base)
        console.print(f"Saved the tree head (size {size}) to {state}.")
    console.print("[green]The log checks out.[/green]")


def _check_consistency(
    http: httpx.Client,
    table: Table,
    key: Ed25519PublicKey,
    saved: dict[str, Any],
    head: dict[str, Any],
    hashes: list[bytes],
) -> list[str]:
    """The saved head must be signed by the same key and be a prefix of the new tree."""
    from bota_ota.transparency import merkle
    from bota_ota.transparency.logkey import verify_tree_head

    old, new = int(saved["tree_size"]), int(head["tree_size"])
    old_root, new_root = bytes.fromhex(str(saved["root_hash"])), bytes.fromhex(str(head["root_hash"]))
    failures = []
    if not verify_tree_head(key, saved):
        failures.append("the saved tree head is not signed by this log key")
    if old > new:
        failures.append(f"the log shrank: the saved head has {old} entries, the server's {new}")
        table.add_row("consistency", f"[red]from {old} to {new}: THE LOG SHRANK[/red]")
        return failures
    proof_json = _get(http, f"{API}/proof/consistency", first=old, second=new).json()
    proof = [bytes.fromhex(h) for h in proof_json["consistency_proof"]]
    proof_ok = merkle.verify_consistency(old, new, old_root, new_root, proof)
    prefix_ok = len(hashes) == new and merkle.root(hashes, old) == old_root
    if proof_ok and prefix_ok:
        table.add_row("consistency", f"[green]from {old} to {new}: proof valid, old root recomputed[/green]")
        return failures
    if not proof_ok:
        failures.append(f"the consistency proof from {old} to {new} does not verify against the saved head")
    if not prefix_ok:
        failures.append(f"the first {old} entries do not give the saved root {saved['root_hash']}")
    table.add_row("consistency", f"[red]from {old} to {new}: INCONSISTENT[/red]")
    return failures
