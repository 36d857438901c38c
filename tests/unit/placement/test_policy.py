"""The POP's placement policy: each rule and term, and properties over random inputs."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from edgerun.placement import (
    Action,
    Costs,
    Decision,
    FunctionView,
    NodeLimits,
    PoolState,
    Reason,
    RegionView,
    Tuning,
    decide,
    decide_baseline,
    eviction_cost,
    rank_regions,
)

LIMITS = NodeLimits(max_memory_mb=512, max_timeout_s=30.0)
FN = FunctionView(memory_mb=128, timeout_s=3.0)
R1 = RegionView("r1", True, rtt_ms=40.0, start_ms=50.0)
R2 = RegionView("r2", True, rtt_ms=60.0, start_ms=50.0)
ROOM = PoolState(free_mb=1024, need_mb=128)
IDLE = PoolState(idle=1)
FULL = PoolState(need_mb=128, victims=None)
FORK = Costs(run_ms=10.0, start_ms=5.0)
"""A cold start from a loaded zygote: far cheaper than a 40 ms trip."""
IMPORT = Costs(run_ms=10.0, start_ms=300.0)
"""A first start whose import takes 300 ms."""
SLOW_IMPORT = Costs(run_ms=10.0, start_ms=1000.0)


def run(
    fn: FunctionView = FN,
    pool: PoolState = ROOM,
    costs: Costs = FORK,
    rate: float = 1.0,
    regions: tuple[RegionView, ...] = (R1, R2),
) -> Decision:
    return decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)


# --- constraints ---------------------------------------------------------------


def test_region_only_function_is_forwarded_even_when_warm_here() -> None:
    d = run(FunctionView(128, 3.0, "region"), pool=IDLE)
    assert (d.action, d.reason, d.regions) == (Action.FORWARD, Reason.REGION_ONLY, ("r1", "r2"))
    assert d.on_forward_failed is Action.REJECT


def test_region_only_function_is_refused_when_no_region_is_healthy() -> None:
    d = run(FunctionView(128, 3.0, "region"), regions=(RegionView("r1", False),))
    assert (d.action, d.reason) == (Action.REJECT, Reason.ALL_REGIONS_DOWN)


def test_function_over_the_memory_limit_is_forwarded() -> None:
    assert run(FunctionView(1024, 3.0)).reason is Reason.TOO_BIG_FOR_POP


def test_function_over_the_timeout_limit_is_forwarded() -> None:
    assert run(FunctionView(128, 60.0)).reason is Reason.TOO_BIG_FOR_POP


def test_with_every_region_down_it_runs_here_even_if_it_must_queue() -> None:
    d = run(pool=FULL, costs=IMPORT, regions=(RegionView("r1", False),))
    assert (d.action, d.reason, d.on_no_room) == (
        Action.WAIT,
        Reason.ALL_REGIONS_DOWN,
        Action.REJECT,
    )


def test_edge_only_function_runs_here_even_when_the_trip_is_cheaper() -> None:
    d = run(
        FunctionView(128, 3.0, "edge"), costs=IMPORT, regions=(dataclasses.replace(R1, warm=True),)
    )
    assert (d.action, d.reason) == (Action.WAIT, Reason.EDGE_ONLY)


# --- the cost comparison ----------------------------------------------------------


def test_an_idle_sandbox_here_serves_the_request() -> None:
    d = run(pool=IDLE)
    assert (d.action, d.reason, d.evict_below) == (Action.HERE, Reason.WARM, 0.0)


def test_a_function_much_faster_in_a_region_is_forwarded_even_when_warm_here() -> None:
    d = run(pool=IDLE, costs=Costs(run_ms=500.0, start_ms=5.0, run_there_ms=50.0))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.FASTER_IN_REGION)
    assert d.on_forward_failed is Action.HERE


def test_a_fork_cheaper_than_the_trip_starts_here() -> None:
    d = run(costs=FORK)
    assert (d.action, d.reason) == (Action.HERE, Reason.COLD_START_CHEAPER)
    assert d.on_no_room is Action.FORWARD and d.regions == ("r1", "r2")


def test_a_costly_import_is_forwarded_to_a_warm_region_and_warmed_here() -> None:
    warm = dataclasses.replace(R1, warm=True)
    d = run(costs=IMPORT, regions=(warm, R2))
    assert (d.action, d.reason, d.region) == (Action.FORWARD, Reason.TRIP_CHEAPER, "r1")
    assert d.prewarm
    assert d.on_forward_failed is Action.HERE


def test_a_costly_import_starts_here_when_the_region_would_pay_it_too() -> None:
    cold_there = dataclasses.replace(R1, start_ms=300.0)
    d = run(costs=IMPORT, regions=(cold_there,))
    assert (d.action, d.reason) == (Action.HERE, Reason.COLD_START_CHEAPER)


def test_fetching_the_code_counts_in_the_start_here() -> None:
    warm = dataclasses.replace(R1, warm=True)
    cached = run(costs=Costs(run_ms=10.0, start_ms=5.0), regions=(warm,))
    uncached = run(costs=Costs(run_ms=10.0, start_ms=5.0, fetch_ms=60.0), regions=(warm,))
    assert cached.action is Action.HERE
    assert (uncached.action, uncached.reason) == (Action.FORWARD, Reason.TRIP_CHEAPER)


def test_evicting_popular_sandboxes_for_a_rare_function_is_not_worth_it() -> None:
    pool = PoolState(need_mb=128, victims=(60.0, 60.0))
    d = run(pool=pool, rate=0.001)
    assert (d.action, d.reason) == (Action.FORWARD, Reason.EVICTION_COSTLY)
    assert not d.prewarm


def test_evicting_cheap_sandboxes_to_start_here_is_worth_it() -> None:
    d = run(pool=PoolState(need_mb=128, victims=(1.0, 2.0)))
    assert (d.action, d.reason) == (Action.HERE, Reason.COLD_START_CHEAPER)
    assert d.evict_below is not None and d.evict_below > 2.0


def test_no_room_and_nothing_to_wait_for_forwards_with_no_capacity() -> None:
    d = run(pool=FULL)
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NO_CAPACITY)


def test_a_function_at_its_sandbox_limit_cannot_start_another() -> None:
    d = run(pool=PoolState(free_mb=1024, need_mb=128, at_function_max=True))
    assert d.reason is Reason.NO_CAPACITY


def test_a_short_queue_here_beats_a_long_trip() -> None:
    d = run(
        pool=PoolState(busy=2, need_mb=128, victims=None), costs=Costs(run_ms=5.0, start_ms=5.0)
    )
    assert (d.action, d.reason) == (Action.WAIT, Reason.QUEUE_SHORTER)
    assert d.wait_ms == 40.0 + 50.0 + 5.0 - 5.0  # no longer than the trip would have taken
    assert d.on_no_room is Action.FORWARD


def test_a_long_queue_here_loses_to_the_trip() -> None:
    pool = PoolState(busy=1, waiting=10, need_mb=128, victims=None)
    d = run(pool=pool, costs=Costs(run_ms=50.0, start_ms=5.0))
    assert d.action is Action.FORWARD


def test_latency_sensitive_functions_may_evict_more() -> None:
    pool = PoolState(need_mb=128, victims=(35.0,))  # cheaper to lose than its own start
    plain = run(
        pool=pool, rate=0.01, costs=SLOW_IMPORT, regions=(dataclasses.replace(R1, warm=True),)
    )
    sensitive = run(
        FunctionView(128, 3.0, latency_sensitive=True),
        pool=pool,
        rate=0.01,
        costs=SLOW_IMPORT,
        regions=(dataclasses.replace(R1, warm=True),),
    )
    assert not plain.prewarm
    assert sensitive.prewarm


# --- regions ----------------------------------------------------------------------


def test_regions_are_ranked_by_expected_cost_and_unhealthy_ones_left_out() -> None:
    far_warm = RegionView("far", True, rtt_ms=60.0, warm=True, start_ms=50.0)
    near_cold = RegionView("near", True, rtt_ms=40.0, start_ms=50.0)
    down = RegionView("down", False, rtt_ms=1.0, warm=True)
    ranked = [r.name for r, _ in rank_regions([near_cold, down, far_warm], run_there_ms=10.0)]
    assert ranked == ["far", "near"]


def test_a_loaded_region_counts_its_round_trip_higher() -> None:
    busy = RegionView("busy", True, rtt_ms=40.0, load=1.0)
    idle = RegionView("idle", True, rtt_ms=60.0)
    assert [r.name for r, _ in rank_regions([busy, idle])] == ["idle", "busy"]


def test_the_configured_order_breaks_near_ties() -> None:
    a = RegionView("a", True, rtt_ms=40.5)
    b = RegionView("b", True, rtt_ms=40.0)
    assert [r.name for r, _ in rank_regions([a, b])] == ["a", "b"]


def test_fallback_forwards_to_the_ranked_regions_with_no_capacity() -> None:
    d = run(costs=FORK)
    fb = d.fallback()
    assert (fb.action, fb.reason, fb.regions) == (Action.FORWARD, Reason.NO_CAPACITY, d.regions)


def test_a_fallback_whose_regions_all_refuse_queues_here() -> None:
    fb = run(costs=FORK).fallback()
    assert fb.on_forward_failed is Action.HERE
    here = fb.run_here_instead()
    assert (here.action, here.reason, here.on_no_room) == (
        Action.WAIT,
        Reason.ALL_REGIONS_DOWN,
        Action.REJECT,
    )


def test_fallback_rejects_when_there_is_no_region() -> None:
    d = run(pool=FULL, regions=(RegionView("r1", False),))
    assert d.fallback().action is Action.REJECT


# --- baselines ----------------------------------------------------------------------


def test_always_here_runs_what_fits_and_forwards_what_does_not() -> None:
    here = decide_baseline("always-here", FN, limits=LIMITS, regions=[R1])
    big = decide_baseline("always-here", FunctionView(4096, 3.0), limits=LIMITS, regions=[R1])
    assert (here.action, here.reason) == (Action.WAIT, Reason.ALWAYS_HERE)
    assert (big.action, big.reason) == (Action.FORWARD, Reason.TOO_BIG_FOR_POP)


def test_always_forward_forwards_everything() -> None:
    d = decide_baseline("always-forward", FN, limits=LIMITS, regions=[R1])
    assert (d.action, d.reason) == (Action.FORWARD, Reason.ALWAYS_FORWARD)


def test_eviction_cost_grows_with_rate_and_start_cost() -> None:
    assert eviction_cost(0.0, 100.0) == 0.0
    assert eviction_cost(0.01, 100.0) < eviction_cost(1.0, 100.0) <= 100.0
    assert eviction_cost(1.0, 5.0) < eviction_cost(1.0, 100.0)


# --- properties -------------------------------------------------------------------

regions_st = st.lists(
    st.builds(
        RegionView,
        name=st.sampled_from(["a", "b", "c", "d"]),
        healthy=st.booleans(),
        rtt_ms=st.floats(0, 500),
        warm=st.booleans(),
        start_ms=st.floats(0, 1000),
        load=st.floats(0, 1),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda r: r.name,
)
pools = st.builds(
    PoolState,
    idle=st.integers(0, 2),
    busy=st.integers(0, 4),
    waiting=st.integers(0, 20),
    free_mb=st.integers(0, 2048),
    need_mb=st.integers(64, 512),
    victims=st.one_of(st.none(), st.lists(st.floats(0, 500), max_size=4).map(tuple)),
    at_function_max=st.booleans(),
)
costs_st = st.builds(
    Costs,
    run_ms=st.floats(0, 1000),
    start_ms=st.floats(0, 1000),
    fetch_ms=st.floats(0, 200),
    run_there_ms=st.one_of(st.none(), st.floats(0, 1000)),
)
functions = st.builds(
    FunctionView,
    memory_mb=st.integers(64, 1024),
    timeout_s=st.floats(1, 60),
    placement=st.sampled_from(["auto", "auto", "edge", "region"]),
    latency_sensitive=st.booleans(),
)
rates = st.floats(0, 100)


@given(functions, pools, costs_st, rates, regions_st, st.integers(0, 3), st.floats(0, 1000))
def test_a_longer_trip_never_moves_a_request_from_here_to_a_region(
    fn: FunctionView,
    pool: PoolState,
    costs: Costs,
    rate: float,
    regions: list[RegionView],
    which: int,
    extra_ms: float,
) -> None:
    before = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)
    i = which % len(regions)
    slower = list(regions)
    slower[i] = dataclasses.replace(regions[i], rtt_ms=regions[i].rtt_ms + extra_ms)
    after = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=slower)
    if before.action in (Action.HERE, Action.WAIT):
        assert after.action in (Action.HERE, Action.WAIT)


@given(functions, pools, costs_st, rates, regions_st)
def test_nothing_is_evicted_for_a_request_that_gains_less_than_it_costs(
    fn: FunctionView, pool: PoolState, costs: Costs, rate: float, regions: list[RegionView]
) -> None:
    d = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)
    victims = pool.victims or ()
    if fn.placement == "auto" and d.reason is Reason.COLD_START_CHEAPER:
        assert d.evict_below is not None
        assert sum(victims) <= d.evict_below + 1e-6  # (float rounding only)
    if d.prewarm:
        assert d.estimate.gain_ms > d.estimate.eviction_ms
        assert d.evict_below is not None and all(v < d.evict_below for v in victims)


@given(functions, pools, costs_st, rates, regions_st)
def test_a_forward_lists_only_healthy_regions_cheapest_first(
    fn: FunctionView, pool: PoolState, costs: Costs, rate: float, regions: list[RegionView]
) -> None:
    d = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)
    healthy = {r.name for r in regions if r.healthy}
    assert set(d.regions) <= healthy
    if d.action is Action.FORWARD:
        assert d.regions and d.region in healthy
        cost = {n: c for n, c in d.estimate.forward_ms.items()}
        if cost:
            tuning = Tuning()
            firsts = [cost[n] for n in d.regions]
            assert firsts[0] <= min(firsts) + tuning.order_weight_ms * len(regions)


@given(functions, pools, costs_st, rates, regions_st)
def test_a_healthy_region_means_no_request_is_refused(
    fn: FunctionView, pool: PoolState, costs: Costs, rate: float, regions: list[RegionView]
) -> None:
    d = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)
    if any(r.healthy for r in regions):
        assert d.action is not Action.REJECT


@given(
    st.sampled_from(("edge", "region")),
    pools,
    pools,
    costs_st,
    rates,
    rates,
    regions_st,
)
def test_a_fixed_placement_reads_only_idle_sandboxes_and_region_costs(
    placement: str,
    pool: PoolState,
    other: PoolState,
    costs: Costs,
    rate: float,
    other_rate: float,
    regions: list[RegionView],
) -> None:
    """What lets the node skip the pool view, start costs and rate for these functions."""
    fn = FunctionView(128, 3.0, placement)  # type: ignore[arg-type]
    same_idle = dataclasses.replace(other, idle=pool.idle)
    bare = Costs(run_ms=costs.run_ms, start_ms=0.0, fetch_ms=0.0, run_there_ms=costs.run_there_ms)
    a = decide(fn, pool=pool, costs=costs, rate=rate, limits=LIMITS, regions=regions)
    b = decide(fn, pool=same_idle, costs=bare, rate=other_rate, limits=LIMITS, regions=regions)
    assert a == b
