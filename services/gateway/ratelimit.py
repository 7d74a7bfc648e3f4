"""A token bucket per API key: steady rate plus a burst, RESOURCE_EXHAUSTED past it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.runtime.errors import ResourceExhausted

Clock = Callable[[], float]
_EPSILON = 1e-9


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Admits calls per key at ``rate`` per second with bursts up to ``burst``.

    A rate of 0 or less disables limiting. Thread-safe; the clock is injectable
    so tests drive time instead of sleeping.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        """Create a limiter.

        Args:
            rate: Tokens added per second per key; <= 0 disables the limit.
            burst: Bucket capacity (at least 1 when limiting).
            clock: Monotonic seconds.
        """
        self._rate = rate
        self._burst = float(max(1, burst))
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self._rate > 0

    def try_acquire(self, key: str) -> float:
        """Take one token for ``key``.

        Returns:
            0.0 when admitted, else the seconds until a token will be available.
        """
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=self._burst, updated=now)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
            if bucket.tokens >= 1.0 - _EPSILON:  # tolerate float drift in the refill
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
                return 0.0
            return (1.0 - bucket.tokens) / self._rate

    def admit(self, key: str) -> None:
        """Take one token for ``key`` or refuse the call.

        Raises:
            ResourceExhausted: The key is over its rate; the message says when to retry.
        """
        wait = self.try_acquire(key)
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit for API key {key!r} exceeded ({self._rate:g}/s, burst "
                f"{self._burst:g}); retry in {wait:.3f}s"
            )
