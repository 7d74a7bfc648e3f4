"""The per-key token bucket, driven by an injected clock."""

from __future__ import annotations

import pytest

from services.gateway.ratelimit import RateLimiter
from services.runtime.errors import ResourceExhausted


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.admit("ci")
    with pytest.raises(ResourceExhausted, match="rate limit for API key 'ci' exceeded"):
        limiter.admit("ci")
    assert limiter.try_acquire("ci") == pytest.approx(0.1)
    clock.now += 0.1
    limiter.admit("ci")
    with pytest.raises(ResourceExhausted):
        limiter.admit("ci")


def test_keys_have_separate_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.admit("a")
    limiter.admit("b")
    with pytest.raises(ResourceExhausted):
        limiter.admit("a")


def test_refill_never_exceeds_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=100.0, burst=2, clock=clock)
    clock.now += 3600
    limiter.admit("k")
    limiter.admit("k")
    with pytest.raises(ResourceExhausted):
        limiter.admit("k")


def test_zero_rate_disables_the_limit() -> None:
    limiter = RateLimiter(rate=0, burst=0, clock=FakeClock())
    assert not limiter.enabled
    for _ in range(1000):
        limiter.admit("k")
