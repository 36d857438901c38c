"""Where a request runs: the POP's pure placement policy."""

from edgerun.placement.policy import Decision, FunctionView, NodeLimits, RegionView, decide

__all__ = ["Decision", "FunctionView", "NodeLimits", "RegionView", "decide"]
