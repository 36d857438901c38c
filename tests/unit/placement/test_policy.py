"""The POP's placement decision: one test per rule, then properties over all inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgerun.placement.policy import Decision, FunctionView, NodeLimits, RegionView, decide

LIMITS = NodeLimits(max_memory_mb=512, max_timeout_s=30.0)
SMALL = FunctionView(memory_mb=128, timeout_s=3.0)
UP = [RegionView("region-1", healthy=True), RegionView("region-2", healthy=True)]
DOWN = [RegionView("region-1", healthy=False), RegionView("region-2", healthy=False)]


def run(
    fn: FunctionView = SMALL,
    *,
    has_idle: bool = False,
    can_start: bool = False,
    regions: list[RegionView] = UP,
) -> Decision:
    return decide(fn, has_idle=has_idle, can_start=can_start, limits=LIMITS, regions=regions)


# --- the rules ----------------------------------------------------------------------


def test_region_only_function_is_forwarded_even_when_warm_here():
    fn = FunctionView(128, 3.0, placement="region")

    assert run(fn, has_idle=True, can_start=True) == Decision("forward", "region-only", "region-1")


def test_forwarding_skips_unhealthy_regions():
    regions = [RegionView("region-1", healthy=False), RegionView("region-2", healthy=True)]

    assert run(FunctionView(128, 3.0, "region"), regions=regions).region == "region-2"


def test_function_over_the_memory_limit_is_forwarded():
    fn = FunctionView(memory_mb=1024, timeout_s=3.0)

    assert run(fn, has_idle=True) == Decision("forward", "too-big-for-pop", "region-1")


def test_function_over_the_timeout_limit_is_forwarded():
    fn = FunctionView(memory_mb=128, timeout_s=60.0)

    assert run(fn, can_start=True) == Decision("forward", "too-big-for-pop", "region-1")


def test_function_exactly_at_the_limits_runs_here():
    fn = FunctionView(memory_mb=512, timeout_s=30.0)

    assert run(fn, can_start=True).action == "local-cold"


def test_idle_warm_sandbox_runs_here_warm():
    assert run(has_idle=True, can_start=True) == Decision("local-warm", "warm")


def test_free_capacity_runs_here_cold():
    assert run(can_start=True) == Decision("local-cold", "capacity")


def test_no_capacity_forwards_to_the_first_healthy_region():
    assert run() == Decision("forward", "no-capacity", "region-1")


def test_edge_only_function_without_capacity_waits_here():
    assert run(FunctionView(128, 3.0, "edge")) == Decision("local-wait", "edge-only")


def test_no_healthy_region_and_fits_waits_here():
    assert run(regions=DOWN) == Decision("local-wait", "all-regions-down")


def test_no_regions_at_all_and_fits_waits_here():
    assert run(regions=[]) == Decision("local-wait", "all-regions-down")


def test_region_only_function_with_no_healthy_region_is_rejected():
    fn = FunctionView(128, 3.0, placement="region")

    assert run(fn, can_start=True, regions=DOWN) == Decision("reject", "all-regions-down")


def test_too_big_function_with_no_healthy_region_is_rejected():
    fn = FunctionView(memory_mb=1024, timeout_s=3.0)

    assert run(fn, can_start=True, regions=DOWN) == Decision("reject", "all-regions-down")


# --- Decision.label -----------------------------------------------------------------


def test_label_of_a_forward_names_the_region():
    assert Decision("forward", "no-capacity", "region-2").label == "forwarded:region-2"


def test_label_of_a_wait_is_local_cold():
    assert Decision("local-wait", "edge-only").label == "local-cold"


def test_label_of_other_actions_is_the_action():
    assert Decision("local-warm", "warm").label == "local-warm"
    assert Decision("local-cold", "capacity").label == "local-cold"
    assert Decision("reject", "all-regions-down").label == "reject"


# --- properties ---------------------------------------------------------------------

functions = st.builds(
    FunctionView,
    memory_mb=st.integers(min_value=16, max_value=10_240),
    timeout_s=st.floats(min_value=0.001, max_value=900.0),
    placement=st.sampled_from(["auto", "edge", "region"]),
)
limits = st.builds(
    NodeLimits,
    max_memory_mb=st.integers(min_value=16, max_value=10_240),
    max_timeout_s=st.floats(min_value=0.001, max_value=900.0),
)
region_lists = st.lists(
    st.builds(RegionView, name=st.sampled_from(["r1", "r2", "r3", "r4"]), healthy=st.booleans()),
    max_size=4,
)
inputs = st.fixed_dictionaries(
    {
        "fn": functions,
        "has_idle": st.booleans(),
        "can_start": st.booleans(),
        "limits": limits,
        "regions": region_lists,
    }
)


def decide_with(args: dict) -> Decision:
    return decide(
        args["fn"],
        has_idle=args["has_idle"],
        can_start=args["can_start"],
        limits=args["limits"],
        regions=args["regions"],
    )


@given(inputs)
def test_never_runs_here_what_does_not_fit_the_limits(args):
    fn, lim = args["fn"], args["limits"]
    fits = fn.memory_mb <= lim.max_memory_mb and fn.timeout_s <= lim.max_timeout_s

    if not fits:
        assert not decide_with(args).action.startswith("local")


@given(inputs)
def test_never_runs_a_region_only_function_here(args):
    args["fn"] = FunctionView(args["fn"].memory_mb, args["fn"].timeout_s, "region")

    assert decide_with(args).action in ("forward", "reject")


@given(inputs)
def test_forwards_only_to_the_first_healthy_region(args):
    decision = decide_with(args)
    healthy = [r.name for r in args["regions"] if r.healthy]

    if decision.action == "forward":
        assert decision.region == healthy[0]
    else:
        assert decision.region is None


@given(inputs)
def test_rejects_only_when_no_region_is_healthy(args):
    if decide_with(args).action == "reject":
        assert not any(r.healthy for r in args["regions"])


@given(inputs)
def test_same_inputs_give_the_same_decision(args):
    again = {**args, "regions": [RegionView(r.name, r.healthy) for r in args["regions"]]}

    assert decide_with(args) == decide_with(again)


@given(inputs)
def test_label_is_a_known_header_value(args):
    decision = decide_with(args)
    known = {"local-warm", "local-cold", "reject"}

    assert decision.label in known or decision.label == f"forwarded:{decision.region}"
