"""Devices as CSV: the export of a device list and the import that registers many devices at once.

The export is written a row at a time (``write_devices_csv`` yields text as it goes), so a list of any
size streams. The import accepts the export's file as it is: it reads the columns ``id``, ``model``,
``name``, ``tags`` and ``owner`` by their header names and ignores the others. It checks every line and
reports every error with its line number; it creates nothing unless every line is valid, and then creates
all of them in the caller's transaction, audited once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bota_ota.accounts.models import AppUser
from bota_ota.core import audit
from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, PayloadTooLarge, ValidationFailed
from bota_ota.devices.models import Device, DeviceTag
from bota_ota.devices.schemas import DEVICE_ID_MESSAGE, DEVICE_ID_RE, MAX_TAGS_PER_DEVICE, check_tag
from bota_ota.devices.service import MAX_NAME_LENGTH, new_device, record_device_event

EXPORT_COLUMNS = (
    "id",
    "model",
    "name",
    "owner",
    "tags",
    "firmware_version",
    "last_seen_at",
    "online",
    "update_status",
    "update_version",
    "decommissioned_at",
)
IMPORT_COLUMNS = ("id", "model", "name", "tags", "owner")
TAG_SEPARATOR = ";"
MAX_IMPORT_LINES = 10_000  # devices, not counting the header row
MAX_IMPORT_BYTES = 2 * 1024 * 1024
_LOOKUP_CHUNK = 500  # ids per IN list when looking for devices already registered


# ---- export ---------------------------------------------------------------------------------------------


class ExportAssignment(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def version(self) -> str: ...


class ExportRow(Protocol):
    """What the export reads of a device: ``ota.schemas.DeviceOut`` (the fleet read model, a layer above
    this one) has all of it."""

    @property
    def id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def firmware_version(self) -> str | None: ...
    @property
    def last_seen_at(self) -> datetime | None: ...
    @property
    def online(self) -> bool: ...
    @property
    def active_assignment(self) -> ExportAssignment | None: ...
    @property
    def decommissioned_at(self) -> datetime | None: ...


def iso_utc(value: datetime | None) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second; empty for None."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def _export_line(row: ExportRow) -> list[str]:
    active = row.active_assignment
    return [
        row.id,
        row.model,
        row.name or "",
        row.owner or "",
        TAG_SEPARATOR.join(row.tags),
        row.firmware_version or "",
        iso_utc(row.last_seen_at),
        "true" if row.online else "false",
        active.status if active else "",
        active.version if active else "",
        iso_utc(row.decommissioned_at),
    ]


def write_devices_csv(rows: Iterable[ExportRow]) -> Iterator[str]:
    """The header row, then one line per device, as text to stream (``\\r\\n`` line ends, as RFC 4180)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(_export_line(row))
        yield buffer.getvalue()


# ---- import ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineError:
    line: int  # the line of the file (the header is line 1)
    field: str
    detail: str


@dataclass(frozen=True)
class CreatedDevice:
    line: int
    id: str
    model: str
    name: str | None
    token: str  # shown once
    claim_code: str  # shown once


@dataclass
class ImportReport:
    dry_run: bool
    valid: int = 0  # lines that would be (or were) created
    errors: list[LineError] = field(default_factory=list)
    created: list[CreatedDevice] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Line:
    line: int
    id: str
    model: str
    name: str | None
    tags: list[str]
    owner: str | None  # lower-cased e-mail


def _read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (lower-cased names) and each non-blank record with the line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue  # blank lines are skipped, not errors
            if header is None:
                header = [cell.strip().lower() for cell in record]
                continue
            rows.append((start, record))
            if len(rows) > MAX_IMPORT_LINES:
                raise PayloadTooLarge(
                    f"a CSV import holds at most {MAX_IMPORT_LINES} devices; split the file", field="file"
                )
    except csv.Error as exc:
        raise ValidationFailed(f"the file is not valid CSV (line {reader.line_num}: {exc})", field="file") from None
    if header is None:
        raise ValidationFailed("the file is empty: it needs a header row naming the columns id and model", field="file")
    missing = [name for name in ("id", "model") if name not in header]
    if missing:
        raise ValidationFailed(
            f"the header row must name the columns id and model (missing: {', '.join(missing)}); "
            f"the columns read are {', '.join(IMPORT_COLUMNS)}, others are ignored",
            field="file",
        )
    return header, rows


def _check_line(line: int, cells: dict[str, str], errors: list[LineError]) -> _Line:
    def fail(name: str, detail: str) -> None:
        errors.append(LineError(line=line, field=name, detail=detail))

    device_id = cells.get("id", "").strip()
    if not device_id:
        fail("id", "the device id (serial) is required, e.g. BP-000123")
    elif not DEVICE_ID_RE.match(device_id):
        fail("id", DEVICE_ID_MESSAGE)
    model = cells.get("model", "").strip()
    if not model:
        fail("model", f"the model is required: one of {', '.join(DEVICE_MODELS)}")
    elif model not in DEVICE_MODELS:
        fail("model", f"unknown model {model!r}: one of {', '.join(DEVICE_MODELS)}")
    name = cells.get("name", "").strip()
    if len(name) > MAX_NAME_LENGTH:
        fail("name", f"the name is at most {MAX_NAME_LENGTH} characters (it has {len(name)})")
    tags: set[str] = set()
    for raw in cells.get("tags", "").split(TAG_SEPARATOR):
        if not raw.strip():
            continue
        try:
            tags.add(check_tag(raw))
        except ValueError as exc:
            fail("tags", str(exc))
    if len(tags) > MAX_TAGS_PER_DEVICE:
        fail("tags", f"a device has at most {MAX_TAGS_PER_DEVICE} tags (this line has {len(tags)})")
    owner = cells.get("owner", "").strip().lower() or None
    return _Line(line=line, id=device_id, model=model, name=name or None, tags=sorted(tags), owner=owner)


def _registered(session: Session, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        found.update(session.scalars(select(Device.id).where(Device.id.in_(ids[start : start + _LOOKUP_CHUNK]))))
    return found


def _app_users(session: Session, emails: set[str]) -> dict[str, AppUser]:
    users: dict[str, AppUser] = {}
    wanted = sorted(emails)
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        for user in session.scalars(select(AppUser).where(AppUser.email.in_(wanted[start : start + _LOOKUP_CHUNK]))):
            users[user.email] = user
    return users


def import_devices(session: Session, text: str, *, dry_run: bool, actor: str) -> ImportReport:
    """Check every line of a CSV file of devices and, unless it is a dry run or a line has an error,
    register them all (tokens and claim codes in ``created``, shown once). A file that is not CSV or has
    no usable header is refused as a whole (422, field ``file``); more than 10,000 devices is 413."""
    header, rows = _read_rows(text.removeprefix("\ufeff"))
    report = ImportReport(dry_run=dry_run)
    lines: list[_Line] = []
    first_line_of: dict[str, int] = {}
    for number, record in rows:
        cells = {name: value for name, value in zip(header, record, strict=False) if name in IMPORT_COLUMNS}
        checked = _check_line(number, cells, report.errors)
        if checked.id and DEVICE_ID_RE.match(checked.id):
            if checked.id in first_line_of:
                report.errors.append(
                    LineError(number, "id", f"device {checked.id} is already on line {first_line_of[checked.id]}")
                )
            else:
                first_line_of[checked.id] = number
        lines.append(checked)
    registered = _registered(session, list(first_line_of))
    owners = _app_users(session, {line.owner for line in lines if line.owner})
    for line in lines:
        if line.id in registered and first_line_of.get(line.id) == line.line:
            report.errors.append(LineError(line.line, "id", f"device {line.id} is already registered"))
        if line.owner and line.owner not in owners:
            report.errors.append(LineError(line.line, "owner", f"no app user has the e-mail {line.owner}"))
    report.valid = len(lines) - len({e.line for e in report.errors})
    report.errors.sort(key=lambda e: e.line)
    if dry_run or report.errors:
        return report
    created_devices: list[Device] = []
    for line in lines:
        device, token, claim_code = new_device(line.id, line.model, line.name)
        device.tag_rows = [DeviceTag(device_id=line.id, tag=tag) for tag in line.tags]
        device.owner_id = owners[line.owner].id if line.owner else None
        created_devices.append(device)
        report.created.append(CreatedDevice(line.line, line.id, line.model, device.name, token, claim_code))
    try:
        with session.begin_nested():
            session.add_all(created_devices)
            session.flush()
    except IntegrityError:
        raise Conflict(
            "another request registered one of these devices meanwhile; check the file again", field="file"
        ) from None
    for line in lines:
        if line.owner:
            record_device_event(session, line.id, "owner.set", actor=actor, email=line.owner)
    audit.record(
        session,
        actor=actor,
        action="device.import",
        target_type="device",
        target_id=None,
        detail={"count": len(created_devices)},
    )
    return report
