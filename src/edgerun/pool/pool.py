"""A node's warm pool: reuse idle sandboxes, start new ones within a budget.

Capacity is a count of *slots* (one sandbox each). Each sandbox serves one
request at a time. When every slot is taken, an idle sandbox of another
version is evicted (least recently used first); when all are busy the
request waits in a bounded queue, and past that it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgerun.errors import ApiError
from edgerun.sandbox.base import Sandbox, SandboxFactory, SandboxSpec


class PoolFull(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(429, "TooManyRequests", message, headers={"retry-after": "1"})


@dataclass(frozen=True, slots=True)
class PoolView:
    """What the placement policy may know about the pool, for one key."""

    has_idle: bool
    can_start: bool
    """A new sandbox could start now: a free slot or an idle one to evict."""


@dataclass(slots=True)
class _Entry:
    sandbox: Sandbox
    last_used: float


class Pool:
    def __init__(
        self,
        factory: SandboxFactory,
        *,
        slots: int,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        idle_ttl_s: float = 300.0,
    ) -> None:
        self._factory = factory
        self.slots = slots
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.idle_ttl_s = idle_ttl_s
        self._idle: dict[str, list[_Entry]] = {}
        self._lru: OrderedDict[int, tuple[str, _Entry]] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._starting = 0
        self._total = 0
        self._waiting = 0
        self._freed = asyncio.Condition()
        self._versions: dict[str, str] = {}

    # --- views -----------------------------------------------------------
    def view(self, key: str) -> PoolView:
        return PoolView(
            has_idle=bool(self._idle.get(key)),
            can_start=self._total < self.slots or bool(self._lru),
        )

    def warm_versions(self) -> set[str]:
        """Versions with at least one live sandbox, idle or busy."""
        keys = {k for k, v in self._idle.items() if v} | {k for k, n in self._busy.items() if n}
        return {self._versions[k] for k in keys}

    def snapshot(self) -> dict[str, object]:
        return {
            "slots": self.slots,
            "used": self._total,
            "idle": sum(len(v) for v in self._idle.values()),
            "busy": sum(self._busy.values()),
            "waiting": self._waiting,
        }

    # --- acquire / release ----------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self, spec: SandboxSpec) -> AsyncIterator[tuple[Sandbox, bool]]:
        """Hold a sandbox for one invocation; yields ``(sandbox, was_cold)``.

        A sandbox that died or timed out during the lease is discarded,
        never put back.
        """
        sandbox, cold = await self._acquire(spec)
        try:
            yield sandbox, cold
        finally:
            self._busy[spec.key] -= 1
            if sandbox.alive:
                entry = _Entry(sandbox, time.monotonic())
                self._idle.setdefault(spec.key, []).append(entry)
                self._lru[id(entry)] = (spec.key, entry)
            else:
                self._total -= 1
                await sandbox.close()
            await self._wake()

    async def _wake(self) -> None:
        async with self._freed:
            self._freed.notify_all()

    async def _acquire(self, spec: SandboxSpec) -> tuple[Sandbox, bool]:
        key = spec.key
        self._versions[key] = spec.version
        deadline = time.monotonic() + self.queue_timeout_s
        while True:
            idle = self._idle.get(key)
            while idle:
                entry = idle.pop()
                del self._lru[id(entry)]
                if entry.sandbox.alive:
                    self._busy[key] = self._busy.get(key, 0) + 1
                    return entry.sandbox, False
                self._total -= 1
                await entry.sandbox.close()
            if self._total >= self.slots and self._lru:
                _, (_victim_key, victim) = self._lru.popitem(last=False)
                self._idle[_victim_key].remove(victim)
                self._total -= 1
                await victim.sandbox.close()
            if self._total < self.slots:
                self._total += 1
                self._busy[key] = self._busy.get(key, 0) + 1
                try:
                    sandbox = await self._factory.start(spec)
                except BaseException:
                    self._total -= 1
                    self._busy[key] -= 1
                    await self._wake()
                    raise
                return sandbox, True
            await self._wait(deadline)

    async def _wait(self, deadline: float) -> None:
        if self._waiting >= self.max_queue:
            raise PoolFull(f"all {self.slots} workers are busy and the queue is full; retry later")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PoolFull(f"no worker became free within {self.queue_timeout_s:g} s")
        self._waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait(), remaining)
        except TimeoutError:
            raise PoolFull(f"no worker became free within {self.queue_timeout_s:g} s") from None
        finally:
            self._waiting -= 1

    # --- housekeeping -----------------------------------------------------
    async def reap_idle(self, now: float | None = None) -> int:
        """Stop sandboxes idle for longer than the TTL; returns how many."""
        now = time.monotonic() if now is None else now
        expired = [(k, e) for k, e in self._lru.values() if now - e.last_used > self.idle_ttl_s]
        for key, entry in expired:
            del self._lru[id(entry)]
            self._idle[key].remove(entry)
            self._total -= 1
            await entry.sandbox.close()
        if expired:
            await self._wake()
        return len(expired)

    async def drop_idle(self) -> None:
        """Stop every idle sandbox (used at shutdown)."""
        for key, entry in list(self._lru.values()):
            del self._lru[id(entry)]
            self._idle[key].remove(entry)
            self._total -= 1
            await entry.sandbox.close()

    async def close(self) -> None:
        await self.drop_idle()
        await self._factory.close()
