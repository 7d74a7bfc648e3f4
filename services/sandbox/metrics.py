"""Instruments of the sandbox manager: OpenTelemetry instruments plus a local tally.

The meter is injected (the wiring passes the service's meter provider's; a
test passes its own); without one the global meter is used, which records
nothing until a provider is installed. The local tally makes the same
numbers visible to tests and logs without any provider. Every metric is
listed in docs/metrics.md.
"""

from __future__ import annotations

import threading
from collections import Counter

from opentelemetry import metrics
from opentelemetry.metrics import Meter

#: What the reaper did to a sandbox (the ``kind`` of ``longshore.sandbox.reaper.actions``).
REAPER_KINDS = ("reap", "reap_failed", "idle_remove", "idle_stop")


class SandboxMetrics:
    """Acquires by outcome, exec durations and timeouts, reaper actions, cleanup failures.

    Args:
        meter: Where the instruments are created; the global meter when None.
    """

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or metrics.get_meter(__name__)
        self._lock = threading.Lock()
        self._tally: Counter[str] = Counter()
        self._acquires = meter.create_counter(
            "longshore.sandbox.acquires",
            unit="{acquire}",
            description="Acquires by outcome (reused_running, restarted, created, ...).",
        )
        self._execs = meter.create_counter(
            "longshore.sandbox.execs", unit="{exec}", description="Execs run."
        )
        self._exec_duration = meter.create_histogram(
            "longshore.sandbox.exec.duration",
            unit="ms",
            description="Wall time of finished execs, by whether their timeout killed them.",
        )
        self._timeouts = meter.create_counter(
            "longshore.sandbox.exec_timeouts",
            unit="{exec}",
            description="Execs killed by their timeout.",
        )
        self._reaped = meter.create_counter(
            "longshore.sandbox.reaped",
            unit="{sandbox}",
            description="Exited sandboxes removed by the reaper.",
        )
        self._reaper_actions = meter.create_counter(
            "longshore.sandbox.reaper.actions",
            unit="{sandbox}",
            description="What the reaper did, by kind: " + ", ".join(REAPER_KINDS) + ".",
        )
        self._cleanup_failures = meter.create_counter(
            "longshore.sandbox.cleanup_failures",
            unit="{cleanup}",
            description="Failed stop/remove cleanups.",
        )
        self._process_starts = meter.create_counter(
            "longshore.sandbox.process_starts",
            unit="{process}",
            description="Processes started, by path: spare (an exec started ahead) or exec.",
        )

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._tally[key] += n

    def acquire(self, outcome: str) -> None:
        """Counts one acquire with its outcome (reused_running, created, ...)."""
        self._acquires.add(1, {"outcome": outcome})
        self._count(f"acquire.{outcome}")

    def exec(self, *, timed_out: bool, duration_seconds: float | None = None) -> None:
        """Counts one finished exec and, when given, records how long it ran."""
        self._execs.add(1)
        self._count("exec")
        if duration_seconds is not None:
            self._exec_duration.record(
                duration_seconds * 1000, {"timed_out": "true" if timed_out else "false"}
            )
        if timed_out:
            self._timeouts.add(1)
            self._count("exec.timeout")

    def reaped(self, n: int, *, failed: int = 0) -> None:
        """Counts containers a reaper sweep removed (and failed to remove)."""
        if n:
            self._reaped.add(n)
            self._reaper_actions.add(n, {"kind": "reap"})
            self._count("reaped", n)
        if failed:
            self._reaper_actions.add(failed, {"kind": "reap_failed"})
            self._count("reaper.reap_failed", failed)

    def reaper_action(self, kind: str) -> None:
        """Counts one idle action of the reaper (``remove`` or ``stop``)."""
        name = f"idle_{kind}"
        self._reaper_actions.add(1, {"kind": name})
        self._count(f"reaper.{name}")

    def cleanup_failure(self) -> None:
        """Counts one failed cleanup."""
        self._cleanup_failures.add(1)
        self._count("cleanup.failure")

    def process_start(self, path: str) -> None:
        """Counts one process started, by path (``spare`` or ``exec``)."""
        self._process_starts.add(1, {"path": path})
        self._count(f"process_start.{path}")

    def snapshot(self) -> dict[str, int]:
        """Returns a copy of the local tally."""
        with self._lock:
            return dict(self._tally)
