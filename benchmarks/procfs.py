"""Reading CPU time and memory of processes from /proc (Linux), without extra packages."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(c) for c in f.read().split())
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's workers, nginx's workers)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children(p))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status, e.g. VmRSS or VmHWM (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class TreeCpu:
    """CPU seconds used by a process tree, including children that exited meanwhile.

    Workers that live for the whole measurement are summed directly; the tree is re-read at each
    sample so late-forked processes are counted too.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[int, float] = {}

    def sample(self) -> float:
        for p in process_tree(self.pid):
            value = cpu_seconds(p)
            if value or p not in self.last:
                self.last[p] = max(value, self.last.get(p, 0.0))
        return sum(self.last.values())


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user/nice.
    return sum(values[i] for i in (0, 1, 2, 5, 6, 7)) / CLK_TCK


@dataclass
class CpuWindow:
    """CPU used by some process trees over a wall-clock window, and by the whole machine.

    ``others`` is what the rest of the machine used meanwhile (other people's builds and tests on a
    shared machine): a run with much of it is noisy.
    """

    trees: dict[str, TreeCpu]
    started: float = 0.0
    start_cpu: dict[str, float] = field(default_factory=dict)
    start_system: float = 0.0
    start_client: float = 0.0

    @classmethod
    def start(cls, **pids: int) -> CpuWindow:
        window = cls({name: TreeCpu(pid) for name, pid in pids.items()})
        window.start_cpu = {name: t.sample() for name, t in window.trees.items()}
        window.start_system = system_busy_seconds()
        window.start_client = client_cpu_seconds()
        window.started = time.monotonic()
        return window

    def stop(self) -> dict[str, dict[str, float]]:
        """CPU per tree, ``client`` (the harness, wrk, curl, the load generator) and ``others``."""
        wall = time.monotonic() - self.started
        system = system_busy_seconds() - self.start_system
        out: dict[str, dict[str, float]] = {}
        used_by = {name: tree.sample() - self.start_cpu[name] for name, tree in self.trees.items()}
        used_by["client"] = client_cpu_seconds() - self.start_client
        ours = 0.0
        for name, used in used_by.items():
            ours += used
            out[name] = {"cpu_s": round(used, 2), "cores": round(used / wall, 3) if wall else 0.0}
        others = max(0.0, system - ours)
        out["others"] = {"cpu_s": round(others, 2), "cores": round(others / wall, 3) if wall else 0.0}
        return out


def client_cpu_seconds() -> float:
    """CPU seconds of the harness itself and of its waited-for children (wrk, curl, the load generator)."""
    usage = os.times()
    return usage.user + usage.system + usage.children_user + usage.children_system


class PeakSampler(threading.Thread):
    """Samples the summed RSS of a process tree every ``interval_s`` and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = sum(rss_bytes(p) for p in process_tree(self.pid))
            self.peak = max(self.peak, total)
            self.samples += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak
