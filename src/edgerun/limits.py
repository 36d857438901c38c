"""Per key and per function limits: a request rate and a maximum concurrency.

Each node enforces them on its own (no coordination between nodes), so the
state here is plain memory and every method is pure arithmetic on an
injected clock: no I/O, no sleeping, no tasks. The module is not
thread-safe; the node calls it from its one event loop.

A rate is a token bucket (``rate_per_s`` refill, ``burst`` capacity); a
concurrency limit is a count of admitted requests not yet released.
:meth:`Limiter.admit` checks every limit before it changes anything, so a
refusal by one limit never costs a token or a slot of another, and answers
with :class:`RateLimited` (429, ``retry-after``, a JSON body that says which
limit refused).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from edgerun.errors import ApiError

Scope = Literal["key", "function"]
LimitKind = Literal["rate", "concurrency"]

_EPSILON = 1e-9
"""Tokens short of a whole one that still count as one: refills summed in floating
point land a hair under 1.0, which would refuse with a zero wait."""

_MAX_RETRY_AFTER_S = 366 * 86400.0
"""The longest wait a refusal states (a year)."""

_EVICTION_SCAN = 64
"""How many of the least recently used buckets eviction looks at for a full one.
A full scan would make every admit of a new name O(capacity) exactly when
capacity is reached with draining buckets, i.e. under a flood of new names."""


@dataclass(frozen=True, slots=True)
class Limit:
    """The limits of one key or one function; ``None`` means unlimited."""

    rate_per_s: float | None = None
    burst: int | None = None
    """Requests admitted at once from a full bucket; ``max(1, ceil(rate))`` if not given."""
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        # Zero or negative limits are refused here, once, rather than meaning
        # "refuse everything" or "unlimited" by accident deep in the invoke path.
        if self.rate_per_s is not None:
            if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
                raise ValueError(
                    f"rate_per_s must be a positive finite number or None, not {self.rate_per_s!r}"
                )
            if self.burst is None:
                object.__setattr__(self, "burst", max(1, math.ceil(self.rate_per_s)))
        if self.burst is not None:
            if self.rate_per_s is None:
                raise ValueError("burst needs a rate_per_s: a burst alone limits nothing")
            if self.burst < 1:
                raise ValueError(f"burst must be at least 1, not {self.burst!r}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(
                f"max_concurrency must be at least 1 or None, not {self.max_concurrency!r}"
            )


class RateLimited(ApiError):
    """A request refused by a limit: 429 with ``retry-after`` and which limit refused."""

    def __init__(
        self, scope: Scope, name: str, limit: LimitKind, value: float, retry_after_s: float
    ) -> None:
        who = f"key {name}" if scope == "key" else f"function {name!r}"
        # A rate so small that the wait overflows (1e-320/s) still gets a finite answer.
        retry_after_s = min(retry_after_s, _MAX_RETRY_AFTER_S)
        if limit == "rate":
            message = f"{who} is over its rate of {_number(value)}/s"
        else:
            message = f"{who} is at its concurrency limit of {_number(value)}"
        # A refusal never says "retry in 0 s": the header is whole seconds, at
        # least 1, and the body's figure at least a millisecond.
        seconds = max(round(retry_after_s, 3), 0.001)
        super().__init__(
            429,
            "TooManyRequests",
            message,
            headers={"retry-after": str(max(1, math.ceil(retry_after_s)))},
            extra={"retry_after_s": seconds, "limit": limit, "scope": scope},
        )
        self.scope = scope
        self.limit = limit
        self.retry_after_s = seconds


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class TokenBucket:
    """Tokens refill at ``rate_per_s`` up to ``burst``; a request takes one.

    It starts full: a name never seen before is as good as one idle long enough.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a positive finite number, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        # A clock that steps back (it should not) earns nothing and moves nothing back.
        if now > self._stamp:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._stamp) * self.rate_per_s
            )
            self._stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0.0 if one is now), taking nothing."""
        self._refill(now)
        short = 1.0 - self._tokens
        return 0.0 if short <= _EPSILON else short / self.rate_per_s

    def take(self, now: float) -> float:
        """0.0 and a token taken if one is available, else the wait and nothing taken."""
        wait = self.wait(now)
        if wait == 0.0:
            self._tokens = max(0.0, self._tokens - 1.0)
        return wait

    def full(self, now: float) -> bool:
        """Whether the bucket is at its burst, i.e. no different from a fresh one."""
        self._refill(now)
        return self._tokens >= self.burst - _EPSILON

    def adopt(self, rate_per_s: float, burst: int, now: float) -> None:
        """Change the rate and burst: what was earned at the old rate is kept, up to
        the new burst, so a raised burst grants no tokens at once."""
        if (rate_per_s, burst) == (self.rate_per_s, self.burst):
            return
        fresh = TokenBucket(rate_per_s, burst, now)  # validates before anything changes
        self._refill(now)
        self.rate_per_s = fresh.rate_per_s
        self.burst = fresh.burst
        self._tokens = min(self._tokens, float(burst))


class Ticket:
    """The concurrency slots one admitted request holds until it is released.

    Release it when the request ends, or use it as a context manager;
    releasing more than once frees the slots once.
    """

    __slots__ = ("_limiter", "_released", "_slots")

    def __init__(self, limiter: Limiter, slots: tuple[tuple[Scope, str], ...]) -> None:
        self._limiter = limiter
        self._slots = slots
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._limiter._release(self._slots)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Limiter:
    """Rate buckets and concurrency counts per key and per function, in bounded memory.

    At most ``capacity`` buckets are kept per scope. When a new one is needed
    the least recently used full bucket goes (it is the same as a fresh one,
    so nothing is lost); if none of the oldest are full, the least recently
    used goes anyway, which forgives that name its debt. Concurrency counts
    exist only while a request holds a slot.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, capacity: int = 100_000
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity!r}")
        self._clock = clock
        self.capacity = capacity
        self._buckets: dict[Scope, OrderedDict[str, TokenBucket]] = {
            "key": OrderedDict(),
            "function": OrderedDict(),
        }
        self._held: dict[Scope, dict[str, int]] = {"key": {}, "function": {}}

    def admit(
        self, key_id: str | None, key_limit: Limit | None, function: str, fn_limit: Limit | None
    ) -> Ticket:
        """Admit one request or raise :class:`RateLimited`, having changed nothing.

        Checks the key's concurrency, the function's, the key's rate, the
        function's rate, in that order; the first refusal is the answer.
        Requests are counted even without a concurrency limit so that a limit
        set later sees the requests already running.
        """
        if key_id is None and key_limit is not None:
            raise ValueError("a key limit needs a key id")
        now = self._clock()
        scopes: list[tuple[Scope, str, Limit | None]] = [("function", function, fn_limit)]
        if key_id is not None:
            scopes.insert(0, ("key", key_id, key_limit))
        for scope, name, limit in scopes:
            most = None if limit is None else limit.max_concurrency
            if most is not None and self._held[scope].get(name, 0) >= most:
                raise RateLimited(scope, name, "concurrency", most, 1.0)
        for scope, name, limit in scopes:
            wait = self._rate_wait(scope, name, limit, now)
            if wait > 0.0:
                assert limit is not None and limit.rate_per_s is not None
                raise RateLimited(scope, name, "rate", limit.rate_per_s, wait)
        # Every limit said yes: now take the tokens and the slots.
        for scope, name, limit in scopes:
            if limit is not None and limit.rate_per_s is not None:
                self._bucket(scope, name, limit, now).take(now)
            held = self._held[scope]
            held[name] = held.get(name, 0) + 1
        return Ticket(self, tuple((scope, name) for scope, name, _ in scopes))

    def held(self, scope: Scope, name: str) -> int:
        """Concurrency slots held now by a key or function."""
        return self._held[scope].get(name, 0)

    def bucket_count(self, scope: Scope) -> int:
        """Rate buckets kept for a scope (at most ``capacity``)."""
        return len(self._buckets[scope])

    def _rate_wait(self, scope: Scope, name: str, limit: Limit | None, now: float) -> float:
        """The wait a name's rate imposes, creating nothing: no bucket yet means a full one."""
        buckets = self._buckets[scope]
        bucket = buckets.get(name)
        if limit is None or limit.rate_per_s is None:
            if bucket is not None:  # the rate was lifted: its bucket is dead weight
                del buckets[name]
            return 0.0
        if bucket is None:
            return 0.0
        assert limit.burst is not None
        bucket.adopt(limit.rate_per_s, limit.burst, now)
        buckets.move_to_end(name)
        return bucket.wait(now)

    def _bucket(self, scope: Scope, name: str, limit: Limit, now: float) -> TokenBucket:
        buckets = self._buckets[scope]
        bucket = buckets.get(name)
        if bucket is not None:
            return bucket
        assert limit.rate_per_s is not None and limit.burst is not None
        if len(buckets) >= self.capacity:
            self._evict(buckets, now)
        bucket = buckets[name] = TokenBucket(limit.rate_per_s, limit.burst, now)
        return bucket

    @staticmethod
    def _evict(buckets: OrderedDict[str, TokenBucket], now: float) -> None:
        victim = next(iter(buckets))
        for scanned, (name, bucket) in enumerate(buckets.items()):
            if scanned >= _EVICTION_SCAN:
                break
            if bucket.full(now):
                victim = name
                break
        del buckets[victim]

    def _release(self, slots: tuple[tuple[Scope, str], ...]) -> None:
        for scope, name in slots:
            held = self._held[scope]
            left = held.get(name, 0) - 1
            if left > 0:
                held[name] = left
            else:
                held.pop(name, None)
