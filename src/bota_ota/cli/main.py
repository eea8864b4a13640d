"""The ``bota-ota`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel

from bota_ota import __version__
from bota_ota.cli import app_sim as app_sim_cli
from bota_ota.cli import keys as keys_cli
from bota_ota.cli import rollout as rollout_cli
from bota_ota.cli import sim as sim_cli
from bota_ota.cli import storage as storage_cli
from bota_ota.cli import transparency as transparency_cli
from bota_ota.cli.common import DataDirOption, cli_session, console, err_console, load_settings

app = typer.Typer(
    help="bota-ota: firmware over-the-air updates for Bota devices.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
token_app = typer.Typer(help="Management API tokens.", no_args_is_help=True)
user_app = typer.Typer(help="Portal users.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app_user_app = typer.Typer(
    help="Mobile-app users (they own devices and update them over Bluetooth).", no_args_is_help=True
)
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")
app.add_typer(app_user_app, name="app-user")
app.add_typer(rollout_cli.app, name="rollout")
app.add_typer(keys_cli.app, name="keys")
app.command("sign")(keys_cli.sign)
app.add_typer(transparency_cli.app, name="transparency")
app.add_typer(storage_cli.app, name="storage")
app.command("simulate")(sim_cli.simulate)
app.command("assign")(sim_cli.assign)
app.command("app-sim")(app_sim_cli.app_sim)


def _version(value: bool) -> None:
    if value:
        console.print(f"bota-ota {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: DataDirOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    demo: Annotated[
        bool,
        typer.Option(
            help="Also run 20 simulated devices and assign them a new release (data in ./data-demo, "
            "heartbeat every 10 s unless BOTA_OTA_HEARTBEAT_INTERVAL_S is set)."
        ),
    ] = False,
) -> None:
    """Run the server: applies migrations, creates the first admin on an empty database, then serves."""
    import os

    import uvicorn

    from bota_ota.accounts.bootstrap import prepare_database

    if demo:
        if data_dir is None and "BOTA_OTA_DATA_DIR" not in os.environ:
            data_dir = Path("data-demo")
        os.environ.setdefault("BOTA_OTA_HEARTBEAT_INTERVAL_S", "10")
    settings = load_settings(data_dir)
    from bota_ota.app import LOG_FORMAT

    os.environ["BOTA_OTA_LOG_LEVEL"] = log_level  # worker processes (--workers) configure their logging from it
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo fleet's requests are in the access log
    creds = prepare_database(settings)
    if settings.storage_backend == "local":
        _ = settings.resolved_secret_key  # create it once here, before any worker process needs it
    if creds is not None:
        console.print(
            Panel.fit(
                f"Admin account:   [bold]{creds.email}[/bold]\n"
                f"Password:        [bold]{creds.password}[/bold]\n"
                f"Admin API token: [bold]{creds.api_token}[/bold]\n\n"
                "These are shown once. Keep them somewhere safe.",
                title="First start: an admin was created",
                border_style="green",
            )
        )
    db = settings.resolved_database_url.split("@")[-1]
    console.print(f"bota-ota {__version__} on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    console.print(f"database: {db}   storage: {settings.storage_backend}   data dir: {settings.data_dir.resolve()}")
    if demo:
        from bota_ota.cli.demo import demo_token, start_demo_thread

        start_demo_thread(f"http://127.0.0.1:{port}", demo_token(settings), settings.data_dir)
    uvicorn.run(
        "bota_ota.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        proxy_headers=True,
        # With --workers: how long a worker may take to answer the supervisor's ping. The default 5 s is
        # shorter than a worker's start (a fresh interpreter importing the app) on a busy small machine,
        # and the supervisor then kills and restarts it, again and again.
        timeout_worker_healthcheck=30,
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A name that says who or what uses the token.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")],
    data_dir: DataDirOption = None,
) -> None:
    """Create a management API token; the token alone is printed as the last line."""
    from bota_ota.accounts import service

    with cli_session(data_dir) as session:
        token, secret = service.create_api_token(session, name=name, role=role, actor="cli")
    err_console.print(f"Created {token.role} token '{token.name}' ({token.id}). It is shown once:")
    print(secret)


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option("--email", help="Sign-in e-mail.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")] = "operator",
    password: Annotated[
        str | None, typer.Option("--password", help="Password (at least 8 characters); asked for if omitted.")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a portal user."""
    from bota_ota.accounts import service

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with cli_session(data_dir) as session:
        user = service.create_user(session, email=email, password=password, role=role, actor="cli")
    console.print(f"Created {user.role} user {user.email}")


@app_user_app.command("create")
def app_user_create(
    email: Annotated[str, typer.Option("--email", help="The user's e-mail (their login in the app).")],
    password: Annotated[
        str | None, typer.Option("--password", help="Password (at least 8 characters); asked for if omitted.")
    ] = None,
    owns: Annotated[list[str] | None, typer.Option("--owns", help="Device id this user owns (repeatable).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a mobile-app user, optionally owning some devices."""
    from bota_ota.mobile import service as mobile

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with cli_session(data_dir) as session:
        user = mobile.create_app_user(session, email=email, password=password, actor="cli")
        for device_id in owns or []:
            mobile.set_owner(session, device_id, user.email, actor="cli")
    console.print(f"Created app user {user.email}" + (f", owner of {', '.join(owns)}" if owns else ""))


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Apply all database migrations (safe to run again; several instances may run it at once)."""
    from bota_ota.core.migrate import upgrade_to_head

    settings = load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    console.print("Database is at the latest schema.")
