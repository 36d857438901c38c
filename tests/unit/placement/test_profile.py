"""The hour-of-week request profile and the pre-warming planner, on an injected clock."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.node import profile_store
from edgerun.placement import Release, WarmPlan, WeeklyProfile, plan_warming

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY = 4 * DAY  # 1970-01-05, the first Monday after the epoch (a Thursday)


def daily(profile: WeeklyProfile, fn: str, hour: int, days: range, per_hour: int = 60) -> None:
    """``per_hour`` requests spread over ``hour``:00-59 of each day in ``days``."""
    for d in days:
        start = MONDAY + d * DAY + hour * HOUR
        for i in range(per_hour):
            profile.hit(fn, start + i * HOUR / per_hour)


def at(day: int, hour: int, minute: int = 0) -> float:
    return MONDAY + day * DAY + hour * HOUR + minute * 60.0


def idle(_fn: str) -> float:
    return 0.0


def plan(
    profile: WeeklyProfile,
    now: float,
    *,
    lead_s: float = 600.0,
    current_rate: Callable[[str], float] = idle,
    held: Mapping[str, int] | None = None,
    **kw: Any,
) -> WarmPlan:
    return plan_warming(
        profile, now, lead_s=lead_s, current_rate=current_rate, held=held or {}, **kw
    )


def warmed(p: WarmPlan) -> dict[str, int]:
    return {w.function: w.sandboxes for w in p.prewarm}


def released(p: WarmPlan) -> dict[str, int]:
    return {r.function: r.sandboxes for r in p.release}


# --- slots and learning -------------------------------------------------------


def test_slots_count_hours_of_the_week_from_the_epoch_in_utc() -> None:
    p = WeeklyProfile()
    assert p.slot_of(0.0) == 0  # Thursday 00:00 UTC
    assert p.slot_of(MONDAY + 9 * HOUR + 59 * 60) == 4 * 24 + 9
    assert p.slot_of(WEEK + 1.0) == 0


def test_a_slot_learns_the_rate_seen_in_it_after_one_cycle() -> None:
    p = WeeklyProfile()
    daily(p, "f", 9, range(1), per_hour=36)
    assert p.expected_rate("f", at(0, 9, 30)) == 0.0  # the slot is not over yet
    assert p.expected_rate("f", at(7, 9)) == pytest.approx(36 / HOUR)
    assert p.expected_rate("f", at(7, 10)) == 0.0
    assert p.expected_rate("nobody", at(7, 9)) == 0.0
    assert p.peak_rate("f", at(7, 9)) == pytest.approx(36 / HOUR)


def test_expected_rate_takes_an_explicit_slot() -> None:
    p = WeeklyProfile()
    daily(p, "f", 9, range(1), per_hour=36)
    slot = p.slot_of(at(0, 9))
    assert p.expected_rate("f", at(3, 2), slot=slot) == pytest.approx(36 / HOUR)
    with pytest.raises(ValueError):
        p.expected_rate("f", at(3, 2), slot=168)


def test_a_shift_in_habits_is_followed() -> None:
    p = WeeklyProfile()  # alpha 0.3: the latest week weighs 30%
    daily(p, "f", 9, range(21))
    daily(p, "f", 15, range(21, 35))  # two weeks of the new habit
    assert p.expected_rate("f", at(35, 15)) > p.expected_rate("f", at(35, 9))
    assert "f" in warmed(plan(p, at(35, 14, 55)))
    daily(p, "f", 15, range(35, 49))  # four weeks: the old peak is no longer worth warming
    assert "f" not in warmed(plan(p, at(49, 8, 55)))
    assert "f" in warmed(plan(p, at(49, 14, 55)))


def test_slots_missed_while_the_node_was_off_count_as_zero() -> None:
    p = WeeklyProfile(alpha=0.5)
    daily(p, "f", 9, range(1), per_hour=40)  # Monday only
    before = p.expected_rate("f", at(7, 9))
    # Off for two whole weeks: Monday 09:00 was missed twice; folding happens
    # lazily, so the reading must already account for it.
    back = at(21, 8)
    expected = 40 / HOUR * (0.5 * 0.5 * 0.5) / (1 - 0.5**3)  # alpha, then two zero folds
    assert p.expected_rate("f", back) == 0.0  # Monday 08:00 never had requests
    assert p.expected_rate("f", at(21, 9)) == pytest.approx(expected, rel=1e-5)
    assert before == pytest.approx(40 / HOUR)
    p.hit("f", back)  # touching it after the gap folds the same zeros in for real
    assert p.expected_rate("f", at(21, 9)) == pytest.approx(expected, rel=1e-5)


def _reference_rate(
    hits: list[tuple[str, float]], fn: str, now: float, slot: int, p: WeeklyProfile
) -> float:
    """Every absolute slot folded one by one: the obvious, slow definition."""
    mine = [math.floor(t / p.slot_s) for f, t in hits if f == fn]
    if not mine:
        return 0.0
    born, view = mine[0], max(math.floor(now / p.slot_s), mine[-1])
    counts = Counter(mine)
    avg = [0.0] * p.slots
    folds = [0] * p.slots
    for k in range(born, view):
        s = k % p.slots
        avg[s] = (1 - p.alpha) * avg[s] + p.alpha * counts.get(k, 0)
        folds[s] += 1
    if folds[slot] == 0:
        return 0.0
    return avg[slot] / (1 - (1 - p.alpha) ** folds[slot]) / p.slot_s


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.one_of(st.floats(0, 1.5), st.floats(1.5, 40))),
        max_size=60,
    ),
    st.floats(0, 30),
)
def test_lazy_folding_matches_folding_every_slot(
    steps: list[tuple[str, float]], later: float
) -> None:
    p = WeeklyProfile(slot_s=1.0, slots=5, alpha=0.4)
    now, hits = 3.0, []
    for fn, step in steps:
        now += step
        hits.append((fn, now))
        p.hit(fn, now)
    query = now + later
    for fn in "abc":
        for slot in range(p.slots):
            want = _reference_rate(hits, fn, query, slot, p)
            assert p.expected_rate(fn, query, slot=slot) == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_a_clock_that_goes_back_counts_in_the_latest_slot() -> None:
    p = WeeklyProfile()
    p.hit("f", at(0, 9, 30))
    p.hit("f", at(0, 8, 30))
    assert p.expected_rate("f", at(7, 9)) == pytest.approx(2 / HOUR)
    assert p.expected_rate("f", at(7, 8)) == 0.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        WeeklyProfile(alpha=1.0)
    with pytest.raises(ValueError):
        WeeklyProfile(slot_s=0.0)
    with pytest.raises(ValueError):
        WeeklyProfile().hit("f", math.nan)


# --- bounded memory -------------------------------------------------------------


@settings(max_examples=150)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 5000)), max_size=120))
def test_capacity_holds_and_only_the_lightest_is_replaced(steps: list[tuple[str, float]]) -> None:
    p = WeeklyProfile(slot_s=60.0, slots=24, capacity=3)
    now = 0.0
    for fn, step in steps:
        now += step
        before = {f: p.volume(f, now) for f in p.functions()}
        p.hit(fn, now)
        assert len(p) <= 3
        gone = set(before) - set(p.functions())
        assert len(gone) <= 1
        for g in gone:
            assert fn not in before
            assert all(before[g] <= v * (1 + 1e-9) for v in before.values())


def test_a_heavy_hitter_survives_a_flood_of_one_off_functions() -> None:
    p = WeeklyProfile(capacity=10)
    daily(p, "hot", 9, range(7))
    for i in range(2000):
        p.hit(f"once{i}", at(7, 10) + i)
    assert "hot" in p
    assert len(p) == 10
    assert "hot" in warmed(plan(p, at(14, 8, 55)))


def test_volumes_stay_finite_over_many_cycles() -> None:
    p = WeeklyProfile(slot_s=2.5, slots=24, capacity=2)  # a minute-long "day"
    for minute in range(0, 60 * 24 * 30, 7):  # a month of compressed days
        p.hit("f", minute * 60.0)
        p.hit(f"g{minute % 5}", minute * 60.0 + 1)
    assert len(p) == 2
    assert math.isfinite(p.volume("f", 60.0 * 60 * 24 * 30))
    assert p.volume("f", 60.0 * 60 * 24 * 30) > 0


# --- planning -----------------------------------------------------------------


@pytest.fixture
def nine_am() -> WeeklyProfile:
    """A function requested once a minute from 09:00 to 10:00 every day for three weeks."""
    p = WeeklyProfile()
    daily(p, "f", 9, range(21))
    return p


def test_a_9am_function_is_warmed_shortly_before_9_and_not_at_3(nine_am: WeeklyProfile) -> None:
    soon = plan(nine_am, at(21, 8, 52), lead_s=600.0)
    assert [(w.function, w.sandboxes) for w in soon.prewarm] == [("f", 1)]
    assert soon.prewarm[0].rate == pytest.approx(60 / HOUR)
    assert soon.release == ()
    assert plan(nine_am, at(21, 8, 40), lead_s=600.0) == WarmPlan()  # earlier than the lead
    assert plan(nine_am, at(21, 3)) == WarmPlan()


def test_the_sandboxes_follow_the_expected_concurrency(nine_am: WeeklyProfile) -> None:
    # One request a minute, each running two minutes: two at once.
    assert warmed(plan(nine_am, at(21, 8, 55), run_s=120.0)) == {"f": 2}
    assert warmed(plan(nine_am, at(21, 8, 55), run_s=120.0, held={"f": 1})) == {"f": 1}
    assert warmed(plan(nine_am, at(21, 8, 55), run_s=120.0, held={"f": 2})) == {}
    assert warmed(plan(nine_am, at(21, 8, 55), run_s=600.0, max_per_function=3)) == {"f": 3}


def test_a_node_restarted_in_the_peak_warms_it_too(nine_am: WeeklyProfile) -> None:
    assert warmed(plan(nine_am, at(21, 9, 20), lead_s=0.0)) == {"f": 1}


def test_a_peak_never_followed_by_another_request_is_still_warmed() -> None:
    p = WeeklyProfile()
    daily(p, "f", 9, range(1))  # last Monday 09:00, nothing since: its slot is not folded yet
    assert warmed(plan(p, at(7, 8, 55))) == {"f": 1}


def test_nothing_is_warmed_that_current_traffic_already_explains(
    nine_am: WeeklyProfile,
) -> None:
    busy = plan(nine_am, at(21, 8, 55), current_rate=lambda _f: 60 / HOUR)
    assert busy == WarmPlan()


def test_rare_peaks_are_not_worth_a_sandbox() -> None:
    p = WeeklyProfile()
    daily(p, "f", 9, range(21), per_hour=6)  # one request per 10 minutes
    assert plan(p, at(21, 8, 55), keep_alive_s=300.0) == WarmPlan()
    assert warmed(plan(p, at(21, 8, 55), keep_alive_s=900.0)) == {"f": 1}


def test_after_the_peak_its_sandboxes_are_let_go(nine_am: WeeklyProfile) -> None:
    during = plan(nine_am, at(21, 9, 30), held={"f": 2}, current_rate=lambda _f: 60 / HOUR)
    assert during == WarmPlan()
    after = plan(nine_am, at(21, 10, 5), held={"f": 2}, current_rate=lambda _f: 0.001)
    assert after == WarmPlan(release=(Release("f", 2),))
    still_busy = plan(nine_am, at(21, 10, 5), held={"f": 2}, current_rate=lambda _f: 60 / HOUR)
    assert still_busy == WarmPlan()


def test_after_the_peak_only_the_surplus_goes() -> None:
    p = WeeklyProfile()
    for d in range(21):
        daily(p, "f", 9, range(d, d + 1), per_hour=3600)  # 1 rps at 9
        daily(p, "f", 10, range(d, d + 1), per_hour=360)  # 0.1 rps at 10
    after = plan(p, at(21, 10, 5), held={"f": 10}, run_s=10.0)
    assert released(after) == {"f": 9}


def test_sandboxes_the_profile_did_not_ask_for_are_left_to_the_pool(
    nine_am: WeeklyProfile,
) -> None:
    assert plan(nine_am, at(21, 12), held={"unknown": 3}) == WarmPlan()
    p = WeeklyProfile()
    daily(p, "rare", 9, range(21), per_hour=2)
    assert plan(p, at(21, 12), held={"rare": 1}) == WarmPlan()


def test_the_budget_goes_to_the_most_valuable_first() -> None:
    p = WeeklyProfile()
    daily(p, "big", 9, range(7), per_hour=600)
    daily(p, "small", 9, range(7), per_hour=120)
    daily(p, "tiny", 9, range(7), per_hour=60)
    now = at(7, 8, 55)
    assert [w.function for w in plan(p, now).prewarm] == ["big", "small", "tiny"]
    assert warmed(plan(p, now, max_sandboxes=2, run_s=1.0)) == {"big": 1, "small": 1}
    mb = {"big": 1024.0, "small": 128.0, "tiny": 128.0}
    by_mb = plan(p, now, memory_mb=mb.__getitem__, budget_mb=300.0)
    assert [w.function for w in by_mb.prewarm] == ["small", "tiny"]
    with pytest.raises(ValueError):
        plan(p, now, budget_mb=300.0)


@settings(max_examples=80)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 40), st.integers(1, 200))),
    st.integers(0, 24 * 14 - 1),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 5)),
    st.floats(0, 0.05),
)
def test_no_function_is_both_warmed_and_released(
    hits: list[tuple[str, int, int]], hour: int, held: dict[str, int], current: float
) -> None:
    p = WeeklyProfile()
    for fn, h, n in sorted(hits, key=lambda x: x[1]):
        p.hit(fn, MONDAY + h * HOUR, count=n)
    now = MONDAY + WEEK + hour * HOUR + 1800.0
    result = plan(p, now, held=held, current_rate=lambda _f: current)
    assert not set(warmed(result)) & set(released(result))
    # The planner's cached bounds never hide a function that qualifies.
    slots = {p.slot_of(now), p.slot_of(now + 600.0)}
    soon = {f: max(p.expected_rate(f, now, slot=s) for s in slots) for f in p.functions()}
    want = {
        f: 1 - held.get(f, 0)
        for f, r in soon.items()
        if r >= 1 / 300 and r >= 1.5 * current and held.get(f, 0) < 1
    }
    assert warmed(result) == want
    assert all(n > 0 for n in warmed(result).values())
    assert all(0 < n <= held[f] for f, n in released(result).items())


def test_a_day_compressed_into_a_minute_for_a_lab() -> None:
    p = WeeklyProfile(slot_s=2.5, slots=24)
    for day in range(5):
        for i in range(10):
            p.hit("f", day * 60.0 + 9 * 2.5 + i * 0.25)  # 4 rps in "09:00"
    now = 5 * 60.0 + 8 * 2.5 + 2.0
    assert warmed(plan(p, now, lead_s=1.0, keep_alive_s=10.0)) == {"f": 1}
    assert plan(p, 5 * 60.0 + 3 * 2.5, lead_s=1.0, keep_alive_s=10.0) == WarmPlan()


# --- persistence ----------------------------------------------------------------


def _sample() -> WeeklyProfile:
    p = WeeklyProfile(capacity=50)
    daily(p, "f", 9, range(10))
    daily(p, "g", 15, range(3), per_hour=7)
    p.hit("ünïcode/fn", at(10, 1))
    return p


def test_a_profile_round_trips_through_bytes() -> None:
    p = _sample()
    q = WeeklyProfile.from_bytes(p.to_bytes())
    assert q.to_bytes() == p.to_bytes()
    assert (q.slot_s, q.slots, q.alpha, q.capacity) == (p.slot_s, p.slots, p.alpha, p.capacity)
    assert sorted(q.functions()) == sorted(p.functions())
    later = at(12, 9)
    for fn in p.functions():
        assert q.volume(fn, later) == p.volume(fn, later)
        for slot in range(p.slots):
            assert q.expected_rate(fn, later, slot=slot) == p.expected_rate(fn, later, slot=slot)
    for q_or_p in (p, q):
        q_or_p.hit("f", later)
    assert q.to_bytes() == p.to_bytes()


def test_a_smaller_capacity_keeps_the_heaviest() -> None:
    q = WeeklyProfile.from_bytes(_sample().to_bytes(), capacity=1)
    assert list(q.functions()) == ["f"]


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b'{"profile": 1}', b"\x00" * 64, _sample().to_bytes()[:-1]],
    ids=["empty", "text", "json", "zeros", "truncated"],
)
def test_foreign_or_truncated_data_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        WeeklyProfile.from_bytes(data)


@settings(max_examples=100)
@given(st.data())
def test_any_corrupted_byte_raises_value_error(data: st.DataObject) -> None:
    raw = bytearray(_sample().to_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ValueError):
        WeeklyProfile.from_bytes(bytes(raw))


def test_a_profile_recorded_with_other_slots_is_refused() -> None:
    data = _sample().to_bytes()
    with pytest.raises(ValueError, match="slots"):
        WeeklyProfile.from_bytes(data, slots=24)
    with pytest.raises(ValueError, match="slot_s"):
        WeeklyProfile.from_bytes(data, slot_s=2.5)
    assert WeeklyProfile.from_bytes(data, slots=168, slot_s=3600.0, alpha=0.5).alpha == 0.5


def test_the_store_saves_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "profile.bin"
    profile_store.save(_sample(), path)
    assert profile_store.load(path).to_bytes() == _sample().to_bytes()
    assert os.listdir(path.parent) == ["profile.bin"]


def test_loading_a_missing_file_gives_an_empty_profile(tmp_path: Path) -> None:
    p = profile_store.load(tmp_path / "nope.bin", slot_s=2.5, slots=24, capacity=7)
    assert len(p) == 0
    assert (p.slot_s, p.slots, p.capacity) == (2.5, 24, 7)


def test_loading_a_corrupt_file_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "profile.bin"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        profile_store.load(path)


def test_the_store_writes_a_temp_file_beside_it_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "profile.bin"
    profile_store.save(_sample(), path)
    old = path.read_bytes()
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        renames.append((str(src), str(dst)))
        assert Path(src).read_bytes() != old  # the new profile is complete before the rename
        assert path.read_bytes() == old  # and the old one untouched until then
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    newer = _sample()
    newer.hit("h", at(11, 0))
    profile_store.save(newer, path)
    assert len(renames) == 1
    src, dst = renames[0]
    assert Path(src).parent == tmp_path and dst == str(path)
    assert path.read_bytes() == newer.to_bytes()


def test_a_failed_save_leaves_the_old_profile_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "profile.bin"
    profile_store.save(_sample(), path)
    old = path.read_bytes()

    def fail(_src: str, _dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    newer = _sample()
    newer.hit("h", at(11, 0))
    with pytest.raises(OSError):
        profile_store.save(newer, path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["profile.bin"]
