"""Receiving a firmware release over HTTP, shared by both edges that take uploads: the API and the portal.

The multipart body streams to temporary files (``upload.py``); its fields become a typed ``NewRelease``
here, so the firmware service never sees a form; then the release is created and committed under the
database's write admission, and the temporary files are removed whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import ValidationFailed
from bota_ota.core.settings import Settings
from bota_ota.firmware import service
from bota_ota.firmware.models import ARTIFACT_KINDS
from bota_ota.firmware.schemas import NewRelease, ReleaseFile, ReleaseOut
from bota_ota.firmware.signing import MAX_SECURITY_VERSION
from bota_ota.firmware.upload import ParsedForm, parse_firmware_form
from bota_ota.storage import BlobStore
from bota_ota.web.context import AppContext

TEXT_FIELDS = frozenset({"version", "model", "notes", "draft", "security_version"})
# Each firmware file's signature (a .sig file, or its text), kept in memory: ``bin_sig``, ``ufw_sig``.
SIGNATURE_FIELDS = frozenset(f"{kind}_sig" for kind in ARTIFACT_KINDS)


def _parse_flag(text: str, field: str) -> bool:
    """A form's true/false field: what curl users type and what a checked HTML checkbox sends ("on")."""
    # Not Pydantic's bool: it also takes "t", "y", "f" and "n" and refuses an empty value, and the API
    # has always refused the former and read the latter as false.
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValidationFailed(f"{field} must be true or false", field=field)


def _parse_security_version(text: str) -> int:
    value = text.strip()
    if not value:
        return 0
    if not value.isascii() or not value.isdigit():
        raise ValidationFailed(
            f"security_version must be a whole number from 0 to {MAX_SECURITY_VERSION}; got {text!r}",
            field="security_version",
        )
    number = int(value) if len(value) <= 20 else MAX_SECURITY_VERSION + 1
    if number > MAX_SECURITY_VERSION:
        raise ValidationFailed(
            f"security_version must be a whole number from 0 to {MAX_SECURITY_VERSION}", field="security_version"
        )
    return number


def new_release_from_form(form: ParsedForm) -> NewRelease:
    """The release a parsed upload form asks for; 422 naming the field for an unknown, missing or
    unreadable one. The values themselves are the firmware service's to check."""
    for name in form.fields:
        if name not in TEXT_FIELDS:
            raise ValidationFailed(f"unexpected field {name!r}", field=name)
    if "model" not in form.fields:
        raise ValidationFailed(f"model is required: one of {', '.join(DEVICE_MODELS)}", field="model")
    return NewRelease(
        # A missing version reads as an empty one: the service refuses both with the same message.
        version=form.fields.get("version", ""),
        model=form.fields["model"],
        notes=form.fields.get("notes", ""),
        draft=_parse_flag(form.fields.get("draft", ""), "draft"),
        security_version=_parse_security_version(form.fields.get("security_version", "")),
        signatures={name.removesuffix("_sig"): part.data for name, part in form.small.items()},
        files=tuple(
            ReleaseFile(
                kind=kind,
                filename=received.filename,
                path=received.path,
                size=received.size,
                crc32=received.crc32,
                sha256=received.sha256,
            )
            for kind, received in form.files.items()
        ),
    )


async def receive_release(
    request: Request,
    session: Session,
    store: BlobStore,
    settings: Settings,
    ctx: AppContext,
    *,
    actor: str,
    check_form: Callable[[ParsedForm], None] | None = None,
) -> ReleaseOut:
    """Stream a multipart upload to temporary files, then create the release and commit it.

    ``check_form`` runs after the body is parsed and before anything touches the database or storage
    (the portal checks its CSRF field there when the request carried no CSRF header).
    """
    # The caller's auth lookup opened a transaction; end it before a body that may take minutes to
    # arrive, so no database lock is held meanwhile.
    await run_in_threadpool(session.rollback)
    form = await parse_firmware_form(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        file_fields=set(ARTIFACT_KINDS),
        max_file_bytes=settings.max_upload_bytes,
        tmp_dir=settings.upload_tmp_dir,
        small_fields=SIGNATURE_FIELDS,
    )
    try:
        if check_form is not None:
            check_form(form)
        new = new_release_from_form(form)

        def create_and_commit() -> ReleaseOut:
            release, stored = service.create_release(session, store, new, actor=actor)
            try:
                out = service.release_out(session, release)
                session.commit()
            except BaseException:
                service.delete_blobs(store, stored)
                raise
            return out

        async with ctx.db_write_gate():
            return await run_in_threadpool(create_and_commit)
    finally:
        form.cleanup()
