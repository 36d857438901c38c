"""A POP's placement inputs: popularity, measured durations, pool and regions.

:func:`edgerun.placement.decide` is pure; this class gathers what it needs
for one request and remembers what each request teaches (how popular a
function is here, how long it runs here and in regions).
"""

from __future__ import annotations

import time

from edgerun.config import NodeConfig
from edgerun.models import FunctionRecord
from edgerun.node.regions import Regions
from edgerun.placement import (
    Decision,
    FunctionView,
    NodeLimits,
    Observed,
    PoolState,
    Popularity,
    RegionView,
    Thresholds,
    decide,
    decide_baseline,
)
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxFactory, SandboxSpec

WARM_PREFIX = 16
"""Regions publish the versions they hold warm as hash prefixes of this length."""
_EWMA = 0.2
MIN_SAMPLES = 5
"""Durations measured fewer times than this do not steer placement."""


class Placer:
    def __init__(
        self, cfg: NodeConfig, pool: Pool, regions: Regions, factory: SandboxFactory
    ) -> None:
        self.pool = pool
        self.regions = regions
        self.factory = factory
        self.limits = NodeLimits(cfg.max_memory_mb, cfg.max_timeout_s)
        self.thresholds = Thresholds(
            popular_rps=cfg.popular_per_min / 60.0,
            latency_sensitive_factor=cfg.latency_sensitive_factor,
            faster_in_region_ratio=cfg.faster_in_region_ratio,
        )
        self.mode = cfg.placement_mode
        self.popularity = Popularity(cfg.popularity_capacity, cfg.popularity_half_life_s)
        self._here_ms: dict[str, tuple[float, int]] = {}
        self._region_ms: dict[str, tuple[float, int]] = {}

    def rate(self, function: str) -> float:
        return self.popularity.rate(function, time.monotonic())

    def decide(self, fn: FunctionRecord, spec: SandboxSpec) -> tuple[Decision, float]:
        """The decision for one request (counted as a hit), and the function's rate."""
        rate = self.popularity.hit(fn.name, time.monotonic())
        cfg = fn.config
        view = self.pool.view(spec.key, rate, spec.function, spec.memory_mb)
        prefix = spec.version[:WARM_PREFIX]
        regions = [
            RegionView(r.name, r.healthy, r.latency_ms, warm=prefix in r.warm, load=r.load)
            for r in self.regions.regions
        ]
        if self.mode != "edgerun":
            decision = decide_baseline(
                self.mode,
                FunctionView(cfg.memory_mb, cfg.timeout_s, cfg.placement),
                has_idle=view.has_idle,
                limits=self.limits,
                regions=regions,
            )
            return decision, rate
        decision = decide(
            FunctionView(cfg.memory_mb, cfg.timeout_s, cfg.placement, cfg.latency_sensitive),
            pool=PoolState(
                view.has_idle,
                view.free_mb,
                view.evictable_mb,
                zygote_ready=self.factory.is_loaded(spec),
                at_function_max=view.at_function_max,
                busy=view.busy,
            ),
            rate=rate,
            limits=self.limits,
            regions=regions,
            observed=Observed(
                self._trusted(self._here_ms, fn.name), self._trusted(self._region_ms, fn.name)
            ),
            thresholds=self.thresholds,
        )
        return decision, rate

    def observe(self, function: str, ms: float, *, here: bool) -> None:
        table = self._here_ms if here else self._region_ms
        prev = table.get(function)
        if prev is None:
            table[function] = (ms, 1)
        else:
            table[function] = ((1 - _EWMA) * prev[0] + _EWMA * ms, prev[1] + 1)

    @staticmethod
    def _trusted(table: dict[str, tuple[float, int]], function: str) -> float | None:
        """An average only once enough samples back it (a few can mislead)."""
        entry = table.get(function)
        return entry[0] if entry is not None and entry[1] >= MIN_SAMPLES else None
