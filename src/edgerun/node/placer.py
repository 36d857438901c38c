"""A POP's placement inputs: popularity, measured costs, pool and regions.

:func:`edgerun.placement.decide` is pure; this class gathers what it needs
for one request and remembers what each request teaches: how popular a
function is here, how long it runs here and in regions, what a cold start
costs (a fork from a loaded zygote, or a new zygote plus the import) and
what fetching code costs. Until a figure is measured a documented prior
stands in for it (:class:`Priors`, README "Placement").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgerun.config import NodeConfig
from edgerun.node.regions import Regions
from edgerun.placement import (
    Costs,
    Decision,
    FunctionView,
    NodeLimits,
    PoolState,
    Popularity,
    RegionView,
    Tuning,
    WeeklyProfile,
    decide,
    decide_baseline,
    eviction_cost,
)
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxFactory, SandboxSpec

WARM_PREFIX = 16
"""Regions publish the versions they hold warm or loaded as hash prefixes of this length."""
_ALPHA = 0.3
"""Weight of the newest sample in every moving average here."""
_MAX_TRACKED = 50_000
"""Per-version and per-function figures kept (the oldest go first past this)."""
_EVICTION_COST_TTL_S = 0.5
"""Eviction costs move with decayed rates (minutes), so each is reused this long:
a full POP weighs every idle sandbox on each cold decision."""


@dataclass(frozen=True, slots=True)
class Priors:
    """What the policy assumes before it has measured anything (README, "Placement")."""

    run_ms: float = 10.0
    fork_ms: float = 5.0
    """A cold start from a loaded zygote."""
    load_ms: float = 50.0
    """A new zygote plus the function's import."""
    fetch_ms: float = 20.0
    """Fetching and unpacking a bundle that is not cached."""


class Ewma:
    """A moving average per key, in bounded memory (insertion order drops the oldest)."""

    def __init__(self, alpha: float = _ALPHA, limit: int = _MAX_TRACKED) -> None:
        self.alpha = alpha
        self.limit = limit
        self._values: dict[str, float] = {}

    def add(self, key: str, value: float) -> float:
        prev = self._values.pop(key, None)
        new = value if prev is None else (1 - self.alpha) * prev + self.alpha * value
        if len(self._values) >= self.limit:
            del self._values[next(iter(self._values))]
        self._values[key] = new
        return new

    def get(self, key: str) -> float | None:
        return self._values.get(key)


class Measurements:
    """Costs this node measured: node-wide start costs, and per version or function."""

    def __init__(self, priors: Priors = Priors()) -> None:
        self.priors = priors
        self.run_here = Ewma()
        """Per function: run time here (ms)."""
        self.run_there = Ewma()
        """Per function: run time in regions, as they report it (ms)."""
        self.load = Ewma()
        """Per version: a cold start that loaded its zygote (ms)."""
        self.node = Ewma()
        """Node-wide: ``fork``, ``load`` and ``fetch`` (ms)."""

    def start_observed(self, version: str, ms: float, *, loaded_before: bool) -> None:
        if loaded_before:
            self.node.add("fork", ms)
        else:
            self.load.add(version, ms)
            self.node.add("load", ms)

    def fork_ms(self) -> float:
        return _first(self.node.get("fork"), self.priors.fork_ms)

    def load_ms(self, version: str) -> float:
        return _first(self.load.get(version), self.node.get("load"), self.priors.load_ms)

    def fetch_ms(self) -> float:
        return _first(self.node.get("fetch"), self.priors.fetch_ms)

    def run_ms(self, function: str) -> float:
        return _first(self.run_here.get(function), self.run_there.get(function), self.priors.run_ms)

    def published(self) -> dict[str, float]:
        """What a region tells POPs about its start costs (in ``/v1/health``)."""
        return {
            "fork_ms": round(self.fork_ms(), 3),
            "load_ms": round(_first(self.node.get("load"), self.priors.load_ms), 3),
        }


def _first(*figures: float | None) -> float:
    """The first figure measured (a measured 0 counts); the last one is the prior."""
    return next(f for f in figures if f is not None)


class Placer:
    def __init__(
        self,
        cfg: NodeConfig,
        pool: Pool,
        regions: Regions,
        factory: SandboxFactory,
        measured: Measurements,
        *,
        code_cached: Callable[[SandboxSpec], bool],
        profile: WeeklyProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.regions = regions
        self.factory = factory
        self.measured = measured
        self.limits = NodeLimits(cfg.max_memory_mb, cfg.max_timeout_s)
        self.tuning = Tuning(horizon_s=cfg.placement_horizon_s)
        self.mode = cfg.placement_mode
        self.popularity = Popularity(cfg.popularity_capacity, cfg.popularity_half_life_s)
        self.profile = profile
        """When each function is usually requested here (None: not kept)."""
        self._code_cached = code_cached
        self._clock = clock
        self._eviction_costs: dict[tuple[str, bool], tuple[float, float]] = {}
        self._wall_clock = wall_clock
        self.outbox: dict[str, int] | None = None
        """Hits not yet told to the node's other workers (None: no other workers)."""

    def decayed_rate(self, function: str) -> float:
        return self.popularity.rate(function, self._clock())

    def take_outbox(self) -> dict[str, int]:
        """The hits counted here since the last call (for the other workers)."""
        out, self.outbox = self.outbox or {}, {}
        return out

    def merge_hits(self, hits: dict[str, int]) -> None:
        """Count the requests the node's other workers served, as if served here:
        popularity is the node's, not one worker's share of it."""
        now, wall = self._clock(), self._wall_clock()
        for function, n in hits.items():
            if n > 0:
                self.popularity.hit(function, now, n)
                if self.profile is not None:
                    self.profile.hit(function, wall, n)

    def rate(self, function: str) -> float:
        """Expected requests/s here: the decayed rate, or what the time-of-day
        profile expects now if that is higher (a usual peak starting)."""
        rate = self.popularity.rate(function, self._clock())
        if self.profile is not None:
            rate = max(rate, self.profile.expected_rate(function, self._wall_clock()))
        return rate

    def eviction_cost(self, function: str, version: str, zygote_loaded: bool) -> float:
        """What evicting an idle sandbox of ``version`` is expected to cost (ms): a
        fork when its zygote stays loaded, else a new zygote. The pool evicts in
        this order, cheapest first."""
        now = self._clock()
        key = (version, zygote_loaded)
        cached = self._eviction_costs.get(key)
        if cached is not None and now - cached[0] < _EVICTION_COST_TTL_S:
            return cached[1]
        start = self.measured.fork_ms() if zygote_loaded else self.measured.load_ms(version)
        cost = eviction_cost(self.rate(function), start, self.tuning)
        if len(self._eviction_costs) >= _MAX_TRACKED:
            self._eviction_costs.clear()
        self._eviction_costs[key] = (now, cost)
        return cost

    def start_ms(self, spec: SandboxSpec) -> float:
        if self.factory.is_loaded(spec):
            return self.measured.fork_ms()
        return self.measured.load_ms(spec.version)

    def region_views(self, version: str, run_there_ms: float) -> list[RegionView]:
        prefix = version[:WARM_PREFIX]
        views = []
        for r in self.regions.regions:
            start = r.fork_ms if prefix in r.loaded else r.load_ms
            views.append(
                RegionView(
                    r.name,
                    r.healthy,
                    r.latency_ms,
                    warm=prefix in r.warm,
                    start_ms=start,
                    load=r.load,
                )
            )
        return views

    def costs(self, spec: SandboxSpec) -> Costs:
        m = self.measured
        return Costs(
            run_ms=m.run_ms(spec.function),
            start_ms=self.start_ms(spec),
            fetch_ms=0.0 if self._code_cached(spec) else m.fetch_ms(),
            run_there_ms=m.run_there.get(spec.function),
        )

    def decide(self, spec: SandboxSpec, fn: FunctionView, *, count: bool = True) -> Decision:
        """The decision for one request (counted as a hit unless ``count`` is False)."""
        if count:
            self.popularity.hit(spec.function, self._clock())
            if self.profile is not None:
                self.profile.hit(spec.function, self._wall_clock())
            if self.outbox is not None:
                self.outbox[spec.function] = self.outbox.get(spec.function, 0) + 1
        # A fixed placement reads only idle sandboxes and what ranks the regions
        # (see decide): the pool view, start costs and the rate are not gathered.
        if fn.placement != "auto" and self.mode == "edgerun":
            m = self.measured
            costs = Costs(run_ms=m.run_ms(spec.function), start_ms=0.0, fetch_ms=0.0,
                          run_there_ms=m.run_there.get(spec.function))  # fmt: skip
            run_there = costs.run_ms if costs.run_there_ms is None else costs.run_there_ms
            return decide(
                fn,
                pool=PoolState(idle=self.pool.idle_count(spec)),
                costs=costs,
                rate=0.0,
                limits=self.limits,
                regions=self.region_views(spec.version, run_there),
                tuning=self.tuning,
            )
        costs = self.costs(spec)
        run_there = costs.run_ms if costs.run_there_ms is None else costs.run_there_ms
        regions = self.region_views(spec.version, run_there)
        if self.mode != "edgerun":
            return decide_baseline(self.mode, fn, limits=self.limits, regions=regions)
        view = self.pool.view(spec)
        return decide(
            fn,
            pool=PoolState(
                idle=view.idle,
                busy=view.busy,
                waiting=view.waiting,
                free_mb=view.free_mb,
                need_mb=view.need_mb,
                victims=view.victims,
                at_function_max=view.at_function_max,
            ),
            costs=costs,
            rate=self.rate(spec.function),
            limits=self.limits,
            regions=regions,
            tuning=self.tuning,
        )
