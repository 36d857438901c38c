"""The POP's placement policy: each rule, and properties over random inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgerun.placement import (
    Decision,
    FunctionView,
    NodeLimits,
    Observed,
    PoolState,
    RegionView,
    Thresholds,
    decide,
    decide_baseline,
    rank_regions,
)

LIMITS = NodeLimits(max_memory_mb=512, max_timeout_s=30.0)
T = Thresholds(popular_rps=1.0)
FN = FunctionView(memory_mb=128, timeout_s=3.0)
R1 = RegionView("r1", True, latency_ms=40.0)
R2 = RegionView("r2", True, latency_ms=60.0)
ROOM = PoolState(has_idle=False, free_mb=1024, evictable_mb=0)
FULL = PoolState(has_idle=False, free_mb=0, evictable_mb=0)
IDLE = PoolState(has_idle=True, free_mb=0, evictable_mb=0)
POPULAR = 5.0
RARE = 0.01


def run(
    fn: FunctionView = FN,
    pool: PoolState = ROOM,
    rate: float = POPULAR,
    regions: tuple[RegionView, ...] = (R1, R2),
    observed: Observed = Observed(),
) -> Decision:
    return decide(
        fn, pool=pool, rate=rate, limits=LIMITS, regions=regions, observed=observed, thresholds=T
    )


def test_region_only_function_is_forwarded_even_when_warm_here() -> None:
    d = run(FunctionView(128, 3.0, "region"), pool=IDLE)
    assert (d.action, d.reason, d.region) == ("forward", "region-only", "r1")


def test_region_only_function_is_refused_when_no_region_is_healthy() -> None:
    d = run(FunctionView(128, 3.0, "region"), regions=(RegionView("r1", False),))
    assert (d.action, d.reason) == ("reject", "all-regions-down")


def test_function_over_the_memory_limit_is_forwarded() -> None:
    assert run(FunctionView(1024, 3.0)).reason == "too-big-for-pop"


def test_function_over_the_timeout_limit_is_forwarded() -> None:
    assert run(FunctionView(128, 60.0)).reason == "too-big-for-pop"


def test_idle_warm_sandbox_runs_here() -> None:
    assert (run(pool=IDLE).action, run(pool=IDLE).reason) == ("local-warm", "warm")


def test_popular_function_with_room_and_loaded_zygote_cold_starts_here() -> None:
    d = run(pool=ROOM, rate=POPULAR)
    assert (d.action, d.reason) == ("local-cold", "popular")


def test_popular_function_without_zygote_is_forwarded_and_warmed() -> None:
    pool = PoolState(has_idle=False, free_mb=1024, evictable_mb=0, zygote_ready=False)
    d = run(pool=pool)
    assert (d.action, d.reason, d.prewarm) == ("forward", "warming", True)


def test_unpopular_function_is_forwarded_even_with_room() -> None:
    d = run(pool=ROOM, rate=RARE)
    assert (d.action, d.reason) == ("forward", "unpopular")


def test_latency_sensitive_function_is_popular_at_a_lower_rate() -> None:
    rate = T.popular_rps * 0.5
    assert run(rate=rate).reason == "unpopular"
    assert run(FunctionView(128, 3.0, latency_sensitive=True), rate=rate).reason == "popular"


def test_popular_function_can_use_room_won_by_eviction() -> None:
    pool = PoolState(has_idle=False, free_mb=0, evictable_mb=128)
    assert run(pool=pool).action == "local-cold"


def test_popular_function_without_room_is_forwarded_for_no_capacity() -> None:
    assert run(pool=FULL).reason == "no-capacity"


def test_function_at_its_per_node_maximum_is_forwarded() -> None:
    pool = PoolState(has_idle=False, free_mb=1024, evictable_mb=0, at_function_max=True)
    assert run(pool=pool).reason == "no-capacity"


def test_function_much_faster_in_a_region_goes_there() -> None:
    d = run(pool=IDLE, observed=Observed(here_ms=500.0, region_ms=50.0))
    assert (d.action, d.reason) == ("forward", "faster-in-region")


def test_a_modest_region_speedup_does_not_beat_the_trip() -> None:
    assert run(pool=IDLE, observed=Observed(here_ms=60.0, region_ms=40.0)).action == "local-warm"


def test_all_regions_down_runs_here_even_when_unpopular() -> None:
    d = run(rate=RARE, pool=FULL, regions=(RegionView("r1", False),))
    assert (d.action, d.reason) == ("local-wait", "all-regions-down")


def test_edge_only_function_runs_here_without_room() -> None:
    d = run(FunctionView(128, 3.0, "edge"), pool=FULL, rate=RARE)
    assert (d.action, d.reason) == ("local-wait", "edge-only")


def test_forward_skips_an_unhealthy_first_region() -> None:
    d = run(rate=RARE, regions=(RegionView("r1", False), R2))
    assert d.region == "r2"


def test_ranking_prefers_a_region_warm_for_the_version() -> None:
    warm_far = RegionView("far", True, latency_ms=80.0, warm=True)
    assert [r.name for r in rank_regions([R1, warm_far])] == ["far", "r1"]


def test_ranking_prefers_lower_latency_weighted_by_load() -> None:
    busy = RegionView("busy", True, latency_ms=40.0, load=1.0)
    idle = RegionView("idle", True, latency_ms=60.0, load=0.0)
    assert [r.name for r in rank_regions([busy, idle])] == ["idle", "busy"]


def test_ranking_keeps_configured_order_for_near_ties() -> None:
    a = RegionView("a", True, latency_ms=21.0)
    b = RegionView("b", True, latency_ms=20.0)
    assert [r.name for r in rank_regions([a, b])] == ["a", "b"]


def test_labels_name_where_it_ran() -> None:
    assert Decision("forward", "unpopular", "r1").label == "forwarded:r1"
    assert Decision("local-wait", "edge-only").label == "local-cold"
    assert Decision("local-warm", "warm").label == "local-warm"


# --- properties ---------------------------------------------------------------

functions = st.builds(
    FunctionView,
    memory_mb=st.integers(16, 4096),
    timeout_s=st.floats(0.1, 120.0),
    placement=st.sampled_from(["auto", "edge", "region"]),
    latency_sensitive=st.booleans(),
)
pools = st.builds(
    PoolState,
    has_idle=st.booleans(),
    free_mb=st.integers(0, 2048),
    evictable_mb=st.integers(0, 2048),
    zygote_ready=st.booleans(),
    at_function_max=st.booleans(),
)
regions = st.lists(
    st.builds(
        RegionView,
        name=st.sampled_from(["a", "b", "c", "d"]),
        healthy=st.booleans(),
        latency_ms=st.floats(0.0, 500.0),
        warm=st.booleans(),
        load=st.floats(0.0, 1.0),
    ),
    max_size=4,
    unique_by=lambda r: r.name,
)
observations = st.builds(
    Observed,
    here_ms=st.none() | st.floats(0.0, 10_000.0),
    region_ms=st.none() | st.floats(0.0, 10_000.0),
)
rates = st.floats(0.0, 100.0)


@given(functions, pools, rates, regions, observations)
def test_never_runs_here_what_cannot_fit(fn, pool, rate, regs, obs) -> None:
    d = run(fn, pool, rate, tuple(regs), obs)
    fits = fn.memory_mb <= LIMITS.max_memory_mb and fn.timeout_s <= LIMITS.max_timeout_s
    if d.action.startswith("local"):
        assert fits and fn.placement != "region"


@given(functions, pools, rates, regions, observations)
def test_never_forwards_to_an_unhealthy_region(fn, pool, rate, regs, obs) -> None:
    d = run(fn, pool, rate, tuple(regs), obs)
    if d.action == "forward":
        assert any(r.name == d.region and r.healthy for r in regs)
    if any(r.healthy for r in regs):
        assert d.action != "reject"


@given(functions, pools, rates, regions, observations)
def test_same_inputs_give_the_same_decision(fn, pool, rate, regs, obs) -> None:
    assert run(fn, pool, rate, tuple(regs), obs) == run(fn, pool, rate, tuple(regs), obs)


@given(functions, pools, st.floats(0.0, 0.99), regions, observations)
def test_a_rare_function_never_cold_starts_while_a_region_is_up(fn, pool, rate, regs, obs) -> None:
    """A rare function cannot take a slot (and so cannot evict a popular one)
    unless the POP is its only choice."""
    d = run(FunctionView(fn.memory_mb, fn.timeout_s, "auto", False), pool, rate, tuple(regs), obs)
    if any(r.healthy for r in regs):
        assert d.action != "local-cold"


def test_always_here_baseline_runs_everything_that_fits_here() -> None:
    d = decide_baseline("always-here", FN, has_idle=False, limits=LIMITS, regions=(R1,))
    assert (d.action, d.reason) == ("local-wait", "always-here")


def test_always_forward_baseline_forwards_even_when_warm_here() -> None:
    d = decide_baseline("always-forward", FN, has_idle=True, limits=LIMITS, regions=(R1,))
    assert (d.action, d.region) == ("forward", "r1")


def test_baselines_still_forward_region_only_functions() -> None:
    fn = FunctionView(128, 3.0, "region")
    d = decide_baseline("always-here", fn, has_idle=True, limits=LIMITS, regions=(R1,))
    assert (d.action, d.reason) == ("forward", "region-only")


def test_busy_popular_function_waits_here_when_that_beats_the_trip() -> None:
    pool = PoolState(has_idle=False, free_mb=0, evictable_mb=0, at_function_max=True, busy=4)
    d = run(pool=pool, observed=Observed(here_ms=2.0))
    assert (d.action, d.reason) == ("local-wait", "queued")


def test_busy_slow_function_is_forwarded_instead_of_queued() -> None:
    pool = PoolState(has_idle=False, free_mb=0, evictable_mb=0, at_function_max=True, busy=4)
    assert run(pool=pool, observed=Observed(here_ms=80.0)).reason == "no-capacity"


def test_a_few_milliseconds_slower_here_does_not_send_it_away() -> None:
    d = run(
        pool=IDLE,
        observed=Observed(here_ms=4.0, region_ms=0.1),
        regions=(RegionView("r1", True, latency_ms=0.5),),
    )
    assert d.action == "local-warm"
