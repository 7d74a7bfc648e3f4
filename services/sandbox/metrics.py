"""Counters of the sandbox manager: OpenTelemetry instruments plus a local tally.

The OTel counters are exported when a meter provider is configured; the local
tally makes the same numbers visible to tests and to logs without one.
"""

from __future__ import annotations

import threading
from collections import Counter

from opentelemetry import metrics

_meter = metrics.get_meter(__name__)


class SandboxMetrics:
    """Counts acquires by outcome, execs, timeouts, reaped sandboxes and cleanup failures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally: Counter[str] = Counter()
        self._acquires = _meter.create_counter(
            "longshore.sandbox.acquires", description="Acquires by outcome."
        )
        self._execs = _meter.create_counter("longshore.sandbox.execs", description="Execs run.")
        self._timeouts = _meter.create_counter(
            "longshore.sandbox.exec_timeouts", description="Execs killed by their timeout."
        )
        self._reaped = _meter.create_counter(
            "longshore.sandbox.reaped", description="Exited sandboxes removed by the reaper."
        )
        self._cleanup_failures = _meter.create_counter(
            "longshore.sandbox.cleanup_failures", description="Failed stop/remove cleanups."
        )

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._tally[key] += n

    def acquire(self, outcome: str) -> None:
        """Counts one acquire with its outcome (reused_running, created, ...)."""
        self._acquires.add(1, {"outcome": outcome})
        self._count(f"acquire.{outcome}")

    def exec(self, *, timed_out: bool) -> None:
        """Counts one finished exec."""
        self._execs.add(1)
        self._count("exec")
        if timed_out:
            self._timeouts.add(1)
            self._count("exec.timeout")

    def reaped(self, n: int) -> None:
        """Counts containers removed by a reaper sweep."""
        if n:
            self._reaped.add(n)
            self._count("reaped", n)

    def cleanup_failure(self) -> None:
        """Counts one failed cleanup."""
        self._cleanup_failures.add(1)
        self._count("cleanup.failure")

    def snapshot(self) -> dict[str, int]:
        """Returns a copy of the local tally."""
        with self._lock:
            return dict(self._tally)
