"""Schedule expressions: rate() and cron, their ticks, and the messages of bad ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun import schedule
from edgerun.errors import ApiError
from edgerun.models import FunctionConfig, validate_config

T = datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
rates = st.sampled_from(
    ["rate(1 minute)", "rate(5 minutes)", "rate(1 hour)", "rate(7 hours)", "rate(3 days)"]
)
crons = st.sampled_from(
    ["*/15 * * * *", "0 9 * * MON-FRI", "0 0 L * *", "cron(0 12 ? * 6#3 *)", "cron(5 * * * ? *)"]
)


@pytest.mark.parametrize(
    ("expr", "after", "want"),
    [
        ("rate(5 minutes)", T, datetime(2025, 1, 1, 12, 5, tzinfo=UTC)),
        ("rate(1 minute)", T, datetime(2025, 1, 1, 12, 1, tzinfo=UTC)),
        ("rate(1 day)", T, datetime(2025, 1, 2, tzinfo=UTC)),
        ("*/15 * * * *", T, datetime(2025, 1, 1, 12, 15, tzinfo=UTC)),
        ("0 12 * * *", datetime(2025, 1, 1, 12, tzinfo=UTC), datetime(2025, 1, 2, 12, tzinfo=UTC)),
        ("cron(0 12 * * ? *)", T, datetime(2025, 1, 2, 12, tzinfo=UTC)),
        # AWS counts weekdays 1-7 from Sunday: 6 is Friday, the third Friday of January.
        ("cron(0 12 ? * 6#3 *)", T, datetime(2025, 1, 17, 12, tzinfo=UTC)),
        ("cron(0 12 ? * 6L *)", T, datetime(2025, 1, 31, 12, tzinfo=UTC)),
        ("cron(0 12 ? * MON-FRI *)", T, datetime(2025, 1, 2, 12, tzinfo=UTC)),
        ("cron(0 0 1 1 ? 2020)", T, None),
    ],
)
def test_next_fire(expr: str, after: datetime, want: datetime | None) -> None:
    assert schedule.next_fire(expr, after) == want


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("rate(1 minutes)", "write 'rate(1 minute)'"),
        ("rate(5 minute)", "write 'rate(5 minutes)'"),
        ("rate(0 minutes)", "at least 1"),
        ("rate(3 weeks)", "use minute(s), hour(s) or day(s)"),
        ("rate(5)", "expected 'rate(N minutes|hours|days)'"),
        ("rate(1000000 days)", "at most a century"),
        ("every day", "expected 'rate(5 minutes)'"),
        ("* * * *", "5-field cron expression"),
        ("61 * * * *", "invalid cron expression"),
        ("cron(0 12 * * *)", "six fields"),
        ("cron(0 12 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ],
)
def test_invalid_schedules_say_why(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        schedule.parse(expr)
    assert message in str(info.value)


def test_a_schedule_that_never_fires_is_refused() -> None:
    with pytest.raises(ValueError, match="never fires"):
        schedule.check("0 0 30 2 *", T)
    with pytest.raises(ValueError, match="never fires"):
        schedule.check("cron(0 0 1 1 ? 2020)", T)


def test_validate_config_answers_400_with_the_message() -> None:
    with pytest.raises(ApiError) as info:
        validate_config(FunctionConfig(schedule="rate(2 minute)"))
    assert info.value.status == 400
    assert "rate(2 minutes)" in info.value.message
    assert validate_config(FunctionConfig(schedule="rate(2 minutes)")).schedule


@given(expr=st.one_of(rates, crons), at=times)
def test_next_fire_strictly_increases(expr: str, at: datetime) -> None:
    first = schedule.next_fire(expr, at)
    assert first is not None and first > at
    second = schedule.next_fire(expr, first)
    assert second is not None and second > first
    # Nothing between ``at`` and the next tick: the tick before it is at or before ``at``.
    last = schedule.parse(expr).last_fire(first - timedelta(microseconds=1))
    assert last is not None and last <= at


@given(expr=rates, at=times)
def test_rate_ticks_are_multiples_of_the_period_from_the_epoch(expr: str, at: datetime) -> None:
    parsed = schedule.parse(expr)
    tick = parsed.next_fire(at)
    assert tick is not None
    assert int(tick.timestamp()) % parsed.period_s == 0
    assert tick - at <= timedelta(seconds=parsed.period_s)
    assert parsed.last_fire(tick) == tick  # a tick is its own last tick


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_fire("rate(1 minute)", datetime(2025, 1, 1))
