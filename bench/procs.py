"""A server's whole process tree from /proc (Linux): CPU time, resident memory, open descriptors.

A multi-process server is a supervisor plus workers (and multiprocessing's helper processes), so
its CPU cost per request is the sum over every process below the one the benchmark started; the
tree is found through ``/proc/PID/task/*/children`` each time, so a replaced worker is counted too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants alive now, parents before children."""
    pids, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    queue.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 for one that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> dict[int, float]:
    """CPU seconds used so far by each process of ``root``'s tree, by PID."""
    return {pid: process_cpu_s(pid) for pid in tree_pids(root)}


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree used between two :func:`tree_cpu_s` samples (a process that appeared in
    between counts from zero; one that ended in between loses its last share, which is rare)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def rss_mb(pid: int) -> float | None:
    """Resident set size in MiB (VmRSS), or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    """Open file descriptors, or None if the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def command_line(pid: int) -> str:
    """The process's whole command line ("?" for one that is gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in argv if a)


def process_name(pid: int) -> str:
    """The process's command line, shortened, for tables."""
    return command_line(pid)[:80]
