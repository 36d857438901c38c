"""The POP's decision: run a request here, forward it to a region, or refuse.

Pure and synchronous (no I/O, no clock), like h11: every input is an
argument, so the same inputs always give the same :class:`Decision` and
tests need no servers. The node gathers the inputs and carries it out.

The rules, in order (reasons in brackets):

1. ``placement = "region"`` -> forward [region-only];
2. over the POP's memory or timeout limit -> forward [too-big-for-pop];
3. no healthy region -> run here if it fits at all [all-regions-down];
4. ``placement = "edge"`` -> run here [edge-only];
5. measured much faster in a region, even counting the trip -> forward
   [faster-in-region];
6. an idle warm sandbox here -> run here [warm];
7. popular here (request rate over the threshold; lower for
   ``latency_sensitive`` functions) and room, free or won by evicting idle
   sandboxes of *less* popular functions:
   - the version's zygote is loaded, so a cold start is a fork -> run here [popular];
   - not yet -> forward, and warm it here in the background [warming];
8. popular but no room: when one of its busy sandboxes here should free up
   sooner than a trip to the region takes, wait for it [queued]; else
   forward [no-capacity];
9. otherwise -> forward [unpopular].

Forwarding picks a region with :func:`rank_regions`: healthy first, then
one that already holds this version warm, then the lowest measured latency
weighted by load, the POP's configured order breaking near-ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["local-warm", "local-cold", "local-wait", "forward", "reject"]


@dataclass(frozen=True, slots=True)
class FunctionView:
    memory_mb: int
    timeout_s: float
    placement: Literal["auto", "edge", "region"] = "auto"
    latency_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class NodeLimits:
    max_memory_mb: int
    max_timeout_s: float


@dataclass(frozen=True, slots=True)
class PoolState:
    """The pool as one function version sees it."""

    has_idle: bool
    free_mb: int
    """Memory not held by any sandbox."""
    evictable_mb: int
    """Memory held by idle sandboxes of functions less popular than this one."""
    zygote_ready: bool = True
    """A cold start would be a fork (the version is loaded here already)."""
    at_function_max: bool = False
    busy: int = 0
    """Sandboxes of this version here that are busy (one will free up soon)."""


@dataclass(frozen=True, slots=True)
class RegionView:
    name: str
    healthy: bool
    latency_ms: float = 0.0
    """Measured round trip from this POP (EWMA)."""
    warm: bool = False
    """The region holds a warm sandbox of this version."""
    load: float = 0.0
    """0 = idle, 1 = memory budget fully used."""


@dataclass(frozen=True, slots=True)
class Observed:
    """Execution times measured for this function (EWMA), when known."""

    here_ms: float | None = None
    region_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    popular_rps: float = 1 / 30
    """Requests per second (decayed) that earn a sandbox here: about 2 a minute."""
    latency_sensitive_factor: float = 0.25
    """Latency-sensitive functions count as popular at a quarter of the rate."""
    faster_in_region_ratio: float = 2.0
    """Forward when here_ms > ratio * region_ms + the trip to the region + margin."""
    faster_in_region_margin_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    region: str | None = None
    prewarm: bool = False
    """Start a sandbox here in the background (the function is becoming popular)."""

    @property
    def label(self) -> str:
        """The value of the ``x-edgerun-placement`` header."""
        if self.action == "forward":
            return f"forwarded:{self.region}"
        return "local-cold" if self.action == "local-wait" else self.action


ORDER_WEIGHT_MS = 10.0
"""A region later in the POP's configured list must be this much faster to win."""


def rank_regions(regions: Sequence[RegionView]) -> list[RegionView]:
    """Healthy regions, best first: warm for the version, then fastest under load,
    with the POP's configured order as the tie-break."""
    healthy = [(i, r) for i, r in enumerate(regions) if r.healthy]
    ranked = sorted(
        healthy,
        key=lambda ir: (
            not ir[1].warm,
            ir[1].latency_ms * (1.0 + ir[1].load) + ir[0] * ORDER_WEIGHT_MS,
        ),
    )
    return [r for _, r in ranked]


def decide(
    fn: FunctionView,
    *,
    pool: PoolState,
    rate: float,
    limits: NodeLimits,
    regions: Sequence[RegionView],
    observed: Observed = Observed(),
    thresholds: Thresholds = Thresholds(),
) -> Decision:
    ranked = rank_regions(regions)
    best = ranked[0] if ranked else None
    fits = fn.memory_mb <= limits.max_memory_mb and fn.timeout_s <= limits.max_timeout_s

    if fn.placement == "region":
        return _forward(best, "region-only")
    if not fits:
        return _forward(best, "too-big-for-pop")
    if best is None:
        return _here(pool, "all-regions-down")
    if fn.placement == "edge":
        return _here(pool, "edge-only")
    here, there = observed.here_ms, observed.region_ms
    if (
        here is not None
        and there is not None
        and here
        > thresholds.faster_in_region_ratio * there
        + best.latency_ms
        + thresholds.faster_in_region_margin_ms
    ):
        return _forward(best, "faster-in-region")
    if pool.has_idle:
        return Decision("local-warm", "warm")
    threshold = thresholds.popular_rps
    if fn.latency_sensitive:
        threshold *= thresholds.latency_sensitive_factor
    if rate < threshold:
        return _forward(best, "unpopular")
    room = not pool.at_function_max and pool.free_mb + pool.evictable_mb >= fn.memory_mb
    if not room:
        if pool.busy and here is not None and here < best.latency_ms:
            # A sandbox of ours frees up sooner than a trip to the region takes.
            return Decision("local-wait", "queued")
        return _forward(best, "no-capacity")
    if pool.zygote_ready:
        return Decision("local-cold", "popular")
    return Decision("forward", "warming", best.name, prewarm=True)


def decide_baseline(
    mode: Literal["always-here", "always-forward"],
    fn: FunctionView,
    *,
    has_idle: bool,
    limits: NodeLimits,
    regions: Sequence[RegionView],
) -> Decision:
    """The policies edgerun is measured against: run everything that may run
    here (evicting as needed), or forward everything."""
    ranked = rank_regions(regions)
    best = ranked[0] if ranked else None
    fits = fn.memory_mb <= limits.max_memory_mb and fn.timeout_s <= limits.max_timeout_s
    if mode == "always-forward" or fn.placement == "region" or not fits:
        return _forward(best, mode if fits and fn.placement != "region" else "region-only")
    return _here(PoolState(has_idle, 0, 0), mode)


def _forward(best: RegionView | None, reason: str) -> Decision:
    if best is None:
        return Decision("reject", "all-regions-down")
    return Decision("forward", reason, best.name)


def _here(pool: PoolState, reason: str) -> Decision:
    return Decision("local-warm" if pool.has_idle else "local-wait", reason)
