from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:  # imported where used: `bota-ota --help` should not pay for SQLAlchemy and pydantic
    from sqlalchemy.orm import Session

    from bota_ota.core.settings import Settings

console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data folder (SQLite database, local files). Default: ./data or BOTA_OTA_DATA_DIR."
    ),
]


def load_settings(data_dir: Path | None = None) -> Settings:
    from bota_ota.core.settings import Settings

    if data_dir is not None:
        os.environ["BOTA_OTA_DATA_DIR"] = str(data_dir)  # also seen by uvicorn worker processes
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the bad variable
        err_console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def cli_session(data_dir: Path | None) -> Iterator[Session]:
    """A migrated database and one committed unit of work; a domain error exits 2 with its message."""
    from bota_ota.core.database import make_engine, make_sessionmaker, session_scope
    from bota_ota.core.errors import DomainError
    from bota_ota.core.migrate import upgrade_to_head

    settings = load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            yield session
    except DomainError as exc:
        err_console.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
