"""Deploy-to-invocable time and warm invoke latency through a POP (issue 2).

Starts a real local cluster (control, one region, one POP), then:

- deploys a fresh version N times and measures the time from the start of
  the deploy call until the POP answers with that version;
- measures sequential warm invokes through the POP (HTTP trigger, local
  warm) against the same function invoked on the region directly, and
  against the region's health endpoint (the HTTP floor), so the figures are
  ratios against a baseline taken in the same run.

    .venv/bin/python bench/deploy_bench.py [--deploys 10] [--invokes 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import httpx

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import FunctionConfig


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "n": len(values)}


def timed_gets(http: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        resp = http.get(url)
        out.append((time.perf_counter() - start) * 1000)
        assert resp.status_code == 200, resp.text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=10)
    parser.add_argument("--invokes", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgerun-deploy-bench-"))
    topo = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port())],
        pop=[PopSpec(name="pop-1", port=free_port())],
    )
    cluster = LocalCluster(topo, root / "cluster")
    cluster.start()
    try:
        pop, region = cluster.url("pop-1"), cluster.url("region-1")
        folder = root / "fn"
        folder.mkdir()
        deploy_ms = []
        with Client(cluster.control_url, cluster.token) as client, httpx.Client() as http:
            for n in range(args.deploys):
                (folder / "main.py").write_text(f"def handler(e, c):\n    return 'v{n}'\n")
                bundle = build_bundle(folder)
                start = time.perf_counter()
                sha = client.deploy(
                    "bench", bundle, FunctionConfig(handler="main.handler", auth="public")
                )
                want = sha.aliases["latest"]
                while True:
                    resp = http.get(f"{pop}/fn/bench/")
                    if resp.headers.get("x-edgerun-version") == want:
                        break
                    time.sleep(0.005)
                deploy_ms.append((time.perf_counter() - start) * 1000)
            deadline = time.monotonic() + 10
            while http.get(f"{pop}/fn/bench/").headers["x-edgerun-placement"] != "local-warm":
                if time.monotonic() > deadline:
                    raise SystemExit("the POP never served the function warm")
            timed_gets(http, f"{region}/fn/bench/", 200)  # warm the region too
            pop_ms = timed_gets(http, f"{pop}/fn/bench/", args.invokes)
            region_ms = timed_gets(http, f"{region}/fn/bench/", args.invokes)
            floor_ms = timed_gets(http, f"{region}/v1/health", args.invokes)
    finally:
        cluster.stop()
    result = {
        "bench": "deploy",
        "deploy_to_invocable_ms": summary(deploy_ms),
        "warm_invoke_via_pop_ms": summary(pop_ms),
        "warm_invoke_on_region_ms": summary(region_ms),
        "http_floor_health_ms": summary(floor_ms),
        "ratios": {
            "pop_over_http_floor_p50": round(pct(pop_ms, 0.5) / pct(floor_ms, 0.5), 2),
            "pop_over_region_p50": round(pct(pop_ms, 0.5) / pct(region_ms, 0.5), 2),
        },
    }
    print(f"{'figure':<32}{'p50 ms':>10}{'p99 ms':>10}{'n':>7}")
    for key in (
        "deploy_to_invocable_ms",
        "warm_invoke_via_pop_ms",
        "warm_invoke_on_region_ms",
        "http_floor_health_ms",
    ):
        s = result[key]
        assert isinstance(s, dict)
        print(f"{key:<32}{s['p50']:>10}{s['p99']:>10}{s['n']:>7}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
