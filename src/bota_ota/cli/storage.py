"""``bota-ota storage check``: the blob store against the database (firmware/housekeeping.py).

Runs beside a live server (it only reads rows, and with ``--fix`` deletes blobs no row points at that are
older than the grace period), so it suits cron. Exit code 0: nothing wrong, or everything wrong was
fixed; 1: something remains; 2: it could not run (bad settings, store or database unreachable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bota_ota.cli.common import DataDirOption, cli_session, console, err_console, load_settings

if TYPE_CHECKING:
    from bota_ota.firmware.housekeeping import StorageReport

app = typer.Typer(
    help="Blob storage housekeeping: find (and fix) blobs and artifact rows that disagree.",
    no_args_is_help=True,
)


@app.command("check")
def check(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Delete orphan blobs (no artifact row) older than the grace period. Rows are never touched.",
        ),
    ] = False,
    grace_s: Annotated[
        int,
        typer.Option(
            "--grace-s",
            min=0,
            help="With --fix, only orphans last written this many seconds ago or earlier are deleted: an upload "
            "stores its blob a moment before it commits its row.",
        ),
    ] = 3600,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Compare every blob under firmware/ with the artifacts in the database: report orphan blobs, rows
    whose blob is missing and blobs whose size differs from the row. Exit code 0 when nothing is wrong
    (or all was fixed), 1 when something remains."""
    from botocore.exceptions import BotoCoreError, ClientError

    from bota_ota.core.database import utcnow
    from bota_ota.firmware.housekeeping import BLOB_PREFIX, check_storage
    from bota_ota.storage import make_blob_store

    settings = load_settings(data_dir)
    try:
        store = make_blob_store(settings)
    except (BotoCoreError, ClientError) as exc:  # an unreachable S3 endpoint, a bucket we may not read
        err_console.print(f"[red]error:[/red] cannot open the blob store: {exc}")
        raise typer.Exit(2) from None

    columns = (SpinnerColumn(), TextColumn(f"listing {BLOB_PREFIX}"), TextColumn("{task.completed} blobs"))
    spinner = Progress(*columns, TimeElapsedColumn(), console=err_console, transient=True)
    with cli_session(data_dir) as session, spinner:
        task = spinner.add_task("list", total=None)
        try:
            report = check_storage(
                session,
                store,
                fix=fix,
                grace_s=grace_s,
                now=utcnow(),
                on_listed=lambda n: spinner.update(task, completed=n),
            )
        except (OSError, BotoCoreError, ClientError) as exc:  # a full disk, a store gone away, no access
            err_console.print(f"[red]error:[/red] the storage check failed: {exc}")
            raise typer.Exit(2) from None

    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print(report, store_name=_store_name(settings.storage_backend, settings.blob_dir, settings.s3_bucket))
    raise typer.Exit(0 if report.ok else 1)


def _store_name(backend: str, blob_dir: Path, bucket: str) -> str:
    return f"s3://{bucket}" if backend == "s3" else str(blob_dir)


def _print(report: StorageReport, *, store_name: str) -> None:
    console.print(
        f"Checked {report.blobs} blob(s) in {store_name} against {report.artifacts} artifact row(s)"
        + (f" (--fix, grace {report.grace_s:g} s)." if report.fix else ".")
    )
    if report.orphans or report.missing or report.size_mismatches:
        table = Table("finding", "release", "size", "state / what to do")
        # The key is what an operator copies: folded onto several lines, never cut short with an ellipsis.
        table.add_column("storage key", overflow="fold")
        for o in report.orphans:
            state = (
                "deleted" if o.removed else (o.kept or "delete it with --fix once it is older than the grace period")
            )
            table.add_row("orphan blob", "—", f"{o.size} B", state, o.key)
        for m in report.missing:
            a = m.artifact
            table.add_row("blob missing", f"{a.model} {a.version} ({a.kind}) {a.release_id}", "—", m.advice, m.key)
        for s in report.size_mismatches:
            a = s.artifact
            table.add_row(
                "size differs",
                f"{a.model} {a.version} ({a.kind}) {a.release_id}",
                f"{s.actual} B, row {s.expected} B",
                s.advice,
                s.key,
            )
        console.print(table)
    removed = sum(o.removed for o in report.orphans)
    if removed:
        console.print(f"Deleted {removed} orphan blob(s).")
    if report.ok:
        console.print("[green]Storage and database agree.[/green]")
    else:
        console.print(f"[red]{report.remaining} finding(s) remain.[/red]")
