"""Throughput of one POP with 1 and with 2 worker processes, on this 2-core machine.

The POP serves ``examples/hello`` local-warm (public, ``placement = "edge"``, every
isolation layer on). Nothing is pinned: the node may use both cores and so may the
load generator (``wrk -t2 -c64``), as on a real POP whose clients are elsewhere,
except that here wrk takes its share of the same two cores. Rounds alternate 1 and
2 workers; the best round of each counts.

Besides req/s it reports the POP's CPU time per request, split by part (worker
processes, supervisor, sandbox side: template, zygotes and sandboxes; utime +
stime from /proc), the figures the 16- and 64-core model in bench/RESULTS.md
starts from. Ends with one JSON line.

    .venv/bin/python bench/workers_bench.py [--duration 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import httpx
from percore_bench import edgerun_pop, tree, wrk

from edgerun.cluster import LocalCluster

CONNECTIONS = 64
_TICK = os.sysconf("SC_CLK_TCK")
_WORKER = b"edgerun.node.worker"


def cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU of a process tree by part: the node's HTTP side (its worker
    processes; the node itself when it has one worker), the supervisor, and the
    sandbox side (template, zygotes, sandboxes)."""
    parts = {"workers": 0.0, "supervisor": 0.0, "sandboxes": 0.0}
    own: dict[int, tuple[float, bytes]] = {}
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            own[p] = ((int(fields[11]) + int(fields[12])) / _TICK,  # utime + stime
                      Path(f"/proc/{p}/cmdline").read_bytes())  # fmt: skip
        except OSError:
            continue
    supervised = any(_WORKER in cmd for _used, cmd in own.values())
    for p, (used, cmdline) in own.items():
        if _WORKER in cmdline:
            parts["workers"] += used
        elif p == pid:
            parts["supervisor" if supervised else "workers"] += used
        else:
            parts["sandboxes"] += used
    return parts


def pop(workers: int) -> contextlib.AbstractContextManager[tuple[LocalCluster, str]]:
    # Room for a sandbox per connection in every worker: memory never limits here.
    return edgerun_pop(capacity_mb=16384, workers=workers, connections=CONNECTIONS)


def measure(workers: int, duration: float) -> dict[str, float]:
    with pop(workers) as (cluster, url):
        proc = cluster.nodes["pop-1"].proc
        assert proc is not None
        wrk(url, 3.0, cpus="0,1", threads=2, connections=CONNECTIONS)  # warm every worker
        before = cpu_seconds(proc.pid)
        result = wrk(url, duration, cpus="0,1", threads=2, connections=CONNECTIONS)
        after = cpu_seconds(proc.pid)
        requests = result["rps"] * duration
        for part in before:
            used = after[part] - before[part]
            result[f"{part}_cpu_us_per_request"] = used / requests * 1e6 if requests else 0.0
        result["node_cpu_us_per_request"] = sum(
            result[f"{part}_cpu_us_per_request"] for part in before
        )
        status = httpx.get(
            f"{cluster.url('pop-1')}/v1/status",
            headers={"authorization": f"Bearer {cluster.token}"},
        ).json()
        result["sandbox_starts_seen_by_one_worker"] = status["pool"]["starts"]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    best: dict[int, dict[str, float]] = {}
    for round_ in range(args.rounds):
        for workers in (1, 2):
            got = measure(workers, args.duration)
            print(f"round {round_ + 1}, {workers} worker(s): {got}", flush=True)
            if workers not in best or got["rps"] > best[workers]["rps"]:
                best[workers] = got
    print(
        f"{'workers':>8} {'req/s':>10} {'p50 ms':>8} {'CPU us/req':>11}"
        f" {'workers':>8} {'sandboxes':>10} {'supervisor':>11}"
    )
    for workers, got in best.items():
        print(
            f"{workers:>8} {got['rps']:>10.0f} {got['p50_ms']:>8.2f}"
            f" {got['node_cpu_us_per_request']:>11.1f} {got['workers_cpu_us_per_request']:>8.1f}"
            f" {got['sandboxes_cpu_us_per_request']:>10.1f}"
            f" {got['supervisor_cpu_us_per_request']:>11.1f}"
        )
    figures = {
        "bench": "workers",
        "cpus": len(os.sched_getaffinity(0)),
        "duration_s": args.duration,
        "connections": CONNECTIONS,
        "one_worker": best[1],
        "two_workers": best[2],
        "speedup": round(best[2]["rps"] / best[1]["rps"], 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
