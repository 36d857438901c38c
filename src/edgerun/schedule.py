"""Schedule expressions of functions (``schedule`` in ``edgerun.toml``): pure, no I/O.

Two forms, as Lambda's EventBridge rules take them, always in UTC:

- ``rate(N unit)``: every N minutes, hours or days (N >= 1; the unit singular when
  N is 1 and plural otherwise, as AWS wants). Ticks are anchored to the Unix epoch:
  ``rate(5 minutes)`` fires at :00, :05, :10 ..., whenever the control plane
  started, so a restart keeps the same grid.
- a cron expression: five fields (minute hour day-of-month month day-of-week,
  read by croniter: ``*/15 * * * *``, ``0 9 * * MON-FRI``, ``0 0 L * *``), or AWS's
  six-field ``cron(minutes hours day-of-month month day-of-week year)``, where one
  of the two day fields is ``?`` and days of the week count 1-7 from Sunday.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_RATE_S = 100 * 365 * 86400
"""The longest rate: a century."""

_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_RATE_RE = re.compile(r"rate\(\s*(\d{1,12})\s+([a-z]+)\s*\)")
_AWS_CRON_RE = re.compile(r"cron\((.*)\)", re.DOTALL)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXAMPLES = "expected 'rate(5 minutes)', a 5-field cron expression such as '*/15 * * * *', "
_EXAMPLES += "or AWS's 'cron(0 12 * * ? *)'"


@dataclass(frozen=True)
class Schedule:
    """A parsed expression: a rate (``period_s``) or a croniter expression (``cron``)."""

    expr: str
    period_s: int = 0
    cron: str = ""

    def next_fire(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after`` (UTC); None when none is left
        (an AWS cron expression whose years are over)."""
        after = _utc(after)
        if self.period_s:
            k = int((after - _EPOCH).total_seconds() // self.period_s) + 1
            return _EPOCH + timedelta(seconds=k * self.period_s)
        from croniter import croniter  # imported when needed: models.py imports this module

        try:
            found: datetime = croniter(self.cron, after).get_next(datetime)
        except (ValueError, OverflowError):  # croniter's "failed to find next date"
            return None
        return found.astimezone(UTC)

    def last_fire(self, at: datetime) -> datetime | None:
        """The latest tick at or before ``at`` (UTC); None when there was none."""
        at = _utc(at)
        if self.period_s:
            k = int((at - _EPOCH).total_seconds() // self.period_s)
            return _EPOCH + timedelta(seconds=k * self.period_s)
        from croniter import croniter

        try:  # croniter's get_prev is strictly before: a microsecond later includes ``at``
            found: datetime = croniter(self.cron, at + timedelta(microseconds=1)).get_prev(datetime)
        except (ValueError, OverflowError):
            return None
        return found.astimezone(UTC)


def parse(expr: str) -> Schedule:
    """The schedule ``expr`` means; a ValueError saying what is wrong otherwise."""
    text = expr.strip()
    if len(text) > 256:
        raise ValueError("schedule is at most 256 characters")
    if text.startswith("rate"):
        return Schedule(expr, period_s=_rate(text))
    aws = _AWS_CRON_RE.fullmatch(text)
    cron = _aws_cron(aws.group(1)) if aws else text
    if not aws and len(text.split()) != 5:
        raise ValueError(f"invalid schedule {expr[:80]!r}: {_EXAMPLES}")
    from croniter import croniter

    try:
        valid = croniter.is_valid(cron)
    except (ValueError, KeyError, TypeError, OverflowError):
        valid = False
    if not valid:
        raise ValueError(f"invalid cron expression in schedule {expr[:80]!r}: {_EXAMPLES}")
    return Schedule(expr, cron=cron)


def next_fire(expr: str, after: datetime) -> datetime | None:
    """The first tick of ``expr`` strictly after ``after`` (UTC), None when none is left."""
    return parse(expr).next_fire(after)


def check(expr: str, now: datetime) -> Schedule:
    """``expr`` parsed, refused also when it will never fire after ``now``."""
    schedule = parse(expr)
    if schedule.next_fire(now) is None:
        raise ValueError(f"schedule {expr[:80]!r} never fires (again)")
    return schedule


def _rate(text: str) -> int:
    m = _RATE_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"invalid rate {text[:80]!r}: expected 'rate(N minutes|hours|days)', "
            "e.g. 'rate(5 minutes)' or 'rate(1 hour)'"
        )
    n, unit = int(m.group(1)), m.group(2)
    base = unit.removesuffix("s")
    if base not in _UNITS:
        raise ValueError(f"invalid rate unit {unit!r}: use minute(s), hour(s) or day(s)")
    if n < 1:
        raise ValueError(f"invalid rate {text!r}: the value must be at least 1")
    if (n == 1) != (unit == base):
        want = base if n == 1 else base + "s"
        raise ValueError(f"invalid rate {text!r}: write 'rate({n} {want})'")
    if n * _UNITS[base] > MAX_RATE_S:
        raise ValueError(f"invalid rate {text!r}: at most a century")
    return n * _UNITS[base]


def _aws_cron(body: str) -> str:
    """AWS's six fields as croniter's seven (minute hour dom month dow second year)."""
    fields = body.split()
    if len(fields) != 6:
        raise ValueError(
            f"invalid schedule 'cron({body[:80]})': AWS's cron takes six fields "
            "(minutes hours day-of-month month day-of-week year), e.g. 'cron(0 12 * * ? *)'"
        )
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ValueError(
            f"invalid schedule 'cron({body[:80]})': exactly one of day-of-month and "
            "day-of-week must be '?'"
        )
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else _aws_weekdays(dow)
    return f"{minute} {hour} {dom} {month} {dow} 0 {year}"


def _aws_weekdays(field: str) -> str:
    """AWS counts days of the week 1-7 from Sunday, croniter 0-6: ``6#3`` -> ``5#3``,
    ``6L`` (the last Friday) -> ``L5``, ``2-6`` -> ``1-5``; names stay."""
    if field == "L":
        return "6"
    last = re.fullmatch(r"([1-7])L", field)
    if last:
        return f"L{int(last.group(1)) - 1}"
    return re.sub(r"(?<![#/\d])([1-7])(?!\d)", lambda m: str(int(m.group(1)) - 1), field)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("schedule times are timezone-aware (UTC)")
    return at.astimezone(UTC)
