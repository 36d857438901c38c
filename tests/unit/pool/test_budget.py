"""One memory budget shared by the pools of a node's worker processes."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest
from tests.unit.pool.test_pool import FakeFactory, spec, use

from edgerun.pool.budget import SharedBudget
from edgerun.pool.pool import Pool, PoolFull

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def budget_file(tmp_path: Path) -> Path:
    path = tmp_path / "budget.shm"
    SharedBudget.create(path, capacity_mb=256, workers=2)
    return path


def shared_pool(path: Path, slot: int, **kw: float) -> tuple[Pool, FakeFactory]:
    factory = FakeFactory()
    budget = SharedBudget(path, slot)
    pool = Pool(factory, capacity_mb=budget.capacity_mb, budget=budget, **kw)  # type: ignore[arg-type]
    return pool, factory


def test_a_workers_charge_is_what_the_others_see(budget_file: Path) -> None:
    a, b = SharedBudget(budget_file, 0), SharedBudget(budget_file, 1)

    a.publish(100)

    assert b.others_mb() == 100
    assert a.others_mb() == 0
    assert b.capacity_mb == 256


def test_a_slot_outside_the_file_is_refused(budget_file: Path) -> None:
    with pytest.raises(ValueError, match="slot 3"):
        SharedBudget(budget_file, 3)  # two workers, then the engine's slot (2)


def test_the_engines_charge_is_held_not_another_workers(budget_file: Path) -> None:
    engine, worker = SharedBudget(budget_file, 2), SharedBudget(budget_file, 0)

    engine.publish(30)

    assert worker.engine_mb() == 30
    assert worker.others_mb() == 0
    assert len(worker.slots()) == 2


def test_clearing_a_dead_workers_slot_frees_its_charge(budget_file: Path) -> None:
    dead, alive = SharedBudget(budget_file, 0), SharedBudget(budget_file, 1)
    dead.publish(200)

    SharedBudget.clear_slot(budget_file, 0)

    assert alive.others_mb() == 0
    assert alive.slots()[0] == (0, 0)


async def test_a_sandbox_of_one_worker_leaves_no_room_for_a_third_in_another(
    budget_file: Path,
) -> None:
    a, _ = shared_pool(budget_file, 0, queue_timeout_s=0.2)
    b, _ = shared_pool(budget_file, 1, queue_timeout_s=0.2)
    async with a.lease(spec("f")), b.lease(spec("g")):
        with pytest.raises(PoolFull):
            async with a.lease(spec("h")):
                pass


async def test_a_waiting_worker_gets_room_when_another_frees_it(budget_file: Path) -> None:
    a, _ = shared_pool(budget_file, 0, queue_timeout_s=5)
    b, _ = shared_pool(budget_file, 1, queue_timeout_s=5)
    got: list[bool] = []

    async def third() -> None:
        async with b.lease(spec("h")) as (_sandbox, cold):
            got.append(cold)

    async with anyio.create_task_group() as tg:
        async with a.lease(spec("f")), a.lease(spec("g")):
            tg.start_soon(third)
            await anyio.sleep(0.1)
            assert got == []  # the budget is full: b waits
        with anyio.fail_after(5):
            while not got:
                await a.relieve()  # b asked for room: a evicts its idle sandboxes
                await anyio.sleep(0.01)
    assert got == [True]


async def test_relief_evicts_only_sandboxes_valued_under_the_askers_threshold(
    budget_file: Path,
) -> None:
    factory = FakeFactory()
    budget = SharedBudget(budget_file, 0)
    a = Pool(factory, capacity_mb=256, budget=budget, value=lambda f, v, z: 10.0)  # type: ignore[arg-type]
    await use(a, spec("f"))
    other = SharedBudget(budget_file, 1)

    other.ask_room(128, evict_below=5.0)
    assert await a.relieve() == 0
    other.ask_room(128, evict_below=50.0)
    assert await a.relieve() == 128
    assert factory.started[0].closed


async def test_pressure_nobody_renews_is_forgotten(
    budget_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = SharedBudget(budget_file, 0)
    budget.ask_room(64, evict_below=None)
    assert budget.pressure() == (64, None)
    real = __import__("time").monotonic
    monkeypatch.setattr("edgerun.pool.budget.time.monotonic", lambda: real() + 5)
    assert budget.pressure() is None


def test_an_infinite_threshold_means_evict_anything(budget_file: Path) -> None:
    budget = SharedBudget(budget_file, 1)
    budget.ask_room(10, evict_below=math.inf)
    assert budget.pressure() == (10, None)


async def test_a_reservation_publishes_the_charge_at_once(budget_file: Path) -> None:
    a, _ = shared_pool(budget_file, 0)
    watcher = SharedBudget(budget_file, 1)
    claim = a.claim(spec("f"))
    assert claim is not None
    assert fresh_others(watcher) == 128
    a.cancel_claim(claim)
    assert fresh_others(watcher) == 0


def fresh_others(budget: SharedBudget) -> int:
    with budget.exclusive():  # past the warm path's millisecond cache
        return budget.others_mb()


async def test_pressure_is_relieved_by_one_worker_not_by_each(tmp_path: Path) -> None:
    path = tmp_path / "budget.shm"
    SharedBudget.create(path, capacity_mb=512, workers=3)
    a, fa = shared_pool(path, 0)
    b, fb = shared_pool(path, 1)
    await use(a, spec("f"))
    await use(b, spec("g"))
    SharedBudget(path, 2).ask_room(128, evict_below=None)

    freed = await a.relieve() + await b.relieve()

    assert freed == 128
    assert sum(s.closed for s in fa.started + fb.started) == 1


async def test_what_a_worker_cannot_free_is_asked_for_again(budget_file: Path) -> None:
    a, _ = shared_pool(budget_file, 0)
    await use(a, spec("f"))
    SharedBudget(budget_file, 1).ask_room(200, evict_below=None)

    assert await a.relieve() == 128

    assert a.budget.pressure() == (72, None)


def test_a_lock_held_too_long_is_no_room_rather_than_a_hang(budget_file: Path) -> None:
    import fcntl
    import os

    from edgerun.pool.budget import BudgetBusy

    holder = os.open(budget_file, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(BudgetBusy), SharedBudget(budget_file, 0).exclusive():
            pass
    finally:
        os.close(holder)


def test_the_warm_path_reads_the_others_at_most_every_millisecond(
    budget_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = SharedBudget(budget_file, 0), SharedBudget(budget_file, 1)
    now = [100.0]
    monkeypatch.setattr("edgerun.pool.budget.time.monotonic", lambda: now[0])
    assert mine.others_mb() == 0
    other.publish(64)

    assert mine.others_mb() == 0  # within the millisecond: the total read before
    with mine.exclusive():
        assert mine.others_mb() == 64  # under the lock: always fresh
    other.publish(128)
    now[0] += 0.002
    assert mine.others_mb() == 128
