"""A PostgreSQL cluster of the benchmarks' own (Debian's packages), kept under benchmarks/.cache/pg.

Its own cluster, not the test suite's (scripts/start-test-postgres wipes and restarts that one, which
other people's test runs may be using). Settings: PostgreSQL's defaults, except
``synchronous_commit=off``, which gives the durability SQLite has in WAL mode with synchronous=NORMAL
(a power cut may lose the last commits, never corrupts); fsync stays on. Kept between runs so the seeded
template databases are reused; started and stopped by each run.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.common import CACHE_DIR, Proc, Processes, free_port, log


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1].parent


class Postgres:
    def __init__(self, procs: Processes, data_dir: Path = CACHE_DIR / "pg") -> None:
        self.procs = procs
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: Proc | None = None
        self.bin = _pg_bin()
        self.as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL bota-ota is given."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str | Path) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return [*prefix, *(str(a) for a in args)]

    def start(self) -> None:
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists() and version_file.read_text().strip() != self.bin.parent.name:
            shutil.rmtree(self.data_dir)  # made by another PostgreSQL version
        if not version_file.exists():
            log(f"initdb {self.data_dir}")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.as_postgres:
                pw = pwd.getpwnam("postgres")
                os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            subprocess.run(
                self._cmd(self.bin / "initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust"),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # left by a killed run
        self.proc = self.procs.start(
            "postgres",
            self._cmd(
                self.bin / "postgres",
                "-D",
                self.data_dir,
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=300",
                "-c",
                "synchronous_commit=off",
            ),
            cwd=Path("/"),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.proc.output()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)  # SIGTERM: PostgreSQL's smart shutdown
            self.proc = None

    def exists(self, database: str) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            return row is not None

    def drop(self, database: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def create(self, database: str, template: str | None = None) -> None:
        self.drop(database)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            else:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(database), sql.Identifier(template))
                )

    def vacuum_analyze(self, database: str) -> None:
        with psycopg.connect(self.admin_url.rsplit("/", 1)[0] + "/" + database, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")


def safe_name(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())
