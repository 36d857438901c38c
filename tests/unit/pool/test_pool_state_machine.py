"""The pool as a state machine: Hypothesis drives interleaved concurrent
operations (leases held and released, prewarms, reaps, stops, deaths, starts and
closes that suspend) and checks the pool's invariants after every step.

Each rule only schedules work or lets the event loop run a few turns, so
operations interleave at every ``await`` the pool and the fake engine make.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgerun.pool.pool import Claim, FunctionStopped, Pool, PoolFull, Reservation
from edgerun.sandbox.base import SandboxSpec

CAPACITY_MB = 512
MAX_PER_FUNCTION = 3
ZYGOTE_MB = 16
FUNCTIONS = ("a", "b", "c", "d")
MEMORY = {"a": 128, "b": 128, "c": 64, "d": 256}


def make_spec(function: str, version: str) -> SandboxSpec:
    return SandboxSpec(
        function=function,
        version=f"{function}-{version}",
        handler="app.handler",
        bundle_dir=Path("/nonexistent"),
        memory_mb=MEMORY[function],
        timeout_s=1.0,
    )


class Violation(AssertionError):
    pass


class GatedSandbox:
    def __init__(self, spec: SandboxSpec, factory: GatedFactory) -> None:
        self.spec = spec
        self.alive = True
        self.closing = False
        self.closed = False
        self._factory = factory
        self.serial = next(factory.serials)
        """Creation order: ids are addresses, which differ between replays."""

    async def invoke(self, msg: object) -> object:
        raise NotImplementedError

    async def close(self) -> None:
        f = self._factory
        if id(self) in f.leased:
            f.violations.append(f"busy sandbox of {self.spec.version} closed")
        if self.closing:
            f.violations.append(f"sandbox of {self.spec.version} closed twice")
        self.closing = True
        self.alive = False
        f.live.pop(id(self), None)
        if f.gate_closes:
            await f.close_gate.wait()
        else:
            await asyncio.sleep(0)
        self.closed = True
        f.zygote_live[self.spec.version] -= 1


class GatedFactory:
    """A fake engine whose starts and closes can be held open, so that other
    operations run while they are suspended; zygotes charge ZYGOTE_MB each."""

    def __init__(self) -> None:
        self.serials = itertools.count()
        self.live: dict[int, GatedSandbox] = {}
        """Started and not being closed."""
        self.pending: list[SandboxSpec] = []
        self.leased: set[int] = set()
        """ids of sandboxes inside a lease body (maintained by the machine)."""
        self.violations: list[str] = []
        self.gate_starts = False
        self.gate_closes = False
        self.start_gate = asyncio.Event()
        self.close_gate = asyncio.Event()
        self.fail_next = False
        self.zygotes: dict[str, str] = {}
        """version -> function of loaded zygotes."""
        self.zygote_live: dict[str, int] = {}
        self.stopped: list[str] = []

    async def open(self) -> None:
        pass

    async def start(self, spec: SandboxSpec) -> GatedSandbox:
        self.pending.append(spec)
        self.zygotes[spec.version] = spec.function
        self.zygote_live[spec.version] = self.zygote_live.get(spec.version, 0) + 1
        try:
            if self.gate_starts:
                await self.start_gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("sandbox would not start")
        except BaseException:
            self.zygote_live[spec.version] -= 1
            raise
        finally:
            self.pending.remove(spec)
        sandbox = GatedSandbox(spec, self)
        self.live[id(sandbox)] = sandbox
        return sandbox

    def is_loaded(self, spec: SandboxSpec) -> bool:
        return spec.version in self.zygotes

    async def reap_idle(self, now: float | None = None) -> int:
        return 0

    def zygote_mb(self, spec: SandboxSpec) -> int:
        return 0 if spec.version in self.zygotes else ZYGOTE_MB

    def held_mb(self) -> int:
        return ZYGOTE_MB * len(self.zygotes)

    async def shed(self, need_mb: int) -> int:
        await asyncio.sleep(0)
        freed = 0
        for version in list(self.zygotes):
            if freed >= need_mb:
                break
            if self.zygote_live.get(version, 0) <= 0:
                del self.zygotes[version]
                freed += ZYGOTE_MB
        return freed

    def loaded_versions(self) -> set[str]:
        return set(self.zygotes)

    async def stop_function(self, function: str) -> None:
        self.stopped.append(function)
        for version in [v for v, f in self.zygotes.items() if f == function]:
            if self.zygote_live.get(version, 0) <= 0:
                del self.zygotes[version]

    async def close(self) -> None:
        pass


EXPECTED = (PoolFull, RuntimeError, FunctionStopped)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.factory = GatedFactory()
        self.pool = Pool(
            self.factory,  # type: ignore[arg-type]
            capacity_mb=CAPACITY_MB,
            max_per_function=MAX_PER_FUNCTION,
            max_queue=4,
            queue_timeout_s=600.0,
            idle_ttl_s=30.0,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.holds: list[asyncio.Event] = []
        self.reservations: list[tuple[SandboxSpec, Reservation]] = []
        self.claims: list[tuple[SandboxSpec, Claim]] = []
        self.handed: list[Claim] = []
        """Claims given to a lease task that has not entered its lease yet."""
        self.unexpected: list[BaseException] = []

    # --- scheduling -------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(self.loop.create_task(coro))

    def _turns(self, n: int) -> None:
        for _ in range(n):
            self.loop.run_until_complete(asyncio.sleep(0))
        for task in [t for t in self.tasks if t.done()]:
            self.tasks.remove(task)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                if not isinstance(exc, EXPECTED):
                    self.unexpected.append(exc)

    async def _lease(
        self,
        spec: SandboxSpec,
        hold: asyncio.Event | None,
        r: Reservation | None = None,
        claim: Claim | None = None,
    ) -> None:
        async with self.pool.lease(spec, reservation=r, claim=claim) as (sandbox, _cold):
            self.factory.leased.add(id(sandbox))
            if claim is not None:
                self.handed.remove(claim)
            try:
                if hold is not None:
                    await hold.wait()
                else:
                    await asyncio.sleep(0)
            finally:
                self.factory.leased.discard(id(sandbox))

    # --- rules ------------------------------------------------------------------
    @rule(
        function=st.sampled_from(FUNCTIONS),
        version=st.sampled_from(("v1", "v2")),
        hold=st.booleans(),
    )
    def lease(self, function: str, version: str, hold: bool) -> None:
        event = asyncio.Event() if hold else None
        if event is not None:
            self.holds.append(event)
        self._spawn(self._lease(make_spec(function, version), event))

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.holds) - 1))
        self.holds.pop(i).set()

    @rule(function=st.sampled_from(FUNCTIONS), evict=st.booleans())
    def reserve(self, function: str, evict: bool) -> None:
        spec = make_spec(function, "v1")

        async def go() -> Reservation | None:  # reserve() is called on the loop
            return self.pool.reserve(spec, evict_below=1e9 if evict else None)

        r = self.loop.run_until_complete(go())
        if r is not None:
            self.reservations.append((spec, r))

    @precondition(lambda self: bool(self.reservations))
    @rule(data=st.data(), use=st.booleans(), hold=st.booleans())
    def settle_a_reservation(self, data: st.DataObject, use: bool, hold: bool) -> None:
        i = data.draw(st.integers(0, len(self.reservations) - 1))
        spec, r = self.reservations.pop(i)
        if not use:
            self.pool.cancel(r)
            return
        event = asyncio.Event() if hold else None
        if event is not None:
            self.holds.append(event)
        self._spawn(self._lease(spec, event, r))

    @rule(
        function=st.sampled_from(FUNCTIONS),
        version=st.sampled_from(("v1", "v2")),
        evict=st.booleans(),
    )
    def claim(self, function: str, version: str, evict: bool) -> None:
        """A run-here decision holds its idle sandbox or slot at once."""
        spec = make_spec(function, version)

        async def go() -> Claim | None:
            return self.pool.claim(spec, evict_below=1e9 if evict else 0.0)

        c = self.loop.run_until_complete(go())
        if c is not None:
            self.claims.append((spec, c))

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), use=st.booleans(), hold=st.booleans())
    def settle_a_claim(self, data: st.DataObject, use: bool, hold: bool) -> None:
        i = data.draw(st.integers(0, len(self.claims) - 1))
        spec, c = self.claims.pop(i)
        if not use:

            async def cancel() -> None:  # closing a dead sandbox needs the loop
                self.pool.cancel_claim(c)

            self.loop.run_until_complete(cancel())
            return
        event = asyncio.Event() if hold else None
        if event is not None:
            self.holds.append(event)
        self.handed.append(c)
        self._spawn(self._lease(spec, event, claim=c))

    @rule(function=st.sampled_from(FUNCTIONS), count=st.integers(1, 3), evict=st.booleans())
    def prewarm(self, function: str, count: int, evict: bool) -> None:
        spec = make_spec(function, "v1")

        async def go() -> None:
            await self.pool.prewarm(spec, count, evict_below=1e9 if evict else None)

        self._spawn(go())

    @rule(later=st.booleans())
    def reap(self, later: bool) -> None:
        now = time.monotonic() + (3600.0 if later else 0.0)

        async def go() -> None:
            await self.pool.reap_idle(now=now)

        self._spawn(go())

    @rule(function=st.sampled_from(FUNCTIONS))
    def stop_function(self, function: str) -> None:
        async def go() -> None:
            await self.pool.stop_function(function)

        self._spawn(go())

    @precondition(lambda self: bool(self.factory.live))
    @rule(data=st.data())
    def a_sandbox_dies(self, data: st.DataObject) -> None:
        sandboxes = sorted(self.factory.live.values(), key=lambda s: s.serial)
        data.draw(st.sampled_from(sandboxes)).alive = False

    @rule(gated=st.booleans())
    def gate_starts(self, gated: bool) -> None:
        self.factory.gate_starts = gated
        if not gated:
            self.factory.start_gate.set()
            self.factory.start_gate = asyncio.Event()

    @rule(gated=st.booleans())
    def gate_closes(self, gated: bool) -> None:
        self.factory.gate_closes = gated
        if not gated:
            self.factory.close_gate.set()
            self.factory.close_gate = asyncio.Event()

    @rule()
    def next_start_fails(self) -> None:
        self.factory.fail_next = True

    @rule(n=st.integers(1, 6))
    def run_loop(self, n: int) -> None:
        self._turns(n)

    # --- invariants ----------------------------------------------------------------
    def _claimed(self) -> list[Any]:
        """Idle sandboxes held by claims not yet leased (busy, outside any lease)."""
        claims = [c for _spec, c in self.claims] + self.handed
        return [c.sandbox for c in claims if c.sandbox is not None]

    @invariant()
    def memory_charged_is_the_sum_of_live_sandboxes(self) -> None:
        # Sandboxes the pool holds: idle ones, busy ones (inside a lease body) and
        # reserved slots. An evicted one is uncharged the moment it is detached,
        # though its close() may only run a few turns later.
        versions = self.pool._versions.values()
        reserved = sum(v.memory_mb * v.starting for v in versions)
        idle = sum(v.memory_mb * len(v.idle) for v in versions)
        busy = sum(self.factory.live[i].spec.memory_mb for i in self.factory.leased)
        busy += sum(s.spec.memory_mb for s in self._claimed())
        assert self.pool.used_mb == idle + busy + reserved
        assert self.pool.snapshot()["held_mb"] == self.factory.held_mb()
        assert len(self.factory.pending) <= sum(v.starting for v in versions)
        assert self.pool.used_mb <= CAPACITY_MB

    @invariant()
    def no_sandbox_is_both_idle_and_busy(self) -> None:
        idle = [e.sandbox for v in self.pool._versions.values() for e in v.idle]
        assert len({id(s) for s in idle}) == len(idle)
        assert not {id(s) for s in idle} & self.factory.leased
        claimed = {id(s) for s in self._claimed()}
        assert not {id(s) for s in idle} & claimed
        busy = sum(v.busy for v in self.pool._versions.values())
        assert busy == len(self.factory.leased) + len(claimed)
        for s in idle:
            assert not s.closing  # type: ignore[attr-defined]

    @invariant()
    def a_busy_sandbox_is_never_closed(self) -> None:
        assert self.factory.violations == []
        for sandbox_id in self.factory.leased:
            assert sandbox_id in self.factory.live

    @invariant()
    def per_function_limits_hold_across_versions(self) -> None:
        counts: dict[str, int] = {}
        for v in self.pool._versions.values():
            counts[v.function] = counts.get(v.function, 0) + v.count
        for function, n in counts.items():
            assert n <= MAX_PER_FUNCTION, (function, n)
        assert {f: n for f, n in counts.items() if n} == self.pool._per_function

    @invariant()
    def nothing_unexpected_was_raised(self) -> None:
        assert self.unexpected == []

    def teardown(self) -> None:
        try:
            self.factory.gate_starts = self.factory.gate_closes = False
            self.factory.start_gate.set()
            self.factory.close_gate.set()
            for event in self.holds:
                event.set()
            for _spec, r in self.reservations:
                self.pool.cancel(r)
            for _spec, c in self.claims:

                async def cancel(claim: Claim = c) -> None:
                    self.pool.cancel_claim(claim)

                self.loop.run_until_complete(cancel())
            for _ in range(200):
                if not self.tasks:
                    break
                self._turns(1)
            for task in self.tasks:
                task.cancel()
            self._turns(3)
            self.loop.run_until_complete(self.pool.close())
            assert self.unexpected == []
            assert self.factory.violations == []
            assert self.pool.used_mb == sum(s.spec.memory_mb for s in self.factory.live.values()), (
                "every sandbox still charged is still live"
            )
        finally:
            self.loop.close()


PoolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_state_machine = pytest.mark.filterwarnings("ignore::RuntimeWarning")(PoolMachine.TestCase)
