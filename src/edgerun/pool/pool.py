"""A node's warm pool: reuse idle sandboxes, start new ones within a memory budget.

Each sandbox charges its function's ``memory_mb`` against the node's
``capacity_mb`` and serves one request at a time. When the budget is spent,
idle sandboxes of other versions are evicted, least valuable first (lowest
recent use rate, then least recently used); busy ones never are. Past that
a request waits in a bounded queue, and past the queue it gets a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from edgerun.errors import ApiError
from edgerun.sandbox.base import Sandbox, SandboxFactory, SandboxSpec

USE_HALF_LIFE_S = 60.0


class PoolFull(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(429, "TooManyRequests", message, headers={"retry-after": "1"})


class TooBigForNode(ApiError):
    def __init__(self, need: int, capacity: int) -> None:
        super().__init__(
            507, "InsufficientCapacity",
            f"the function needs {need} MB but this node's capacity is {capacity} MB",
        )  # fmt: skip


class PoolView(NamedTuple):
    """What the placement policy may know about the pool, for one version."""

    has_idle: bool
    free_mb: int
    """Memory no sandbox holds."""
    evictable_mb: int
    """Memory held by idle sandboxes of other versions worth less than the asker."""
    at_function_max: bool
    busy: int = 0


@dataclass(slots=True)
class _Entry:
    sandbox: Sandbox
    last_used: float


@dataclass(slots=True)
class _Version:
    """Bookkeeping for one sandbox key (a function version and its settings)."""

    function: str
    version: str
    memory_mb: int
    idle: list[_Entry] = field(default_factory=list)
    busy: int = 0
    starting: int = 0
    uses: float = 0.0
    uses_at: float = 0.0

    @property
    def count(self) -> int:
        return len(self.idle) + self.busy

    def use_rate(self, now: float) -> float:
        """Exponentially decayed count of recent uses."""
        return self.uses * math.exp2(-(now - self.uses_at) / USE_HALF_LIFE_S)

    def record_use(self, now: float) -> None:
        self.uses = self.use_rate(now) + 1.0
        self.uses_at = now


class Pool:
    def __init__(
        self,
        factory: SandboxFactory,
        *,
        capacity_mb: int,
        max_per_function: int = 8,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        idle_ttl_s: float = 300.0,
        value: Callable[[str], float] | None = None,
    ) -> None:
        """``value(function)`` ranks idle sandboxes for eviction (lowest first);
        by default each version's own decayed use rate."""
        self._factory = factory
        self._value_of = value
        self.capacity_mb = capacity_mb
        self.max_per_function = max_per_function
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.idle_ttl_s = idle_ttl_s
        self._versions: dict[str, _Version] = {}
        self._used_mb = 0
        self._waiting = 0
        self._freed = asyncio.Condition()

    # --- views -----------------------------------------------------------
    def _value(self, v: _Version, now: float) -> float:
        return self._value_of(v.function) if self._value_of else v.use_rate(now)

    def _evictable_mb(self, key: str, below: float | None = None) -> int:
        now = time.monotonic()
        return sum(
            v.memory_mb * len(v.idle)
            for k, v in self._versions.items()
            if k != key and (below is None or self._value(v, now) < below)
        )

    def view(self, key: str, value: float | None = None) -> PoolView:
        """The pool as one version sees it; only idle sandboxes worth less than
        ``value`` count as evictable (all of them when it is None)."""
        v = self._versions.get(key)
        has_idle = bool(v and v.idle)
        return PoolView(
            has_idle=has_idle,
            free_mb=self.capacity_mb - self._used_mb,
            # With an idle sandbox nothing need be evicted: skip the scan.
            evictable_mb=0 if has_idle else self._evictable_mb(key, value),
            at_function_max=bool(v and v.count >= self.max_per_function),
            busy=v.busy if v else 0,
        )

    def load(self) -> float:
        """Share of the memory budget in use (0..1)."""
        return self._used_mb / self.capacity_mb if self.capacity_mb else 1.0

    def warm_versions(self) -> set[str]:
        """Versions with at least one live sandbox, idle or busy."""
        return {v.version for v in self._versions.values() if v.count}

    def snapshot(self) -> dict[str, object]:
        return {
            "capacity_mb": self.capacity_mb,
            "used_mb": self._used_mb,
            "idle": sum(len(v.idle) for v in self._versions.values()),
            "busy": sum(v.busy for v in self._versions.values()),
            "waiting": self._waiting,
        }

    def versions(self) -> list[dict[str, object]]:
        """Per version: warm (idle) and busy sandboxes and the memory they hold."""
        return [
            {
                "function": v.function,
                "version": v.version,
                "idle": len(v.idle),
                "busy": v.busy,
                "memory_mb": v.memory_mb * v.count,
            }
            for v in sorted(self._versions.values(), key=lambda v: (v.function, v.version))
            if v.count
        ]

    # --- acquire / release ----------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(
        self, spec: SandboxSpec, evict_below: float | None = None
    ) -> AsyncIterator[tuple[Sandbox, bool]]:
        """Hold a sandbox for one invocation; yields ``(sandbox, was_cold)``.

        Only idle sandboxes valued under ``evict_below`` (when given) may be
        evicted to make room. A sandbox that died or timed out during the
        lease is discarded, never put back.
        """
        sandbox, cold = await self._acquire(spec, evict_below)
        v = self._versions[spec.key]
        try:
            yield sandbox, cold
        finally:
            v.busy -= 1
            if sandbox.alive:
                v.idle.append(_Entry(sandbox, time.monotonic()))
            else:
                self._used_mb -= v.memory_mb
                await sandbox.close()
            await self._wake()

    async def _wake(self) -> None:
        async with self._freed:
            self._freed.notify_all()

    def _entry(self, spec: SandboxSpec) -> _Version:
        v = self._versions.get(spec.key)
        if v is None:
            v = self._versions[spec.key] = _Version(spec.function, spec.version, spec.memory_mb)
        return v

    async def _acquire(self, spec: SandboxSpec, evict_below: float | None) -> tuple[Sandbox, bool]:
        if spec.memory_mb > self.capacity_mb:
            raise TooBigForNode(spec.memory_mb, self.capacity_mb)
        v = self._entry(spec)
        v.record_use(time.monotonic())
        deadline = time.monotonic() + self.queue_timeout_s
        while True:
            while v.idle:
                entry = v.idle.pop()
                if entry.sandbox.alive:
                    v.busy += 1
                    return entry.sandbox, False
                self._used_mb -= v.memory_mb
                await entry.sandbox.close()
            if v.count < self.max_per_function and await self._make_room(
                spec.key, v.memory_mb, evict_below
            ):
                return await self._start(spec, v), True
            await self._wait(deadline)

    async def _make_room(self, key: str, need: int, below: float | None = None) -> bool:
        """Evict idle sandboxes of other versions until ``need`` MB are free."""
        if self._used_mb + need <= self.capacity_mb:
            return True
        if self._used_mb + need - self._evictable_mb(key, below) > self.capacity_mb:
            return False
        now = time.monotonic()
        candidates = sorted(
            ((self._value(v, now), e.last_used, k, e)
             for k, v in self._versions.items() if k != key for e in v.idle),
            key=lambda c: (c[0], c[1]),
        )  # fmt: skip
        if below is not None:
            candidates = [c for c in candidates if c[0] < below]
        for _rate, _last, k, entry in candidates:
            if self._used_mb + need <= self.capacity_mb:
                break
            victim = self._versions[k]
            victim.idle.remove(entry)
            self._used_mb -= victim.memory_mb
            await entry.sandbox.close()
        return self._used_mb + need <= self.capacity_mb

    async def _start(self, spec: SandboxSpec, v: _Version) -> Sandbox:
        self._used_mb += v.memory_mb
        v.busy += 1
        try:
            return await self._factory.start(spec)
        except BaseException:
            self._used_mb -= v.memory_mb
            v.busy -= 1
            await self._wake()
            raise

    async def _wait(self, deadline: float) -> None:
        if self._waiting >= self.max_queue:
            raise PoolFull("every sandbox this node can hold is busy and the queue is full")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PoolFull(f"no sandbox became free within {self.queue_timeout_s:g} s")
        self._waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait(), remaining)
        except TimeoutError:
            raise PoolFull(f"no sandbox became free within {self.queue_timeout_s:g} s") from None
        finally:
            self._waiting -= 1

    async def prewarm(self, spec: SandboxSpec, count: int, evict_below: float | None = None) -> int:
        """Start up to ``count`` idle sandboxes in free memory, evicting only
        idle sandboxes valued under ``evict_below`` (none when it is None)."""
        v = self._entry(spec)
        started = 0
        while (
            started < count
            and v.count < self.max_per_function
            and (
                self._used_mb + v.memory_mb <= self.capacity_mb
                or (evict_below is not None
                    and await self._make_room(spec.key, v.memory_mb, evict_below))
            )
        ):  # fmt: skip
            sandbox = await self._start(spec, v)
            v.busy -= 1
            v.idle.append(_Entry(sandbox, time.monotonic()))
            started += 1
        return started

    # --- housekeeping -----------------------------------------------------
    async def reap_idle(self, now: float | None = None) -> int:
        """Stop sandboxes idle for longer than the TTL; returns how many."""
        now = time.monotonic() if now is None else now
        reaped = 0
        for v in self._versions.values():
            expired = [e for e in v.idle if now - e.last_used > self.idle_ttl_s]
            for entry in expired:
                v.idle.remove(entry)
                self._used_mb -= v.memory_mb
                await entry.sandbox.close()
            reaped += len(expired)
        if reaped:
            await self._wake()
        return reaped

    async def drop_idle(self) -> None:
        """Stop every idle sandbox (used at shutdown)."""
        await self.reap_idle(now=math.inf)

    async def close(self) -> None:
        await self.drop_idle()
        await self._factory.close()
