"""Where a request runs: the POP's pure placement policy and its inputs."""

from edgerun.placement.policy import (
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
from edgerun.placement.popularity import Popularity

__all__ = [
    "Decision",
    "FunctionView",
    "NodeLimits",
    "Observed",
    "PoolState",
    "Popularity",
    "RegionView",
    "Thresholds",
    "decide",
    "decide_baseline",
    "rank_regions",
]

from edgerun.placement.profile import (
    Prewarm,
    Release,
    WarmPlan,
    WeeklyProfile,
    plan_warming,
)

__all__ += ["Prewarm", "Release", "WarmPlan", "WeeklyProfile", "plan_warming"]
