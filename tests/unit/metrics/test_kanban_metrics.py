"""KanbanMetrics on a real SDK meter provider read in memory."""

from __future__ import annotations

from longshore.kanban.v1 import dispatch_pb2
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.kanban.metrics import KanbanMetrics
from services.runtime.metrics import configure_metrics
from tests.unit.metrics.readings import points


def test_ticks_buckets_claims_and_queue_depth() -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics("kanban", readers=[reader], set_global=False)
    depth = {"coder": 3, "reviewer": 0}
    metrics = KanbanMetrics(provider.get_meter("kanban"), queue_depth=lambda: depth)
    result = dispatch_pb2.DispatchResult(
        spawned=[dispatch_pb2.SpawnedTask(task_id="t1"), dispatch_pb2.SpawnedTask(task_id="t2")],
        promoted=["t3"],
    )
    metrics.tick(0.012, result)
    metrics.tick(0.004, dispatch_pb2.DispatchResult(promoted=["t4"]))
    metrics.claim("coder", claimed=True)
    metrics.claim("coder", claimed=False)
    metrics.claim("coder", claimed=True)

    (tick,) = points(reader, "longshore.kanban.tick.duration").values()
    assert tick.count == 2 and tick.sum == 16
    tasks = points(reader, "longshore.kanban.tick.tasks")
    assert {dict(k)["bucket"]: p.value for k, p in tasks.items()} == {"spawned": 2, "promoted": 2}
    claims = points(reader, "longshore.kanban.claims")
    assert {tuple(sorted(dict(k).values())): p.value for k, p in claims.items()} == {
        ("claimed", "coder"): 2,
        ("coder", "empty"): 1,
    }
    gauge = points(reader, "longshore.kanban.queue.depth")
    assert {dict(k)["profile"]: p.value for k, p in gauge.items()} == {"coder": 3, "reviewer": 0}
    provider.shutdown()


def test_a_failing_depth_query_leaves_the_other_metrics_alone() -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics("kanban", readers=[reader], set_global=False)

    def broken() -> dict[str, int]:
        raise ConnectionError("database unreachable")

    metrics = KanbanMetrics(provider.get_meter("kanban"), queue_depth=broken)
    metrics.claim("coder", claimed=True)
    assert points(reader, "longshore.kanban.queue.depth") == {}
    assert len(points(reader, "longshore.kanban.claims")) == 1
    provider.shutdown()
