"""Decaying request rates in bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.placement import Popularity


def test_a_steady_rate_is_estimated_after_a_few_half_lives() -> None:
    p = Popularity(half_life_s=10.0)
    for i in range(1000):  # 10 requests a second for 100 s
        p.hit("f", i * 0.1)
    assert p.rate("f", 100.0) == pytest.approx(10.0, rel=0.05)


def test_the_rate_decays_once_requests_stop() -> None:
    p = Popularity(half_life_s=10.0)
    for i in range(1000):
        p.hit("f", i * 0.1)
    assert p.rate("f", 110.0) == pytest.approx(p.rate("f", 100.0) / 2, rel=0.01)


def test_an_unknown_function_has_rate_zero() -> None:
    assert Popularity().rate("nobody", 0.0) == 0.0


def test_memory_stays_bounded_by_capacity() -> None:
    p = Popularity(capacity=100)
    for i in range(10_000):
        p.hit(f"f{i}", float(i))
    assert len(p) == 100


def test_a_popular_function_survives_a_flood_of_rare_ones() -> None:
    p = Popularity(capacity=10, half_life_s=60.0)
    for i in range(200):
        p.hit("hot", i * 0.1)
    for i in range(1000):
        p.hit(f"rare{i}", 20.0 + i * 0.001)
    assert p.rate("hot", 21.0) > 1.0


def test_a_newcomer_does_not_inherit_popularity() -> None:
    p = Popularity(capacity=1, half_life_s=60.0)
    for i in range(100):
        p.hit("hot", i * 0.1)
    p.hit("new", 10.0)
    assert p.rate("new", 10.0) < 0.05


def test_scores_stay_finite_over_a_long_time() -> None:
    p = Popularity(half_life_s=1.0)
    for day in range(5):
        p.hit("f", day * 86_400.0)
    assert 0.0 < p.rate("f", 4 * 86_400.0) < 1.0


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0.0, 1.0)), max_size=200))
def test_rates_are_never_negative(hits) -> None:
    p = Popularity(capacity=3, half_life_s=5.0)
    now = 0.0
    for key, step in hits:
        now += step
        p.hit(key, now)
    assert all(p.rate(k, now) >= 0 for k in "abcdef")


def test_the_table_stays_within_capacity_across_a_rescale():
    p = Popularity(capacity=2, half_life_s=1)
    p.hit("a", 0.0)
    p.hit("b", 0.0)
    p.hit("c", 600.0)  # far enough on to rescale the scores first

    assert len(p) == 2
    assert p.rate("c", 600.0) == 0.0 or "c" in p._scores


def test_hits_counted_at_once_equal_the_same_hits_one_by_one() -> None:
    one_by_one, at_once = Popularity(), Popularity()
    for _ in range(7):
        one_by_one.hit("f", 10.0)

    at_once.hit("f", 10.0, 7)

    assert at_once.rate("f", 20.0) == pytest.approx(one_by_one.rate("f", 20.0))
