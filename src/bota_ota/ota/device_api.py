"""Management API for the device list's query parameters, its CSV export and import, and the registry's
actions that answer with the device as the fleet shows it (rename, decommission, recommission).

``ota/api.py`` includes this router into its devices router before ``GET /api/v1/devices/{id}``, so
``export.csv`` is not taken for a device id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import StringConstraints, ValidationError
from sqlalchemy.orm import Session
from starlette.types import Message

from bota_ota.accounts.deps import Operator, Viewer
from bota_ota.core.errors import PayloadTooLarge, ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.devices import csvio
from bota_ota.devices import service as devices
from bota_ota.devices.schemas import (
    MAX_SEEN_WITHIN_S,
    MAX_TAGS_PER_DEVICE,
    DeviceFilter,
    DeviceModel,
    DeviceRename,
    ImportReportOut,
)
from bota_ota.ota import fleet
from bota_ota.ota.schemas import AssignmentStatus, DeviceCreated, DeviceOut
from bota_ota.web.deps import CtxDep, SessionDep, SettingsDep, request_session
from bota_ota.web.problems import problem_response

router = APIRouter(tags=["devices"])


# ---- the list's query parameters (the list and the export take the same) -----------------------------


# What firmware/versions.py parse_version accepts: semver 2.0 with an optional leading v, blanks around it
# (or nothing: an empty parameter is no filter).
SEMVER_PATTERN = (
    r"^(\s*[vV]?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?\s*)?$"
)
# What devices/schemas.py check_tag accepts: a tag, any case, blanks around it.
TAG_PATTERN = r"^\s*[A-Za-z0-9][A-Za-z0-9_-]{0,31}\s*$"
SORT_PATTERN = rf"^\s*-?({'|'.join(fleet.SORT_KEYS)})\s*$"


def query_filter(
    model: Annotated[DeviceModel | None, Query(description="bota-pin, bota-pin-pro or bota-note")] = None,
    tag: Annotated[
        list[Annotated[str, StringConstraints(pattern=TAG_PATTERN)]] | None,
        Query(max_length=MAX_TAGS_PER_DEVICE, description="Devices with all of these tags (repeat the parameter)"),
    ] = None,
    q: Annotated[str | None, Query(max_length=100, description="Search in id and name")] = None,
    firmware_version: Annotated[str | None, Query(max_length=64, description="Exactly this version")] = None,
    firmware_below: Annotated[
        str | None,
        Query(max_length=64, pattern=SEMVER_PATTERN, description="A semantic version: devices on a lower one"),
    ] = None,
    seen_within_s: Annotated[
        int | None,
        Query(ge=1, le=MAX_SEEN_WITHIN_S, description="Last heartbeat at most this many seconds ago"),
    ] = None,
    network: Annotated[Literal["wifi", "cellular"] | None, Query(description="wifi or cellular")] = None,
) -> DeviceFilter:
    """The device filter (devices/schemas.py) from query parameters, checked by the same model."""
    raw = {
        "model": model,
        "tags": tag,
        "q": q or None,
        "firmware_version": firmware_version or None,
        "firmware_below": firmware_below or None,
        "seen_within_s": seen_within_s,
        "network": network,
    }
    try:
        return DeviceFilter.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        # Named as the query parameter: "tags" is given as repeated "tag".
        raise RequestValidationError([{**e, "loc": ("query", *_query_loc(e["loc"]))} for e in exc.errors()]) from None


def _query_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    if loc and loc[0] == "tags":
        return ("tag", *loc[1:])
    return loc


QueryFilter = Annotated[DeviceFilter, Depends(query_filter)]

_DECOMMISSIONED = {"false": False, "true": True, "any": None}


@dataclass(frozen=True)
class ListOptions:
    online: bool | None
    assignment_status: str | None
    sort: str
    descending: bool
    decommissioned: bool | None  # False: in service only (the default); True: decommissioned only; None: any


def list_options(
    online: bool | None = None,
    assignment_status: Annotated[
        AssignmentStatus | None, Query(description="Status of each device's latest assignment")
    ] = None,
    sort: Annotated[
        str,
        Query(
            max_length=32,
            pattern=SORT_PATTERN,
            description="id, name, last_seen, version (semantic: v1.10.0 after v1.9.2) or model; a leading '-' "
            "sorts descending. Devices never seen, never reporting a version or without a name come last.",
        ),
    ] = "id",
    decommissioned: Annotated[
        Literal["false", "true", "any"],
        Query(description="false: devices in service (default); true: only decommissioned ones; any: both"),
    ] = "false",
) -> ListOptions:
    key = sort.strip()
    descending = key.startswith("-")
    key = key.removeprefix("-")
    if key not in fleet.SORT_KEYS:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "sort"),
                    "msg": f"unknown sort key {sort!r}: one of {', '.join(fleet.SORT_KEYS)}, with '-' for descending",
                    "input": sort,
                }
            ]
        )
    return ListOptions(online, assignment_status, key, descending, _DECOMMISSIONED[decommissioned])


ListOptionsDep = Annotated[ListOptions, Depends(list_options)]


# ---- CSV export and import ---------------------------------------------------------------------------------


@router.get(
    "/export.csv",
    response_class=StreamingResponse,
    summary="Every matching device as CSV (the list's filters and sort; no page limit)",
    responses={200: {"content": {"text/csv": {}}, "description": "id,model,name,owner,tags,... (header row first)"}},
)
def export_devices_csv(
    request: Request, ctx: CtxDep, settings: SettingsDep, _: Viewer, f: QueryFilter, options: ListOptionsDep
) -> StreamingResponse:
    def lines() -> Iterator[str]:
        # Its own read session, for as long as the body streams (the request's closes with the handler);
        # the request's CloseSessionsMiddleware closes it too if the client goes away.
        with request_session(ctx, request, write=False) as session:
            yield from csvio.write_devices_csv(
                fleet.iter_devices(
                    session,
                    f,
                    online=options.online,
                    online_window_s=settings.online_window_s,
                    assignment_status=options.assignment_status,
                    sort=options.sort,
                    descending=options.descending,
                    decommissioned=options.decommissioned,
                    ble_timeout_s=settings.ble_relay_timeout_s,
                )
            )

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="devices.csv"', "Cache-Control": "no-store"},
    )


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"a CSV import is at most {limit // (1024 * 1024)} MB", field="file")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a CSV import is at most {limit // (1024 * 1024)} MB", field="file")
        chunks.append(chunk)
    return b"".join(chunks)


async def csv_upload(request: Request) -> str:
    """The CSV text: the body itself (``text/csv``), or the field ``file`` of a multipart form. At most
    2 MB of file (413); it must be UTF-8 text (422, field ``file``)."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    # Room for the form's own boundaries and headers around a file of the largest size.
    body = await _read_capped(request, csvio.MAX_IMPORT_BYTES + (64 * 1024 if multipart else 0))
    if multipart:
        body = await _form_file(request, body)
        if len(body) > csvio.MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"a CSV import is at most {csvio.MAX_IMPORT_BYTES // (1024 * 1024)} MB", field="file")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not UTF-8 text; save the CSV as UTF-8", field="file") from None
    if "\x00" in text:
        raise ValidationFailed("the file contains NUL characters: it is not a CSV text file", field="file")
    return text


async def _form_file(request: Request, body: bytes) -> bytes:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=1, max_fields=20) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ValidationFailed("send the CSV file in the form field 'file'", field="file")
            return await upload.read()
    except ValidationFailed:
        raise
    except Exception as exc:  # a malformed multipart body is the client's error, not a 500
        raise ValidationFailed(f"the multipart form could not be read: {exc}", field="file") from None


CsvUpload = Annotated[str, Depends(csv_upload)]


@router.post(
    "/import",
    response_model=ImportReportOut,
    summary="Register devices from a CSV file (id,model,name,tags,owner); all or nothing, dry run first",
    responses={
        201: {"model": ImportReportOut, "description": "Created: each device's token and claim code, shown once"},
        413: {"description": "More than 2 MB or 10,000 devices"},
        422: {"description": "A line has an error (problem JSON, every line's errors in `errors`), or not CSV"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "id,model,name,tags,owner\nBP-1,bota-pin,,beta,\n",
                },
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
            },
        }
    },
)
def import_devices_csv(
    request: Request,
    session: SessionDep,
    principal: Operator,
    text: CsvUpload,
    dry_run: Annotated[bool, Query(description="true: check every line and create nothing")] = False,
) -> Response:
    report = csvio.import_devices(session, text, dry_run=dry_run, actor=principal.actor)
    out = ImportReportOut.model_validate(
        {
            "dry_run": report.dry_run,
            "valid": report.valid,
            "errors": [asdict(e) for e in report.errors],
            "created": [asdict(c) for c in report.created],
        }
    )
    if report.errors and not dry_run:
        lines = len({e.line for e in report.errors})
        # The report's errors (line, field, detail) are the problem's ``errors``, so it is built here rather
        # than raised: a domain error's ``errors`` carry one field and message.
        return problem_response(
            request,
            422,
            slug="validation",
            title="Validation failed",
            detail=f"{lines} line{'s' if lines != 1 else ''} of the file "
            f"{'have errors' if lines != 1 else 'has an error'}; no device was created",
            errors=cast(list[dict[str, str]], out.model_dump()["errors"]),
            dry_run=False,
            valid=report.valid,
        )
    return JSONResponse(
        out.model_dump(mode="json"), status_code=200 if dry_run else 201, headers={"Cache-Control": "no-store"}
    )


# ---- rename, decommission, recommission ------------------------------------------------------------------


def _device_out(session: Session, settings: Settings, device_id: str) -> DeviceOut:
    device = devices.get_device(session, device_id)
    active = fleet.active_assignments_for(session, [device.id]).get(device.id)
    return fleet.device_out(
        device, active, online_window_s=settings.online_window_s, ble_timeout_s=settings.ble_relay_timeout_s
    )


@router.patch("/{device_id}", response_model=DeviceOut, summary="Rename a device (null or blank clears the name)")
def rename_device(
    device_id: str, body: DeviceRename, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceOut:
    devices.rename_device(session, device_id, body.name, actor=principal.actor)
    return _device_out(session, settings, device_id)


@router.post(
    "/{device_id}/decommission",
    response_model=DeviceOut,
    summary="Take a device out of service: its token stops working, its active assignment is cancelled, "
    "it leaves every rollout; its history stays",
)
def decommission_device(device_id: str, session: SessionDep, settings: SettingsDep, principal: Operator) -> DeviceOut:
    devices.decommission_device(session, device_id, actor=principal.actor)
    return _device_out(session, settings, device_id)


@router.post(
    "/{device_id}/recommission",
    response_model=DeviceCreated,
    summary="Put a decommissioned device back into service with a new token and claim code, shown once",
)
def recommission_device(
    device_id: str, response: Response, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DeviceCreated:
    _, token, claim_code = devices.recommission_device(session, device_id, actor=principal.actor)
    response.headers["Cache-Control"] = "no-store"
    return DeviceCreated(**_device_out(session, settings, device_id).model_dump(), token=token, claim_code=claim_code)
