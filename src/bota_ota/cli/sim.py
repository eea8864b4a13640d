"""``bota-ota simulate`` and ``bota-ota assign``: a simulated fleet and bulk assignment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bota_ota.cli.common import console, err_console
from bota_ota.sim.device import Timing
from bota_ota.sim.faults import Faults, parse_share
from bota_ota.sim.fleet import MODEL_CODES, Fleet, FleetConfig, provision
from bota_ota.sim.mgmt import MgmtClient, MgmtError
from bota_ota.sim.verify import MAX_SECURITY_VERSION, KeyFormatError, load_public_key

STATES = ("idle", "recording", "downloading", "verifying", "writing", "rebooting")
STATUSES = ("pending", "delivered", "applied", "failed", "cancelled", "superseded")


def load_trusted_keys(paths: list[Path] | None, option: str = "--trusted-key") -> list[Ed25519PublicKey]:
    """Public keys from files (PEM, or the raw key as base64 or hex); exits with status 2 on a bad one."""
    keys = []
    for path in paths or []:
        try:
            keys.append(load_public_key(path.read_bytes()))
        except (OSError, KeyFormatError) as exc:
            err_console.print(f"[red]error:[/red] {option} {path}: {exc}")
            raise typer.Exit(2) from None
    return keys


def _default_state_file(server: str, prefix: str, model: str) -> Path:
    safe = server.split("://")[-1].replace("/", "_").replace(":", "_")
    return Path.home() / ".cache" / "bota-ota" / f"sim-{safe}-{prefix}-{MODEL_CODES[model]}.json"


def _view(fleet: Fleet, statuses: dict[str, int], started: float, scope: str) -> Table:
    table = Table(title=f"bota-ota simulator — {len(fleet.devices)} devices, {time.monotonic() - started:.0f}s")
    table.add_column("device state")
    table.add_column("devices", justify="right")
    table.add_column("assignment status")
    table.add_column(f"assignments ({scope})", justify="right")
    states = fleet.states()
    for i in range(max(len(STATES), len(STATUSES))):
        s = STATES[i] if i < len(STATES) else ""
        a = STATUSES[i] if i < len(STATUSES) else ""
        table.add_row(s, str(states.get(s, 0)) if s else "", a, str(statuses.get(a, "…")) if a else "")
    stats = fleet.stats()
    table.caption = (
        f"heartbeats {stats.heartbeats}  errors {stats.heartbeat_errors}  applied {stats.applied}  "
        f"failed {sum(stats.failed.values())}  retries {stats.retries}  resumed {stats.resumed}  "
        f"{stats.bytes / 1e6:.1f} MB"
    )
    return table


def _count_scope(mgmt: MgmtClient, release: str | None, model: str) -> str:
    """What the assignment counts cover, for the live view's heading: the server, or one release of the
    simulated model (checked here, so a typo fails at once instead of counting nothing)."""
    if release is None:
        return "server-wide"
    try:
        rel = mgmt.get_release(release)
    except MgmtError as exc:
        err_console.print(f"[red]error:[/red] --release: {exc}")
        raise typer.Exit(2) from None
    if rel["model"] != model:
        err_console.print(
            f"[red]error:[/red] --release {release} is {rel['version']} for {rel['model']}, "
            f"but the simulated devices are {model}"
        )
        raise typer.Exit(2)
    return f"release {rel['version']}"


def summary_table(fleet: Fleet, wall_s: float) -> Table:
    stats = fleet.stats()
    table = Table(title="Simulation summary", show_header=False)
    table.add_row("devices", str(len(fleet.devices)))
    table.add_row("wall time", f"{wall_s:.1f} s")
    table.add_row("updates applied", str(stats.applied))
    for reason, count in sorted(stats.failed.items()):
        table.add_row(f"failed: {reason}", str(count))
    if not stats.failed:
        table.add_row("failed", "0")
    table.add_row("download retries", str(stats.retries))
    table.add_row("resumed downloads (Range)", str(stats.resumed))
    table.add_row("expired URLs renewed", str(stats.expired_urls))
    table.add_row("connections cut by the fault proxy", str(fleet.proxy_cuts))
    table.add_row("downloaded", f"{stats.bytes / 1e6:.1f} MB")
    table.add_row("heartbeats (errors)", f"{stats.heartbeats} ({stats.heartbeat_errors})")
    table.add_row("updates rolled back (boot loop)", str(stats.rolled_back))
    table.add_row("downloads aborted by the server", str(stats.aborted))
    for reason, count in sorted(stats.deferred_by.items()):
        table.add_row(f"heartbeats with the update deferred: {reason}", str(count))
    if not stats.deferred_by:
        table.add_row("heartbeats with the update deferred", "0")
    versions = ", ".join(f"{v}: {n}" for v, n in fleet.versions().most_common())
    table.add_row("firmware now", versions)
    return table


def simulate(
    server: Annotated[str, typer.Option(help="Base URL of the bota-ota server.")] = "http://127.0.0.1:8000",
    api_token: Annotated[str, typer.Option(envvar="BOTA_OTA_API_TOKEN", help="Operator or admin API token.")] = "",
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="How many devices.")] = 10,
    model: Annotated[str, typer.Option(help="bota-pin, bota-pin-pro or bota-note.")] = "bota-pin",
    interval: Annotated[
        float | None, typer.Option(min=0.1, help="Heartbeat interval in seconds (default: what the server says).")
    ] = None,
    faults: Annotated[
        str,
        typer.Option(
            help="Fault probabilities, e.g. drop=0.2,corrupt=0.05,bootloop=0.1,low_battery=0.2. "
            "drop: a download's connection is cut (resumed with Range); corrupt: a byte flipped (crc_mismatch); "
            "expire: the URL is used after it expired (403, fresh URL); power_loss: power fails while writing "
            "(failed power_loss, old version); bootloop: the new image does not boot (back on the old version "
            "after reporting writing and rebooting: a rolled-back attempt); low_battery: the device is at 15% "
            "and not charging; cellular: the device is on cellular, not Wi-Fi; record: per heartbeat, a "
            "recording starts (record_s seconds, default 20). Per device: low_battery, cellular; per update: "
            "the others."
        ),
    ] = "",
    fault_devices: Annotated[
        str, typer.Option(help="The share of devices the faults apply to, e.g. 20% (the others are healthy).")
    ] = "100%",
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable runs.")] = None,
    firmware: Annotated[str, typer.Option(help="Firmware version of newly registered devices.")] = "v1.0.0",
    prefix: Annotated[str, typer.Option(help="Device id prefix: ids are PREFIX-PIN-00001 ...")] = "SIM",
    reboot_s: Annotated[float, typer.Option(help="Seconds a reboot takes (no heartbeats meanwhile).")] = 3.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    until_done: Annotated[
        bool,
        typer.Option(
            help="Stop once no assignment is pending or delivered (of --release, if given) and every device is idle."
        ),
    ] = False,
    release: Annotated[
        str | None,
        typer.Option(
            "--release",
            help="Release id: count (and wait for, with --until-done) only this release's assignments, "
            "instead of every assignment on the server.",
        ),
    ] = None,
    flash_dir: Annotated[Path, typer.Option(help="Where the devices' flash images go.")] = Path("sim-flash"),
    state_file: Annotated[
        Path | None, typer.Option(help="Where device tokens are kept for reuse (default under ~/.cache/bota-ota).")
    ] = None,
    live: Annotated[bool, typer.Option(help="Show the live view.")] = True,
    connections: Annotated[int, typer.Option(min=1, help="HTTP connections shared by all devices.")] = 200,
    register_only: Annotated[bool, typer.Option(help="Register (or reuse) the devices, then exit.")] = False,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-key",
            help="A public key built into the devices' firmware (FILE.pub: PEM, or the raw key as base64); "
            "repeatable. With one, devices install only images signed by a trusted key (else signature_invalid); "
            "without any they accept unsigned images (development only).",
        ),
    ] = None,
    security_version: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_SECURITY_VERSION,
            help="The devices' security counter at start: images with a lower security_version are refused "
            "(rollback_refused); applying an image raises it to the image's.",
        ),
    ] = 0,
) -> None:
    """Run simulated devices that speak the device protocol over HTTP, with optional faults."""
    if model not in MODEL_CODES:
        err_console.print(f"[red]error:[/red] --model must be one of {', '.join(MODEL_CODES)}")
        raise typer.Exit(2)
    if not api_token:
        err_console.print("[red]error:[/red] --api-token (or BOTA_OTA_API_TOKEN) is required")
        raise typer.Exit(2)
    try:
        fault_cfg = Faults.parse(faults)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] --faults: {exc}")
        raise typer.Exit(2) from None
    try:
        fault_share = parse_share(fault_devices)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] --fault-devices: {exc}")
        raise typer.Exit(2) from None
    keys = load_trusted_keys(trusted_key)
    logging.basicConfig(level=logging.WARNING)
    config = FleetConfig(
        server=server.rstrip("/"),
        devices=devices,
        model=model,
        prefix=prefix,
        firmware_version=firmware,
        faults=fault_cfg,
        fault_share=fault_share,
        seed=seed,
        timing=Timing(reboot_s=reboot_s, interval_override_s=interval),
        flash_dir=flash_dir,
        state_file=state_file or _default_state_file(server, prefix, model),
        max_connections=connections,
        trusted_keys=keys,
        security_version=security_version,
    )
    mgmt = MgmtClient(config.server, api_token)
    try:
        mgmt.me()
    except MgmtError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:
        err_console.print(f"[red]error:[/red] cannot reach {config.server}: {exc}")
        raise typer.Exit(2) from None
    scope = _count_scope(mgmt, release, model)
    try:
        asyncio.run(
            _simulate(
                config,
                api_token,
                mgmt,
                duration=duration,
                until_done=until_done,
                live=live,
                register_only=register_only,
                release_id=release,
                scope=scope,
            )
        )
    finally:
        mgmt.close()


async def _simulate(
    config: FleetConfig,
    api_token: str,
    mgmt: MgmtClient,
    *,
    duration: float | None,
    until_done: bool,
    live: bool,
    register_only: bool = False,
    release_id: str | None = None,
    scope: str = "server-wide",
) -> None:
    with Progress(
        TextColumn("registering devices"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("register", total=config.devices)
        creds = await provision(config, api_token, on_progress=lambda n: progress.advance(task, n))
    if register_only:
        console.print(
            f"{len(creds)} devices ready ({creds[0].device_id} … {creds[-1].device_id}); "
            f"tokens kept in {config.state_file}"
        )
        return
    started = time.monotonic()
    statuses: dict[str, int] = {}
    async with Fleet(config, creds) as fleet:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, fleet.stop)
        runner = asyncio.create_task(fleet.run())
        live_view = (
            Live(_view(fleet, statuses, started, scope), console=console, refresh_per_second=2) if live else None
        )
        with live_view or contextlib.nullcontext():
            while not fleet.stop_event.is_set():
                with contextlib.suppress(Exception):
                    counts = await asyncio.gather(
                        *(asyncio.to_thread(mgmt.count_assignments, s, release_id=release_id) for s in STATUSES)
                    )
                    statuses.update(zip(STATUSES, counts, strict=True))
                if live_view is not None:
                    live_view.update(Group(_view(fleet, statuses, started, scope)))
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    break
                if (
                    until_done
                    and elapsed > 2
                    and statuses.get("pending", 1) == 0
                    and statuses.get("delivered", 1) == 0
                    and fleet.states().get("idle", 0) + fleet.states().get("recording", 0) == len(fleet.devices)
                ):
                    break
                await asyncio.sleep(1.0)
        fleet.stop()
        await runner
        console.print(summary_table(fleet, time.monotonic() - started))


def _problem(r: httpx.Response) -> dict[str, object]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def assign(
    release: Annotated[str, typer.Option("--release", help="Release id.")],
    server: Annotated[str, typer.Option(help="Base URL of the bota-ota server.")] = "http://127.0.0.1:8000",
    api_token: Annotated[str, typer.Option(envvar="BOTA_OTA_API_TOKEN", help="Operator or admin API token.")] = "",
    model: Annotated[str | None, typer.Option(help="Assign to every device of this model.")] = None,
    devices: Annotated[
        Path | None, typer.Option("--devices", help="File with one device id per line ('-' for stdin).")
    ] = None,
    allow_downgrade: Annotated[
        bool,
        typer.Option(
            "--allow-downgrade",
            help="Also assign it to devices that report a newer version (a downgrade; admin token only, audited).",
        ),
    ] = False,
) -> None:
    """Assign one release to many devices; devices with an active assignment, or on a newer version (unless
    --allow-downgrade), are skipped and counted."""
    if (model is None) == (devices is None):
        err_console.print("[red]error:[/red] give exactly one of --model or --devices")
        raise typer.Exit(2)
    if not api_token:
        err_console.print("[red]error:[/red] --api-token (or BOTA_OTA_API_TOKEN) is required")
        raise typer.Exit(2)
    mgmt = MgmtClient(server, api_token)
    try:
        rel = mgmt.get_release(release)
        if rel.get("bin") is None:
            err_console.print(
                f"[red]error:[/red] release {rel['version']} has no .bin file, so it cannot be assigned for HTTP OTA"
            )
            raise typer.Exit(2)
        if devices is not None:
            import sys

            lines = (sys.stdin.read() if str(devices) == "-" else devices.read_text()).splitlines()
            ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        else:
            ids = [d["id"] for d in mgmt.iter_devices(model=model)]
        counts = {
            "assigned": 0,
            "skipped (already active)": 0,
            "skipped (newer version)": 0,
            "wrong model": 0,
            "not found": 0,
            "other errors": 0,
        }
        errors: list[str] = []
        with Progress(
            TextColumn(f"assigning {rel['version']}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("assign", total=len(ids))
            for device_id in ids:
                try:
                    r = mgmt.assign(device_id, release, allow_downgrade=allow_downgrade)
                except httpx.HTTPError as exc:
                    counts["other errors"] += 1
                    errors.append(f"{device_id}: {exc!r}")
                    progress.advance(task)
                    continue
                if r.status_code == 201:
                    counts["assigned"] += 1
                elif r.status_code == 409:
                    counts["skipped (already active)"] += 1
                elif r.status_code == 422 and "device_version" in _problem(r):
                    counts["skipped (newer version)"] += 1  # a downgrade, refused without --allow-downgrade
                elif r.status_code == 422:
                    counts["wrong model"] += 1
                elif r.status_code == 403:
                    raise MgmtError(r)  # every device would be refused the same way
                elif r.status_code == 404:
                    counts["not found"] += 1
                else:
                    counts["other errors"] += 1
                    errors.append(f"{device_id}: {r.status_code} {r.text[:200]}")
                progress.advance(task)
    except MgmtError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        mgmt.close()
    table = Table(title=f"Assign {rel['version']} ({rel['model']})", show_header=False)
    for name, n in counts.items():
        table.add_row(name, str(n))
    console.print(table)
    for line in errors[:20]:
        err_console.print(line)
    if counts["other errors"]:
        raise typer.Exit(1)
