"""The warm pool's bookkeeping, driven by an in-memory fake sandbox factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from edgerun.errors import ApiError
from edgerun.pool.pool import Pool, PoolFull, PoolView
from edgerun.sandbox.base import SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeSandbox:
    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.alive = True
        self.closed = False

    async def invoke(self, msg: object) -> object:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True
        self.alive = False


class FakeFactory:
    def __init__(self) -> None:
        self.started: list[FakeSandbox] = []
        self.failures = 0

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        await anyio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("sandbox would not start")
        sandbox = FakeSandbox(spec)
        self.started.append(sandbox)
        return sandbox

    def zygote_mb(self, spec: SandboxSpec) -> int:
        return 0

    def held_mb(self) -> int:
        return 0

    async def shed(self, need_mb: int) -> int:
        return 0

    def loaded_versions(self) -> set[str]:
        return {s.spec.version for s in self.started if not s.closed}

    async def stop_function(self, function: str) -> None:
        pass

    async def close(self) -> None:
        pass


def spec(function: str = "hello", version: str = "v1") -> SandboxSpec:
    return SandboxSpec(
        function=function,
        version=version,
        handler="app.handler",
        bundle_dir=Path("/nonexistent"),
        memory_mb=128,
        timeout_s=1.0,
    )


def make_pool(factory: FakeFactory, slots: int = 1, **kw: float) -> Pool:
    return Pool(factory, capacity_mb=slots * 128, **kw)  # type: ignore[arg-type]


async def use(pool: Pool, s: SandboxSpec) -> tuple[FakeSandbox, bool]:
    """Lease and release at once."""
    async with pool.lease(s) as (sandbox, cold):
        return sandbox, cold  # type: ignore[return-value]


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.001)


# --- reuse --------------------------------------------------------------------------


async def test_first_lease_is_cold():
    factory = FakeFactory()

    _, cold = await use(make_pool(factory), spec())

    assert cold is True
    assert len(factory.started) == 1


async def test_second_lease_of_the_same_spec_is_warm_and_reuses_the_sandbox():
    factory = FakeFactory()
    pool = make_pool(factory)
    first, _ = await use(pool, spec())

    second, cold = await use(pool, spec())

    assert cold is False
    assert second is first
    assert len(factory.started) == 1


async def test_sandbox_not_alive_after_the_lease_is_discarded():
    factory = FakeFactory()
    pool = make_pool(factory)
    async with pool.lease(spec()) as (sandbox, _):
        sandbox.alive = False  # e.g. it timed out and was stopped

    again, cold = await use(pool, spec())

    assert cold is True
    assert again is not sandbox
    assert pool.snapshot()["used_mb"] == 1 * 128


async def test_idle_sandbox_that_died_is_not_reused():
    factory = FakeFactory()
    pool = make_pool(factory)
    first, _ = await use(pool, spec())
    first.alive = False

    again, cold = await use(pool, spec())

    assert cold is True
    assert again is not first
    assert pool.snapshot()["used_mb"] == 1 * 128


# --- eviction -----------------------------------------------------------------------


async def test_full_pool_evicts_an_idle_sandbox_of_another_spec():
    factory = FakeFactory()
    pool = make_pool(factory, slots=1)
    old, _ = await use(pool, spec("one"))

    new, cold = await use(pool, spec("two"))

    assert cold is True
    assert old.closed
    assert new.spec.function == "two"
    assert pool.snapshot()["used_mb"] == 1 * 128


async def test_eviction_picks_the_least_recently_used_idle_sandbox():
    factory = FakeFactory()
    pool = make_pool(factory, slots=2)
    a, _ = await use(pool, spec("a"))
    b, _ = await use(pool, spec("b"))
    await use(pool, spec("a"))  # a is now more recently used than b

    await use(pool, spec("c"))

    assert b.closed
    assert not a.closed


# --- waiting and refusing -----------------------------------------------------------


async def test_lease_waits_for_a_busy_sandbox_and_gets_it_when_released():
    factory = FakeFactory()
    pool = make_pool(factory, slots=1)
    got: list[tuple[FakeSandbox, bool]] = []

    async def second() -> None:
        got.append(await use(pool, spec()))

    async with anyio.create_task_group() as tg, pool.lease(spec()) as (first, _):
        tg.start_soon(second)
        await anyio.sleep(0.01)
        assert pool.snapshot()["waiting"] == 1
        assert got == []

    assert got == [(first, False)]
    assert pool.snapshot()["waiting"] == 0


async def test_full_queue_raises_pool_full_with_429_and_retry_after():
    pool = make_pool(FakeFactory(), slots=1, max_queue=0)

    async with pool.lease(spec()):
        with pytest.raises(PoolFull) as exc:
            await use(pool, spec("other"))

    assert exc.value.status == 429
    assert exc.value.headers == {"retry-after": "1"}
    assert "queue is full" in exc.value.message


async def test_queue_wait_times_out_with_pool_full():
    pool = make_pool(FakeFactory(), slots=1, queue_timeout_s=0.05)

    async with pool.lease(spec()):
        with pytest.raises(PoolFull, match="no sandbox became free"):
            await use(pool, spec())
        assert pool.snapshot()["waiting"] == 0


async def test_factory_start_failure_frees_the_slot():
    factory = FakeFactory()
    factory.failures = 1
    pool = make_pool(factory, slots=1)

    with pytest.raises(RuntimeError):
        await use(pool, spec())

    assert pool.snapshot()["used_mb"] == 0 * 128
    assert pool.view(spec()).free_mb == 128
    _, cold = await use(pool, spec())
    assert cold is True


# --- housekeeping -------------------------------------------------------------------


async def test_reap_idle_stops_sandboxes_idle_longer_than_the_ttl():
    pool = make_pool(FakeFactory(), slots=2, idle_ttl_s=60.0)
    sandbox, _ = await use(pool, spec())

    reaped = await pool.reap_idle(now=time.monotonic() + 61.0)

    assert reaped == 1
    assert sandbox.closed
    assert pool.snapshot()["used_mb"] == 0 * 128
    assert not pool.view(spec()).idle


async def test_reap_idle_keeps_sandboxes_within_the_ttl():
    pool = make_pool(FakeFactory(), slots=2, idle_ttl_s=60.0)
    sandbox, _ = await use(pool, spec())

    assert await pool.reap_idle(now=time.monotonic() + 30.0) == 0
    assert not sandbox.closed


async def test_reap_idle_leaves_busy_sandboxes_alone():
    pool = make_pool(FakeFactory(), slots=2, idle_ttl_s=60.0)

    async with pool.lease(spec()) as (sandbox, _):
        assert await pool.reap_idle(now=time.monotonic() + 3600.0) == 0
        assert not sandbox.closed


async def test_close_stops_idle_sandboxes():
    pool = make_pool(FakeFactory(), slots=2)
    sandbox, _ = await use(pool, spec())

    await pool.close()

    assert sandbox.closed
    assert pool.snapshot()["used_mb"] == 0 * 128


# --- views --------------------------------------------------------------------------


async def test_view_of_an_empty_pool_is_all_free_and_idle_free():
    pool = make_pool(FakeFactory(), slots=1)

    assert pool.view(spec()) == PoolView(0, 0, 0, 128, 128, (), False)


async def test_view_shows_an_idle_sandbox_for_its_key_only():
    pool = make_pool(FakeFactory(), slots=1)
    await use(pool, spec("one"))

    assert pool.view(spec("one")) == PoolView(1, 0, 0, 0, 128, (), False)
    two = pool.view(spec("two"))
    assert (two.idle, two.free_mb, two.victims is not None and len(two.victims)) == (0, 0, 1)


async def test_view_has_nothing_evictable_when_every_sandbox_is_busy():
    pool = make_pool(FakeFactory(), slots=1)

    async with pool.lease(spec("one")):
        assert pool.view(spec("two")).victims is None
        assert pool.view(spec("one")).busy == 1


async def test_warm_versions_include_idle_and_busy_sandboxes():
    pool = make_pool(FakeFactory(), slots=2)
    await use(pool, spec("one", "v1"))

    async with pool.lease(spec("two", "v2")):
        assert pool.warm_versions() == {"v1", "v2"}


async def test_warm_versions_forget_evicted_and_reaped_sandboxes():
    pool = make_pool(FakeFactory(), slots=1)
    await use(pool, spec("one", "v1"))
    await use(pool, spec("two", "v2"))  # evicts v1
    assert pool.warm_versions() == {"v2"}

    await pool.reap_idle(now=time.monotonic() + pool.idle_ttl_s + 1)

    assert pool.warm_versions() == set()


async def test_snapshot_counts_memory_idle_and_busy():
    pool = make_pool(FakeFactory(), slots=3)
    await use(pool, spec("one"))

    async with pool.lease(spec("two")):
        assert pool.snapshot() == {
            "capacity_mb": 384,
            "used_mb": 256,
            "held_mb": 0,
            "idle": 1,
            "busy": 1,
            "starting": 0,
            "waiting": 0,
            "starts": 2,
            "evictions": 0,
        }


def big_spec(function: str, memory_mb: int) -> SandboxSpec:
    return SandboxSpec(
        function=function,
        version=f"{function}-v1",
        handler="app.handler",
        bundle_dir=Path("/nonexistent"),
        memory_mb=memory_mb,
        timeout_s=1.0,
    )


async def test_each_sandbox_charges_its_function_memory():
    pool = Pool(FakeFactory(), capacity_mb=1000)  # type: ignore[arg-type]
    await use(pool, big_spec("a", 300))
    await use(pool, big_spec("b", 500))

    assert pool.snapshot()["used_mb"] == 800


async def test_a_large_function_evicts_as_many_idle_sandboxes_as_it_needs():
    pool = Pool(FakeFactory(), capacity_mb=512)  # type: ignore[arg-type]
    for name in ("a", "b", "c", "d"):
        await use(pool, big_spec(name, 128))

    await use(pool, big_spec("big", 384))

    assert pool.warm_versions() == {"d-v1", "big-v1"}


async def test_eviction_spares_the_more_used_function():
    pool = Pool(FakeFactory(), capacity_mb=256)  # type: ignore[arg-type]
    for _ in range(5):
        await use(pool, big_spec("popular", 128))
    await use(pool, big_spec("rare", 128))

    await use(pool, big_spec("newcomer", 128))

    assert pool.warm_versions() == {"popular-v1", "newcomer-v1"}


async def test_a_function_larger_than_the_node_is_refused():
    pool = Pool(FakeFactory(), capacity_mb=256)  # type: ignore[arg-type]

    with pytest.raises(ApiError) as exc:
        await use(pool, big_spec("huge", 512))

    assert exc.value.status == 507


async def test_per_function_maximum_makes_requests_wait():
    pool = Pool(FakeFactory(), capacity_mb=1024, max_per_function=1, queue_timeout_s=0.05)  # type: ignore[arg-type]

    async with pool.lease(spec()):
        with pytest.raises(PoolFull):
            await use(pool, spec())


async def test_prewarm_starts_idle_sandboxes_without_evicting():
    pool = Pool(FakeFactory(), capacity_mb=384)  # type: ignore[arg-type]
    await use(pool, spec("other"))

    started = await pool.prewarm(spec(), 5)

    assert started == 2
    assert pool.view(spec()).idle
    assert pool.versions()[0]["function"] == "hello"


async def test_eviction_below_a_value_spares_more_valuable_sandboxes():
    values = {"popular": 10.0, "rare": 0.1}
    pool = Pool(
        FakeFactory(),  # type: ignore[arg-type]
        capacity_mb=128,
        value=lambda function, _version, _loaded: values[function],
        queue_timeout_s=0.05,
    )
    await use(pool, big_spec("popular", 128))

    with pytest.raises(PoolFull):
        async with pool.lease(big_spec("rare", 128), evict_below=values["rare"]):
            pass

    assert pool.warm_versions() == {"popular-v1"}


async def test_view_lists_the_cheapest_idle_sandboxes_that_make_room():
    values = {"a": 1.0, "b": 5.0, "c": 3.0}
    pool = Pool(
        FakeFactory(),  # type: ignore[arg-type]
        capacity_mb=384,
        value=lambda function, _version, _loaded: values[function],
    )
    for name in ("a", "b", "c"):
        await use(pool, big_spec(name, 128))

    assert pool.view(big_spec("me", 128)).victims == (1.0,)
    assert pool.view(big_spec("me", 256)).victims == (1.0, 3.0)
    assert pool.view(big_spec("me", 512)).victims is None


# --- concurrency, per-function limits, engine memory, stopping -----------------------


class SlowCloseFactory(FakeFactory):
    """Closing a sandbox takes a few event-loop turns, as a real one does."""

    def __init__(self, held: int = 0, sheddable: int = 0) -> None:
        super().__init__()
        self.held = held
        self.sheddable = sheddable
        self.shed_calls: list[int] = []
        self.stopped: list[str] = []

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = await super().start(spec)
        sandbox.close = self._slow_close(sandbox)  # type: ignore[method-assign]
        return sandbox

    @staticmethod
    def _slow_close(sandbox: FakeSandbox):  # type: ignore[no-untyped-def]
        async def close() -> None:
            sandbox.alive = False
            for _ in range(3):
                await anyio.sleep(0)
            sandbox.closed = True

        return close

    def held_mb(self) -> int:
        return self.held

    async def shed(self, need_mb: int) -> int:
        self.shed_calls.append(need_mb)
        await anyio.sleep(0)
        freed = min(self.sheddable, need_mb)
        self.sheddable -= freed
        self.held -= freed
        return freed

    async def stop_function(self, function: str) -> None:
        self.stopped.append(function)


async def test_concurrent_cold_starts_into_a_full_pool_each_evict_their_own_victims():
    factory = SlowCloseFactory()
    pool = make_pool(factory, slots=8)  # type: ignore[arg-type]
    for i in range(8):
        await use(pool, spec(f"old-{i}"))
    errors: list[BaseException] = []

    async def cold(name: str) -> None:
        try:
            async with pool.lease(spec(name)):
                await anyio.sleep(0)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(cold, f"new-{i % 4}")

    assert errors == []
    assert pool.used_mb == sum(128 for s in factory.started if not s.closed)
    assert pool.used_mb <= 8 * 128


async def test_per_function_maximum_counts_every_version_of_the_function():
    pool = Pool(FakeFactory(), capacity_mb=1024, max_per_function=2, queue_timeout_s=0.05)  # type: ignore[arg-type]

    async with pool.lease(spec("f", "v1")), pool.lease(spec("f", "v2")):
        assert pool.view(spec("f", "v3")).at_function_max
        with pytest.raises(PoolFull):
            await use(pool, spec("f", "v3"))


async def test_memory_the_engine_holds_counts_against_the_budget():
    factory = SlowCloseFactory(held=128)
    pool = make_pool(factory, slots=2)  # type: ignore[arg-type]

    assert pool.view(spec()).free_mb == 128
    async with pool.lease(spec("a")):
        assert pool.view(spec("b")).free_mb == 0


async def test_zygotes_are_shed_when_evicting_idle_sandboxes_is_not_enough():
    factory = SlowCloseFactory(held=128, sheddable=128)
    pool = make_pool(factory, slots=2, queue_timeout_s=0.05)  # type: ignore[arg-type]
    async with pool.lease(spec("a")):
        _, cold = await use(pool, spec("b"))

    assert cold
    assert factory.shed_calls == [128]
    assert factory.held_mb() == 0


async def test_stop_function_closes_idle_now_and_busy_on_release():
    factory = SlowCloseFactory()
    pool = make_pool(factory, slots=4)  # type: ignore[arg-type]
    idle, _ = await use(pool, spec("gone", "v1"))
    kept, _ = await use(pool, spec("kept"))

    async with pool.lease(spec("gone", "v2")) as (busy, _):
        await pool.stop_function("gone")
        assert idle.closed and not busy.closed
        assert pool.used_mb == 2 * 128

    assert busy.closed and not kept.closed
    assert factory.stopped == ["gone"]
    assert pool.used_mb == 128
    assert pool.functions() == {"kept"}


async def test_a_reservation_holds_its_slot_until_leased():
    pool = make_pool(SlowCloseFactory(), slots=1, queue_timeout_s=0.05)  # type: ignore[arg-type]
    r = pool.reserve(spec("mine"))
    assert r is not None
    assert pool.reserve(spec("other")) is None

    async with pool.lease(spec("mine"), reservation=r) as (_, cold):
        assert cold
    assert pool.used_mb == 128


async def test_a_cancelled_reservation_frees_its_slot():
    pool = make_pool(SlowCloseFactory(), slots=1)  # type: ignore[arg-type]
    r = pool.reserve(spec("mine"))
    assert r is not None

    pool.cancel(r)

    assert pool.used_mb == 0
    assert pool.reserve(spec("other")) is not None


async def test_a_dead_idle_sandbox_met_by_a_reserved_lease_is_closed():
    factory = FakeFactory()
    pool = make_pool(factory, slots=2)
    first, _ = await use(pool, spec("mine"))  # back to idle
    first.alive = False  # it died while idle
    r = pool.reserve(spec("mine"))
    assert r is not None

    async with pool.lease(spec("mine"), reservation=r) as (sandbox, cold):
        assert cold and sandbox is not first

    assert first.closed
    assert pool.used_mb == 128


# --- zygotes, shedding and wake-ups (review fixes) ------------------------------------


class ZygoteFactory(FakeFactory):
    """Each version's first start loads a zygote of ``zygote_mb[function]`` MB; shed()
    stops only zygotes with no live sandbox, as the real engine does."""

    def __init__(self, zygote_mb: dict[str, int]) -> None:
        super().__init__()
        self.sizes = zygote_mb
        self.zygotes: dict[str, int] = {}
        self.live: dict[str, int] = {}
        self.shed_calls: list[int] = []
        self.stopped: list[str] = []

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = await super().start(spec)
        self.zygotes.setdefault(spec.version, self.sizes.get(spec.function, 0))
        self.live[spec.version] = self.live.get(spec.version, 0) + 1
        close = sandbox.close

        async def close_and_count() -> None:
            await close()
            self.live[spec.version] -= 1

        sandbox.close = close_and_count  # type: ignore[method-assign]
        return sandbox

    def held_mb(self) -> int:
        return sum(self.zygotes.values())

    async def shed(self, need_mb: int) -> int:
        self.shed_calls.append(need_mb)
        await anyio.sleep(0)
        freed = 0
        for version in [v for v in self.zygotes if not self.live.get(v)]:
            if freed >= need_mb:
                break
            freed += self.zygotes.pop(version)
        return freed

    def loaded_versions(self) -> set[str]:
        return set(self.zygotes)

    async def stop_function(self, function: str) -> None:
        self.stopped.append(function)


async def test_no_eviction_or_shedding_when_zygotes_cannot_close_the_gap():
    factory = ZygoteFactory({"b": 50, "c": 50})
    pool = Pool(factory, capacity_mb=1000, queue_timeout_s=0.05)  # type: ignore[arg-type]
    b, _ = await use(pool, big_spec("b", 100))
    c, _ = await use(pool, big_spec("c", 100))

    async with pool.lease(big_spec("a", 600)):
        with pytest.raises(PoolFull):
            await use(pool, big_spec("big", 900))  # 600 busy: 900 can never fit now

    assert not b.closed and not c.closed
    assert pool.evictions == 0
    assert factory.shed_calls == []
    assert factory.held_mb() == 100


async def test_shedding_that_frees_too_little_is_a_failure_and_not_retried_on_every_wake():
    factory = ZygoteFactory({"a": 100, "orphan": 30})
    pool = Pool(factory, capacity_mb=1000, queue_timeout_s=0.2)  # type: ignore[arg-type]
    await use(pool, big_spec("orphan", 10))
    await pool.stop_function("orphan")  # its sandbox goes, its zygote stays sheddable

    async def wake_often() -> None:
        for _ in range(5):
            await anyio.sleep(0.01)
            pool.wake()

    async with pool.lease(big_spec("a", 600)), anyio.create_task_group() as tg:
        tg.start_soon(wake_often)
        with pytest.raises(PoolFull):
            await use(pool, big_spec("b", 400))  # short 130: the orphan frees only 30

    assert factory.shed_calls == [130]


async def test_a_function_as_big_as_the_node_evicts_idle_sandboxes_to_shed_their_zygotes():
    factory = ZygoteFactory({"hello": 10})
    pool = Pool(factory, capacity_mb=1024, queue_timeout_s=0.05)  # type: ignore[arg-type]
    hello, _ = await use(pool, big_spec("hello", 128))

    _, cold = await use(pool, big_spec("heavy", 1024))

    assert cold and hello.closed
    assert factory.held_mb() == 0
    assert pool.evictions == 1


class GatedShedFactory(SlowCloseFactory):
    """shed() waits for the test to let it go (and frees nothing)."""

    def __init__(self, held: int) -> None:
        super().__init__(held=held)
        self.in_shed = anyio.Event()
        self.resume = anyio.Event()

    async def shed(self, need_mb: int) -> int:
        self.shed_calls.append(need_mb)
        self.in_shed.set()
        await self.resume.wait()
        return 0


async def test_a_sandbox_released_while_the_waiter_sheds_is_not_missed():
    factory = GatedShedFactory(held=128)
    pool = make_pool(factory, slots=2, queue_timeout_s=5.0)  # type: ignore[arg-type]
    got: list[tuple[FakeSandbox, bool]] = []

    async def second() -> None:
        got.append(await use(pool, spec()))

    with anyio.fail_after(1.0):  # far less than the queue timeout
        async with anyio.create_task_group() as tg:
            async with pool.lease(spec()) as (first, _):
                tg.start_soon(second)
                await factory.in_shed.wait()
            factory.resume.set()  # released while the waiter was shedding

    assert got == [(first, False)]


async def test_waiters_wake_when_the_engine_frees_memory_outside_the_pool():
    factory = SlowCloseFactory(held=128)
    pool = make_pool(factory, slots=1, queue_timeout_s=5.0)  # type: ignore[arg-type]

    async def reap_zygotes() -> None:
        await anyio.sleep(0.01)
        factory.held = 0  # e.g. the node's periodic factory.reap_idle()
        pool.wake()

    with anyio.fail_after(1.0):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reap_zygotes)
            _, cold = await use(pool, spec())

    assert cold


async def test_queued_requests_get_a_freed_sandbox_first_come_first_served():
    pool = make_pool(FakeFactory(), slots=1)
    order: list[int] = []

    async def queued(n: int) -> None:
        async with pool.lease(spec()):
            order.append(n)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg, pool.lease(spec()):
        for n in range(4):
            tg.start_soon(queued, n)
            await wait_until(lambda n=n: pool.snapshot()["waiting"] == n + 1)
    assert order == [0, 1, 2, 3]


async def test_a_woken_request_that_is_cancelled_passes_its_turn_on():
    pool = make_pool(FakeFactory(), slots=1)
    got: list[str] = []

    async def queued(name: str) -> None:
        async with pool.lease(spec()):
            got.append(name)

    async with pool.lease(spec()):
        first = asyncio.ensure_future(queued("first"))
        await wait_until(lambda: pool.snapshot()["waiting"] == 1)
        second = asyncio.ensure_future(queued("second"))
        await wait_until(lambda: pool.snapshot()["waiting"] == 2)
    first.cancel()  # released: the first waiter was woken, and is cancelled before it runs
    await asyncio.wait_for(second, 2)
    assert got == ["second"]
    assert first.cancelled()


async def test_view_skips_the_eviction_scan_when_the_function_fits_in_free_memory():
    asked: list[str] = []

    def value(function: str, _version: str, _loaded: bool) -> float:
        asked.append(function)
        return 1.0

    pool = Pool(FakeFactory(), capacity_mb=512, value=value)  # type: ignore[arg-type]
    await use(pool, spec("other"))
    asked.clear()

    view = pool.view(spec())

    assert view == PoolView(0, 0, 0, 384, 128, (), False)
    assert asked == []
    assert pool.view(big_spec("hello", 512)).victims == (1.0,)


class GatedStartFactory(SlowCloseFactory):
    def __init__(self) -> None:
        super().__init__()
        self.in_start = anyio.Event()
        self.resume = anyio.Event()

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        self.in_start.set()
        await self.resume.wait()
        return await super().start(spec)


async def test_a_start_in_flight_when_its_function_is_stopped_leaves_no_zygote():
    factory = GatedStartFactory()
    pool = make_pool(factory, slots=2)  # type: ignore[arg-type]
    errors: list[ApiError] = []

    async def lease() -> None:
        try:
            await use(pool, spec("gone"))
        except ApiError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lease)
        await factory.in_start.wait()
        await pool.stop_function("gone")
        factory.resume.set()

    assert [e.status for e in errors] == [404]
    assert all(s.closed for s in factory.started)
    assert factory.stopped == ["gone", "gone"]  # again, after the start made a zygote
    assert pool.used_mb == 0
    assert pool.functions() == set()


# --- room held for a zygote before it loads -------------------------------------------


class UpfrontZygoteFactory(FakeFactory):
    """Each version's first start loads a 64 MB zygote, and says so beforehand."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: set[str] = set()

    def zygote_mb(self, spec: SandboxSpec) -> int:
        return 0 if spec.version in self.loaded else 64

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox = await super().start(spec)
        self.loaded.add(spec.version)
        return sandbox

    def held_mb(self) -> int:
        return 64 * len(self.loaded)


async def test_a_start_that_loads_a_zygote_holds_room_for_it_beforehand():
    factory = UpfrontZygoteFactory()
    pool = Pool(factory, capacity_mb=256)  # type: ignore[arg-type]

    first = pool.reserve(spec("a"))
    assert first is not None
    assert pool.view(spec("b")).free_mb == 256 - 128 - 64
    # b would need 128 MB and its own zygote's 64: only 64 are left
    assert pool.reserve(spec("b")) is None

    pool.cancel(first)
    assert pool.view(spec("b")).free_mb == 256


async def test_the_room_held_for_a_zygote_becomes_its_charge_once_loaded():
    factory = UpfrontZygoteFactory()
    pool = Pool(factory, capacity_mb=512)  # type: ignore[arg-type]

    await use(pool, spec("a"))

    # the idle sandbox and the loaded zygote; nothing held twice
    assert pool.view(spec("b")).free_mb == 512 - 128 - 64
    # a second start of the same version loads nothing more
    assert factory.zygote_mb(spec("a")) == 0


async def test_a_function_as_big_as_the_node_still_starts_before_its_zygote_is_known():
    factory = UpfrontZygoteFactory()
    pool = Pool(factory, capacity_mb=128)  # type: ignore[arg-type]

    sandbox, cold = await use(pool, spec("whole-node"))

    assert cold and sandbox.alive


# --- claims: what a run-here decision holds from the moment it is taken -----------


async def test_a_claim_takes_the_idle_sandbox_so_no_other_request_can():
    pool = make_pool(FakeFactory(), slots=1, queue_timeout_s=0.05)
    warm, _ = await use(pool, spec())
    claim = pool.claim(spec())
    assert claim is not None and claim.sandbox is warm

    assert pool.view(spec()).idle == 0
    with pytest.raises(PoolFull):
        await use(pool, spec())  # the only sandbox is held by the claim
    async with pool.lease(spec(), claim=claim) as (sandbox, cold):
        assert (sandbox, cold) == (warm, False)
    assert pool.view(spec()).idle == 1


async def test_a_claim_reserves_a_slot_when_nothing_is_idle():
    pool = make_pool(FakeFactory(), slots=1)
    claim = pool.claim(spec("mine"))
    assert claim is not None and claim.reservation is not None

    assert pool.claim(spec("other")) is None
    async with pool.lease(spec("mine"), claim=claim) as (_, cold):
        assert cold


async def test_a_claim_evicts_only_below_its_threshold():
    values = {"cheap": 1.0, "dear": 50.0}
    pool = Pool(
        FakeFactory(),  # type: ignore[arg-type]
        capacity_mb=128,
        value=lambda function, _version, _loaded: values.get(function, 0.0),
    )
    await use(pool, spec("dear"))
    assert pool.claim(spec("mine"), evict_below=10.0) is None
    assert pool.warm_versions() == {"v1"}

    pool2 = Pool(
        FakeFactory(),  # type: ignore[arg-type]
        capacity_mb=128,
        value=lambda function, _version, _loaded: values.get(function, 0.0),
    )
    await use(pool2, spec("cheap"))
    claim = pool2.claim(spec("mine", "v2"), evict_below=10.0)
    assert claim is not None
    assert pool2.warm_versions() == set()


async def test_a_cancelled_claim_gives_its_sandbox_back_to_idle():
    pool = make_pool(FakeFactory(), slots=1)
    warm, _ = await use(pool, spec())
    claim = pool.claim(spec())
    assert claim is not None

    pool.cancel_claim(claim)
    pool.cancel_claim(claim)  # twice is harmless

    assert pool.view(spec()).idle == 1
    again, cold = await use(pool, spec())
    assert (again, cold) == (warm, False)


async def test_a_cancelled_claim_frees_its_reserved_slot():
    pool = make_pool(FakeFactory(), slots=1)
    claim = pool.claim(spec("mine"))
    assert claim is not None

    pool.cancel_claim(claim)

    assert pool.used_mb == 0
    assert pool.claim(spec("other")) is not None


async def test_a_lease_queues_no_longer_than_its_wait():
    pool = make_pool(FakeFactory(), slots=1, queue_timeout_s=30.0)
    async with pool.lease(spec("busy")):
        started = time.monotonic()
        with pytest.raises(PoolFull):
            async with pool.lease(spec("other"), evict_below=0.0, wait_s=0.05):
                pass
        assert time.monotonic() - started < 5.0  # far under the 30 s queue timeout
