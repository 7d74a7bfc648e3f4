"""Latency measures shared by the gateway and scale benchmarks.

- :func:`interleaved`: the added latency of a path (through the gateway)
  against its baseline (straight to the backend), in alternating chunks so
  that machine noise (the machine is shared) hits both alike;
- :func:`timed`: every call's time, for percentiles beyond p90;
- :func:`p99`: the nearest-rank 99th percentile of such samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.timing import Stats, measure, stopwatch


def interleaved(
    raw: Callable[[], object],
    ours: Callable[[], object],
    *,
    chunks: int,
    per_chunk: int = 50,
    warmup: int = 5,
) -> tuple[Stats, Stats]:
    """Time ``raw`` and ``ours`` in alternating chunks; return (raw, ours).

    Each side's summary is over the chunk medians (``chunks`` of them), so one
    slow moment of the machine moves one chunk, not the figure.

    Args:
        raw: The baseline call.
        ours: The call whose added cost is wanted.
        chunks: Chunks per side.
        per_chunk: Timed calls per chunk.
        warmup: Untimed calls before each chunk.
    """
    raw_samples: list[float] = []
    ours_samples: list[float] = []
    for _ in range(chunks):
        raw_samples.append(measure(raw, per_chunk, warmup).median)
        ours_samples.append(measure(ours, per_chunk, warmup).median)
    return Stats.from_samples(raw_samples), Stats.from_samples(ours_samples)


def timed(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn`` (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    for _ in range(n):
        with stopwatch(samples):
            fn()
    return samples


def p99(samples: list[float]) -> float:
    """The nearest-rank 99th percentile of ``samples`` (ms)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def timed_tolerant(
    fn: Callable[[], object], n: int, *, give_up_after: int = 3
) -> tuple[list[float], int]:
    """Like :func:`timed` (no warm-up), but a call that raises is a sample too.

    A failed call (a timeout, typically) counts with the time it took, so it
    lands in the tail where it belongs; after ``give_up_after`` failures the
    rest are not attempted (each could cost a whole timeout).

    Returns:
        The samples (ms) and how many calls failed.
    """
    samples: list[float] = []
    failed = 0
    for _ in range(n):
        try:
            with stopwatch(samples):
                fn()
        except Exception:
            failed += 1
            if failed >= give_up_after:
                break
    return samples, failed
