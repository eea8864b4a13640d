"""Start a real ``bota-ota serve`` process for end-to-end tests and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN_DIR = Path(sys.executable).parent
TOKEN_RE = re.compile(r"Admin API token:\s+(\S+)")
PASSWORD_RE = re.compile(r"Password:\s+(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra_args: str, timeout: float = 90.0) -> None:
        """Spawn and wait until healthy; a server that does not get there is stopped, never leaked.
        (90 s: a first start migrates the database, and CI machines can be slow and loaded.)"""
        self.spawn(*extra_args)
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def spawn(self, *extra_args: str) -> None:
        """Start the process and return at once (several servers can then start side by side)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN_DIR / "bota-ota"),
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            # Its own process group: with --workers, stop() can kill the workers too if it must.
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def admin_token_from_output(self) -> str | None:
        m = TOKEN_RE.search(self.output())
        return m.group(1) if m else None

    def stop(self) -> int | None:
        """SIGTERM and wait. uvicorn shuts down gracefully, then re-raises the signal: expect -15 (with
        --workers the supervisor exits 0). If it does not stop in time, its whole process group is killed,
        so no worker outlives a test."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "bota-ota"), *args], env=env, capture_output=True, text=True, check=check, timeout=60
    )


def server_env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTA_OTA_")}
    if database_url:
        env["BOTA_OTA_DATABASE_URL"] = database_url
    env["COLUMNS"] = "200"
    env.update(extra)
    return env
