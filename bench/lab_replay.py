"""Placement policies on the lab: real nodes, real sandboxes, emulated distance.

A smaller, real counterpart of ``placement_bench.py``: ``--functions``
sleeper functions (durations log-uniform 1..200 ms), Zipf(s=1) popularity,
Poisson arrivals, replayed from a client near each of two POPs whose
capacity holds 10% of the functions (client-POP 5 ms, POP-region 40 ms
round trips). Each policy gets a fresh lab and the same trace:
``edgerun``, ``always-here``, ``always-forward``, and ``ideal`` (a POP
with room for every function, running everything there).

    .venv/bin/python bench/lab_replay.py [--functions 40 --rate 20 --seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Literal

import httpx

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.lab import Lab, LabSpec
from edgerun.models import FunctionConfig

CODE = """import os, time

def handler(event, context):
    time.sleep(float(os.environ["DURATION_MS"]) / 1000)
    return "ok"
"""
Mode = Literal["edgerun", "always-here", "always-forward"]


def trace(functions: int, rate: float, seconds: float, seed: int) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    cumulative, total = [], 0.0
    for i in range(functions):
        total += 1 / (i + 1)
        cumulative.append(total)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            return out
        out.append((t, rng.randrange(2), bisect.bisect_left(cumulative, rng.random() * total)))


async def replay(
    lab: Lab, requests: list[tuple[float, int, int]], warmup_s: float
) -> list[tuple[float, str, str]]:
    urls = [lab.client_url("pop-1"), lab.client_url("pop-2")]
    results: list[tuple[float, str, str]] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        start = time.perf_counter()

        async def one(at: float, pop: int, fn: int) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            t0 = time.perf_counter()
            try:
                resp = await http.get(f"{urls[pop]}/fn/fn-{fn}/")
                status_ok = resp.status_code == 200
                placement = resp.headers.get("x-edgerun-placement", "") if status_ok else "error"
                region = resp.headers.get("x-edgerun-region-placement", "")
            except httpx.HTTPError:
                placement, region = "error", ""
            if at >= warmup_s:
                results.append(((time.perf_counter() - t0) * 1000, placement, region))

        await asyncio.gather(*(one(*r) for r in requests))
    return results


def run_policy(
    name: str,
    mode: Mode,
    capacity: int,
    args: argparse.Namespace,
    requests: list[tuple[float, int, int]],
    durations: list[float],
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix=f"edgerun-lab-{name}-"))
    lab = Lab(
        LabSpec(
            pops=2,
            regions=1,
            client_pop_ms=5.0,
            pop_region_ms=40.0,
            pop_capacity_mb=capacity * 128,
            region_capacity_mb=args.functions * 256,
            placement_mode=mode,
        ),
        root,
    )
    lab.start()
    try:
        with Client(lab.cluster.control_url, lab.cluster.token) as client:
            folder = root / "fn"
            folder.mkdir()
            (folder / "main.py").write_text(CODE)
            bundle = build_bundle(folder)
            for i, ms in enumerate(durations):
                client.deploy(
                    f"fn-{i}",
                    bundle,
                    FunctionConfig(
                        handler="main.handler", timeout_s=5.0, env={"DURATION_MS": f"{ms:.1f}"}
                    ),
                )
        time.sleep(2.0)  # let every node follow the feed
        results = asyncio.run(replay(lab, requests, args.warmup))
    finally:
        lab.stop()
    lat = sorted(r[0] for r in results)
    n = len(lat)

    def pct(q: float) -> float:
        return round(lat[min(n - 1, math.ceil(q * n) - 1)], 1)

    local = sum(r[1].startswith("local") for r in results)
    cold = sum(r[1] == "local-cold" or r[2] == "local-cold" for r in results)
    return {
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "served_at_pop": round(local / n, 3),
        "cold_start_share": round(cold / n, 3),
        "errors": sum(r[1] == "error" for r in results),
        "requests": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=40)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds replayed but left out of the figures"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    durations = [math.exp(rng.uniform(0, math.log(200))) for _ in range(args.functions)]
    requests = trace(args.functions, args.rate, args.seconds, args.seed)
    capacity = max(1, args.functions // 10)
    policies: list[tuple[str, Mode, int]] = [
        ("edgerun", "edgerun", capacity),
        ("always-here", "always-here", capacity),
        ("always-forward", "always-forward", capacity),
        ("ideal", "always-here", args.functions * 2),
    ]
    out = {
        name: run_policy(name, mode, cap, args, requests, durations) for name, mode, cap in policies
    }
    print(
        f"{len(requests)} requests ({args.warmup:g} s of warm-up left out), "
        f"{args.functions} functions, POP capacity {capacity}"
    )
    print(f"{'policy':<16}{'p50':>8}{'p95':>8}{'p99':>8}{'at POP':>8}{'cold':>8}{'errors':>8}")
    for name, r in out.items():
        print(
            f"{name:<16}{r['p50_ms']:>8}{r['p95_ms']:>8}{r['p99_ms']:>8}"
            f"{r['served_at_pop']:>8.1%}{r['cold_start_share']:>8.1%}{r['errors']:>8}"
        )
    print(
        json.dumps(
            {
                "bench": "lab_replay",
                "functions": args.functions,
                "rate": args.rate,
                "seconds": args.seconds,
                "pop_capacity": capacity,
                "policies": out,
            }
        )
    )


if __name__ == "__main__":
    main()
