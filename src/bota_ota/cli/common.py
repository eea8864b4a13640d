from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bota_ota.config import Settings

console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data folder (SQLite database, local files). Default: ./data or BOTA_OTA_DATA_DIR."
    ),
]


def load_settings(data_dir: Path | None = None) -> Settings:
    if data_dir is not None:
        os.environ["BOTA_OTA_DATA_DIR"] = str(data_dir)  # also seen by uvicorn worker processes
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the bad variable
        err_console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
