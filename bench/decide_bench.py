"""What a POP's placement decision costs, warm and cold, as the pool fills.

Times ``Placer.decide`` (inputs gathered from a real ``Pool``, the policy, the
popularity and time-of-day tables) over an engine that starts nothing: a warm
request (an idle sandbox of its own) and a cold one that must weigh every idle
sandbox it could evict. The warm decision is the baseline in the same run.

    .venv/bin/python bench/decide_bench.py [--idle 50] [--rounds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

from edgerun.config import NodeConfig, RegionRef
from edgerun.node.placer import Measurements, Placer
from edgerun.node.regions import Regions
from edgerun.placement import FunctionView, WeeklyProfile
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxSpec


class _Sandbox:
    alive = True

    async def close(self) -> None:
        self.alive = False


class _Engine:
    """Starts nothing; reports ``loaded`` versions with a loaded zygote."""

    def __init__(self, loaded: int) -> None:
        self._loaded = {f"v{i}" for i in range(loaded)}

    async def start(self, spec: SandboxSpec) -> _Sandbox:
        return _Sandbox()

    def is_loaded(self, spec: SandboxSpec) -> bool:
        return spec.version in self._loaded

    def loaded_versions(self) -> set[str]:
        return set(self._loaded)

    def zygote_mb(self, spec: SandboxSpec) -> int:
        return 0

    def held_mb(self) -> int:
        return 0

    async def shed(self, need_mb: int) -> int:
        return 0


def _spec(i: int) -> SandboxSpec:
    return SandboxSpec(
        function=f"fn-{i}", version=f"v{i}", handler="main.handler",
        bundle_dir=Path("/nonexistent"), memory_mb=128, timeout_s=3.0, env={}, network=False,
    )  # fmt: skip


async def _run(idle: int, loaded: int, rounds: int) -> dict[str, float]:
    cfg = NodeConfig(
        role="pop", name="pop", data_dir="/nonexistent",
        regions=[RegionRef(name="r1", url="http://127.0.0.1:9")],
    )  # fmt: skip
    engine = _Engine(loaded)
    placer_ref: list[Placer] = []
    pool = Pool(
        engine,  # type: ignore[arg-type]
        capacity_mb=idle * 128,
        value=lambda f, v, z: placer_ref[0].eviction_cost(f, v, z),
    )
    async with httpx.AsyncClient() as client:
        placer = Placer(
            cfg, pool, Regions(cfg.regions, client), engine,  # type: ignore[arg-type]
            Measurements(), code_cached=lambda s: True,
            profile=WeeklyProfile(),
        )  # fmt: skip
        placer_ref.append(placer)
        for i in range(idle):  # a full pool of idle sandboxes, one per function
            async with pool.lease(_spec(i)):
                pass
        fv = FunctionView(128, 3.0)
        out = {}
        for label, spec in (("warm", _spec(0)), ("cold", _spec(idle + 1))):
            started = time.perf_counter()
            for _ in range(rounds):
                placer.decide(spec, fv)
            out[f"{label}_us"] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=50, help="idle sandboxes in the pool")
    parser.add_argument("--loaded", type=int, default=400, help="loaded zygotes")
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    figures = asyncio.run(_run(args.idle, args.loaded, args.rounds))
    print(f"{'decision':<10}{'us each':>10}   ({args.idle} idle sandboxes, {args.loaded} zygotes)")
    for label in ("warm", "cold"):
        print(f"{label:<10}{figures[label + '_us']:>10}")
    ratio = round(figures["cold_us"] / figures["warm_us"], 2)
    print(json.dumps({"bench": "decide", "idle": args.idle, "loaded": args.loaded, **figures,
                      "cold_over_warm": ratio}))  # fmt: skip


if __name__ == "__main__":
    main()
