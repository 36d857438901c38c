"""Warm sandboxes per function version under a node's capacity."""

from edgerun.pool.pool import Claim, Pool, PoolFull, PoolView

__all__ = ["Claim", "Pool", "PoolFull", "PoolView"]
