"""A node's warm pool: reuse idle sandboxes, start new ones within a memory budget.

Each sandbox charges its function's ``memory_mb`` against the node's
``capacity_mb`` and serves one request at a time; memory the sandbox engine
holds outside sandboxes (loaded zygotes, :meth:`SandboxFactory.held_mb`)
counts against the same budget. When the budget is spent, idle sandboxes of
other versions are evicted, least valuable first (lowest recent use rate,
then least recently used); busy ones never are. When evicting every idle
sandbox the asker may displace still would not free enough, and the zygotes
hold at least what is missing, the pool asks the engine to shed unused zygotes
(:meth:`SandboxFactory.shed`) and looks again, once per request (see
:meth:`Pool._shed_for`). Past that a request waits in a bounded queue, and
past the queue it gets a 429.

The pool is a state machine driven from one event loop. Every transition
(lease, reserve, start, evict, release, reap, stop) is an atomic step: it
chooses, detaches and (un)charges synchronously, with no ``await`` between a
choice and its effect, and only then awaits the slow part (closing victims,
starting a sandbox). So two requests never pick the same victim or the same
memory, and nothing a step chose can change under it.

States of a sandbox slot, and the memory each holds:

- *reserved*: a start was decided (memory charged, counted for its function),
  the sandbox does not exist yet;
- *busy*: leased to one invocation;
- *idle*: warm, waiting for a request, the only state eviction may touch;
- gone: detached and uncharged, then closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from edgerun.errors import ApiError
from edgerun.pool.budget import Budget
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


class FunctionStopped(ApiError):
    def __init__(self, function: str) -> None:
        super().__init__(
            404, "NotFound", f"function {function!r} was deleted while its sandbox started"
        )


class PoolView(NamedTuple):
    """The pool as one version sees it, for the placement policy."""

    idle: int
    busy: int
    waiting: int
    free_mb: int
    """Memory free now, net of loaded and loading zygotes."""
    need_mb: int
    """What a start takes: the sandbox, plus room for its zygote when not loaded."""
    victims: tuple[float, ...] | None
    """Values of the idle sandboxes a start would evict, least valuable first;
    () when it fits, None when evicting every idle sandbox would not do."""
    at_function_max: bool


@dataclass(slots=True)
class _Entry:
    sandbox: Sandbox
    last_used: float


@dataclass(slots=True, eq=False)
class _Version:
    """Bookkeeping for one sandbox key (a function version and its settings)."""

    function: str
    version: str
    memory_mb: int
    idle: list[_Entry] = field(default_factory=list)
    busy: int = 0
    starting: int = 0
    """Reserved slots: charged, sandbox not started yet."""
    uses: float = 0.0
    uses_at: float = 0.0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    """Requests queued for this version, first come first served (see Pool._wait)."""

    @property
    def count(self) -> int:
        return len(self.idle) + self.busy + self.starting

    def use_rate(self, now: float) -> float:
        """Exponentially decayed count of recent uses."""
        return self.uses * math.exp2(-(now - self.uses_at) / USE_HALF_LIFE_S)

    def record_use(self, now: float) -> None:
        self.uses = self.use_rate(now) + 1.0
        self.uses_at = now


@dataclass(slots=True)
class Reservation:
    """A slot held for one sandbox of ``key``: memory charged, not started yet."""

    key: str
    memory_mb: int
    epoch: int
    zygote_mb: int = 0
    """Held for the zygote this start must load first (0 when it is loaded)."""
    used: bool = False


@dataclass(slots=True)
class Claim:
    """A run-here decision's hold on the pool, taken the moment it is decided:
    an idle sandbox already marked busy, or a reserved slot for a cold start."""

    key: str
    sandbox: Sandbox | None = None
    reservation: Reservation | None = None
    epoch: int = 0
    done: bool = False


_SHARED_POLL_S = 0.05
"""How often a request waiting for room looks again when other workers share the budget."""


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
        value: Callable[[str, str, bool], float] | None = None,
        on_start: Callable[[SandboxSpec, float, bool], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``value(function, version, zygote_loaded)`` ranks idle sandboxes for
        eviction (lowest first; a POP passes the expected cost of evicting one); by default each
        version's own decayed use rate. ``on_start(spec, ms, zygote_was_loaded)``
        learns what each start cost. ``budget`` is shared with the node's other
        workers, if it has any (see :mod:`edgerun.pool.budget`)."""
        self._factory = factory
        self.budget = budget or Budget(capacity_mb)
        self._shared = self.budget.shared
        self._on_start = on_start
        self._value_of = value
        self.capacity_mb = capacity_mb
        self.max_per_function = max_per_function
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.idle_ttl_s = idle_ttl_s
        self._versions: dict[str, _Version] = {}
        self._per_function: dict[str, int] = {}
        """Sandboxes (reserved, busy or idle) per function, all versions together."""
        self._epochs: dict[str, int] = {}
        """Bumped when a function is stopped: older sandboxes are discarded on release."""
        self._closing: set[asyncio.Future[None]] = set()
        self._used_mb = 0
        self._waiting = 0
        self.evictions = 0
        self.starts = 0
        self._queued: dict[_Version, None] = {}
        """Versions with requests waiting in their queue, in the order they queued
        (a dict, not a set: waking must not depend on where objects live)."""
        self._generation = 0
        self._zygotes_pending_mb = 0
        """Memory held for zygotes that starts under way will load (not yet in held_mb)."""
        """Bumped whenever memory or a slot may have come free (see :meth:`_wake`)."""

    # --- views -----------------------------------------------------------
    def _valuer(self) -> Callable[[_Version], float]:
        """The eviction value of each version's idle sandboxes, for one scan: what
        the engine holds loaded is read once, each version valued once."""
        now = time.monotonic()
        value_of = self._value_of
        if value_of is None:
            return lambda v: v.use_rate(now)
        loaded = self._factory.loaded_versions()
        cache: dict[int, float] = {}

        def value(v: _Version) -> float:
            found = cache.get(id(v))
            if found is None:
                found = cache[id(v)] = value_of(v.function, v.version, v.version in loaded)
            return found

        return value

    def _free_mb(self) -> int:
        mine = self._used_mb + self._zygotes_pending_mb
        held = self._factory.held_mb()
        if not self._shared:
            return self.capacity_mb - mine - held
        self.budget.publish(mine)
        return self.capacity_mb - mine - held - self.budget.others_mb()

    def _publish(self) -> None:
        """Tell the node's other workers what this one charges (its zygotes are the
        engine's: a shared engine charges them once, in its own slot)."""
        if self._shared:
            self.budget.publish(self._used_mb + self._zygotes_pending_mb)

    def _at_max(self, function: str) -> bool:
        return self._per_function.get(function, 0) >= self.max_per_function

    def idle_count(self, spec: SandboxSpec) -> int:
        """Idle sandboxes of ``spec`` here."""
        v = self._versions.get(spec.key)
        return len(v.idle) if v else 0

    def view(self, spec: SandboxSpec) -> PoolView:
        """What a request for ``spec`` would find here. With an idle sandbox the
        eviction candidates are not computed (nothing need go)."""
        v = self._versions.get(spec.key)
        idle = len(v.idle) if v else 0
        need = spec.memory_mb + self._zygote_room(spec)
        victims: tuple[float, ...] | None = ()
        if not idle:
            try:
                value = self._valuer()
                chosen = self._victims(spec.key, need, None, value)
                victims = tuple(value(w) for w, _e in chosen)
            except LookupError:
                victims = None
        return PoolView(
            idle=idle,
            busy=v.busy if v else 0,
            waiting=self._waiting,
            free_mb=self._free_mb(),
            need_mb=need,
            victims=victims,
            at_function_max=self._at_max(spec.function),
        )

    def load(self) -> float:
        """Share of the memory budget in use (0..1)."""
        if not self.capacity_mb:
            return 1.0
        return (
            self._used_mb + self._factory.held_mb() + self.budget.others_mb()
        ) / self.capacity_mb

    @property
    def used_mb(self) -> int:
        """Memory charged for sandboxes (reserved, busy and idle)."""
        return self._used_mb

    def warm_versions(self) -> set[str]:
        """Versions with at least one live sandbox, idle or busy."""
        return {v.version for v in self._versions.values() if v.idle or v.busy}

    def live_versions(self) -> set[str]:
        """Versions holding any slot (reserved, busy or idle): their code is in use."""
        return {v.version for v in self._versions.values() if v.count}

    def functions(self) -> set[str]:
        """Functions holding any slot (reserved, busy or idle)."""
        return {f for f, n in self._per_function.items() if n}

    def snapshot(self) -> dict[str, object]:
        return {
            "capacity_mb": self.capacity_mb,
            "used_mb": self._used_mb,
            "held_mb": self._factory.held_mb(),
            "idle": sum(len(v.idle) for v in self._versions.values()),
            "busy": sum(v.busy for v in self._versions.values()),
            "starting": sum(v.starting for v in self._versions.values()),
            "waiting": self._waiting,
            "starts": self.starts,
            "evictions": self.evictions,
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

    # --- atomic steps (no await inside) -----------------------------------
    def _entry(self, spec: SandboxSpec) -> _Version:
        v = self._versions.get(spec.key)
        if v is None:
            v = self._versions[spec.key] = _Version(spec.function, spec.version, spec.memory_mb)
        return v

    def _uncharge(self, v: _Version) -> None:
        self._used_mb -= v.memory_mb
        self._publish()
        left = self._per_function.get(v.function, 0) - 1
        if left > 0:
            self._per_function[v.function] = left
        else:
            self._per_function.pop(v.function, None)

    def _charge(self, v: _Version) -> None:
        self._used_mb += v.memory_mb
        self._per_function[v.function] = self._per_function.get(v.function, 0) + 1

    def _wake(self) -> None:
        """Memory or a slot may have come free: wake every waiter (synchronous). The
        generation tells a request that failed to find room before it got to wait
        (see :meth:`_wait`)."""
        self._generation += 1
        if self._waiting:
            for v in self._queued:
                while v.waiters:
                    waiter = v.waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
            self._queued.clear()

    def _wake_one(self, v: _Version) -> None:
        """An idle sandbox of ``v`` is back: it serves exactly one waiter of ``v``,
        the first. Without one, everyone looks (they may evict it)."""
        self._generation += 1
        while v.waiters:
            waiter = v.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._wake()

    def wake(self) -> None:
        """Memory the engine held was freed outside the pool (its zygotes reaped)."""
        self._publish()
        self._wake()

    def _take_idle(self, v: _Version, dead: list[Sandbox]) -> Sandbox | None:
        """Lease step: the most recently used live idle sandbox, now busy."""
        while v.idle:
            entry = v.idle.pop()
            if entry.sandbox.alive:
                v.busy += 1
                return entry.sandbox
            self._uncharge(v)
            dead.append(entry.sandbox)
        return None

    def _victims(
        self,
        key: str,
        need: int,
        below: float | None,
        value: Callable[[_Version], float] | None = None,
    ) -> list[tuple[_Version, _Entry]]:
        """Idle sandboxes to evict so ``need`` MB fit, least valuable first ([] when
        they fit already); raises LookupError(short_mb) when evicting cannot do it."""
        short = need - self._free_mb()
        if short <= 0:
            return []
        value_of = value or self._valuer()
        candidates = sorted(
            ((value_of(v), e.last_used, v, e)
             for k, v in self._versions.items() if k != key and v.idle
             for e in v.idle),
            key=lambda c: (c[0], c[1]),
        )  # fmt: skip
        chosen: list[tuple[_Version, _Entry]] = []
        for worth, _last, v, entry in candidates:
            if below is not None and worth >= below:
                break
            chosen.append((v, entry))
            short -= v.memory_mb
            if short <= 0:
                return chosen
        raise LookupError(short)

    def _zygote_room(self, spec: SandboxSpec) -> int:
        """Room to hold for the zygote a start of ``spec`` must load first.

        Never more than the node has beside the sandbox itself: a function as
        big as the node still runs, its zygote then charged once loaded."""
        return max(0, min(self._factory.zygote_mb(spec), self.capacity_mb - spec.memory_mb))

    def _reserve(
        self, spec: SandboxSpec, below: float | None, victims_out: list[Sandbox]
    ) -> Reservation:
        """Reserve step: evict what must go and charge one slot for ``spec``, or
        raise LookupError(short_mb) having changed nothing."""
        v = self._entry(spec)
        if self._at_max(spec.function):
            raise LookupError(0)
        zygote_mb = self._zygote_room(spec)
        with self.budget.exclusive():  # no other worker takes the same room meanwhile
            chosen = self._victims(spec.key, v.memory_mb + zygote_mb, below)
            for victim, entry in chosen:  # evict: detach and uncharge now, close later
                victim.idle.remove(entry)
                self._uncharge(victim)
                victims_out.append(entry.sandbox)
            self.evictions += len(chosen)
            self._charge(v)
            v.starting += 1
            self._zygotes_pending_mb += zygote_mb
            self._publish()
        return Reservation(spec.key, v.memory_mb, self._epochs.get(spec.function, 0), zygote_mb)

    def reserve(self, spec: SandboxSpec, evict_below: float | None = None) -> Reservation | None:
        """Hold a slot for a sandbox of ``spec`` now (a run-here decision keeps
        its room while its code is fetched); None when there is no room.

        Pass the reservation to :meth:`lease`, or give it back with
        :meth:`cancel`. Victims it evicted are closed in the background."""
        if spec.memory_mb > self.capacity_mb:
            return None
        victims: list[Sandbox] = []
        try:
            r = self._reserve(spec, evict_below, victims)
        except LookupError:
            return None
        self._close_later(victims)
        return r

    def _close_later(self, sandboxes: list[Sandbox]) -> asyncio.Future[None] | None:
        """Close sandboxes already detached and uncharged, without holding up
        the caller (which owns a sandbox or slot by now). :meth:`close` waits."""
        if not sandboxes:
            return None
        task = asyncio.ensure_future(_close_all(sandboxes))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def _close(self, sandboxes: Iterable[Sandbox]) -> None:
        """Close detached sandboxes and wait; they are closed even if the caller
        is cancelled meanwhile (nothing uncharged may stay running)."""
        task = self._close_later(list(sandboxes))
        if task is not None:
            await asyncio.shield(task)

    def cancel(self, r: Reservation) -> None:
        """Give back an unused reservation."""
        if r.used:
            return
        r.used = True
        self._zygotes_pending_mb -= r.zygote_mb
        v = self._versions[r.key]
        v.starting -= 1
        self._uncharge(v)
        self._wake()

    def _release(self, v: _Version, sandbox: Sandbox, epoch: int) -> bool:
        """Release step: back to idle, or detached and uncharged; True to close it."""
        v.busy -= 1
        if sandbox.alive and epoch == self._epochs.get(v.function, 0):
            v.idle.append(_Entry(sandbox, time.monotonic()))
            self._wake_one(v)
            return False
        self._uncharge(v)
        self._wake()
        return True

    # --- acquire / release ----------------------------------------------
    def claim(self, spec: SandboxSpec, evict_below: float | None = None) -> Claim | None:
        """Hold what a run-here decision counted on, in the same step as the
        decision: an idle sandbox (marked busy) or a reserved slot, evicting only
        idle sandboxes valued under ``evict_below``. None when neither is there.

        Pass the claim to :meth:`lease`, or give it back with :meth:`cancel_claim`."""
        if spec.memory_mb > self.capacity_mb:
            return None
        v = self._entry(spec)
        dead: list[Sandbox] = []
        sandbox = self._take_idle(v, dead)
        self._close_later(dead)
        if sandbox is not None:
            return Claim(spec.key, sandbox=sandbox, epoch=self._epochs.get(spec.function, 0))
        r = self.reserve(spec, evict_below)
        return Claim(spec.key, reservation=r, epoch=r.epoch) if r is not None else None

    def cancel_claim(self, claim: Claim) -> None:
        """Give back a claim that was not leased (its sandbox goes back to idle)."""
        if claim.done:
            return
        claim.done = True
        if claim.reservation is not None:
            self.cancel(claim.reservation)
        elif claim.sandbox is not None:
            v = self._versions[claim.key]
            if self._release(v, claim.sandbox, claim.epoch):
                self._close_later([claim.sandbox])

    @contextlib.asynccontextmanager
    async def lease(
        self,
        spec: SandboxSpec,
        evict_below: float | None = None,
        reservation: Reservation | None = None,
        *,
        claim: Claim | None = None,
        wait_s: float | None = None,
    ) -> AsyncIterator[tuple[Sandbox, bool]]:
        """Hold a sandbox for one invocation; yields ``(sandbox, was_cold)``.

        With a ``claim`` (or a bare ``reservation``) it uses what was held;
        otherwise it takes an idle sandbox or starts one, evicting only idle
        sandboxes valued under ``evict_below`` (when given), and queues at most
        ``wait_s`` (default: the pool's queue timeout) for room. A sandbox that
        died or timed out during the lease, or whose function was stopped
        meanwhile, is discarded, never put back.
        """
        if claim is not None:
            if claim.done:
                raise RuntimeError("a claim is leased once")
            claim.done = True
            if claim.sandbox is not None:
                self._entry(spec).record_use(time.monotonic())
                sandbox, cold, epoch = claim.sandbox, False, claim.epoch
            else:
                reservation = claim.reservation
                sandbox, cold, epoch = await self._acquire(spec, evict_below, reservation, wait_s)
        else:
            sandbox, cold, epoch = await self._acquire(spec, evict_below, reservation, wait_s)
        v = self._versions[spec.key]
        try:
            yield sandbox, cold
        finally:
            if self._release(v, sandbox, epoch):
                await self._close([sandbox])

    async def _acquire(
        self,
        spec: SandboxSpec,
        evict_below: float | None,
        reservation: Reservation | None,
        wait_s: float | None = None,
    ) -> tuple[Sandbox, bool, int]:
        if spec.memory_mb > self.capacity_mb:
            if reservation is not None:
                self.cancel(reservation)
            raise TooBigForNode(spec.memory_mb, self.capacity_mb)
        self._entry(spec).record_use(time.monotonic())
        if reservation is not None and not reservation.used:
            v = self._entry(spec)
            # A warm sandbox may have come free since: prefer it, give the slot back.
            dead: list[Sandbox] = []
            sandbox = self._take_idle(v, dead)
            if sandbox is not None:
                self.cancel(reservation)
                self._close_later(dead)
                return sandbox, False, self._epochs.get(spec.function, 0)
            return await self._start(spec, reservation, dead), True, reservation.epoch
        limit_s = self.queue_timeout_s if wait_s is None else min(wait_s, self.queue_timeout_s)
        deadline = time.monotonic() + limit_s
        shed_failed = False
        while True:
            v = self._entry(spec)  # reaping may have dropped an unused entry
            dead = []
            sandbox = self._take_idle(v, dead)
            self._close_later(dead)  # detached and uncharged: closing needs no waiting
            if sandbox is not None:
                return sandbox, False, self._epochs.get(spec.function, 0)
            victims: list[Sandbox] = []
            seen = self._generation  # anything freed from here on ends the wait at once
            try:
                r = self._reserve(spec, evict_below, victims)
            except LookupError as exc:
                short = int(exc.args[0])
                if not shed_failed and 0 < short <= self._factory.held_mb():
                    if await self._shed_for(spec.key, short, evict_below):
                        continue
                    shed_failed = True  # it fell short: wait, do not shed or evict again
                if short > 0:
                    self.budget.ask_room(short, evict_below)
                await self._wait(v, deadline, seen, limit_s)
                continue
            return await self._start(spec, r, victims), True, r.epoch

    async def _shed_for(self, key: str, short: int, below: float | None) -> bool:
        """Evicting every idle sandbox ``below`` allows would still leave ``short``
        MB missing, no more than the engine's zygotes hold: stop unused zygotes.
        True when that closed the gap (look again).

        Shedding is not free (the next start of their version pays a new zygote).
        Idle sandboxes are evicted for it only when the zygotes left to shed are
        theirs and hold enough (a function nearly as big as the node); otherwise
        nothing is evicted."""
        freed = await self._shed(short)
        if freed >= short:
            return True
        # What the zygotes still hold serves live sandboxes. Evicting the idle
        # sandboxes of versions left with no other slot makes their zygotes sheddable.
        left = short - freed
        doomed = self._orphaned_by_eviction(key, below)
        if not doomed or left > self._factory.held_mb():
            return False
        evicted = self._detach_idle(lambda v, _e: v.version not in doomed)
        self.evictions += len(evicted)
        await self._close(evicted)  # their zygotes count them live until closed
        return await self._shed(left) >= left

    def _orphaned_by_eviction(self, key: str, below: float | None) -> set[str]:
        """Versions with a loaded zygote whose every slot is an idle sandbox
        that ``key``'s request may evict: evicting those frees the zygote."""
        value = self._valuer()
        kept: set[str] = set()
        evictable: set[str] = set()
        for k, v in self._versions.items():
            if k == key or v.busy or v.starting or not v.idle:
                if v.count:
                    kept.add(v.version)
            elif below is not None and value(v) >= below:
                kept.add(v.version)
            else:
                evictable.add(v.version)
        return (evictable - kept) & self._factory.loaded_versions()

    async def _shed(self, need: int) -> int:
        """Ask the engine to stop unused zygotes; waiters learn what it freed."""
        freed = await self._factory.shed(need)
        if freed > 0:
            self._wake()
        return freed

    async def _start(self, spec: SandboxSpec, r: Reservation, victims: list[Sandbox]) -> Sandbox:
        """Start step: turn a reservation into a busy sandbox (or give it back).

        Raises FunctionStopped when the function was stopped while it started."""
        r.used = True
        v = self._versions[r.key]  # kept while it holds a reserved slot
        try:
            await self._close(victims)
            on_start = self._on_start
            loaded = on_start is not None and self._factory.is_loaded(spec)
            began = time.perf_counter()
            sandbox = await self._factory.start(spec)
            if on_start is not None:
                on_start(spec, (time.perf_counter() - began) * 1000, loaded)
        except BaseException:
            v.starting -= 1
            self._uncharge(v)
            self._wake()
            raise
        finally:
            # Loaded (now in held_mb) or failed: the room held for it goes back.
            self._zygotes_pending_mb -= r.zygote_mb
            self._publish()
        v.starting -= 1
        if r.epoch != self._epochs.get(spec.function, 0):
            # Stopped meanwhile: its zygotes were stopped before this start made one.
            self._uncharge(v)
            self._wake()
            await self._close([sandbox])
            await self._factory.stop_function(spec.function)
            raise FunctionStopped(spec.function)
        v.busy += 1
        self.starts += 1
        return sandbox

    async def _wait(self, v: _Version, deadline: float, seen: int, limit_s: float) -> None:
        """Wait in ``v``'s queue until something is freed, unless it was since
        generation ``seen``. A future and a timer, no task per wait."""
        if self._generation != seen:
            return
        if self._waiting >= self.max_queue:
            raise PoolFull("every sandbox this node can hold is busy and the queue is full")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PoolFull(f"no sandbox became free within {limit_s:g} s")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        v.waiters.append(waiter)
        self._queued[v] = None
        # Another worker frees memory without waking this one: look again soon.
        timer = loop.call_later(
            min(remaining, _SHARED_POLL_S) if self._shared else remaining, _expire, waiter
        )
        self._waiting += 1
        try:
            await waiter
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise PoolFull(f"no sandbox became free within {limit_s:g} s") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one(v)  # woken, then cancelled: the wake goes to the next
            raise
        finally:
            timer.cancel()
            self._waiting -= 1
            with contextlib.suppress(ValueError):
                v.waiters.remove(waiter)

    async def prewarm(self, spec: SandboxSpec, count: int, evict_below: float | None = None) -> int:
        """Start up to ``count`` idle sandboxes in free memory, evicting only
        idle sandboxes valued under ``evict_below`` (none when it is None)."""
        if spec.memory_mb > self.capacity_mb:
            return 0
        started = 0
        while started < count:
            v = self._entry(spec)
            victims: list[Sandbox] = []
            if evict_below is None and self._free_mb() < v.memory_mb + self._zygote_room(spec):
                break
            try:
                r = self._reserve(spec, evict_below, victims)
            except LookupError:
                break
            try:
                sandbox = await self._start(spec, r, victims)
            except FunctionStopped:
                break
            v = self._versions[spec.key]
            if self._release(v, sandbox, r.epoch):  # died at once
                await self._close([sandbox])
                break
            started += 1
        return started

    # --- housekeeping -----------------------------------------------------
    def _detach_idle(self, keep: Callable[[_Version, _Entry], bool]) -> list[Sandbox]:
        """Evict step: detach and uncharge every idle sandbox ``keep`` refuses."""
        gone: list[Sandbox] = []
        for v in self._versions.values():
            expired = [e for e in v.idle if not keep(v, e)]
            for entry in expired:
                v.idle.remove(entry)
                self._uncharge(v)
                gone.append(entry.sandbox)
        return gone

    async def release_idle(self, function: str, count: int) -> int:
        """Let up to ``count`` idle sandboxes of ``function`` go, least recently
        used first (its usual peak is over); returns how many."""
        entries = sorted(
            ((e.last_used, id(e), v, e) for v in self._versions.values()
             if v.function == function for e in v.idle),
            key=lambda c: (c[0], c[1]),
        )[: max(0, count)]  # fmt: skip
        gone = []
        for _t, _i, v, entry in entries:
            v.idle.remove(entry)
            self._uncharge(v)
            gone.append(entry.sandbox)
        if gone:
            self._wake()
        await self._close(gone)
        return len(gone)

    def held(self) -> dict[str, int]:
        """Sandboxes (reserved, busy or idle) per function."""
        return dict(self._per_function)

    async def relieve(self) -> int:
        """Free what another worker asked for (see :mod:`edgerun.pool.budget`):
        idle sandboxes valued under its threshold, least valuable first, then
        unused zygotes; returns the MB freed. What this worker cannot free is
        asked for again, for the others."""
        asked = self.budget.take_pressure()
        if asked is None:
            return 0
        need, below = asked
        value = self._valuer()
        candidates = sorted(
            ((value(v), e.last_used, v, e)
             for v in self._versions.values() for e in v.idle
             if below is None or value(v) < below),
            key=lambda c: (c[0], c[1]),
        )  # fmt: skip
        doomed: list[Sandbox] = []
        freed = 0
        for _worth, _last, v, entry in candidates:
            if freed >= need:
                break
            v.idle.remove(entry)
            self._uncharge(v)
            doomed.append(entry.sandbox)
            freed += v.memory_mb
        self.evictions += len(doomed)
        await self._close(doomed)
        if freed < need:
            freed += await self._factory.shed(need - freed)
        self._publish()
        if freed < need:
            self.budget.ask_room(need - freed, below)
        return freed

    async def reap_idle(self, now: float | None = None) -> int:
        """Stop sandboxes idle for longer than the TTL; returns how many."""
        t = time.monotonic() if now is None else now
        gone = self._detach_idle(lambda _v, e: t - e.last_used <= self.idle_ttl_s)
        for key in [k for k, v in self._versions.items() if not v.count]:
            if t - self._versions[key].uses_at > self.idle_ttl_s:
                del self._versions[key]
        if gone:
            self._wake()
        await self._close(gone)
        return len(gone)

    async def stop_function(self, function: str) -> int:
        """Stop every sandbox of ``function`` (it was deleted): idle ones now,
        busy and starting ones when released; then its zygotes. Returns how
        many idle sandboxes were stopped."""
        self._epochs[function] = self._epochs.get(function, 0) + 1
        gone = self._detach_idle(lambda v, _e: v.function != function)
        for key in [k for k, v in self._versions.items() if v.function == function]:
            if not self._versions[key].count:
                del self._versions[key]
        if gone:
            self._wake()
        await self._close(gone)
        await self._factory.stop_function(function)
        return len(gone)

    async def drop_idle(self) -> None:
        """Stop every idle sandbox (used at shutdown)."""
        await self.reap_idle(now=math.inf)

    async def close(self) -> None:
        await self.drop_idle()
        while self._closing:  # closes started meanwhile are waited for too
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._factory.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _close_all(sandboxes: Iterable[Sandbox]) -> None:
    todo = list(sandboxes)
    if todo:
        await asyncio.gather(*(s.close() for s in todo), return_exceptions=True)
