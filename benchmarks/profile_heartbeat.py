"""Where a heartbeat's time goes: py-spy samples the server while wrk sends heartbeats.

    python -m benchmarks.profile_heartbeat [--database sqlite|postgres] [--seconds 15] [--devices 100000]

Prints the frames with the most samples (own time, then including callees; only samples of a thread
holding the GIL, so waiting threads do not count, and time uvloop spends in C shows as its caller) and
keeps the raw profile
(py-spy's "raw" format; flamegraph.pl draws it). py-spy comes from PyPI through ``uv tool run`` unless it
is on PATH; it needs ptrace (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import seed
from benchmarks.bench_heartbeat import HEARTBEAT_PATH, check_heartbeat
from benchmarks.common import BENCH_DIR, ensure_tools, log, processes, start_bota
from benchmarks.pg import Postgres


def py_spy() -> list[str]:
    found = shutil.which("py-spy")
    return [found] if found else ["uv", "tool", "run", "py-spy"]


# Own time by layer, from the file of the frame a sample was taken in. A call into C (the database driver,
# uvloop's transport, pydantic-core) counts for the Python frame that made it.
LAYERS = (
    (
        "database driver (psycopg, sqlite3 calls: connect, execute, fetch, commit)",
        ("psycopg", "do_execute", "do_commit", "do_rollback", "fetch", "_sqlite_pragmas", "Dialect.connect"),
    ),
    ("SQLAlchemy (ORM, Core, pool)", ("sqlalchemy/",)),
    ("Pydantic (validation, serialization)", ("pydantic",)),
    ("FastAPI / Starlette (routing, dependencies, middleware)", ("fastapi/", "starlette/")),
    ("thread hand-off (anyio worker threads, locks, queues)", ("anyio/", "threading.py", "queue.py")),
    ("uvicorn and the event loop (HTTP, transport)", ("uvicorn/", "asyncio/", "uvloop")),
    ("bota_ota's own code", ("bota_ota/",)),
)


def layer_of(frame: str) -> str:
    for name, needles in LAYERS:
        if any(n in frame for n in needles):
            return name
    return "other"


def summarize(raw: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        own[frames[-1]] += n
        layers[layer_of(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "own time by layer:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in layers.most_common()]
    lines += ["", "own time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("heartbeat-profile.raw"))
    args = parser.parse_args()
    ensure_tools(["wrk"] + (["postgres"] if args.database == "postgres" else []))
    scratch = Path(tempfile.mkdtemp(prefix="bota-profile-"))
    try:
        with processes(scratch / "logs") as procs:
            pg = None
            if args.database == "postgres":
                pg = Postgres(procs)
                pg.start()
            inst = seed.instance(seed.SeedSpec("fleet", args.devices), scratch / "data", pg)
            server = start_bota(procs, inst.data_dir, workers=1, env=inst.env)
            check_heartbeat(server)
            env = {"BENCH_LUA_DIR": str(BENCH_DIR / "lua"), "BENCH_DEVICES": str(args.devices)}
            wrk = procs.start(
                "wrk",
                [
                    "wrk",
                    "-t1",
                    f"-c{args.connections}",
                    f"-d{args.seconds + 4}s",
                    "-s",
                    BENCH_DIR / "lua" / "heartbeat.lua",
                    server.url + HEARTBEAT_PATH,
                ],
                env=env,
            )
            log(f"profiling the server ({args.database}) for {args.seconds} s under wrk")
            subprocess.run(
                [
                    *py_spy(),
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--duration",
                    str(args.seconds),
                    "--format",
                    "raw",
                    "--output",
                    str(args.out),
                    "--nonblocking",
                    "--gil",  # only samples holding the GIL: Python at work, not threads waiting
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wrk.popen.wait()
            print(wrk.output())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(summarize(args.out))
    print(f"\nraw profile: {args.out}")


if __name__ == "__main__":
    main()
