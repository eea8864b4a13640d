"""``bota-ota app-sim``: the reference phone app updating one device over (virtual) Bluetooth."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from bota_ota.cli.common import console, err_console
from bota_ota.cli.sim import load_trusted_keys
from bota_ota.sim.verify import MAX_SECURITY_VERSION, DeviceTrust

DEFAULT_RATE_KBPS = 60.0  # a phone's BLE OTA throughput: a 1.5 MB .ufw takes 1.5e6 * 8 / 60e3 = 200 s


def _token_from_simulator_state(device_id: str) -> str | None:
    """The device token, if ``bota-ota simulate`` (or the demo) registered this device on this machine."""
    candidates = list((Path.home() / ".cache" / "bota-ota").glob("sim-*.json"))
    candidates += list(Path("data-demo").glob("demo-devices.json"))
    for path in candidates:
        try:
            tokens = json.loads(path.read_text()).get("tokens", {})
        except (OSError, ValueError):
            continue
        if device_id in tokens:
            return str(tokens[device_id])
    return None


def app_sim(
    device: Annotated[str, typer.Option("--device", help="Id of a device the user owns.")],
    user: Annotated[str, typer.Option("--user", help="App user e-mail.")],
    password: Annotated[str, typer.Option("--password", envvar="BOTA_OTA_APP_PASSWORD", help="App user password.")],
    server: Annotated[str, typer.Option(help="Base URL of the bota-ota server.")] = "http://127.0.0.1:8000",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm the update without asking.")] = False,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="BLE link rate in kbit/s (0: as fast as the stack goes).")
    ] = DEFAULT_RATE_KBPS,
    disconnect_at: Annotated[
        float | None, typer.Option(min=0, max=1, help="Drop the BLE link after this fraction was sent.")
    ] = None,
    device_token: Annotated[
        str | None,
        typer.Option(
            envvar="BOTA_OTA_DEVICE_TOKEN",
            help="The device's token, so the simulated device also heartbeats over HTTP (default: "
            "taken from the simulator's state file if it registered the device; else BLE only).",
        ),
    ] = None,
    reboot_s: Annotated[float, typer.Option(help="Seconds the device takes to reboot.")] = 3.0,
    connect_to: Annotated[
        str | None,
        typer.Option(
            help="Put another device of the same model (this id, Bluetooth only) in front of the phone, to "
            "rehearse connecting to the wrong device: the app reads its serial, refuses, and exits with 2."
        ),
    ] = None,
    log_key: Annotated[
        Path | None,
        typer.Option(
            "--log-key",
            help="The release log's public key (PEM, or the raw key as base64): the app installs only a release "
            "whose offer proves it is in the log (inclusion proof, signed tree head). Without it the app skips "
            "that check with a warning.",
        ),
    ] = None,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-key",
            help="A public key built into the simulated device's firmware (repeatable): it installs only "
            "images signed by one (else SIGNATURE_INVALID). Without any it accepts unsigned images.",
        ),
    ] = None,
    security_version: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_SECURITY_VERSION,
            help="The simulated device's security counter: an image with a lower security version is refused "
            "(ROLLBACK_REFUSED).",
        ),
    ] = 0,
) -> None:
    """Update a device over Bluetooth as the phone app would: a simulated device (GATT peripheral) and the
    reference app (GATT central) on Bumble's in-process virtual radio, talking to a real server."""
    keys = load_trusted_keys(trusted_key)
    (log_public_key,) = load_trusted_keys([log_key], "--log-key") if log_key else (None,)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bumble").setLevel(logging.ERROR)
    try:
        code = asyncio.run(
            _run(
                server,
                user,
                password,
                device,
                yes=yes,
                rate=rate or None,
                disconnect_at=disconnect_at,
                device_token=device_token or _token_from_simulator_state(device),
                reboot_s=reboot_s,
                connect_to=connect_to,
                log_key=log_public_key,
                trust=DeviceTrust.of(keys, security_version),
            )
        )
    except Exception as exc:  # shown as a one-line error, not a traceback
        from bota_ota.sim.app import AppError

        if isinstance(exc, AppError):
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        raise
    raise typer.Exit(code)


async def _run(
    server: str,
    user: str,
    password: str,
    device_id: str,
    *,
    yes: bool,
    rate: float | None,
    disconnect_at: float | None,
    device_token: str | None,
    reboot_s: float,
    connect_to: str | None = None,
    log_key: Ed25519PublicKey | None = None,
    trust: DeviceTrust | None = None,
) -> int:
    from bota_ota.sim.app import ReferenceApp
    from bota_ota.sim.ble.central import BumbleOtaTransport
    from bota_ota.sim.ble.link import VirtualLink
    from bota_ota.sim.ble_device import attach_ble
    from bota_ota.sim.device import Network, SimDevice, Timing

    app = ReferenceApp(server, log_key=log_key)
    await app.login(user, password)
    known = await app.device(device_id)
    if connect_to is not None and connect_to != device_id:
        device_token = None  # the token is --device's: the other device only speaks Bluetooth
    net = Network.create(server, heartbeat_connections=4, download_connections=2)
    sim = SimDevice(
        device_id=connect_to or device_id,
        token=device_token or "",
        model=known["model"],
        firmware_version=known["firmware_version"] or "v0.0.0",
        net=net,
        flash_dir=Path("sim-flash"),
        timing=Timing(reboot_s=reboot_s),
        trust=trust,
    )
    stop = asyncio.Event()
    heartbeat = asyncio.create_task(sim.run(stop)) if device_token else None
    link = VirtualLink()
    ble = await attach_ble(sim, link, index=1, reboot_s=reboot_s)
    phone = await link.add_device("C0:AA:00:00:00:01", name="phone")
    console.print(
        f"Device {sim.device_id} ({known['model']}) runs {sim.firmware_version}; "
        f"{'heartbeating over HTTP' if heartbeat else 'Bluetooth only (no device token)'}."
    )
    if sim.device_id != device_id:
        console.print(f"The phone is connected to {sim.device_id}; the app was asked to update {device_id}.")

    async def confirm(offer: dict[str, Any]) -> bool:
        release = offer["release"]
        why = "assigned by an operator" if offer["reason"] == "assignment" else "a newer release"
        console.print(f"[bold]Update Available:[/bold] {release['version']} ({why}), {release['size']:,} bytes")
        if yes:
            return True
        return await asyncio.to_thread(typer.confirm, "Install it now over Bluetooth?", default=False)

    columns = (TextColumn("BLE transfer"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("push", total=None)

            def on_progress(sent: int, total: int) -> None:
                progress.update(task, completed=sent, total=total)

            outcome = await app.update_device(
                device_id,
                BumbleOtaTransport(phone, ble.address),
                confirm=confirm,
                rate_kbps=rate,
                disconnect_at=disconnect_at,
                on_progress=on_progress,
            )
    finally:
        await app.aclose()
        await ble.stop()
        stop.set()
        if heartbeat is not None:
            await heartbeat
        await net.aclose()
        await link.close()
    table = Table(title="Bluetooth update", show_header=False)
    table.add_row("outcome", outcome.outcome)
    if outcome.reason:
        table.add_row("why", outcome.reason)
    table.add_row("offered", (outcome.offered or {}).get("reason") or "nothing")
    if (outcome.offered or {}).get("message"):
        table.add_row("note", str((outcome.offered or {})["message"]))
    if outcome.result:
        table.add_row("device answered", outcome.result)
    table.add_row("version before", outcome.version_before or "?")
    table.add_row("version after", outcome.version_after or outcome.version_before or "?")
    table.add_row("bytes sent", f"{outcome.sent:,}")
    if outcome.elapsed_s:
        table.add_row("transfer time", f"{outcome.elapsed_s:.1f} s")
    table.add_row("status relays", str(outcome.relays))
    console.print(table)
    return 0 if outcome.outcome in ("applied", "up_to_date", "declined") else 1
