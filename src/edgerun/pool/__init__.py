"""Warm sandboxes per function version under a node's capacity."""

from edgerun.pool.budget import Budget, SharedBudget
from edgerun.pool.pool import Claim, Pool, PoolFull, PoolView

__all__ = ["Budget", "Claim", "Pool", "PoolFull", "PoolView", "SharedBudget"]
