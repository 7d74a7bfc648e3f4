"""Timing helpers shared by every benchmark scenario."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, all in milliseconds."""

    median: float
    p90: float
    min: float
    max: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Stats:
        """Summarise samples (milliseconds); p90 is the nearest-rank percentile."""
        if not samples_ms:
            raise ValueError("no samples")
        ordered = sorted(samples_ms)
        rank = max(1, math.ceil(0.9 * len(ordered)))
        return cls(
            median=statistics.median(ordered),
            p90=ordered[rank - 1],
            min=ordered[0],
            max=ordered[-1],
            n=len(ordered),
        )


def measure(
    fn: Callable[[], object],
    repeat: int = 20,
    warmup: int = 2,
    setup: Callable[[], object] | None = None,
) -> Stats:
    """Time ``fn()`` ``repeat`` times after ``warmup`` untimed calls.

    Args:
        fn: The operation to time.
        repeat: Timed calls.
        warmup: Untimed calls first (connections, caches, imports).
        setup: Called untimed before every call (e.g. to recreate state).

    Returns:
        The timing summary in milliseconds.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    samples: list[float] = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return Stats.from_samples(samples)


@contextmanager
def stopwatch(samples_ms: list[float]) -> Iterator[None]:
    """Append the duration of the ``with`` block (ms) to ``samples_ms``."""
    start = time.perf_counter_ns()
    try:
        yield
    finally:
        samples_ms.append((time.perf_counter_ns() - start) / 1e6)
