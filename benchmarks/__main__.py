"""Run the benchmarks, print a table and write JSON: ``make bench`` or ``python -m benchmarks``.

python -m benchmarks                 # everything (about 25 minutes on a 2-core machine)
python -m benchmarks --only a,c      # a subset: a heartbeat, b rollout, c downloads, d upload, e rollout engine
python -m benchmarks --quick         # small sizes, to check the harness in a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import RESULTS_DIR, ROOT, Options, Processes, Row, ensure_tools, log, machine_info, processes
from benchmarks.pg import Postgres

BENCHES = ("a", "b", "c", "d", "e")
NAMES = {"a": "heartbeat", "b": "rollout", "c": "downloads", "d": "upload", "e": "rollout engine"}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (harness check)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per heartbeat config and per (e) stage start (median; default 2)"
    )
    parser.add_argument("--databases", default=None, help="for (a) and (e): sqlite,postgres")
    parser.add_argument("--workers", default=None, help="for (a) and (c): worker counts, e.g. 1,2")
    parser.add_argument(
        "--rollout", default=None, help="for (b): database:workers pairs, e.g. sqlite:1,postgres:2 (default sqlite:1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, data dirs)")
    args = parser.parse_args(argv)
    opts = Options.quick_options() if args.quick else Options()
    opts.repeat = args.repeat or (1 if args.quick else 2)
    if args.databases:
        opts.databases = tuple(d.strip() for d in args.databases.split(",") if d.strip())
    if args.workers:
        opts.workers = tuple(int(w) for w in args.workers.split(","))
    if args.rollout:
        pairs = [p.split(":") for p in args.rollout.split(",") if p.strip()]
        opts.rollout_configs = tuple((db.strip(), int(w)) for db, w in pairs)
    unknown = set(args.only.split(",")) - set(BENCHES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from a,b,c,d,e")
    return args, opts


def print_table(rows: list[Row], console: Console) -> None:
    table = Table(title="bota-ota benchmarks", show_lines=False)
    for name, justify in (
        ("bench", "left"),
        ("config", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("target", "left"),
        ("met", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        met = "" if r.met is None else ("[green]yes[/green]" if r.met else "[red]no[/red]")
        table.add_row(
            r.bench, r.config, r.metric, r.value, r.baseline, "" if r.ratio is None else f"{r.ratio:.2f}", r.target, met
        )
    console.print(table)


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    selected = [b for b in BENCHES if b in args.only.split(",")]
    needs = ["wrk"]
    if "c" in selected:
        needs.append("nginx")
    if "d" in selected:
        needs.append("curl")
    if (any(b in selected for b in ("a", "e")) and "postgres" in opts.databases) or (
        "b" in selected and any(db == "postgres" for db, _ in opts.rollout_configs)
    ):
        needs.append("postgres")
    ensure_tools(needs)

    from benchmarks import bench_download, bench_heartbeat, bench_rollout, bench_stage, bench_upload

    runners: dict[str, Callable[[Options, Processes, Postgres | None], tuple[dict[str, Any], list[Row]]]] = {
        "a": bench_heartbeat.run,
        "b": bench_rollout.run,
        "c": bench_download.run,
        "d": bench_upload.run,
        "e": bench_stage.run,
    }
    opts.scratch = Path(tempfile.mkdtemp(prefix="bota-bench-"))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # a log file gets the whole table
    results: dict[str, Any] = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "benchmarks": {},
        "rows": [],
    }
    rows: list[Row] = []
    failed = False
    try:
        with processes(opts.scratch / "logs") as procs:
            pg: Postgres | None = None
            if "postgres" in needs:
                pg = Postgres(procs)
                pg.start()
            for bench in selected:
                started = time.monotonic()
                try:
                    raw, bench_rows = runners[bench](opts, procs, pg)
                except Exception as exc:  # one broken benchmark must not lose the others' numbers
                    failed = True
                    log(f"({bench}) failed: {exc!r}")
                    raw = {"error": repr(exc)}
                    bench_rows = [Row(f"{bench} {NAMES[bench]}", "", "error", repr(exc)[:80])]
                raw["wall_s"] = round(time.monotonic() - started, 1)
                results["benchmarks"][NAMES[bench]] = raw
                rows.extend(bench_rows)
                results["rows"] = [r.as_dict() for r in rows]
                _write(args.out, results)  # after each benchmark: a later crash keeps what was measured
            if pg is not None:
                pg.stop()
    finally:
        # The processes' logs (servers, simulator, nginx, PostgreSQL) go next to the JSON, for post-mortems.
        logs = args.out.parent / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        if (opts.scratch / "logs").is_dir():
            shutil.copytree(opts.scratch / "logs", logs)
        if args.keep:
            log(f"scratch kept in {opts.scratch}")
        else:
            shutil.rmtree(opts.scratch, ignore_errors=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(args.out, results)
    print_table(rows, console)
    others = other_load(results["benchmarks"])
    if others:
        results["other_processes_cores"] = {"mean": round(sum(others) / len(others), 2), "max": round(max(others), 2)}
        _write(args.out, results)
        console.print(
            f"Other processes on this machine used {results['other_processes_cores']['mean']:.2f} cores on average "
            f"(at most {max(others):.2f}) during the measurements: on a shared machine, compare ratios, not rates."
        )
    console.print(f"JSON: {args.out}")
    return 1 if failed else 0


def other_load(tree: Any) -> list[float]:
    """Every CPU window's ``others`` (cores used by processes that are not part of the benchmark)."""
    found: list[float] = []
    if isinstance(tree, dict):
        if isinstance(tree.get("others"), dict) and "cores" in tree["others"]:
            found.append(float(tree["others"]["cores"]))
        for value in tree.values():
            found.extend(other_load(value))
    elif isinstance(tree, list):
        for value in tree:
            found.extend(other_load(value))
    return found


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
