"""Portal: registering a batch of devices from a CSV file — a dry run, then the run, then their secrets once."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from bota_ota.accounts.models import User
from bota_ota.core.errors import Conflict, PayloadTooLarge, ValidationFailed
from bota_ota.devices import csvio
from bota_ota.portal.auth import CsrfChecked, PortalUser
from bota_ota.portal.common import render, require
from bota_ota.portal.device_views import MAX_IMPORT_BYTES, NO_STORE
from bota_ota.portal.forms import actor, sentence
from bota_ota.web.deps import SessionDep

router = APIRouter(include_in_schema=False)


@router.get("/devices/import", response_class=HTMLResponse)
def import_page(request: Request, user: PortalUser) -> HTMLResponse:
    require(user, "operator")
    return render(request, "device_import.html", user=user, step="upload", errors={})


def _preview(text: str, error_lines: set[int]) -> list[dict[str, Any]]:
    """The lines of a checked file that would be registered (line, id, model, name), for the check page; the
    import's dry run checks them, this only shows them. Line numbers count as the import counts them."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header: list[str] | None = None
    out: list[dict[str, Any]] = []
    end = 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in record]
                continue
            if start not in error_lines:
                cells = dict(zip(header, (cell.strip() for cell in record), strict=False))
                out.append({"line": start, "id": cells.get("id", ""), "model": cells.get("model", ""),
                            "name": cells.get("name", "")})  # fmt: skip
    except csv.Error:
        return []  # the import said why beside the file field
    return out


def _import_step(
    request: Request, user: User, session: Session, text: str, *, dry_run: bool
) -> tuple[Any, HTMLResponse | None]:
    """Run the import (or its dry run). A report with errors is the check page again, with every error; a file
    the import refuses as a whole (not CSV, no header, too many lines) is the upload form with the reason."""
    try:
        report = csvio.import_devices(session, text, dry_run=dry_run, actor=actor(user))
    except (ValidationFailed, Conflict, PayloadTooLarge) as exc:
        session.rollback()
        errors = {"file": sentence(exc.detail)}
        return None, render(
            request, "device_import.html", status_code=exc.status, user=user, step="upload", errors=errors
        )
    if dry_run or report.errors:
        session.rollback()
        preview = _preview(text, {e.line for e in report.errors})
        return report, render(
            request, "device_import.html", status_code=422 if report.errors else 200, user=user, step="check",
            report=report, preview=preview, csv_text=text, errors={},
        )  # fmt: skip
    session.commit()
    return report, None


@router.post("/devices/import", response_class=HTMLResponse, dependencies=[CsrfChecked])
def import_dry_run(
    request: Request, user: PortalUser, session: SessionDep, file: Annotated[UploadFile | None, File()] = None
) -> Response:
    """Step 1: the file is checked, nothing is written; the page lists what would be created and every error."""
    require(user, "operator")
    error = ""
    text = ""
    if file is None or not file.filename:
        error = "Choose a CSV file to import."
    else:
        data = file.file.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            error = "The file is larger than 1 MB; split it into several files."
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                error = "The file is not UTF-8 text; save it as CSV (UTF-8) and try again."
    if error:
        return render(request, "device_import.html", status_code=422, user=user, step="upload", errors={"file": error})
    _, response = _import_step(request, user, session, text, dry_run=True)
    assert response is not None  # a dry run always answers with a page
    return response


@router.post("/devices/import/run", response_class=HTMLResponse, dependencies=[CsrfChecked])
def import_run(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    csv_text: Annotated[str, Form(alias="csv", max_length=MAX_IMPORT_BYTES)] = "",
) -> Response:
    """Step 2: the same file (carried in a hidden field) registered for real, all or nothing. Something that
    changed meanwhile (a device registered by someone else) shows the checked page again with the error."""
    require(user, "operator")
    report, response = _import_step(request, user, session, csv_text, dry_run=False)
    if response is not None:
        return response
    response = render(request, "device_import.html", status_code=201, user=user, step="done", report=report, errors={})
    response.headers.update(NO_STORE)
    return response


@router.post("/devices/import/tokens.csv", dependencies=[CsrfChecked])
def import_tokens_csv(user: PortalUser, tokens: Annotated[str, Form(max_length=MAX_IMPORT_BYTES * 2)] = "") -> Response:
    """The tokens page's "Download CSV": its hidden rows back as a file. Only the three columns leave, re-written
    by the csv module, so the download is a plain CSV whatever the field held. Nothing is stored to serve it."""
    require(user, "operator")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "token", "claim_code"])
    for row in csv.reader(io.StringIO(tokens)):
        if len(row) == 3 and row[0] != "id":
            writer.writerow(row)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={**NO_STORE, "Content-Disposition": 'attachment; filename="device-tokens.csv"'},
    )
