"""What forwarding costs a POP: latency over calling the region directly, and rate.

One region and one POP on loopback; ``examples/hello`` deployed with ``placement =
"region"`` (public), so the POP forwards every request. The POP's process tree is
pinned to CPU 0 and the region's to CPU 1, so they never share a core.

- **Overhead**: ``wrk -t1 -c1`` (on CPU 1) against the region directly and through
  the POP; the difference of the p50s is what the POP adds.
- **Rate**: ``wrk -t1 -c32`` (on CPU 1) through the POP: the forwards one POP core
  carries (the region's core is shared with wrk; the POP's CPU use is reported so a
  region-bound run shows).

Rounds alternate; the best round counts. Ends with one JSON line.

    .venv/bin/python bench/forward_bench.py [--duration 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from percore_bench import EXAMPLES, pin, wait_ready, wrk
from workers_bench import cpu_seconds

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import FunctionConfig


@contextlib.contextmanager
def topology() -> Iterator[tuple[LocalCluster, str, str]]:
    root = Path(tempfile.mkdtemp(prefix="edgerun-forward-"))
    spec = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port(), settings={"max_per_function": 32})],
        pop=[PopSpec(name="pop-1", port=free_port(), regions=["region-1"])],
    )
    cluster = LocalCluster(spec, root)
    try:
        cluster.start()
        with Client(cluster.control_url, cluster.token) as client:
            config = FunctionConfig(
                handler="handler.handler", auth="public", placement="region", memory_mb=64
            )
            client.deploy("hello", build_bundle(EXAMPLES / "hello"), config)
        pop = f"{cluster.url('pop-1')}/fn/hello/?name=world"
        region = f"{cluster.url('region-1')}/fn/hello/?name=world"
        wait_ready(pop)
        wait_ready(region)
        yield cluster, pop, region
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rounds = []
    with topology() as (cluster, pop, region):
        pop_proc, region_proc = cluster.nodes["pop-1"].proc, cluster.nodes["region-1"].proc
        assert pop_proc is not None and region_proc is not None
        wrk(pop, 2.0)  # sandboxes at the region, connections from the POP
        pin(pop_proc.pid, 0)
        pin(region_proc.pid, 1)
        for _ in range(args.rounds):
            direct = wrk(region, args.duration, connections=1)
            through = wrk(pop, args.duration, connections=1)
            before = cpu_seconds(pop_proc.pid)
            rate = wrk(pop, args.duration, connections=32)
            used = sum(cpu_seconds(pop_proc.pid).values()) - sum(before.values())
            got = {
                "direct_p50_ms": direct["p50_ms"],
                "through_pop_p50_ms": through["p50_ms"],
                "overhead_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
                "forward_rps": rate["rps"],
                "pop_cpu_share": round(used / args.duration, 3),
                "pop_cpu_us_per_forward": round(used / (rate["rps"] * args.duration) * 1e6, 1),
                "non_2xx": rate["non_2xx"] + through["non_2xx"],
            }
            print(got, flush=True)
            rounds.append(got)
    best = {
        "overhead_p50_ms": min(r["overhead_p50_ms"] for r in rounds),
        "forward_rps": max(r["forward_rps"] for r in rounds),
        "pop_cpu_us_per_forward": min(r["pop_cpu_us_per_forward"] for r in rounds),
    }
    print(json.dumps({"bench": "forward", "duration_s": args.duration, "rounds": rounds, **best}))


if __name__ == "__main__":
    main()
