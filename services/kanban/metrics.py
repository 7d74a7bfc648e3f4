"""Instruments of the kanban dispatcher: tick durations, bucket sizes, claims, queue depth.

The dispatcher and the worker service receive a :class:`KanbanMetrics` built
on the service's meter (injected, as every Longshore class that records).
Its methods take what the caller already has (a tick's ``DispatchResult``, a
claim's profile), so recording adds no query; the queue depth is the one
figure read on demand, through a callback the collector calls at each
scrape or export. Every metric is listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.kanban.planner_types import Plan

log = logging.getLogger(__name__)

#: The ``DispatchResult`` buckets counted per tick, as the ``bucket`` attribute.
BUCKETS = (
    "reclaimed",
    "crashed",
    "promoted",
    "spawned",
    "spawn_failed",
    "auto_assigned_default",
    "skipped_unassigned",
    "skipped_nonspawnable",
    "skipped_per_profile_capped",
    "auto_blocked",
    "awaiting_worker",
    "backing_off",
    "backend_paused",
    "not_considered",
)

#: Ready tasks waiting, by profile (assignee); read at each collection.
QueueDepth = Callable[[], Mapping[str, int]]


class KanbanMetrics:
    """Records the dispatcher's ticks and the workers' claims.

    Args:
        meter: Where the instruments are created; the global meter when None.
        queue_depth: Returns the ready tasks waiting per profile; None = no
            ``longshore.kanban.queue.depth`` gauge. It runs on the collector's
            thread at every scrape or export, so it should be one cheap query;
            an exception is logged and that collection reports no depth.
    """

    def __init__(self, meter: Meter | None = None, queue_depth: QueueDepth | None = None) -> None:
        meter = meter or metrics.get_meter(__name__)
        self._tick_duration = meter.create_histogram(
            "longshore.kanban.tick.duration",
            unit="ms",
            description="Wall time of dispatch ticks (real ticks, not dry runs).",
        )
        self._bucket_tasks = meter.create_counter(
            "longshore.kanban.tick.tasks",
            unit="{task}",
            description="Tasks placed in each DispatchResult bucket, summed over ticks.",
        )
        self._claims = meter.create_counter(
            "longshore.kanban.claims",
            unit="{claim}",
            description="Worker claims by profile and outcome (claimed, empty).",
        )
        self._queue_depth = queue_depth
        if queue_depth is not None:
            meter.create_observable_gauge(
                "longshore.kanban.queue.depth",
                callbacks=[self._observe_depth],
                unit="{task}",
                description="Ready tasks waiting, by profile.",
            )

    def tick(self, duration_seconds: float, result: Plan) -> None:
        """Records one real tick: how long it took and how many tasks each bucket got.

        ``spawn_failed`` is only ever a DispatchResult bucket (filled as a
        spawn fails, after the tick), so a plan counts none, as the tick did.
        """
        self._tick_duration.record(duration_seconds * 1000)
        for bucket in BUCKETS:
            n = len(getattr(result, bucket, ()))
            if n:
                self._bucket_tasks.add(n, {"bucket": bucket})

    def claim(self, profile: str, *, claimed: bool) -> None:
        """Counts one finished claim of a worker serving ``profile``."""
        self._claims.add(1, {"profile": profile, "outcome": "claimed" if claimed else "empty"})

    def _observe_depth(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._queue_depth is not None
        try:
            depth = self._queue_depth()
        except Exception:
            # A database down must not break the scrape of every other metric.
            log.warning("queue depth unavailable", exc_info=True)
            return []
        return [Observation(n, {"profile": profile}) for profile, n in sorted(depth.items())]
