"""Process plumbing for the benchmarks: start and stop servers, read CPU and memory from /proc, run wrk.

Every process a benchmark starts goes into a ``Processes`` registry and gets its own process group, so
the registry can end it and everything it forked (uvicorn workers, nginx workers) by that group's id,
on success, on error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procfs import children

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"
BIN_DIR = Path(sys.executable).parent
# The same key for every server of a run, so the harness can sign download URLs the server accepts.
SECRET_KEY = "benchmark-secret-key-not-for-production-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group this process leads, then SIGKILL if it has not ended."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Workers of a group whose leader has ended (never expected, but never left behind either).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class Processes:
    """Every process a benchmark started; ``stop_all`` ends them in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.started = 0  # numbers the log files

    def start(
        self, name: str, cmd: Sequence[str | Path], *, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log_path = self.log_dir / f"{name}-{self.started}.log"
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                [str(c) for c in cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        proc.stop(timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    registry = Processes(log_dir)
    previous = signal.getsignal(signal.SIGTERM)
    # A SIGTERM to the harness ends its servers too (KeyboardInterrupt unwinds through the finally).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield registry
    finally:
        registry.stop_all()
        signal.signal(signal.SIGTERM, previous)


def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers (any status below 500)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.output()}")


@dataclass
class Server:
    proc: Proc
    port: int
    workers: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_args(port: int, workers: int, data_dir: Path) -> list[str]:
    """The ``bota-ota serve`` options every benchmark server (bota-ota and the bare hello) gets."""
    return [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "--data-dir",
        str(data_dir),
    ]


def start_bota(
    procs: Processes, data_dir: Path, *, workers: int, env: dict[str, str] | None = None, name: str = "bota-ota"
) -> Server:
    port = free_port()
    full_env = {"BOTA_OTA_SECRET_KEY": SECRET_KEY, **(env or {})}
    proc = procs.start(name, [BIN_DIR / "bota-ota", *serve_args(port, workers, data_dir)], env=full_env)
    server = Server(proc, port, workers)
    wait_http(server.url + "/healthz", proc)
    _wait_workers(proc, workers)
    return server


def start_hello(procs: Processes, *, workers: int, scratch: Path) -> Server:
    """The bare ASGI hello app, launched through ``bota-ota serve`` itself (see hello_server.py)."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="hello-", dir=scratch))
    proc = procs.start(
        "hello",
        [sys.executable, "-m", "benchmarks.hello_server", *serve_args(port, workers, data_dir)],
        env={"BOTA_OTA_SECRET_KEY": SECRET_KEY},
    )
    server = Server(proc, port, workers)
    wait_http(server.url + "/", proc)
    _wait_workers(proc, workers)
    return server


def _wait_workers(proc: Proc, workers: int, timeout: float = 30.0) -> None:
    """With --workers N, uvicorn's supervisor forks N workers: wait until all of them are up."""
    if workers <= 1:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # uvicorn's supervisor → spawn's resource tracker + N workers; count the workers by their threads.
        kids = [p for p in children(proc.pid) if "resource_tracker" not in _cmdline(p)]
        if len(kids) >= workers:
            time.sleep(1.0)  # each worker runs its lifespan start-up after forking
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: expected {workers} workers, saw {children(proc.pid)}")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- wrk ------------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.duration_s / 1e6 if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "mb_per_s": round(self.mb_per_s, 1),
            "errors": self.errors,
            "latency_ms": self.latency_ms,
        }


def run_wrk(
    url: str,
    *,
    duration_s: float,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk; its Lua ``done`` hook (report.lua, or the script's own) prints one JSON line."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:.0f}s",
        "-s",
        str(script or BENCH_DIR / "lua" / "report.lua"),
        url,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=duration_s + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no JSON report:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line)
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=float(data["duration_us"]) / 1e6,
        bytes=int(data["bytes"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_ms={k: round(float(v) / 1000, 3) for k, v in data["latency_us"].items()},
    )


# --- tools ----------------------------------------------------------------------------------------------


def ensure_tools(needed: Sequence[str]) -> None:
    """Install missing Debian packages (wrk, nginx, curl, postgresql), as .ci/run does for its own."""
    packages = {"wrk": "wrk", "nginx": "nginx", "curl": "curl", "postgres": "postgresql"}
    missing = []
    for tool in needed:
        if tool == "postgres":
            if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
                missing.append(packages[tool])
        elif shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing.append(packages[tool])
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing tools: install the Debian packages {' '.join(missing)} (apt-get install)")
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


# --- results --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the printed table (and of ``rows`` in the JSON)."""

    bench: str
    config: str
    metric: str
    value: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "config": self.config,
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
        }


@dataclass
class Options:
    """What the command line chose; ``quick`` shrinks every size to check the harness in a few minutes."""

    quick: bool = False
    repeat: int = 1
    scratch: Path = Path("/tmp")
    heartbeat_devices: int = 100_000
    heartbeat_s: float = 20.0
    rate: float = 2000.0
    rate_s: float = 15.0
    workers: tuple[int, ...] = (1, 2)
    databases: tuple[str, ...] = ("sqlite", "postgres")
    rollout_devices: int = 10_000
    rollout_interval_s: int = 5
    rollout_configs: tuple[tuple[str, int], ...] = (("sqlite", 1),)
    download_bytes: int = 100 * 1024 * 1024
    download_s: float = 15.0
    upload_bytes: int = 200 * 1024 * 1024
    stage_devices: int = 100_000
    detail_requests: int = 20

    @classmethod
    def quick_options(cls) -> Options:
        return cls(
            quick=True,
            heartbeat_devices=2_000,
            heartbeat_s=4.0,
            rate_s=4.0,
            rollout_devices=300,
            rollout_interval_s=2,
            download_bytes=10 * 1024 * 1024,
            download_s=3.0,
            upload_bytes=20 * 1024 * 1024,
            stage_devices=5_000,
            detail_requests=5,
        )


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
