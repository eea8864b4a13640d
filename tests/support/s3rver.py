"""Start and stop a real S3-protocol server (the npm package ``@20minutes/s3rver``) for tests.

Plain module (no pytest imports) so any test folder can build its own fixture on it::

    server = S3rverProcess(workdir)
    info = server.start()  # -> S3rverInfo(endpoint_url=..., access_key_id=..., ...)
    ...
    server.stop()

or ``with running_s3rver(workdir) as info: ...``.

The package is pinned in ``tests/s3server/package.json`` / ``package-lock.json``. If its
``node_modules`` is missing or holds another version (fresh clone, old checkout),
:func:`ensure_installed` runs ``npm ci --prefix tests/s3server`` once, so ``make test`` works
without a separate step.

``@20minutes/s3rver`` is a maintained fork of ``s3rver`` (needs Node.js >= 20). Unlike s3rver 3.7.1
it verifies SigV4 signatures, both in the ``Authorization`` header and in presigned query strings
(403 ``SignatureDoesNotMatch``). Its npm tarball ships no ``bin/s3rver.js`` although its
package.json declares one, so it is started through our launcher ``tests/s3server/run-s3rver.js``,
which runs the package's ``lib/cli`` (same flags as the ``s3rver`` command). Known limits of 4.0.4
(``lib/middleware/authentication.js``, ``lib/signature/v4.js``, ``lib/controllers/object.js``):

* It enforces no access control: a request with no signature at all is served as "anonymous", and
  that includes GET, PUT and DELETE. Only a request that carries a signature has it checked.
* It canonicalises query values with ``encodeURIComponent``, which leaves ``!'()*`` unescaped, so
  a presigned URL whose query (e.g. ``response-content-disposition``) contains one of those
  characters gets a false 403 ``SignatureDoesNotMatch`` (real S3 accepts it). Object keys with
  those characters are fine.
* Ranges: ``bytes=a-b`` and ``bytes=a-`` work; a suffix range ``bytes=-N`` returns the first N+1
  bytes instead of the last N, ``bytes=0-0`` returns the whole object (as a 206), and multi-range
  requests get the whole object too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "s3server"
"""``tests/s3server``: package.json + package-lock.json pinning the server, and its launcher."""

PACKAGE_NAME = "@20minutes/s3rver"
MIN_NODE_MAJOR = 20  # package.json "engines" of @20minutes/s3rver 4.0.4
LAUNCHER = PACKAGE_DIR / "run-s3rver.js"
"""Our launcher: ``require('@20minutes/s3rver/lib/cli').parseAsync(process.argv)``."""

# The fork's hard-coded dummy account (lib/models/account.js: createKeyPair('S3RVER', 'S3RVER')).
ACCESS_KEY_ID = "S3RVER"
SECRET_ACCESS_KEY = "S3RVER"
REGION = "us-east-1"

_LISTENING_RE = re.compile(r"S3rver listening on (\S+):(\d+)")


class S3rverError(RuntimeError):
    """s3rver could not be installed or started; the message says what to do."""


@dataclass(frozen=True)
class S3rverInfo:
    endpoint_url: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION
    data_dir: Path | None = None
    log_file: Path | None = None


def _pinned_version() -> str:
    package = json.loads((PACKAGE_DIR / "package.json").read_text())
    return str(package["dependencies"][PACKAGE_NAME])


def _installed_version() -> str | None:
    manifest = PACKAGE_DIR / "node_modules" / PACKAGE_NAME / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _cli_installed() -> bool:
    return (PACKAGE_DIR / "node_modules" / PACKAGE_NAME / "lib" / "cli.js").is_file()


def ensure_installed() -> Path:
    """Return the path of our launcher script, running ``npm ci`` first if the pinned server is not installed.

    A lock file serialises concurrent callers (pytest-xdist workers) so only one runs ``npm ci``.
    """
    if not LAUNCHER.is_file():
        raise S3rverError(f"{LAUNCHER} is missing; it is part of the repository (git checkout tests/s3server).")
    wanted = _pinned_version()
    if _installed_version() == wanted and _cli_installed():
        return LAUNCHER

    digest = hashlib.sha256(str(PACKAGE_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"bota-ota-s3rver-npm-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() == wanted and _cli_installed():  # another worker installed it
            return LAUNCHER
        npm = shutil.which("npm")
        if npm is None:
            raise S3rverError(
                f"{PACKAGE_NAME} {wanted} is not installed in {PACKAGE_DIR / 'node_modules'} and `npm` is "
                "not on PATH. Install Node.js (>= 20, with npm), then run: npm ci --prefix tests/s3server"
            )
        proc = subprocess.run(
            [npm, "ci", "--prefix", str(PACKAGE_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or _installed_version() != wanted or not _cli_installed():
            raise S3rverError(
                f"`npm ci --prefix tests/s3server` failed (exit {proc.returncode}); run it by hand to see "
                f"why.\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
            )
    return LAUNCHER


def _check_node_version(node: str) -> None:
    proc = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    match = re.match(r"v(\d+)\.", proc.stdout.strip())
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise S3rverError(
            f"{node} --version says {proc.stdout.strip() or proc.stderr.strip()!r}; {PACKAGE_NAME} needs "
            f"Node.js >= {MIN_NODE_MAJOR}."
        )


class S3rverProcess:
    """One ``node run-s3rver.js`` process (@20minutes/s3rver) on 127.0.0.1, a port the OS picks, data in ``workdir``."""

    def __init__(self, workdir: Path, *, startup_timeout_s: float = 30.0) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_file = workdir / "s3rver.log"
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, script: Path, node: str) -> list[str]:
        return [
            node,
            # s3rver encrypts list continuation tokens with DES, which Node's OpenSSL 3 refuses without the
            # legacy provider: a listing past its first page would answer 500.
            "--openssl-legacy-provider",
            str(script),
            "--directory",
            str(self.data_dir),
            "--address",
            "127.0.0.1",
            # Port 0: the OS picks a free port (no race with other test runs); read back from its log line.
            "--port",
            "0",
            # Silences the server's winston logger only; the CLI's "listening on" line is still printed.
            "--silent",
            # Never treat the host name as a bucket name: every request is path-style.
            "--no-vhost-buckets",
            # (--allow-mismatched-signatures is deliberately not passed: signatures must be checked.)
        ]

    def start(self) -> S3rverInfo:
        node = shutil.which("node")
        if node is None:
            raise S3rverError(
                f"`node` is not on PATH; the s3 tests need Node.js (>= {MIN_NODE_MAJOR}) to run {PACKAGE_NAME}."
            )
        _check_node_version(node)
        script = ensure_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            # Output goes to a file, not a pipe, so a chatty server can never block on a full pipe.
            self.proc = subprocess.Popen(
                self.command(script, node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() also reaches any children
            )
        try:
            host, port = self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return S3rverInfo(endpoint_url=f"http://{host}:{port}", data_dir=self.data_dir, log_file=self.log_file)

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_until_listening(self) -> tuple[str, int]:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3rverError(
                    f"s3rver exited with code {self.proc.returncode} during start-up:\n{self._log_text()}"
                )
            match = _LISTENING_RE.search(self._log_text())
            if match:
                host, port = match.group(1), int(match.group(2))
                with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                    return host, port
            time.sleep(0.05)
        raise S3rverError(
            f"s3rver did not accept connections within {self.startup_timeout_s:.0f}s:\n{self._log_text()}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def running_s3rver(workdir: Path, *, startup_timeout_s: float = 30.0) -> Iterator[S3rverInfo]:
    server = S3rverProcess(workdir, startup_timeout_s=startup_timeout_s)
    info = server.start()
    try:
        yield info
    finally:
        server.stop()
