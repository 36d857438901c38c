"""Where a request runs: the POP's pure placement policy and its inputs."""

from edgerun.placement.policy import (
    Action,
    Costs,
    Decision,
    Estimate,
    FunctionView,
    NodeLimits,
    PoolState,
    REASONS,
    Reason,
    RegionView,
    Tuning,
    decide,
    decide_baseline,
    eviction_cost,
    forward_cost,
    rank_regions,
    reasons_table,
    region_decision,
)
from edgerun.placement.popularity import Popularity

__all__ = [
    "Action",
    "Costs",
    "Decision",
    "Estimate",
    "FunctionView",
    "NodeLimits",
    "PoolState",
    "Popularity",
    "REASONS",
    "Reason",
    "RegionView",
    "Tuning",
    "decide",
    "decide_baseline",
    "eviction_cost",
    "forward_cost",
    "rank_regions",
    "reasons_table",
    "region_decision",
]

from edgerun.placement.profile import (
    Prewarm,
    Release,
    WarmPlan,
    WeeklyProfile,
    plan_warming,
)

__all__ += ["Prewarm", "Release", "WarmPlan", "WeeklyProfile", "plan_warming"]
