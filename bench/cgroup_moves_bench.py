"""How long moving a process into a cgroup takes after a quiet spell, with and without
the node's MigrationWarmer, and what the warmer costs (cgroup v1, as root).

A child process is moved between two memory cgroups after ``--gap-ms`` of quiet,
``--moves`` times, first with the warmer parked, then with it active (the same run);
its cost is this process's CPU time over the active span less the parked one.

    .venv/bin/python bench/cgroup_moves_bench.py [--moves 30] [--gap-ms 100]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import time
from pathlib import Path

from edgerun.sandbox.cgroups import Cgroups


def move_ms(path: Path, pid: int) -> float:
    start = time.perf_counter()
    (path / "cgroup.procs").write_text(str(pid))
    return (time.perf_counter() - start) * 1000


def moves(cgroups: Cgroups, pid: int, count: int, gap_s: float) -> list[float]:
    base = Path("/sys/fs/cgroup/memory/edgerun") / cgroups.freezer_dir.name  # type: ignore[union-attr]
    pair = [base / "bench-a", base / "bench-b"]
    for path in pair:
        path.mkdir(exist_ok=True)
    out = []
    for i in range(count):
        time.sleep(gap_s)
        out.append(move_ms(pair[i % 2], pid))
    return sorted(out)


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=30)
    parser.add_argument("--gap-ms", type=float, default=100.0)
    args = parser.parse_args()
    cgroups = Cgroups(f"bench-moves-{os.getpid()}-{secrets.token_hex(3)}")
    if cgroups.version != 1:
        raise SystemExit("needs root and cgroup v1")
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    warmer = cgroups.warmer()
    assert warmer is not None
    gap = args.gap_ms / 1000
    try:
        cpu = time.process_time()
        cold = moves(cgroups, child, args.moves, gap)  # the warmer parked all along
        parked_cpu = time.process_time() - cpu
        warmer.touch()
        cpu = time.process_time()
        warm = moves(cgroups, child, args.moves, gap)
        active_cpu = time.process_time() - cpu
    finally:
        warmer.close()
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        cgroups.remove_all()
    span_s = args.moves * gap
    figures = {
        "bench": "cgroup_moves",
        "gap_ms": args.gap_ms,
        "moves": args.moves,
        "without_warmer_ms": {"p50": pct(cold, 0.5), "p99": pct(cold, 0.99), "max": cold[-1]},
        "with_warmer_ms": {"p50": pct(warm, 0.5), "p99": pct(warm, 0.99), "max": warm[-1]},
        "warmer_core_share": round(max(0.0, active_cpu - parked_cpu) / span_s, 4),
    }
    print(f"move after {args.gap_ms:g} ms quiet   p50 ms   p99 ms")
    for label, key in (("without warmer", "without_warmer_ms"), ("with warmer", "with_warmer_ms")):
        f = figures[key]
        print(f"{label:<27}{f['p50']:>8.3f}{f['p99']:>9.3f}")  # type: ignore[index]
    print(f"warmer cost while active: {figures['warmer_core_share']:.2%} of one core")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
