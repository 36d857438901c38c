"""The scheduler's due-tick rule, its persistence across restarts, and the event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgerun import schedule
from edgerun.control import scheduler as scheduler_module
from edgerun.control.registry import SqliteRegistry
from edgerun.control.scheduler import (
    Due,
    Fired,
    ScheduleClock,
    Scheduler,
    ScheduleStore,
    due,
    request_id,
    scheduled_event,
)
from edgerun.models import FunctionConfig

MINUTE = schedule.parse("rate(1 minute)")
T0 = 1_735_732_800  # 2025-01-01T12:00:00Z, a whole minute


def test_a_function_seen_first_starts_at_its_next_tick() -> None:
    assert due(MINUTE, None, T0 + 30) == Due(None, T0)
    assert due(MINUTE, T0, T0 + 59) == Due(None, T0)
    assert due(MINUTE, T0, T0 + 60) == Due(T0 + 60, T0 + 60)


def test_after_downtime_only_the_latest_missed_tick_fires() -> None:
    assert due(MINUTE, T0, T0 + 3600 + 5) == Due(T0 + 3600, T0 + 3600)
    # ... and once: settled there, nothing more until the next tick.
    assert due(MINUTE, T0 + 3600, T0 + 3600 + 59) == Due(None, T0 + 3600)


def test_a_clock_gone_back_fires_nothing() -> None:
    assert due(MINUTE, T0 + 600, T0) == Due(None, T0 + 600)


def test_a_restart_does_not_fire_a_settled_tick_again(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path / "schedules.db")
    store.put("f", Fired("rate(1 minute)", T0 + 60, T0 + 60))
    store.close()
    again = ScheduleStore(tmp_path / "schedules.db").load()
    assert again == {"f": Fired("rate(1 minute)", T0 + 60, T0 + 60)}
    assert due(MINUTE, again["f"].settled, T0 + 61).fire is None
    assert due(MINUTE, again["f"].settled, T0 + 120).fire == T0 + 120


def test_the_schedule_clock_keeps_its_anchor_across_restarts(tmp_path: Path) -> None:
    real = [1000.0]
    store = ScheduleStore(tmp_path / "schedules.db")
    assert ScheduleClock(store, 1.0, lambda: real[0]).now() == 1000.0  # real time
    fast = ScheduleClock(store, 60.0, lambda: real[0])
    real[0] = 1010.0
    assert fast.now() == 1000.0 + 600.0
    assert fast.real_in(1000.0 + 660.0) == 1.0
    real[0] = 1020.0  # a restart at the same scale goes on from the same anchor
    assert ScheduleClock(store, 60.0, lambda: real[0]).now() == 1000.0 + 1200.0
    # Back at 1: continuous (schedule time stays ahead; it never jumps back).
    assert ScheduleClock(store, 1.0, lambda: real[0]).now() == 2200.0


def test_the_event_is_eventbridge_shaped_and_its_id_deterministic() -> None:
    event = scheduled_event("acme.report", T0)
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["time"] == "2025-01-01T12:00:00Z"
    assert event["resources"] == ["arn:aws:events:edgerun:000000000000:rule/acme.report"]
    assert event["detail"] == {}
    assert scheduled_event("acme.report", T0)["id"] == event["id"]
    assert scheduled_event("acme.report", T0 + 60)["id"] != event["id"]
    rid = request_id("acme.report", T0)
    assert rid == request_id("acme.report", T0)
    assert rid.startswith("sched-") and rid.endswith(f"-{T0}")
    assert len(rid) <= 64 and rid != request_id("other", T0)


class _Scheduler(Scheduler):
    """Sends nothing: answers from ``ok`` and writes down what it was asked."""

    ok = True
    sent: list[tuple[str, int]]

    async def send(self, name: str, tick: int) -> bool:
        self.sent.append((name, tick))
        return self.ok


@pytest.mark.anyio
async def test_a_refused_tick_stays_due_and_a_restart_does_not_resend(tmp_path: Path) -> None:
    real = [float(T0 + 30)]
    registry = SqliteRegistry(tmp_path / "registry.db")
    registry.deploy("f", FunctionConfig(schedule="rate(1 minute)"), "a" * 64, 1)

    def start() -> _Scheduler:
        s = _Scheduler(
            registry, ScheduleStore(tmp_path / "schedules.db"), list, "secret",
            real=lambda: real[0],
        )  # fmt: skip
        s.sent = []
        s.sync()
        return s

    async def step(s: _Scheduler) -> None:
        s.step()
        await asyncio.gather(*s._inflight.values())

    s = start()
    await step(s)
    assert s.sent == []  # first seen: starts at its next tick
    real[0] = T0 + 60
    s.ok = False
    await step(s)
    await step(s)
    assert s.sent == [("f", T0 + 60)] * 2  # refused: tried again
    s.ok = True
    await step(s)
    await step(s)
    assert s.sent == [("f", T0 + 60)] * 3  # taken once, then settled
    real[0] = T0 + 90
    again = start()  # a restart in the same minute
    await step(again)
    assert again.sent == []
    real[0] = T0 + 300 + 1  # down for four ticks: the latest fires, once
    await step(again)
    await step(again)
    assert again.sent == [("f", T0 + 300)]


@pytest.mark.anyio
async def test_catching_up_off_the_loop_sees_what_sync_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "_FEED_BATCH", 2)  # several pages
    registry = SqliteRegistry(tmp_path / "registry.db")
    for i in range(7):
        registry.deploy(f"f{i}", FunctionConfig(schedule="rate(1 minute)"), "a" * 64, 1)
    registry.deploy("f3", FunctionConfig(), "a" * 64, 1)  # no longer scheduled
    registry.delete("f5")

    def make() -> Scheduler:
        return Scheduler(registry, ScheduleStore(":memory:"), list, "secret")

    synced, caught_up = make(), make()
    synced.sync()
    await caught_up.catch_up()
    assert sorted(caught_up.entries) == sorted(synced.entries) == ["f0", "f1", "f2", "f4", "f6"]
