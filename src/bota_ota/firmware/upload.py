"""Streaming multipart parsing for firmware uploads.

Starlette's ``request.form()`` would spool each file to a temporary file first and only then let us
look at it, with no size limit on file parts. We need three things while the bytes stream in: stop at
the size limit (413 before the rest is read), compute size, CRC32 and SHA-256 in the same pass, and
never hold a firmware file in memory. python-multipart's low-level ``MultipartParser`` (the parser
Starlette itself uses) gives us the callbacks to do exactly that; this module only wires them up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from bota_ota.core.errors import InsufficientStorage, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

TEXT_FIELD_LIMIT = 64 * 1024
MAX_FILENAME = 200
FORM_OVERHEAD = 1024 * 1024  # headers, boundaries, text fields and small parts on top of the files
SMALL_PART_LIMIT = 4096  # a signature file is 89 bytes of base64 text; hex or raw bytes are shorter


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int = 0
    crc32: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class ReceivedBytes:
    """A small part kept in memory (a signature file): its bytes as sent, and its file name (None when it
    was sent as a plain form field, "" for a browser's file input left empty)."""

    filename: str | None
    data: bytes


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    small: dict[str, ReceivedBytes] = field(default_factory=dict)

    def cleanup(self) -> None:
        for received in self.files.values():
            received.path.unlink(missing_ok=True)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)
    out: IO[bytes] | None = None
    received: ReceivedFile | None = None
    crc: int = 0
    sha: hashlib._Hash | None = None
    small: bool = False  # one of the small fields: kept in memory as bytes, file or not


class _FormCollector:
    def __init__(
        self,
        *,
        file_fields: set[str],
        max_file_bytes: int,
        tmp_dir: Path,
        small_fields: frozenset[str] = frozenset(),
        small_limit: int = SMALL_PART_LIMIT,
    ) -> None:
        self.file_fields = file_fields
        self.small_fields = small_fields
        self.small_limit = small_limit
        self.max_file_bytes = max_file_bytes
        self.tmp_dir = tmp_dir
        self.form = ParsedForm()
        self.part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}

    # python-multipart callbacks ------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self.part = _Part()
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part = self.part
        part.name = name
        if name in self.form.fields or name in self.form.files or name in self.form.small:
            raise ValidationFailed(f"field {name!r} was sent more than once", field=name)
        if name in self.small_fields:
            part.small = True
            part.filename = os.path.basename(filename.decode("utf-8", "replace")) if filename is not None else None
            return
        if filename is not None or name in self.file_fields:
            part.filename = os.path.basename(filename.decode("utf-8", "replace")) if filename else ""
            if "\x00" in part.filename or len(part.filename) > MAX_FILENAME:
                raise ValidationFailed(
                    f"the {name} file name must be at most {MAX_FILENAME} characters, without NUL", field=name
                )
            if name not in self.file_fields:
                raise ValidationFailed(
                    f"unexpected file field {name!r}; send firmware files as {' and '.join(sorted(self.file_fields))}",
                    field=name,
                )
            fd, tmp = tempfile.mkstemp(prefix=f"upload-{name}-", dir=self.tmp_dir)
            part.out = os.fdopen(fd, "wb")
            part.received = ReceivedFile(field=name, filename=part.filename, path=Path(tmp))
            self.form.files[name] = part.received
            part.sha = hashlib.sha256()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        chunk = data[start:end]
        if part.small:
            part.text += chunk
            if len(part.text) > self.small_limit:
                raise ValidationFailed(f"{part.name} is larger than {self.small_limit} bytes", field=part.name)
        elif part.received is not None and part.out is not None and part.sha is not None:
            part.received.size += len(chunk)
            if part.received.size > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"{part.name} is larger than the {self.max_file_bytes} byte limit", field=part.name
                )
            part.crc = zlib.crc32(chunk, part.crc)
            part.sha.update(chunk)
            part.out.write(chunk)
        else:
            part.text += chunk
            if len(part.text) > TEXT_FIELD_LIMIT:
                raise ValidationFailed(f"{part.name} is longer than {TEXT_FIELD_LIMIT} bytes", field=part.name)

    def on_part_end(self) -> None:
        part = self.part
        if part.small:
            self.form.small[part.name] = ReceivedBytes(part.filename, bytes(part.text))
        elif part.received is not None and part.out is not None and part.sha is not None:
            part.out.close()
            part.out = None
            part.received.crc32 = part.crc & 0xFFFFFFFF
            part.received.sha256 = part.sha.hexdigest()
        elif part.name:
            try:
                text = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationFailed(f"{part.name} is not valid UTF-8", field=part.name) from None
            if "\x00" in text:
                raise ValidationFailed(f"{part.name} must not contain NUL characters", field=part.name)
            self.form.fields[part.name] = text

    def close(self) -> None:
        if self.part.out is not None:
            self.part.out.close()


async def parse_firmware_form(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    *,
    file_fields: set[str],
    max_file_bytes: int,
    tmp_dir: Path,
    small_fields: frozenset[str] = frozenset(),
) -> ParsedForm:
    """Parse a multipart/form-data body, streaming file parts to temporary files under ``tmp_dir``.
    ``small_fields`` (signature files) are kept in memory as bytes, sent as a file or as text, at most
    ``SMALL_PART_LIMIT`` bytes each.

    On any error every temporary file is removed before the error propagates.
    """
    mime, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("send the release as multipart/form-data (curl -F ...)")
    max_body = max_file_bytes * len(file_fields) + FORM_OVERHEAD
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = 0
        if declared > max_body:
            raise PayloadTooLarge(f"the request body ({declared} bytes) is larger than the upload limit")
        free = shutil.disk_usage(tmp_dir).free
        if declared > free:  # known to fail: say so before reading a byte
            raise InsufficientStorage(
                f"the server's disk has {free} bytes free, less than this upload's {declared}: nothing was stored"
            )
    collector = _FormCollector(
        file_fields=file_fields, max_file_bytes=max_file_bytes, tmp_dir=tmp_dir, small_fields=small_fields
    )
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
    )
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > max_body:
                raise PayloadTooLarge("the request body is larger than the upload limit")
            parser.write(chunk)
        parser.finalize()
        if collector.part.out is not None:
            raise ValidationFailed("the multipart body ended in the middle of a file", field="body")
    except MultipartParseError as exc:
        collector.close()
        collector.form.cleanup()
        raise ValidationFailed(f"malformed multipart body: {exc}", field="body") from None
    except BaseException:
        collector.close()
        collector.form.cleanup()
        raise
    return collector.form
