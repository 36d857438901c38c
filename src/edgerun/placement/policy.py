"""The POP's decision: run a request here, forward it to a region, or refuse.

Pure and synchronous (no I/O, no clock): every input is an argument, so the
same inputs always give the same :class:`Decision`, and tests need no
servers. The node gathers the inputs and carries the decision out.

The rules, in order:

1. the function asks for regions (``placement = "region"``) -> forward;
2. it is too big for this POP (memory or timeout over the POP's limits) -> forward;
3. an idle warm sandbox is here -> run here, warm;
4. a sandbox can start here (a free slot or an idle one to evict) -> run here, cold;
5. otherwise -> forward to the first healthy region.

With no healthy region, a request that may run here runs here (waiting for
a slot if need be), and one that may not is refused with 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["local-warm", "local-cold", "local-wait", "forward", "reject"]


@dataclass(frozen=True, slots=True)
class FunctionView:
    memory_mb: int
    timeout_s: float
    placement: Literal["auto", "edge", "region"] = "auto"


@dataclass(frozen=True, slots=True)
class NodeLimits:
    max_memory_mb: int
    max_timeout_s: float


@dataclass(frozen=True, slots=True)
class RegionView:
    name: str
    healthy: bool


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    region: str | None = None

    @property
    def label(self) -> str:
        """The value of the ``x-edgerun-placement`` header."""
        if self.action == "forward":
            return f"forwarded:{self.region}"
        return "local-cold" if self.action == "local-wait" else self.action


def decide(
    fn: FunctionView,
    *,
    has_idle: bool,
    can_start: bool,
    limits: NodeLimits,
    regions: Sequence[RegionView],
) -> Decision:
    region = next((r.name for r in regions if r.healthy), None)
    fits = fn.memory_mb <= limits.max_memory_mb and fn.timeout_s <= limits.max_timeout_s
    if fn.placement == "region":
        return _forward_or_reject(region, "region-only")
    if not fits:
        return _forward_or_reject(region, "too-big-for-pop")
    if has_idle:
        return Decision("local-warm", "warm")
    if can_start:
        return Decision("local-cold", "capacity")
    if fn.placement == "edge":
        return Decision("local-wait", "edge-only")
    if region is None:
        return Decision("local-wait", "all-regions-down")
    return Decision("forward", "no-capacity", region)


def _forward_or_reject(region: str | None, reason: str) -> Decision:
    if region is None:
        return Decision("reject", "all-regions-down")
    return Decision("forward", reason, region)
