"""The POP's decision: run a request here, forward it to a region, or refuse.

Pure and synchronous (no I/O, no clock), like h11: every input is an
argument, so the same inputs always give the same :class:`Decision` and
tests need no servers. The node gathers the inputs, carries the decision
out and never decides anything itself: which regions to try and in what
order, how much it may evict, how long it may queue, and what to do when no
room turns up or every forward fails are all in the decision.

The rule is a cost comparison. For each request it estimates the expected
latency, in ms, of

- **here**: an idle sandbox costs the run time; otherwise a cold start (a
  fork from a loaded zygote, or a new zygote plus the import, plus fetching
  the code when it is not cached) plus the run time plus the *opportunity
  cost* of the idle sandboxes it must evict; or, when one of its sandboxes
  is busy, the expected queue wait plus the run time;
- **each healthy region**: the measured round trip, plus a cold start
  there unless the region publishes the version warm, plus the run time
  there.

The cheapest wins, and ``reason`` names the term that decided it. Fixed
rules remain only as constraints: a function that asks for the region or is
too big for the POP is forwarded, and with no region reachable a POP runs
what it can.

Evicting an idle sandbox costs its function, in expectation, one cold start
if it is called again within the horizon: P(called within H) x its start
cost, with P from its request rate (:func:`eviction_cost`). The pool evicts
in that order and only below the decision's ``evict_below``, so a function
is never evicted for one that gains less from the room.

Forwarding does not give up on the POP: when the function's expected gain
over the horizon (its rate x H x what a warm sandbox here saves per request)
outweighs what the room costs, the decision also asks for a sandbox to be
started here in the background (``prewarm``), so only the first requests
pay the trip. A background start evicts only sandboxes that cost less to
lose than its own would (the same measure for every function), so two
functions never take the room from each other in turn.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal


class Action(enum.StrEnum):
    HERE = "here"
    """Run here now: an idle sandbox, or a cold start in a reserved slot."""
    WAIT = "wait"
    """Queue here for one of the function's busy sandboxes, up to ``wait_ms``."""
    FORWARD = "forward"
    REJECT = "reject"


class Reason(enum.StrEnum):
    """Why a request ran where it did (the ``x-edgerun-reason`` header);
    :data:`REASONS` says what each means."""

    WARM = "warm"
    COLD_START_CHEAPER = "cold-start-cheaper"
    QUEUE_SHORTER = "queue-shorter"
    TRIP_CHEAPER = "trip-cheaper"
    EVICTION_COSTLY = "eviction-costly"
    NO_CAPACITY = "no-capacity"
    FASTER_IN_REGION = "faster-in-region"
    REGION_ONLY = "region-only"
    TOO_BIG_FOR_POP = "too-big-for-pop"
    EDGE_ONLY = "edge-only"
    ALL_REGIONS_DOWN = "all-regions-down"
    ALWAYS_HERE = "always-here"
    ALWAYS_FORWARD = "always-forward"
    REGION = "region"


REASONS: dict[Reason, str] = {
    Reason.WARM: "an idle sandbox here beats every region",
    Reason.COLD_START_CHEAPER: "a cold start here, with what it evicts, costs less than the trip",
    Reason.QUEUE_SHORTER: "waiting for one of its busy sandboxes here costs less than the trip",
    Reason.TRIP_CHEAPER: "a cold start here costs more than the trip to a region "
    "(the POP may warm it meanwhile)",
    Reason.EVICTION_COSTLY: "room here would cost the sandboxes it evicts more than it saves",
    Reason.NO_CAPACITY: "no room here, even evicting every idle sandbox it may, "
    "and no queue worth waiting in",
    Reason.FASTER_IN_REGION: "it runs so much faster in a region that even a warm sandbox "
    "here loses",
    Reason.REGION_ONLY: 'the function asks for a region (`placement = "region"`)',
    Reason.TOO_BIG_FOR_POP: "its memory or timeout is over the POP's limits",
    Reason.EDGE_ONLY: 'the function asks for the edge (`placement = "edge"`)',
    Reason.ALL_REGIONS_DOWN: "no region is reachable: it runs here if it can at all, else 503",
    Reason.ALWAYS_HERE: "baseline policy for benchmarks: run everything that may run here",
    Reason.ALWAYS_FORWARD: "baseline policy for benchmarks: forward everything",
    Reason.REGION: "on a region, which runs what it is sent",
}
"""What each reason means: the README's table is checked against this."""


def reasons_table() -> str:
    """The README's table of reasons, generated from :data:`REASONS`."""
    rows = ["| reason | meaning |", "|---|---|"]
    rows += [f"| `{r.value}` | {REASONS[r]} |" for r in Reason]
    return "\n".join(rows)


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

    idle: int = 0
    """Idle sandboxes of this version here."""
    busy: int = 0
    """Busy sandboxes of this version here (one frees up when its call ends)."""
    waiting: int = 0
    """Requests already queued on this node."""
    free_mb: int = 0
    """Memory a new sandbox (and its zygote, if one must load) may take without evicting."""
    need_mb: int = 0
    """What a cold start here takes: the sandbox, plus its zygote if not loaded."""
    victims: tuple[float, ...] | None = ()
    """Eviction costs (ms) of the idle sandboxes a cold start would evict, cheapest
    first, enough to make room; () when it fits already, None when even evicting
    every idle sandbox would not make room."""
    at_function_max: bool = False

    @property
    def has_idle(self) -> bool:
        return self.idle > 0


@dataclass(frozen=True, slots=True)
class Costs:
    """Measured costs of this version at this POP (EWMA), or the priors."""

    run_ms: float
    """Run time here."""
    start_ms: float
    """A cold start here now: a fork when its zygote is loaded, else a new zygote
    plus the import."""
    fetch_ms: float = 0.0
    """Fetching its code first (0 when cached)."""
    run_there_ms: float | None = None
    """Run time in regions, as they report it (None: assume the same as here)."""


@dataclass(frozen=True, slots=True)
class RegionView:
    name: str
    healthy: bool
    rtt_ms: float = 0.0
    """Measured round trip from this POP (EWMA of health checks and forwards)."""
    warm: bool = False
    """The region publishes a warm sandbox of this version."""
    start_ms: float = 0.0
    """What a cold start of this version costs there."""
    load: float = 0.0
    """0 = idle, 1 = memory budget fully used."""


@dataclass(frozen=True, slots=True)
class Tuning:
    """The few knobs of the cost model, with the defaults the README documents."""

    horizon_s: float = 60.0
    eviction_horizon_s: float = 5.0
    """How soon an evicted sandbox's function must call again for the eviction to
    cost it a start: on a full POP, room taken now is taken again within seconds,
    so a longer look would rate every function alike."""
    """How far ahead a sandbox's value (and the damage of evicting one) is counted."""
    latency_sensitive_weight: float = 4.0
    """A latency-sensitive function values each ms saved this many times more."""
    region_load_penalty: float = 1.0
    """A fully loaded region's round trip counts (1 + this) times."""
    order_weight_ms: float = 10.0
    """A region later in the POP's configured list must be this much cheaper to win."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """What each option was expected to cost (ms), for ``/v1/placement/explain``."""

    here_warm_ms: float | None = None
    here_cold_ms: float | None = None
    here_queue_ms: float | None = None
    eviction_ms: float = 0.0
    forward_ms: dict[str, float] = field(default_factory=dict)
    gain_ms: float = 0.0
    """What a sandbox here is worth over the horizon (rate x H x saving per request)."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason
    regions: tuple[str, ...] = ()
    """Regions to forward to, best first; a forward tries them in this order."""
    evict_below: float | None = None
    """A start here (or a prewarm) may evict only idle sandboxes whose eviction
    cost is under this (None: any, 0: none)."""
    wait_ms: float | None = None
    """How long a WAIT may queue (None: the pool's own limit)."""
    on_no_room: Action = Action.FORWARD
    """When the slot it counted on is gone (taken, or the wait ran out): FORWARD
    to ``regions`` or REJECT."""
    on_forward_failed: Action = Action.REJECT
    """When every region refuses the connection: run HERE after all, or REJECT."""
    prewarm: bool = False
    """Also start a sandbox here in the background (it is worth the room)."""
    estimate: Estimate = field(default_factory=Estimate)

    @property
    def region(self) -> str | None:
        return self.regions[0] if self.regions else None

    def fallback(self, reason: Reason = Reason.NO_CAPACITY) -> Decision:
        """The decision to carry out when this one's room is gone (``on_no_room``):
        forward, and should every region refuse, queue here after all."""
        if self.on_no_room is Action.FORWARD and self.regions:
            return Decision(
                Action.FORWARD,
                reason,
                self.regions,
                on_forward_failed=Action.HERE,
                estimate=self.estimate,
            )
        return Decision(Action.REJECT, reason, estimate=self.estimate)

    def run_here_instead(self) -> Decision:
        """Every forward failed and ``on_forward_failed`` is HERE."""
        return Decision(
            Action.WAIT, Reason.ALL_REGIONS_DOWN, on_no_room=Action.REJECT, estimate=self.estimate
        )


def fits_here(fn: FunctionView, limits: NodeLimits) -> bool:
    """Within the POP's memory and timeout limits (else it only runs in a region)."""
    return fn.memory_mb <= limits.max_memory_mb and fn.timeout_s <= limits.max_timeout_s


def eviction_cost(rate: float, start_ms: float, tuning: Tuning = Tuning()) -> float:
    """Expected extra latency (ms) evicting an idle sandbox causes its function:
    one cold start, if it is called again before the room would turn over anyway."""
    return (1.0 - math.exp(-max(0.0, rate) * tuning.eviction_horizon_s)) * max(0.0, start_ms)


def forward_cost(region: RegionView, run_there_ms: float, tuning: Tuning = Tuning()) -> float:
    """Expected latency of running in ``region``: the trip, a start unless it is warm,
    the run."""
    trip = region.rtt_ms * (1.0 + tuning.region_load_penalty * min(1.0, max(0.0, region.load)))
    return trip + (0.0 if region.warm else region.start_ms) + run_there_ms


def rank_regions(
    regions: Sequence[RegionView], run_there_ms: float = 0.0, tuning: Tuning = Tuning()
) -> list[tuple[RegionView, float]]:
    """Healthy regions with their expected cost, cheapest first; the POP's configured
    order breaks near-ties."""
    healthy = [(i, r) for i, r in enumerate(regions) if r.healthy]
    costed = [(r, forward_cost(r, run_there_ms, tuning), i) for i, r in healthy]
    costed.sort(key=lambda c: c[1] + c[2] * tuning.order_weight_ms)
    return [(r, cost) for r, cost, _ in costed]


def decide(
    fn: FunctionView,
    *,
    pool: PoolState,
    costs: Costs,
    rate: float,
    limits: NodeLimits,
    regions: Sequence[RegionView],
    tuning: Tuning = Tuning(),
) -> Decision:
    """Where one request runs. ``rate`` is the function's expected request rate
    here (requests/s: its decayed rate, or its time-of-day profile if higher).

    For a function with a fixed placement (``edge`` or ``region``) only
    ``pool.idle``, the run times and the regions are read, so a caller may skip
    gathering the rest (the node's hot path does)."""
    run_there = costs.run_ms if costs.run_there_ms is None else costs.run_there_ms
    ranked = rank_regions(regions, run_there, tuning)
    names = tuple(r.name for r, _ in ranked)
    fits = fits_here(fn, limits)

    if fn.placement == "region":
        return _forward(names, Reason.REGION_ONLY, Estimate(), fallback=Action.REJECT)
    if not fits:
        return _forward(names, Reason.TOO_BIG_FOR_POP, Estimate(), fallback=Action.REJECT)
    if not ranked:
        return _here_if_possible(pool, Reason.ALL_REGIONS_DOWN)
    if fn.placement == "edge":
        return _here_if_possible(pool, Reason.EDGE_ONLY)

    fwd = min(cost for _, cost in ranked)  # (the order's tie-break may put a near-equal first)
    forward_ms = {r.name: round(cost, 3) for r, cost in ranked}
    run = costs.run_ms
    # What a warm sandbox here saves per request, and what it is worth over the horizon.
    weight = tuning.latency_sensitive_weight if fn.latency_sensitive else 1.0
    saving = max(0.0, fwd - run)
    gain = max(0.0, rate) * tuning.horizon_s * saving * weight

    if pool.has_idle:
        est = Estimate(here_warm_ms=run, forward_ms=forward_ms, gain_ms=gain)
        if run <= fwd:
            return Decision(Action.HERE, Reason.WARM, names, evict_below=0.0, estimate=est)
        return _forward(names, Reason.FASTER_IN_REGION, est, fallback=Action.HERE)

    start = costs.start_ms + costs.fetch_ms
    room = not pool.at_function_max and pool.victims is not None
    eviction = sum(pool.victims) if room and pool.victims else 0.0
    cold = start + run + eviction if room else None
    queue = _queue_ms(pool, run)
    est = Estimate(
        here_cold_ms=cold,
        here_queue_ms=queue,
        eviction_ms=eviction,
        forward_ms=forward_ms,
        gain_ms=gain,
    )
    # The room is worth what this request saves by starting here, plus what the
    # sandbox saves later: victims cheaper than that may go, others may not.
    immediate = max(0.0, fwd - (start + run)) * weight
    worth = immediate + gain

    best_here = min(x for x in (cold, queue, math.inf) if x is not None)
    if best_here < fwd:
        if cold is not None and cold <= best_here:
            return Decision(
                Action.HERE, Reason.COLD_START_CHEAPER, names, evict_below=worth, estimate=est
            )
        assert queue is not None
        return Decision(
            Action.WAIT, Reason.QUEUE_SHORTER, names, evict_below=0.0,
            wait_ms=max(0.0, fwd - run), estimate=est,
        )  # fmt: skip

    # Forward. Name the term that decided, and warm a sandbox here if it is worth it.
    if not room and queue is None:
        reason = Reason.NO_CAPACITY
    elif run > fwd:
        reason = Reason.FASTER_IN_REGION
    elif room and start + run < fwd:
        reason = Reason.EVICTION_COSTLY
    elif not room:
        reason = Reason.NO_CAPACITY
    else:
        reason = Reason.TRIP_CHEAPER
    # A sandbox started in the background may only evict sandboxes whose loss is
    # below what losing its own would cost: one order for every function, so two
    # functions never take the room back and forth.
    own_loss = eviction_cost(rate, costs.start_ms, tuning)
    victims = pool.victims or ()
    prewarm = room and saving > 0 and gain > eviction and all(v < own_loss for v in victims)
    return Decision(
        Action.FORWARD,
        reason,
        names,
        evict_below=min(gain, own_loss) if prewarm else 0.0,
        on_forward_failed=Action.HERE,
        prewarm=prewarm,
        estimate=est,
    )


def _queue_ms(pool: PoolState, run_ms: float) -> float | None:
    """Expected latency of queueing for one of this version's busy sandboxes:
    the requests ahead share them, each holding one for about a run."""
    if not pool.busy:
        return None
    return run_ms * (1.0 + pool.waiting / pool.busy) + run_ms


def decide_baseline(
    mode: Literal["always-here", "always-forward"],
    fn: FunctionView,
    *,
    limits: NodeLimits,
    regions: Sequence[RegionView],
) -> Decision:
    """The policies edgerun is measured against: run everything that may run
    here (evicting as needed, queueing when full), or forward everything."""
    names = tuple(r.name for r, _ in rank_regions(regions))
    fits = fits_here(fn, limits)
    if fn.placement == "region" or not fits:
        reason = Reason.REGION_ONLY if fn.placement == "region" else Reason.TOO_BIG_FOR_POP
        return _forward(names, reason, Estimate(), fallback=Action.REJECT)
    if mode == "always-forward":
        return _forward(names, Reason.ALWAYS_FORWARD, Estimate(), fallback=Action.HERE)
    return Decision(Action.WAIT, Reason.ALWAYS_HERE, names, on_no_room=Action.REJECT)


def region_decision() -> Decision:
    """A region runs what it is sent, queueing when full."""
    return Decision(Action.WAIT, Reason.REGION, on_no_room=Action.REJECT)


def _forward(
    names: tuple[str, ...], reason: Reason, est: Estimate, *, fallback: Action
) -> Decision:
    if not names:
        if fallback is Action.HERE:
            return Decision(
                Action.WAIT, Reason.ALL_REGIONS_DOWN, on_no_room=Action.REJECT, estimate=est
            )
        return Decision(Action.REJECT, Reason.ALL_REGIONS_DOWN, estimate=est)
    return Decision(Action.FORWARD, reason, names, on_forward_failed=fallback, estimate=est)


def _here_if_possible(pool: PoolState, reason: Reason) -> Decision:
    """Run here whatever it costs: warm, cold (evicting any idle sandbox) or queued."""
    if pool.has_idle:
        return Decision(Action.HERE, reason, evict_below=0.0, on_no_room=Action.REJECT)
    return Decision(Action.WAIT, reason, on_no_room=Action.REJECT)
