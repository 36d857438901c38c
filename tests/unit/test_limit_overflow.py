"""A rate so small its wait overflows a float is still refused with a 429."""

from __future__ import annotations

import math

import pytest

from edgerun.limits import Limit, Limiter, RateLimited


@pytest.mark.parametrize("rate", [1e-320, 5e-324, 1e-300])
def test_a_vanishing_rate_refuses_with_a_finite_retry_after(rate: float) -> None:
    limiter = Limiter(clock=lambda: 0.0)
    limiter.admit("EK1", Limit(rate_per_s=rate), "fn", None).release()
    with pytest.raises(RateLimited) as refused:
        limiter.admit("EK1", Limit(rate_per_s=rate), "fn", None)
    assert math.isfinite(refused.value.retry_after_s)
    assert int(refused.value.headers["retry-after"]) <= 366 * 86400
