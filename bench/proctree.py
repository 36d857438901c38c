"""A process tree read from /proc, for benchmarks that start and stop real topologies."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The process's children, from every one of its threads."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> set[int]:
    """The process and its descendants, walked through their children: the nodes
    of ``edgerun up`` each lead a process group of their own, so the group of
    ``up`` does not hold them."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += children(p)
    return found


def alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` still runs (a zombie has stopped)."""
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            return True
    return False


def rss_mb(pids: set[int]) -> float:
    """Resident set size, summed (pages shared between processes counted each time)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def pss_mb(pids: set[int]) -> float:
    """Proportional set size: pages shared by forked sandboxes are counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024
