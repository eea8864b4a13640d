"""``bota-ota serve --demo``: the server plus 20 simulated devices taking a freshly assigned release."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.panel import Panel
from sqlalchemy import select

from bota_ota.accounts.models import User
from bota_ota.accounts.service import create_api_token, create_user
from bota_ota.cli.common import console
from bota_ota.core import audit
from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
from bota_ota.core.security import hash_password, new_password
from bota_ota.core.settings import Settings
from bota_ota.firmware.versions import parse_version
from bota_ota.sim.device import Timing
from bota_ota.sim.fleet import Fleet, FleetConfig, provision
from bota_ota.sim.mgmt import MgmtClient, MgmtError

log = logging.getLogger(__name__)

DEMO_DEVICES = 20
DEMO_MODEL = "bota-pin"
DEMO_PREFIX = "DEMO"


DEMO_EMAIL = "demo@localhost"


def demo_sign_in(settings: Settings) -> tuple[str, str]:
    """The demo's portal account (an admin) with a password new on every demo start, so the console can
    always show a sign-in that works (the first admin's password is shown only once, at the first start)."""
    password = new_password()
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            user = session.scalar(select(User).where(User.email == DEMO_EMAIL))
            if user is None:
                create_user(session, email=DEMO_EMAIL, password=password, role="admin", actor="system:demo")
            else:
                user.password_hash = hash_password(password)
                user.is_active = True
                audit.record(
                    session, actor="system:demo", action="user.password_reset", target_type="user", target_id=user.id
                )
    finally:
        engine.dispose()
    return DEMO_EMAIL, password


class QuietAccessLog(logging.Filter):
    """Keeps uvicorn's access lines (every heartbeat of the simulated fleet, every page) out of the demo's
    console so its progress lines stay readable; warnings and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_access_log(log_level: str) -> bool:
    """Hide the access log during the demo unless the log level is debug; True when hidden. A filter on the
    logger, not its level: uvicorn sets the level when it configures its logging, after this runs."""
    if log_level.lower() == "debug":
        return False
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietAccessLog) for f in access.filters):
        access.addFilter(QuietAccessLog())
    return True


def demo_banner(base_url: str, email: str, password: str, *, access_log_hidden: bool) -> Panel:
    quiet = (
        "The access log is hidden during the demo (warnings still show); [bold]--log-level debug[/bold] shows it."
        if access_log_hidden
        else "The access log is on (--log-level debug)."
    )
    return Panel.fit(
        f"Portal:   [bold link={base_url}/]{base_url}/[/bold link]\n"
        f"Sign in:  [bold]{email}[/bold]  password [bold]{password}[/bold]  (admin; a new password each demo start)\n"
        f"Fleet:    {DEMO_DEVICES} simulated {DEMO_MODEL} devices ({DEMO_PREFIX}-…) take a new release; "
        "their progress is printed below.\n"
        f"{quiet}\nCtrl-C stops the server and the devices.",
        title="bota-ota demo",
        border_style="cyan",
    )


def demo_token(settings: Settings) -> str:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            _, secret = create_api_token(session, name="demo-simulator", role="operator", actor="system:demo")
    finally:
        engine.dispose()
    return secret


def _next_version(mgmt: MgmtClient) -> str:
    versions = [r["version"] for r in mgmt.http.get("/api/v1/firmware", params={"model": DEMO_MODEL}).json()]
    if not versions:
        return "v1.0.1"
    newest = max(parse_version(v) for v in versions)
    return f"v{newest.bump_patch()}"


def run_demo(base_url: str, token: str, data_dir: Path) -> None:
    """Wait for the server, upload a release, register and assign 20 devices, run them until stopped."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    mgmt = MgmtClient(base_url, token)
    version = _next_version(mgmt)
    image = os.urandom(1024 * 1024)
    r = mgmt.http.post(
        "/api/v1/firmware",
        data={"version": version, "model": DEMO_MODEL, "notes": "Demo release for the simulated fleet"},
        files={"bin": (f"bota-pin-{version}.bin", image), "ufw": (f"bota-pin-{version}.ufw", image[: 512 * 1024])},
    )
    r.raise_for_status()
    release = r.json()
    config = FleetConfig(
        server=base_url,
        devices=DEMO_DEVICES,
        model=DEMO_MODEL,
        prefix=DEMO_PREFIX,
        timing=Timing(reboot_s=5.0),
        flash_dir=data_dir / "demo-flash",
        state_file=data_dir / "demo-devices.json",
        start_spread_s=10.0,
    )
    creds = asyncio.run(provision(config, token))
    assignment_ids = []
    for c in creds:
        r = mgmt.assign(c.device_id, release["id"])
        if r.status_code == 201:
            assignment_ids.append(r.json()["id"])
    started = time.monotonic()
    console.print(
        f"[bold green]Demo:[/bold green] {len(creds)} simulated devices "
        f"({creds[0].device_id} … {creds[-1].device_id}); "
        f"release {version} assigned to {len(assignment_ids)} of them. Watch them go pending → delivered → applied:\n"
        f"  curl -H 'Authorization: Bearer {token}' '{base_url}/api/v1/assignments?status=applied'"
    )

    async def fleet_main() -> None:
        async with Fleet(config, creds) as fleet:
            runner = asyncio.create_task(fleet.run())
            last = ""
            done = False
            while not runner.done():
                # Blocking HTTP in a thread, so the devices' event loop keeps going.
                try:
                    statuses = await asyncio.to_thread(mgmt.assignment_statuses, assignment_ids)
                except (MgmtError, httpx.HTTPError) as exc:  # a busy server: ask again next time
                    log.debug("demo: cannot read the assignments: %s", exc)
                    await asyncio.sleep(2)
                    continue
                counts = dict.fromkeys(("pending", "delivered", "applied", "failed"), 0)
                counts.update(Counter(statuses.values()))
                line = "  ".join(f"{k} {v}" for k, v in counts.items())
                if line != last:
                    console.print(f"[dim]demo assignments ({time.monotonic() - started:.0f} s):[/dim] {line}")
                    last = line
                if not done and assignment_ids and counts["pending"] + counts["delivered"] == 0:
                    done = True
                    console.print(
                        f"[bold green]Demo:[/bold green] all {len(assignment_ids)} assignments finished "
                        f"{time.monotonic() - started:.0f} s after they were made. The devices keep heartbeating; "
                        "Ctrl-C stops the server."
                    )
                await asyncio.sleep(2)

    try:
        asyncio.run(fleet_main())
    finally:
        mgmt.close()


def start_demo_thread(base_url: str, token: str, data_dir: Path) -> threading.Thread:
    """Print how to watch the demo, then run the fleet in a thread beside the server."""
    settings = Settings()  # the server's: ``serve`` has put its data dir into the environment
    email, password = demo_sign_in(settings)
    hidden = quiet_access_log(os.environ.get("BOTA_OTA_LOG_LEVEL", "info"))
    console.print(demo_banner(base_url, email, password, access_log_hidden=hidden))

    def target() -> None:
        try:
            run_demo(base_url, token, data_dir)
        except Exception:
            log.exception("the demo fleet stopped")

    thread = threading.Thread(target=target, name="demo-fleet", daemon=True)
    thread.start()
    return thread
