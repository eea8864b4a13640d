"""parse_firmware_form on bodies that arrive in many small chunks, as they do from a real network.

The TestClient hands the app the whole body in one message, so the chunk-by-chunk path (size, CRC32 and
SHA-256 carried across chunks; the limit hit in the middle of a file) is tested here directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bota_ota.core.errors import PayloadTooLarge, ValidationFailed
from bota_ota.firmware.upload import ParsedForm, parse_firmware_form
from tests.support.factories import crc32, firmware_bytes, sha256_hex


def _encode(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    request = httpx.Request(
        "POST",
        "http://x/api/v1/firmware",
        data=fields,
        files={k: (name, data, "application/octet-stream") for k, (name, data) in files.items()},
    )
    return request.headers["content-type"], request.read()


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _parse(content_type: str, body: bytes, chunk: int, tmp: Path, limit: int = 1024 * 1024) -> ParsedForm:
    return asyncio.run(
        parse_firmware_form(
            content_type,
            str(len(body)),
            _chunks(body, chunk),
            file_fields={"bin", "ufw"},
            max_file_bytes=limit,
            tmp_dir=tmp,
        )
    )


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 65_536, 10**9])
def test_checksums_are_carried_across_chunks(tmp_path: Path, chunk: int) -> None:
    image = firmware_bytes(5_000 if chunk == 1 else 200_003, seed=chunk)
    ble = firmware_bytes(3_001, seed=chunk + 1)
    content_type, body = _encode(
        {"version": "v1.0.1", "model": "bota-pin", "notes": "héllo"}, {"bin": ("a.bin", image), "ufw": ("b.ufw", ble)}
    )
    form = _parse(content_type, body, chunk, tmp_path)
    try:
        assert form.fields == {"version": "v1.0.1", "model": "bota-pin", "notes": "héllo"}
        got = form.files["bin"]
        assert (got.filename, got.size, got.crc32, got.sha256) == ("a.bin", len(image), crc32(image), sha256_hex(image))
        assert got.path.read_bytes() == image
        assert got.path.parent == tmp_path
        other = form.files["ufw"]
        assert (other.size, other.crc32, other.sha256) == (len(ble), crc32(ble), sha256_hex(ble))
        assert other.path.read_bytes() == ble
    finally:
        form.cleanup()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk", [1_000, 65_536])
def test_limit_is_enforced_mid_stream_and_temp_files_removed(tmp_path: Path, chunk: int) -> None:
    limit = 50_000
    content_type, body = _encode(
        {"version": "v1.0.1", "model": "bota-pin"},
        {"ufw": ("ok.ufw", firmware_bytes(1_000, seed=1)), "bin": ("big.bin", firmware_bytes(2 * limit, seed=2))},
    )
    seen: list[int] = []

    async def counting() -> AsyncIterator[bytes]:
        async for part in _chunks(body, chunk):
            seen.append(len(part))
            yield part

    with pytest.raises(PayloadTooLarge) as raised:
        asyncio.run(
            parse_firmware_form(
                content_type,
                None,  # no Content-Length: the limit must hold while streaming
                counting(),
                file_fields={"bin", "ufw"},
                max_file_bytes=limit,
                tmp_dir=tmp_path,
            )
        )
    assert raised.value.field == "bin"
    assert list(tmp_path.iterdir()) == []
    if chunk < limit:
        # Refused as soon as the limit was crossed, not after reading everything.
        assert sum(seen) < len(body)


def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"x"

    with pytest.raises(PayloadTooLarge):
        asyncio.run(
            parse_firmware_form(
                "multipart/form-data; boundary=x",
                str(10 * 1024 * 1024),
                body(),
                file_fields={"bin", "ufw"},
                max_file_bytes=1024 * 1024,
                tmp_dir=tmp_path,
            )
        )
    assert read == []


def test_body_ending_inside_a_file_is_refused_and_cleaned_up(tmp_path: Path) -> None:
    content_type, body = _encode({"version": "v1.0.1", "model": "bota-pin"}, {"bin": ("a.bin", firmware_bytes(30_000))})
    with pytest.raises(ValidationFailed):
        _parse(content_type, body[: len(body) // 2], 1_000, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_large_file_is_never_held_in_memory(tmp_path: Path) -> None:
    """A 32 MiB .bin arriving in 64 KiB chunks: parsing it allocates a small, fixed amount of memory, not
    the file (a firmware file is never held whole in memory). docs/performance.md (d) measures
    the same on a running server with a 200 MiB upload."""
    chunk, count = 64 * 1024, 512
    boundary = "bota-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\nv1.0.1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbota-pin\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="bin"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    expected_crc, expected_sha = 0, hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        nonlocal expected_crc
        yield head
        for i in range(count):
            data = i.to_bytes(4, "big") * (chunk // 4)  # a fresh chunk each time, as from the network
            expected_crc = zlib.crc32(data, expected_crc)
            expected_sha.update(data)
            yield data
        yield tail

    tracemalloc.start()
    try:
        form = asyncio.run(
            parse_firmware_form(
                f"multipart/form-data; boundary={boundary}",
                None,
                body(),
                file_fields={"bin", "ufw"},
                max_file_bytes=64 * 1024 * 1024,
                tmp_dir=tmp_path,
            )
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        got = form.files["bin"]
        assert (got.size, got.crc32, got.sha256) == (chunk * count, expected_crc, expected_sha.hexdigest())
        assert got.path.stat().st_size == chunk * count
        assert peak < 2 * 1024 * 1024, f"parsing a {chunk * count} byte upload peaked at {peak} bytes"
    finally:
        form.cleanup()
