"""Warm sandboxes per function version under a node's capacity."""

from edgerun.pool.pool import Pool, PoolFull, PoolView

__all__ = ["Pool", "PoolFull", "PoolView"]
