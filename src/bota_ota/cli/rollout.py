"""``bota-ota rollout``: create, watch and steer rollouts of a running server, through its management API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from bota_ota.cli.common import console, err_console

app = typer.Typer(help="Staged rollouts of a release (docs/rollouts.md).", no_args_is_help=True)

ServerOption = Annotated[str, typer.Option(help="Base URL of the bota-ota server.")]
TokenOption = Annotated[str, typer.Option(envvar="BOTA_OTA_API_TOKEN", help="API token (operator to change).")]
DEFAULT_SERVER = "http://127.0.0.1:8000"
FINISHED = ("completed", "cancelled")


class Api:
    """The management API with one token; a problem reply ends the command with its detail."""

    def __init__(self, server: str, token: str) -> None:
        if not token:
            err_console.print("[red]error:[/red] --api-token (or BOTA_OTA_API_TOKEN) is required")
            raise typer.Exit(2)
        self.http = httpx.Client(base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            err_console.print(f"[red]error:[/red] cannot reach the server: {exc}")
            raise typer.Exit(1) from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text
            err_console.print(f"[red]error ({r.status_code}):[/red] {detail}")
            raise typer.Exit(2 if r.status_code < 500 else 1)
        return r.json() if r.content else None


def _stages(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter("stages are comma-separated percentages, e.g. 1,10,100") from None


def _group_id(api: Api, name: str) -> str:
    for group in api.call("GET", "/api/v1/groups", params={"limit": 1000}):
        if group["name"].lower() == name.strip().lower():
            return str(group["id"])
    err_console.print(f"[red]error:[/red] no group named {name!r} (bota-ota groups are listed at /api/v1/groups)")
    raise typer.Exit(2)


@app.command("create")
def create(
    release: Annotated[str, typer.Option("--release", help="Release id.")],
    group: Annotated[str | None, typer.Option(help="Target this group (by name).")] = None,
    model: Annotated[str | None, typer.Option(help="Target every device of this model (with --tag: narrower).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with this tag (repeatable).")] = None,
    stages: Annotated[str, typer.Option(help="Cumulative percentages, ending at 100.")] = "1,10,100",
    name: Annotated[str | None, typer.Option(help="A name for the rollout (default: from the release).")] = None,
    success_threshold: Annotated[float, typer.Option(help="Percent applied for a stage to be done.")] = 95.0,
    failure_threshold: Annotated[float, typer.Option(help="Percent failed that pauses the rollout.")] = 5.0,
    failure_min: Annotated[int, typer.Option(help="...and at least this many failed.")] = 3,
    stage_window: Annotated[int, typer.Option(help="Seconds a stage waits for devices it has not reached.")] = 86400,
    manual: Annotated[bool, typer.Option("--manual", help="Wait for `rollout advance` between stages.")] = False,
    no_new_devices: Annotated[
        bool, typer.Option("--no-new-devices", help="Do not assign devices that come to match later.")
    ] = False,
    min_battery: Annotated[
        int | None,
        typer.Option(min=0, max=100, help="Delivery policy: battery percent needed unless charging."),
    ] = None,
    wifi_only: Annotated[
        bool, typer.Option("--wifi-only", help="Delivery policy: keep the image off cellular.")
    ] = False,
    defer_while_unsynced: Annotated[
        bool,
        typer.Option(
            "--defer-while-unsynced", help="Delivery policy: wait until the device's recordings are uploaded."
        ),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    api_token: TokenOption = "",
) -> None:
    """Roll a release out to a group, or to a model's devices (optionally only those with some tags)."""
    if (group is None) == (model is None):
        err_console.print("[red]error:[/red] give exactly one of --group or --model")
        raise typer.Exit(2)
    api = Api(server, api_token)
    rel = api.call("GET", f"/api/v1/firmware/{release}")
    if group is not None:
        target: dict[str, Any] = {"group_id": _group_id(api, group)}
    else:
        target = {"filter": {"model": model, **({"tags": tag} if tag else {})}}
    body = {
        "name": name or f"{rel['version']} ({group or model})",
        "release_id": release,
        "target": target,
        "stages": _stages(stages),
        "advance": "manual" if manual else "auto",
        "success_threshold_pct": success_threshold,
        "failure_threshold_pct": failure_threshold,
        "failure_min_devices": failure_min,
        "stage_window_s": stage_window,
        "include_new_devices": not no_new_devices,
    }
    policy: dict[str, Any] = {}  # only what is given overrides the release's policy
    if min_battery is not None:
        policy["min_battery"] = min_battery
    if wifi_only:
        policy["networks"] = ["wifi"]
    if defer_while_unsynced:
        policy["defer_while_unsynced"] = True
    if policy:
        body["delivery_policy"] = policy
    rollout = api.call("POST", "/api/v1/rollouts", json=body)
    console.print(f"rollout [bold]{rollout['id']}[/bold] {rollout['status']}")
    console.print(_stage_table(rollout))


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only rollouts with this status.")] = None,
    server: ServerOption = DEFAULT_SERVER,
    api_token: TokenOption = "",
) -> None:
    """Rollouts, newest first."""
    api = Api(server, api_token)
    rows = api.call("GET", "/api/v1/rollouts", params={"status": status} if status else {})
    table = Table("id", "name", "release", "status", "stage", "applied", "failed", "targeted")
    for r in rows:
        stage = f"{r['current_stage'] + 1}/{len(r['stages'])}" if r["current_stage"] >= 0 else "-"
        t = r["totals"]
        table.add_row(
            r["id"],
            r["name"],
            r["release"]["version"],
            r["status"],
            stage,
            str(t["applied"]),
            str(t["failed"]),
            str(t["targeted"]),
        )
    console.print(table)


def _stage_table(rollout: dict[str, Any]) -> Table:
    table = Table(title=f"{rollout['name']}: {rollout['release']['version']} · {rollout['status']}")
    for column in ("stage", "%", "status", "devices", "pending", "waiting", "delivered", "applied", "failed"):
        table.add_column(column)
    for s in rollout["stages"]:
        c = s["counts"]
        table.add_row(
            str(s["index"] + 1),
            f"{s['percent']:g}",
            s["status"],
            str(s["devices"]),
            str(c["pending"]),
            _waiting(c),
            str(c["delivered"]),
            str(c["applied"]) + (f" (+{c['superseded']} newer)" if c.get("superseded") else ""),
            str(c["failed"]),
        )
    return table


def _waiting(counts: dict[str, Any]) -> str:
    """The pending devices that did not get the update at their last heartbeat, and why."""
    reasons = counts.get("deferred_by_reason") or {}
    return ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda r: -r[1])) or "-"


def _progress(rollout: dict[str, Any]) -> Progress:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}")
    )
    for s in rollout["stages"]:
        c = s["counts"]
        need = max(s["devices"], 1)
        note = f"{s['status']}" + (f", {c['failed']} failed" if c["failed"] else "")
        done = c["applied"] + c.get("superseded", 0)  # superseded: the device runs a newer version, a success
        progress.add_task(f"stage {s['index'] + 1} ({s['percent']:g} %)", total=need, completed=done, note=note)
    return progress


def _summary(rollout: dict[str, Any]) -> str:
    t = rollout["totals"]
    line = (
        f"[bold]{rollout['status']}[/bold] · {t['applied']} applied, {t.get('superseded', 0)} newer already, "
        f"{t['failed']} failed, {t.get('deferred', 0)} waiting of {t['targeted']} placed"
        f" · skipped {t['skipped']['up_to_date']} up to date, {t['skipped']['busy']} busy"
    )
    if rollout.get("paused_reason"):
        line += f"\n[yellow]paused:[/yellow] {rollout['paused_reason']}"
    return line


@app.command("show")
def show(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Keep the bars up to date until the rollout ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between updates with --watch.", min=0.5)] = 2.0,
    server: ServerOption = DEFAULT_SERVER,
    api_token: TokenOption = "",
) -> None:
    """A rollout's stages as progress bars, its totals and its latest events."""
    api = Api(server, api_token)
    rollout = api.call("GET", f"/api/v1/rollouts/{rollout_id}")
    if not watch:
        console.print(_progress(rollout))
        console.print(_summary(rollout))
        for event in rollout["events"][:10]:
            console.print(f"  {event['at']}  {event['kind']:<15} {event['actor']}  {event['detail']}")
        return
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            table = Table.grid()
            table.add_row(_progress(rollout))
            table.add_row(_summary(rollout))
            live.update(table)
            if rollout["status"] in FINISHED:
                return
            time.sleep(interval)  # a terminal display, polling the API
            rollout = api.call("GET", f"/api/v1/rollouts/{rollout_id}")


def _action(name: str, help_text: str) -> None:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
        server: ServerOption = DEFAULT_SERVER,
        api_token: TokenOption = "",
    ) -> None:
        api = Api(server, api_token)
        result = api.call("POST", f"/api/v1/rollouts/{rollout_id}/{name}")
        if name == "retry-failed":
            console.print(f"{result['retried']} failed devices assigned again")
            return
        console.print(_summary(result))

    command.__doc__ = help_text
    app.command(name)(command)


_action("pause", "Pause: hold the pending assignments (downloads under way finish).")
_action("resume", "Resume a paused rollout.")
_action("advance", "Start the next stage now (on the last stage: complete the rollout).")
_action("cancel", "Cancel every pending and delivered assignment of the rollout.")
_action("retry-failed", "Assign the rollout's failed devices again.")
