"""Rate and concurrency limits per key and per function, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.errors import ApiError
from edgerun.limits import Limit, Limiter, RateLimited, Ticket, TokenBucket


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(limiter: Limiter, *args: object) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.admit(*args)  # type: ignore[arg-type]
    return info.value


# Limit


@pytest.mark.parametrize(("rate", "burst"), [(5.0, 5), (2.5, 3), (0.5, 1), (0.01, 1)])
def test_default_burst_is_the_rate_rounded_up_and_at_least_one(rate: float, burst: int) -> None:
    assert Limit(rate_per_s=rate).burst == burst


def test_an_explicit_burst_is_kept() -> None:
    assert Limit(rate_per_s=5, burst=20).burst == 20


def test_no_limits_mean_unlimited() -> None:
    assert Limit() == Limit(rate_per_s=None, burst=None, max_concurrency=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"rate_per_s": -1}, "rate_per_s"),
        ({"rate_per_s": math.nan}, "rate_per_s"),
        ({"rate_per_s": math.inf}, "rate_per_s"),
        ({"rate_per_s": 1, "burst": 0}, "burst"),
        ({"burst": 3}, "burst needs a rate"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -2}, "max_concurrency"),
    ],
)
def test_invalid_limits_are_refused_at_construction(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limit(**kwargs)  # type: ignore[arg-type]


# TokenBucket


def test_a_new_bucket_admits_a_whole_burst_at_once() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) > 0.0


def test_an_empty_bucket_says_how_long_until_the_next_token() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=1, now=0.0)
    bucket.take(0.0)
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.1) == pytest.approx(0.15)


def test_a_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_tokens_summed_in_small_steps_still_make_a_whole_one() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=1, now=0.0)
    bucket.take(0.0)
    now = 0.0
    for _ in range(10):
        now += 0.01
        bucket.wait(now)
    assert bucket.take(now) == 0.0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=2, now=0.0)
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, now=0.0)
    bucket.take(0.0)
    for _ in range(5):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_a_bucket_is_full_again_after_burst_over_rate_seconds() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=4, now=0.0)
    for _ in range(4):
        bucket.take(0.0)
    assert not bucket.full(1.9)
    assert bucket.full(2.0)


def test_a_clock_stepping_back_earns_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, now=10.0)
    bucket.take(10.0)
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


def test_a_raised_burst_grants_no_tokens_at_once() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, now=0.0)
    bucket.take(0.0)
    bucket.adopt(10, 10, 0.0)
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0.0


def test_a_lowered_burst_caps_the_tokens_kept() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=10, now=0.0)
    bucket.adopt(1, 2, 0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_tokens_earned_before_a_rate_change_are_kept() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, now=0.0)
    bucket.take(0.0)
    bucket.adopt(0.1, 1, 0.5)  # half a token earned at the old rate
    assert bucket.take(0.5) == pytest.approx(5.0)


# Limiter: refusals


def test_nothing_limited_admits_everything() -> None:
    limiter = Limiter(clock=Clock())
    for _ in range(1000):
        limiter.admit("EK1", Limit(), "f", None)


def test_a_key_over_its_rate_is_a_429_with_retry_after_and_a_json_body() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limit = Limit(rate_per_s=0.4, burst=1)
    limiter.admit("EKabc", limit, "f", None)
    clock.now += 0.5
    err = refusal(limiter, "EKabc", limit, "f", None)
    assert isinstance(err, ApiError)
    assert (err.status, err.type) == (429, "TooManyRequests")
    assert err.message == "key EKabc is over its rate of 0.4/s"
    assert err.headers == {"retry-after": "2"}
    assert err.body() == {
        "error": {
            "type": "TooManyRequests",
            "message": "key EKabc is over its rate of 0.4/s",
            "retry_after_s": 2.0,
            "limit": "rate",
            "scope": "key",
        }
    }


def test_a_function_over_its_rate_names_the_function() -> None:
    limiter = Limiter(clock=Clock())
    limit = Limit(rate_per_s=5)
    for _ in range(5):
        limiter.admit(None, None, "resize", limit)
    err = refusal(limiter, None, None, "resize", limit)
    assert err.message == "function 'resize' is over its rate of 5/s"
    assert (err.extra["scope"], err.extra["limit"]) == ("function", "rate")
    assert err.extra["retry_after_s"] == 0.2


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    limiter = Limiter(clock=Clock())
    fast, slow = Limit(rate_per_s=100), Limit(rate_per_s=0.4, burst=1)
    for _ in range(100):
        limiter.admit(None, None, "fast", fast)
    limiter.admit(None, None, "slow", slow)
    assert refusal(limiter, None, None, "fast", fast).headers["retry-after"] == "1"
    assert refusal(limiter, None, None, "slow", slow).headers["retry-after"] == "3"


def test_a_function_at_its_concurrency_limit_is_told_to_retry_in_a_second() -> None:
    limiter = Limiter(clock=Clock())
    limit = Limit(max_concurrency=2)
    limiter.admit(None, None, "x", limit)
    limiter.admit(None, None, "x", limit)
    err = refusal(limiter, None, None, "x", limit)
    assert err.message == "function 'x' is at its concurrency limit of 2"
    assert err.headers == {"retry-after": "1"}
    assert err.extra == {"retry_after_s": 1.0, "limit": "concurrency", "scope": "function"}


def test_a_key_at_its_concurrency_limit_is_refused_across_functions() -> None:
    limiter = Limiter(clock=Clock())
    limit = Limit(max_concurrency=1)
    limiter.admit("EK1", limit, "a", None)
    err = refusal(limiter, "EK1", limit, "b", None)
    assert err.message == "key EK1 is at its concurrency limit of 1"
    assert err.extra["scope"] == "key"


def test_the_key_concurrency_is_checked_before_the_function_concurrency() -> None:
    limiter = Limiter(clock=Clock())
    one = Limit(max_concurrency=1)
    limiter.admit("EK1", one, "f", one)
    err = refusal(limiter, "EK1", one, "f", one)
    assert (err.extra["scope"], err.extra["limit"]) == ("key", "concurrency")


def test_concurrency_is_checked_before_rate() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit(None, None, "f", Limit(rate_per_s=1, max_concurrency=1))
    err = refusal(limiter, "EK1", Limit(rate_per_s=1), "f", Limit(rate_per_s=1, max_concurrency=1))
    assert (err.extra["scope"], err.extra["limit"]) == ("function", "concurrency")


def test_the_key_rate_is_checked_before_the_function_rate() -> None:
    limiter = Limiter(clock=Clock())
    one = Limit(rate_per_s=1)
    limiter.admit("EK1", one, "f", one)
    err = refusal(limiter, "EK1", one, "f", one)
    assert (err.extra["scope"], err.extra["limit"]) == ("key", "rate")


def test_a_function_rate_refusal_takes_no_token_from_the_key() -> None:
    limiter = Limiter(clock=Clock())
    key = Limit(rate_per_s=1)
    limiter.admit(None, None, "busy", Limit(rate_per_s=1))
    refusal(limiter, "EK1", key, "busy", Limit(rate_per_s=1))
    limiter.admit("EK1", key, "other", None)


def test_a_function_concurrency_refusal_takes_no_token_from_either_rate() -> None:
    limiter = Limiter(clock=Clock())
    key, fn = Limit(rate_per_s=1), Limit(rate_per_s=1, max_concurrency=1)
    ticket = limiter.admit(None, None, "f", Limit(max_concurrency=1))
    refusal(limiter, "EK1", key, "f", fn)
    ticket.release()
    limiter.admit("EK1", key, "f", fn)


def test_a_rate_refusal_holds_no_concurrency_slot() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit(None, None, "f", Limit(rate_per_s=1))
    refusal(limiter, "EK1", Limit(max_concurrency=1), "f", Limit(rate_per_s=1, max_concurrency=1))
    assert limiter.held("key", "EK1") == 0
    assert limiter.held("function", "f") == 1


def test_a_key_limit_without_a_key_id_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="key id"):
        Limiter(clock=Clock()).admit(None, Limit(rate_per_s=1), "f", None)


def test_a_request_without_a_key_is_limited_by_its_function_only() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit(None, None, "f", None)
    assert limiter.bucket_count("key") == 0
    assert limiter.held("function", "f") == 1


# Tickets


def test_releasing_a_ticket_frees_its_slots() -> None:
    limiter = Limiter(clock=Clock())
    one = Limit(max_concurrency=1)
    ticket = limiter.admit("EK1", one, "f", one)
    ticket.release()
    assert (limiter.held("key", "EK1"), limiter.held("function", "f")) == (0, 0)
    limiter.admit("EK1", one, "f", one)


def test_releasing_a_ticket_twice_frees_one_slot_only() -> None:
    limiter = Limiter(clock=Clock())
    two = Limit(max_concurrency=2)
    first = limiter.admit(None, None, "f", two)
    limiter.admit(None, None, "f", two)
    first.release()
    first.release()
    assert first.released
    assert limiter.held("function", "f") == 1


def test_a_ticket_as_a_context_manager_releases_even_on_an_exception() -> None:
    limiter = Limiter(clock=Clock())
    one = Limit(max_concurrency=1)
    with pytest.raises(RuntimeError), limiter.admit("EK1", one, "f", one):
        assert limiter.held("function", "f") == 1
        raise RuntimeError("the function failed")
    assert (limiter.held("key", "EK1"), limiter.held("function", "f")) == (0, 0)


def test_concurrency_counts_are_forgotten_when_they_reach_zero() -> None:
    limiter = Limiter(clock=Clock())
    tickets = [limiter.admit(f"EK{i}", None, f"f{i}", None) for i in range(100)]
    for ticket in tickets:
        ticket.release()
    assert limiter._held == {"key": {}, "function": {}}


def test_requests_running_before_a_concurrency_limit_is_set_count_against_it() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit(None, None, "f", None)
    limiter.admit(None, None, "f", None)
    refusal(limiter, None, None, "f", Limit(max_concurrency=2))


# Limits that change


def test_a_raised_key_rate_takes_effect_without_a_burst_of_free_tokens() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limiter.admit("EK1", Limit(rate_per_s=1), "f", None)
    faster = Limit(rate_per_s=10)
    err = refusal(limiter, "EK1", faster, "f", None)
    assert err.extra["retry_after_s"] == 0.1
    clock.now += 0.1
    limiter.admit("EK1", faster, "f", None)


def test_a_lowered_key_burst_caps_what_it_has_saved() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit("EK1", Limit(rate_per_s=10), "f", None)  # 9 of 10 left
    slower = Limit(rate_per_s=1, burst=2)
    limiter.admit("EK1", slower, "f", None)
    limiter.admit("EK1", slower, "f", None)
    refusal(limiter, "EK1", slower, "f", None)


def test_a_lifted_rate_forgets_its_bucket() -> None:
    limiter = Limiter(clock=Clock())
    limiter.admit("EK1", Limit(rate_per_s=1), "f", None)
    limiter.admit("EK1", Limit(), "f", None)
    assert limiter.bucket_count("key") == 0
    limiter.admit("EK1", Limit(rate_per_s=1), "f", None)


# Bounded memory


def test_buckets_never_exceed_the_capacity() -> None:
    limiter = Limiter(clock=Clock(), capacity=10)
    for i in range(100):
        limiter.admit(f"EK{i}", Limit(rate_per_s=1), f"f{i}", Limit(rate_per_s=1))
    assert limiter.bucket_count("key") == 10
    assert limiter.bucket_count("function") == 10


def test_eviction_prefers_a_full_bucket_to_an_older_draining_one() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock, capacity=2)
    slow, quick = Limit(rate_per_s=0.1), Limit(rate_per_s=10)
    limiter.admit("EKslow", slow, "f", None)  # full again only after 10 s
    clock.now += 0.5
    limiter.admit("EKquick", quick, "f", None)  # full again after 0.1 s
    clock.now += 0.5
    limiter.admit("EKnew", quick, "f", None)
    refusal(limiter, "EKslow", slow, "f", None)  # still in debt: it was kept


def test_when_no_bucket_is_full_the_least_recently_used_goes() -> None:
    limiter = Limiter(clock=Clock(), capacity=2)
    slow = Limit(rate_per_s=0.1)
    limiter.admit("EKa", slow, "f", None)
    limiter.admit("EKb", slow, "f", None)
    limiter.admit("EKc", slow, "f", None)
    limiter.admit("EKa", slow, "f", None)  # forgotten, so fresh again
    assert limiter.bucket_count("key") == 2


def test_a_refusal_adds_no_bucket() -> None:
    limiter = Limiter(clock=Clock(), capacity=1)
    limiter.admit(None, None, "f", Limit(rate_per_s=0.1))
    refusal(limiter, "EKa", Limit(rate_per_s=1), "f", Limit(rate_per_s=0.1))
    assert limiter.bucket_count("key") == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Limiter(capacity=0)


_KEYS = [
    Limit(rate_per_s=2, max_concurrency=1),
    Limit(rate_per_s=0.5, burst=3, max_concurrency=2),
    Limit(max_concurrency=3),
    None,
    Limit(rate_per_s=10),
]
_FUNCTIONS = [Limit(max_concurrency=1), Limit(rate_per_s=1, max_concurrency=2), None]

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("admit"), st.integers(0, len(_KEYS)), st.integers(0, len(_FUNCTIONS) - 1)
        ),
        st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("wait"), st.integers(0, 3000), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops)
def test_random_admits_and_releases_keep_the_invariants(
    ops: list[tuple[str, int, int]],
) -> None:
    clock = Clock()
    limiter = Limiter(clock=clock, capacity=2)
    tickets: list[tuple[Ticket, str | None, str]] = []
    outstanding: dict[tuple[str, str], int] = {}
    for op, a, b in ops:
        if op == "admit":
            key_id = None if a == len(_KEYS) else f"EK{a}"
            key_limit = None if key_id is None else _KEYS[a]
            function, fn_limit = f"f{b}", _FUNCTIONS[b]
            try:
                ticket = limiter.admit(key_id, key_limit, function, fn_limit)
            except RateLimited as err:
                assert int(err.headers["retry-after"]) >= 1
                continue
            tickets.append((ticket, key_id, function))
            for slot in ([("key", key_id)] if key_id else []) + [("function", function)]:
                outstanding[slot] = outstanding.get(slot, 0) + 1
        elif op == "release" and tickets:
            ticket, key_id, function = tickets[a % len(tickets)]
            if not ticket.released:
                for slot in ([("key", key_id)] if key_id else []) + [("function", function)]:
                    outstanding[slot] -= 1
            ticket.release()
        elif op == "wait":
            clock.now += a / 1000
        for i, limit in enumerate(_KEYS):
            held = limiter.held("key", f"EK{i}")
            assert held == outstanding.get(("key", f"EK{i}"), 0)
            if limit is not None and limit.max_concurrency is not None:
                assert held <= limit.max_concurrency
        for i, limit in enumerate(_FUNCTIONS):
            held = limiter.held("function", f"f{i}")
            assert held == outstanding.get(("function", f"f{i}"), 0)
            if limit is not None and limit.max_concurrency is not None:
                assert held <= limit.max_concurrency
        assert limiter.bucket_count("key") <= 2
        assert limiter.bucket_count("function") <= 2
        assert all(n > 0 for scope in limiter._held.values() for n in scope.values())
