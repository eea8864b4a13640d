"""Local file storage with HMAC-signed, expiring download URLs served by this server.

Hand-written signing: it is ten lines of ``hmac`` and keeps the embedded default free of any extra
service. The signature covers the storage key and the expiry, so neither can be changed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from bota_ota.storage.base import BlobInfo, SignedUrl

DOWNLOAD_PREFIX = "/dl/"


def sign(secret: str, key: str, expires: int) -> str:
    msg = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def verify(secret: str, key: str, expires: int, signature: str, now: float | None = None) -> bool:
    if expires < (now if now is not None else time.time()):
        return False
    # compare_digest refuses non-ASCII str: compare bytes, so any garbage is simply "not equal".
    return hmac.compare_digest(sign(secret, key, expires).encode(), signature.encode("utf-8", "replace"))


class LocalBlobStore:
    def __init__(self, root: Path, secret: str) -> None:
        self.root = root.resolve()
        self.secret = secret
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the blob directory: {key!r}")
        return path

    def put_file(self, key: str, source: Path, *, content_type: str = "application/octet-stream") -> None:
        dest = self.path_for(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            try:
                # Same filesystem (the upload temp dir lives under the data dir): a rename, no copy.
                os.replace(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a copy cut short (a full disk) leaves nothing behind
            raise

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        # Tidy empty parent folders up to the root.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list_blobs(self, prefix: str) -> Iterator[BlobInfo]:
        # Walk only the folder the prefix names, then match the rest of the prefix against each key.
        folder = self.path_for(prefix.rpartition("/")[0]) if "/" in prefix else self.root
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted (or renamed from .part) while we walked
                    continue
                yield BlobInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))

    def signed_get_url(self, key: str, *, base_url: str, ttl_s: int, filename: str | None = None) -> SignedUrl:
        expires = int(time.time()) + ttl_s
        query = {"expires": str(expires), "sig": sign(self.secret, key, expires)}
        url = f"{base_url.rstrip('/')}{DOWNLOAD_PREFIX}{quote(key)}?{urlencode(query)}"
        return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
