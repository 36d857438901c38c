"""Placement policies compared on a Zipf workload (issue 4), by discrete-event replay.

A thousand functions, Zipf(s=1) popularity, durations log-uniform in
1..200 ms, 5% region-only, replayed against two POPs whose capacity holds
10% of the functions. Every policy sees the same request trace:

- ``edgerun``: the real :func:`edgerun.placement.decide` with the real
  :class:`edgerun.placement.Popularity`, value-aware eviction and
  background warming, as a POP runs them;
- ``always-here``: run everything at the POP, evicting the least recently
  used idle sandbox (or queueing) as needed;
- ``always-forward``: send everything to the region;
- ``ideal``: a POP with room for every function.

Costs come from measurements on this machine (bench/RESULTS.md): a cold
start from a loaded zygote (fork + isolation) and a first start of a
version (zygote + import); network round trips are the test-bed defaults
(client-POP 5 ms, POP-region 40 ms). The replay is a model, not a load
test: it runs in seconds and is deterministic for a seed, which is what a
comparison of policies needs; tests/integration/test_lab.py exercises the
same code on real processes.

    .venv/bin/python bench/placement_bench.py [--requests 200000] [--png bench/placement_cdf.png]
"""

from __future__ import annotations

import argparse
import bisect
import functools
import heapq
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from edgerun.placement import (
    Action,
    Costs,
    FunctionView,
    NodeLimits,
    PoolState,
    Popularity,
    RegionView,
    decide,
    eviction_cost,
)

MEMORY_MB = 128
CLIENT_POP_MS = 5.0
POP_REGION_MS = 40.0
FORK_MS = 3.0  # cold start from a loaded zygote, all isolation layers (bench/RESULTS.md)
IMPORT_MS = 150.0  # first start of a version: zygote + import (bench/RESULTS.md)
IDLE_TTL_S = 300.0


@dataclass(frozen=True)
class Fn:
    name: str
    duration_ms: float
    region_only: bool


@dataclass
class Sandboxes:
    """A node's sandboxes for one function: when each becomes free."""

    busy_until: list[float] = field(default_factory=list)
    last_used: float = 0.0


@dataclass
class Node:
    """A pool of sandboxes under a count budget, with zygotes per function."""

    capacity: int | None  # None = unbounded
    pools: dict[str, Sandboxes] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(s.busy_until) for s in self.pools.values())

    def expire(self, now: float) -> None:
        for name in [
            n
            for n, s in self.pools.items()
            if now - s.last_used > IDLE_TTL_S and all(b <= now for b in s.busy_until)
        ]:
            del self.pools[name]

    def idle_slot(self, name: str, now: float) -> int | None:
        s = self.pools.get(name)
        if s is None:
            return None
        for i, until in enumerate(s.busy_until):
            if until <= now:
                return i
        return None

    def evictable(
        self, now: float, keep: str, value: Callable[[str], float] | None, below: float | None
    ) -> list[tuple[float, float, str]]:
        out = []
        for name, s in self.pools.items():
            if name == keep:
                continue
            v = value(name) if value else s.last_used
            if below is not None and v >= below:
                continue
            out += [(v, s.last_used, name) for b in s.busy_until if b <= now]
        return sorted(out)

    def make_room(
        self,
        now: float,
        keep: str,
        value: Callable[[str], float] | None = None,
        below: float | None = None,
    ) -> bool:
        if self.capacity is None or self.count() < self.capacity:
            return True
        for _v, _t, name in self.evictable(now, keep, value, below):
            s = self.pools[name]
            idx = next(i for i, b in enumerate(s.busy_until) if b <= now)
            s.busy_until.pop(idx)
            if not s.busy_until:
                del self.pools[name]
            if self.count() < self.capacity:
                return True
        return False

    def run(self, name: str, now: float, duration: float, cold_ok: bool = True) -> float:
        """Run here; returns the start-up cost in ms (0 when warm)."""
        s = self.pools.setdefault(name, Sandboxes())
        s.last_used = now
        i = self.idle_slot(name, now)
        if i is not None:
            s.busy_until[i] = now + duration / 1000
            return 0.0
        cost = FORK_MS if s.busy_until else IMPORT_MS
        s.busy_until.append(now + (cost + duration) / 1000)
        return cost


def workload(
    n_functions: int, n_requests: int, rate: float, seed: int
) -> tuple[list[Fn], list[tuple[float, int, int]]]:
    rng = random.Random(seed)
    fns = [
        Fn(f"fn-{i}", math.exp(rng.uniform(math.log(1), math.log(200))), i % 20 == 7)
        for i in range(n_functions)
    ]
    weights = [1 / (i + 1) for i in range(n_functions)]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    ranks = [list(range(n_functions)) for _ in range(2)]
    for r in ranks:
        rng.shuffle(r)  # each POP's clients like different functions
    trace = []
    t = 0.0
    for _ in range(n_requests):
        t += rng.expovariate(rate)
        pop = rng.randrange(2)
        rank = bisect.bisect_left(cumulative, rng.random() * total)
        trace.append((t, pop, ranks[pop][rank]))
    return fns, trace


def _value_at(popularity: Popularity, now: float, pop: Node, name: str) -> float:
    """What evicting one idle sandbox of ``name`` costs (the node's eviction order).
    In this model a version's zygote goes with its last sandbox, so evicting that
    one costs the next call an import."""
    s = pop.pools.get(name)
    start = FORK_MS if s is not None and len(s.busy_until) > 1 else IMPORT_MS
    return eviction_cost(popularity.rate(name, now), start)


def replay(
    policy: str, fns: list[Fn], trace: list[tuple[float, int, int]], capacity: int
) -> dict[str, object]:
    pops = [Node(None if policy == "ideal" else capacity) for _ in range(2)]
    region = Node(None)
    popularity = [Popularity(half_life_s=120.0) for _ in range(2)]
    limits = NodeLimits(512, 30.0)
    warming: list[tuple[float, int, str, float]] = []  # (ready_at, pop, name, evict_below)
    latencies: list[float] = []
    at_pop = cold = 0
    last_expire = 0.0
    for now, p, idx in trace:
        fn = fns[idx]
        pop = pops[p]
        if now - last_expire > 10:
            for node in (*pops, region):
                node.expire(now)
            last_expire = now
        while warming and warming[0][0] <= now:
            _, wp, name, below_w = heapq.heappop(warming)
            node = pops[wp]
            value = functools.partial(_value_at, popularity[wp], now, node)
            if name not in node.pools and node.make_room(now, name, value, below_w):
                node.pools[name] = Sandboxes([now], now)
        local: bool
        if fn.region_only or policy == "always-forward":
            local = False
        elif policy in ("always-here", "ideal"):
            local = pop.idle_slot(fn.name, now) is not None or pop.make_room(now, fn.name)
        else:
            rate = popularity[p].hit(fn.name, now)
            value = functools.partial(_value_at, popularity[p], now, pop)
            s = pop.pools.get(fn.name)
            idle = pop.idle_slot(fn.name, now) is not None
            full = pop.capacity is not None and pop.count() >= pop.capacity
            victims: tuple[float, ...] | None = ()
            if full:
                candidates = pop.evictable(now, fn.name, value, None)
                victims = (candidates[0][0],) if candidates else None
            d = decide(
                FunctionView(MEMORY_MB, 1.0, "auto"),
                pool=PoolState(
                    idle=int(idle),
                    busy=0 if s is None else len(s.busy_until) - int(idle),
                    need_mb=MEMORY_MB,
                    victims=victims,
                ),
                costs=Costs(
                    run_ms=fn.duration_ms, start_ms=FORK_MS if s and s.busy_until else IMPORT_MS
                ),
                rate=rate,
                limits=limits,
                regions=[
                    RegionView(
                        "region-1",
                        True,
                        POP_REGION_MS,
                        warm=fn.name in region.pools,
                        start_ms=IMPORT_MS,
                    )
                ],
            )
            local = d.action in (Action.HERE, Action.WAIT)
            if local and not idle:
                local = pop.make_room(now, fn.name, value, d.evict_below)
            if d.prewarm:
                below = d.evict_below if d.evict_below is not None else 0.0
                heapq.heappush(warming, (now + IMPORT_MS / 1000, p, fn.name, below))
        if local:
            startup = pop.run(fn.name, now, fn.duration_ms)
            latency = CLIENT_POP_MS + startup + fn.duration_ms
            at_pop += 1
        else:
            startup = region.run(fn.name, now, fn.duration_ms)
            latency = CLIENT_POP_MS + POP_REGION_MS + startup + fn.duration_ms
        cold += startup > 0
        latencies.append(latency)
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return round(latencies[min(n - 1, math.ceil(q * n) - 1)], 2)

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "served_at_pop": round(at_pop / n, 4),
        "cold_start_share": round(cold / n, 4),
        "errors": 0,
        "_latencies": latencies,
    }


def plot(results: dict[str, dict[str, object]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        lat = r["_latencies"]
        assert isinstance(lat, list)
        step = max(1, len(lat) // 2000)
        xs = lat[::step]
        ys = [i * step / len(lat) for i in range(len(xs))]
        ax.plot(xs, ys, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log)")
    ax.set_ylabel("share of requests")
    ax.set_title("Placement policies: latency CDF (Zipf s=1, 1000 functions)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second, total")
    parser.add_argument("--capacity-share", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--import-ms",
        type=float,
        default=IMPORT_MS,
        help="first start of a version (zygote + import)",
    )
    parser.add_argument("--png", default="bench/placement_cdf.png")
    args = parser.parse_args()
    globals()["IMPORT_MS"] = args.import_ms
    fns, trace = workload(args.functions, args.requests, args.rate, args.seed)
    capacity = int(args.functions * args.capacity_share)
    results = {
        policy: replay(policy, fns, trace, capacity)
        for policy in ("edgerun", "always-here", "always-forward", "ideal")
    }
    region_only = sum(fns[i].region_only for _, _, i in trace) / len(trace)
    print(
        f"{len(trace)} requests over {trace[-1][0]:.0f} s simulated, {args.functions} "
        f"functions, POP capacity {capacity} sandboxes, region-only share {region_only:.1%}"
    )
    print(f"{'policy':<16}{'p50':>9}{'p95':>9}{'p99':>9}{'at POP':>9}{'cold':>9}")
    for name, r in results.items():
        print(
            f"{name:<16}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['p99_ms']:>9}"
            f"{r['served_at_pop']:>9.1%}{r['cold_start_share']:>9.1%}"
        )
    e, here, fwd, ideal = (
        results[k] for k in ("edgerun", "always-here", "always-forward", "ideal")
    )
    summary = {
        "bench": "placement",
        "requests": len(trace),
        "functions": args.functions,
        "pop_capacity": capacity,
        "policies": {
            k: {m: v for m, v in r.items() if not m.startswith("_")} for k, r in results.items()
        },
        "ratios": {
            "edgerun_p99_over_always_here": round(e["p99_ms"] / here["p99_ms"], 3),  # type: ignore[operator]
            "edgerun_p99_over_always_forward": round(e["p99_ms"] / fwd["p99_ms"], 3),  # type: ignore[operator]
            "edgerun_p50_over_ideal": round(e["p50_ms"] / ideal["p50_ms"], 3),  # type: ignore[operator]
        },
    }
    if args.png:
        try:
            plot(results, args.png)
            summary["png"] = args.png
        except ImportError:
            summary["png"] = None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
